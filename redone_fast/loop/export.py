"""Export a (sharded) model as a Hugging Face folder that transformers and vLLM load.

The full state dict is gathered from the FSDP2 shards to rank 0's CPU memory (DCP's
`get_model_state_dict(full_state_dict=True, cpu_offload=True)`: one parameter at a time on the device),
cast to the export dtype (the source config's dtype unless told otherwise), and written as
`model.safetensors` with `config.json`, `generation_config.json` and the tokenizer. A tied LM head is
stored once (as the embedding), as transformers expects. The folder is written under a temporary name and
renamed when complete, so a crash never leaves a half-written export where a finished one is expected.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

__all__ = ["export_hf"]


def _dtype_of(config) -> torch.dtype:
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    return value if isinstance(value, torch.dtype) else getattr(torch, str(value))


def export_hf(model, out_dir, *, tokenizer=None, dtype: torch.dtype | str | None = None) -> Path:
    """Write `model` (sharded or not) to `out_dir` on rank 0; every rank must call it (a collective)."""
    out_dir = Path(os.fspath(out_dir))
    config = model.config
    dtype = _dtype_of(config) if dtype is None else (dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype))
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        from safetensors.torch import save_file

        if getattr(config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        tensors = {name: t.detach().to(dtype if t.is_floating_point() else t.dtype).contiguous()
                   for name, t in state.items()}
        tmp = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        saved_dtype = getattr(config, "dtype", None)
        config.dtype = dtype
        try:
            config.save_pretrained(str(tmp))
        finally:
            config.dtype = saved_dtype
        generation_config = getattr(model, "generation_config", None)
        if generation_config is not None:
            generation_config.save_pretrained(str(tmp))
        if tokenizer is not None:
            if isinstance(tokenizer, (str, os.PathLike)):
                from redone_fast.model import load_tokenizer
                tokenizer = load_tokenizer(tokenizer)
            tokenizer.save_pretrained(str(tmp))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
    return out_dir
