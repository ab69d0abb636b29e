"""FSDP2 for Hugging Face decoders: a function applied to a plain model built on the meta device.

The torchtitan recipe (docs/design.md, "Parallelism" and "Conventions"): build the model on `meta` (no
memory), wrap each decoder block in activation checkpointing, `fully_shard` each block and then the root
(the root group holds the embedding, the final norm and the LM head, tied or not), `to_empty` on the
device, then fill each rank's shards straight from the safetensors files: every rank reads only the rows
of its own shard (`safe_open(...).get_slice`), so no rank ever holds a full copy of the model.

- Mixed precision: parameters stay fp32 (the optimizer's master weights); on CUDA the forward and backward
  run in bf16 (`MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`: gradients are reduced in fp32).
  On CPU everything is fp32 (bf16 matmuls there are slow and the 1-vs-2-process tests compare to 1e-5).
- Non-persistent buffers (the rotary `inv_freq`) are not in the weight files and `to_empty` leaves them
  uninitialised; they are recomputed with the model class's own `_init_weights`, which is how transformers
  itself materialises models built on meta.
- The root is not resharded after forward (FSDP2's default for the root): the loop uses `lm_head.weight`
  after the body's forward (`model.packed_hidden_states`) and the gradient the fused op writes into it is
  reduce-scattered at the end of backward.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Shard
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from redone_fast.errors import ConfigError
from redone_fast.model import ModelFolderError, check_model_folder, default_attn_implementation, weight_files

__all__ = ["ParallelConfig", "parallelize", "build_model", "load_sharded_weights", "init_random_weights",
           "decoder_blocks", "clean_name"]

# torch.distributed.algorithms._checkpoint.checkpoint_wrapper inserts this into parameter names; DCP's
# state-dict helpers strip it, and so does clean_name for the safetensors and HF-export names.
_AC_PREFIX = "_checkpoint_wrapped_module."


@dataclass
class ParallelConfig:
    """How the model is sharded and recomputed."""

    activation_checkpointing: bool = True
    """recompute each decoder block in backward (memory for FLOPs)"""
    param_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """compute dtype; None: bfloat16 on CUDA, float32 on CPU"""
    reduce_dtype: Literal["float32", "bfloat16"] = "float32"
    """gradient reduce-scatter dtype"""
    reshard_after_forward: bool = True
    """blocks free their gathered weights after forward (ZeRO-3)"""
    attn_implementation: str | None = None
    """a transformers attention name; None: flash_attention_2 on CUDA when installed, else packed_sdpa"""


def _dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"param_dtype/reduce_dtype: {name!r} is not a torch dtype")
    return dtype


def check_parallel_config(cfg: ParallelConfig) -> None:
    """Reject dtype names torch does not know before a model is built (ConfigError naming the field)."""
    for name in ("param_dtype", "reduce_dtype"):
        value = getattr(cfg, name)
        if value is not None and not isinstance(getattr(torch, value, None), torch.dtype):
            raise ConfigError(f"parallel.{name}: {value!r} is not a torch dtype (e.g. float32, bfloat16)")


def clean_name(name: str) -> str:
    """A parameter's name without the activation-checkpointing wrapper's segment (the HF name)."""
    return name.replace(_AC_PREFIX, "")


def decoder_blocks(model: PreTrainedModel) -> nn.ModuleList:
    """The decoder's list of transformer blocks (`model.model.layers` for Llama/Qwen-style models)."""
    body = model.get_decoder()
    blocks = getattr(body, "layers", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"model: {type(model).__name__} has no decoder block list at .get_decoder().layers")
    return blocks


def parallelize(model: PreTrainedModel, mesh: DeviceMesh, cfg: ParallelConfig | None = None) -> PreTrainedModel:
    """Activation checkpointing per block, then `fully_shard` per block, then the root; in place, returned.

    Apply to a model on the meta device (then `to_empty` and load weights) or on a real device.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    cfg = cfg or ParallelConfig()
    device = torch.device(mesh.device_type)
    mp = MixedPrecisionPolicy(param_dtype=_dtype(cfg.param_dtype, device),
                              reduce_dtype=_dtype(cfg.reduce_dtype, device))
    blocks = decoder_blocks(model)
    for index, block in enumerate(blocks):
        if cfg.activation_checkpointing:
            block = checkpoint_wrapper(block)  # non-reentrant torch.utils.checkpoint
            blocks[index] = block
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=cfg.reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=mp)  # root: embedding, final norm, LM head
    return model


def init_non_persistent_buffers(model: PreTrainedModel) -> None:
    """Recompute buffers that are not saved (rotary inv_freq) after `to_empty`, with the model's own init."""
    for name, module in model.named_modules():
        owned = [b for b in module._non_persistent_buffers_set if getattr(module, b, None) is not None]
        if not owned:
            continue
        if any(True for _ in module.parameters(recurse=False)):
            raise ValueError(f"model: module {clean_name(name)} has both parameters and non-persistent buffers "
                             f"({', '.join(owned)}); its buffers cannot be re-initialised on their own")
        with torch.no_grad():
            model._init_weights(module)


