"""Which implementation an op runs.

Backends:
  "triton"  Triton kernels (kernels/), the default on CUDA. On CPU only under TRITON_INTERPRET=1,
            which tests use; it must be set before triton is first imported.
  "cuda"    the csrc CUDA kernels of the extension redone_fast._C (CUDA tensors; needs a CUDA build).
  "cpp"     the csrc C++ CPU kernels of the extension: the default on CPU when it is built.
  "torch"   the same algorithms in plain torch: the CPU default when the extension is not built.
  "ref"     the pure-torch reference (materialises everything; ground truth in tests).

`REDONE_FAST_BACKEND` forces one for every op (an explicit `backend=` argument still wins).
"""
from __future__ import annotations

import os

import torch

from redone_fast._ext import has_cuda_kernels, has_extension
from redone_fast.ops._chunking import fp32_output_gemms, plan_chunk_rows

BACKENDS = ("triton", "cuda", "cpp", "torch", "ref")
BACKEND_ENV = "REDONE_FAST_BACKEND"
CHUNK_BYTES_ENV = "REDONE_FAST_CHUNK_BYTES"

# Byte budget for the chunk-sized temporaries of the logits (see _chunking.plan_chunk_rows).
# 1 GiB on GPU keeps the per-chunk GEMMs large (thousands of rows at V = 151936) while bounding
# memory far below the 5 GB of a 16k-token bf16 logits tensor. 64 MiB on CPU: the peak then stays
# below torch's own chunked F.linear_cross_entropy at its defaults (issue 16; 512 rows at V = 32768,
# GEMMs large enough for the BLAS: benchmarks/README.md has the measurements).
DEFAULT_CHUNK_BYTES = {"cuda": 1 << 30, "cpu": 64 << 20}


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def default_backend(device: torch.device) -> str:
    if device.type == "cuda":
        return "triton"
    return "cpp" if has_extension() else "torch"


def resolve_backend(requested: str | None, device: torch.device) -> str:
    name = requested or os.environ.get(BACKEND_ENV) or default_backend(device)
    source = "backend" if requested else BACKEND_ENV
    if name not in BACKENDS:
        raise ValueError(f"{source}={name!r} is not one of {BACKENDS}")
    if name == "triton" and device.type != "cuda" and not triton_interpreted():
        raise ValueError(
            f"{source}='triton' on a {device.type} tensor needs TRITON_INTERPRET=1 set before triton is imported"
        )
    if name == "cpp" and (device.type != "cpu" or not has_extension()):
        if device.type == "cpu":
            why = "the extension redone_fast._C is not built"
        else:
            why = f"it runs on CPU tensors, got {device.type}"
        raise ValueError(f"{source}='cpp' is unavailable: {why}")
    if name == "cuda" and (device.type != "cuda" or not has_cuda_kernels()):
        if device.type != "cuda":
            why = f"it runs on CUDA tensors, got {device.type}"
        else:
            why = "redone_fast._C has no CUDA kernels (built without CUDA)"
        raise ValueError(f"{source}='cuda' is unavailable: {why}")
    return name


def resolve_chunk_bytes(requested: int | None, device: torch.device, weight: torch.Tensor | None = None) -> int:
    """The chunk budget: `requested`, else REDONE_FAST_CHUNK_BYTES, else the device's default, which is cut
    to the weight's size in fp32 when `weight` is given and smaller: a chunk no larger than the weight gradient
    the op returns anyway keeps the peak under twice that gradient (torch's own chunked op keeps a second
    gradient-sized buffer; small heads, e.g. T=1024, H=256, V=32000, measured no slower with the smaller chunk)."""
    if requested is None:
        env = os.environ.get(CHUNK_BYTES_ENV)
        requested = int(env) if env else DEFAULT_CHUNK_BYTES.get(device.type, DEFAULT_CHUNK_BYTES["cpu"])
        if not env and weight is not None:
            requested = max(1, min(requested, weight.numel() * 4))
    if requested <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {requested}")
    return int(requested)


def row_ops(backend: str):
    """The module that does the per-row work on a chunk of logits (same four functions everywhere)."""
    if backend == "triton":
        from redone_fast.kernels import lm_head_rows

        return lm_head_rows
    if backend == "torch":
        from redone_fast.ops import _torch_rows

        return _torch_rows
    if backend in ("cpp", "cuda"):
        from redone_fast.ops import _ext_rows

        return _ext_rows
    raise ValueError(f"backend {backend!r} has no row kernels")


def chunk_row_align(backend: str) -> int:
    """Elements each logits-chunk row is padded to (_chunking.LMHead): the Triton row kernels need a
    16-divisible row stride for vector loads; the csrc kernels peel a misaligned head themselves."""
    if backend == "triton":
        from redone_fast.kernels import lm_head_rows

        return lm_head_rows.ROW_ALIGN
    return 1


def chunk_rows(backend: str, hidden: torch.Tensor, weight: torch.Tensor, chunk_bytes: int) -> int:
    """Tokens per logits chunk for this backend's working set (see _chunking.plan_chunk_rows).

    The chunk is fp32 whatever the input dtype (_chunking.LMHead); where the backward GEMMs take it
    rounded to a low-precision input dtype, that copy is counted too."""
    per_logit = row_ops(backend).working_bytes_per_logit(torch.float32)
    if hidden.dtype != torch.float32 and fp32_output_gemms(hidden.device, hidden.dtype):
        per_logit += hidden.element_size()
    align = chunk_row_align(backend)
    return plan_chunk_rows(hidden.shape[0], -(-weight.shape[0] // align) * align, per_logit, chunk_bytes)
