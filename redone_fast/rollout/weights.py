"""Streaming the trainer's weights into a rollout engine, one parameter (or one small bucket) at a time.

The trainer's model is FSDP2-sharded (DTensor parameters, `redone_fast.parallelize`) or plain. Each
parameter is gathered on its own with `DTensor.full_tensor()` (an all-gather over the model's mesh), handed
to the consumer and dropped, so no rank ever holds more than one full parameter (or one bucket) beyond its
shards: no full state dict is built. Names are the Hugging Face ones (`clean_name` strips the activation
checkpointing wrapper's segment), which is what both transformers' modules and vLLM's `load_weights` use.

Gathering is a collective: every rank of the mesh must drain the same iterator in the same order, also the
ranks that host no engine (`drain`). Tied weights (`tie_word_embeddings`) come once, under the embedding's
name, because `named_parameters` yields a shared parameter once (`tied_duplicates=True` repeats them).
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.distributed.tensor import DTensor

from redone_fast.parallelize import clean_name

__all__ = ["iter_full_parameters", "iter_weight_buckets", "drain"]


def iter_full_parameters(model: torch.nn.Module, *, dtype: torch.dtype | None = None,
                         device: torch.device | str | None = None,
                         tied_duplicates: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, full tensor) for every parameter of `model`, one at a time, detached.

    dtype / device: convert each gathered tensor (e.g. to the engine's bf16 on its GPU) before yielding it;
    None keeps the parameter's own. A yielded tensor may share memory with an unsharded parameter: copy it,
    never write to it. Collective under FSDP2 (see the module docstring).
    tied_duplicates: also yield a shared parameter under each further name (`lm_head.weight` after
        `model.embed_tokens.weight` when the embeddings are tied), gathered again: for an engine whose
        layers keep their own processed copy of each weight (vLLM's CPU build, see vllm_engine.py).
    """
    for name, param in model.named_parameters(remove_duplicate=not tied_duplicates):
        with torch.no_grad():
            tensor = param.full_tensor() if isinstance(param, DTensor) else param.detach()
            if dtype is not None or device is not None:
                tensor = tensor.to(dtype=dtype or tensor.dtype, device=device or tensor.device)
        yield clean_name(name), tensor
        del tensor


def iter_weight_buckets(model: torch.nn.Module, *, bucket_bytes: int = 256 << 20, dtype: torch.dtype | None = None,
                        device: torch.device | str | None = None) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """`iter_full_parameters` grouped into lists of at most `bucket_bytes` (a larger parameter comes alone).

    Fewer, larger hand-overs to the engine at the cost of holding one bucket of full tensors at a time.
    bucket_bytes=0 gives one parameter per bucket.
    """
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in iter_full_parameters(model, dtype=dtype, device=device):
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def drain(model: torch.nn.Module) -> None:
    """Take part in the gathers of a weight update on a rank that hosts no engine (see the module docstring)."""
    for _ in iter_full_parameters(model):
        pass