def _shard_rows(param: torch.Tensor) -> tuple[int, int]:
    """[start, stop) rows of dim 0 that this rank's FSDP2 shard holds (torch.chunk over the mesh)."""
    if not isinstance(param, DTensor):
        return 0, param.shape[0] if param.ndim else 0
    (placement,) = param.placements
    if not (isinstance(placement, Shard) and placement.dim == 0):
        raise ValueError(f"unexpected FSDP placement {placement}: only dim-0 sharding is loaded")
    rows = param.shape[0]
    world = param.device_mesh.size()
    chunk = math.ceil(rows / world)
    start = min(param.device_mesh.get_local_rank() * chunk, rows)
    stop = min(start + chunk, rows)
    local_rows = param.to_local().shape[0]
    if local_rows != stop - start:
        raise AssertionError(f"shard of {tuple(param.shape)} holds {local_rows} rows, expected {stop - start}")
    return start, stop


def load_sharded_weights(model: PreTrainedModel, path) -> None:
    """Fill every parameter's local shard (and persistent buffers) from a folder's safetensors files.

    Each rank reads only its own rows; names follow the HF checkpoint (wrappers removed). A tied LM head
    may be stored under either name. Raises ModelFolderError naming missing keys or shape mismatches.
    """
    from safetensors import safe_open

    path = Path(os.fspath(path))
    check_model_folder(path)
    files = weight_files(path)
    where: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                where[key] = file

    aliases: dict[int, list[str]] = {}
    tensors: dict[int, torch.Tensor] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(clean_name(name))
        tensors[id(param)] = param
    for name, buffer in model.named_buffers(remove_duplicate=False):
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        if leaf not in module._non_persistent_buffers_set:
            aliases.setdefault(id(buffer), []).append(clean_name(name))
            tensors[id(buffer)] = buffer

    missing, mismatched = [], []
    handles: dict[Path, object] = {}
    try:
        for key, names in aliases.items():
            stored = next((n for n in names if n in where), None)
            if stored is None:
                missing.append(names[0])
                continue
            file = where[stored]
            if file not in handles:
                handles[file] = safe_open(str(file), framework="pt").__enter__()
            view = handles[file].get_slice(stored)
            target = tensors[key]
            if tuple(view.get_shape()) != tuple(target.shape):
                mismatched.append(f"{stored} (weights {tuple(view.get_shape())} vs model {tuple(target.shape)})")
                continue
            start, stop = _shard_rows(target)
            local = target.to_local() if isinstance(target, DTensor) else target
            with torch.no_grad():
                if local.numel():
                    local.copy_(view[start:stop] if target.ndim else view[:])
    finally:
        for handle in handles.values():
            handle.__exit__(None, None, None)
    if missing or mismatched:
        problems = ([f"missing from the weights: {', '.join(sorted(missing)[:6])}"] if missing else []) + \
                   ([f"shape mismatch: {', '.join(mismatched[:6])}"] if mismatched else [])
        raise ModelFolderError(path, "weights do not match the model config: " + "; ".join(problems))


def init_random_weights(model: PreTrainedModel, *, std: float | None = None, seed: int = 0) -> None:
    """Random weights for benchmarks and tests: N(0, std) matrices, ones for 1-D (norm) weights, zero biases.

    Each rank draws its own shard from `seed + rank` (cheap, not the same weights as an unsharded init).
    """
    std = std if std is not None else getattr(model.config, "initializer_range", 0.02)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    generator = None
    for name, param in model.named_parameters():
        local = param.to_local() if isinstance(param, DTensor) else param
        if generator is None:
            generator = torch.Generator(device=local.device).manual_seed(seed + rank)
        with torch.no_grad():
            if name.endswith("bias"):
                local.zero_()
            elif param.ndim == 1:
                local.fill_(1.0)
            else:
                local.normal_(0.0, std, generator=generator)


def build_model(source, mesh: DeviceMesh, cfg: ParallelConfig | None = None, *, device=None,
                random_init_seed: int | None = None) -> PreTrainedModel:
    """A sharded, trainable model: built on meta, parallelized, materialised on `device`, weights loaded.

    source: a local model folder (weights loaded shard by shard) or a `PretrainedConfig` (random weights
        from `init_random_weights`, seeded by `random_init_seed`, default 0).
    Parameters are fp32 (the optimizer's master copy); compute runs in `cfg.param_dtype`.
    """
    cfg = cfg or ParallelConfig()
    device = torch.device(device if device is not None else mesh.device_type)
    if isinstance(source, PretrainedConfig):
        config, folder = source, None
    else:
        folder = Path(os.fspath(source))
        config = check_model_folder(folder)
    attn = cfg.attn_implementation or default_attn_implementation(device, _dtype(cfg.param_dtype, device))
    source_dtype = getattr(config, "dtype", None)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn)
    model.config.dtype = source_dtype  # what exports are written in (fp32 masters are a training detail)
    parallelize(model, mesh, cfg)
    model.to_empty(device=device)
    init_non_persistent_buffers(model)
    if folder is not None:
        load_sharded_weights(model, folder)
    else:
        init_random_weights(model, seed=0 if random_init_seed is None else random_init_seed)
    return model.train()
