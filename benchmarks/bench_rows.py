"""Microbenchmarks of the row kernels alone: the memory-bound work on one logits chunk [rows, V] that
the fused LM-head ops do between their GEMMs (see redone_fast/ops/_torch_rows.py for the math).

    pytest benchmarks/bench_rows.py [--benchmark-json=benchmarks/results/rows-<device>-<date>.json]

Ops (each parametrised over implementation and chunk rows, V = 151936, Qwen3's vocabulary):
  row_stats            lse and target logit (what linear_cross_entropy's forward needs)
  row_stats_entropy    lse, target logit, sum and entropy (linear_logprobs with_entropy; smoothing)
  ce_grad_             the logits' cross-entropy gradient, written in place
  logprob_grad_        the logits' gradient of logp and entropy, written in place
Implementations: "cpp" (the extension's C++ CPU kernels), "cuda" (its CUDA kernels), "triton"
(kernels/lm_head_rows.py), "torch" (redone_fast/ops/_torch_rows.py, the fallback), and for the
statistics "log_softmax": what a user writes, torch.log_softmax(logits, dtype=float32) + gather.
CPU: fp32, rows in {64, 256}; CUDA: bf16, rows in {1024, 4096}. REDONE_BENCH_DTYPE overrides the
dtype, REDONE_BENCH_ROWS="64,256" the rows, REDONE_BENCH_TARGET_S the timed seconds per case.

extra_info per case: op, impl, rows, V, dtype, device, bytes (the logits bytes the op must move: read
once for the statistics, read and written for the gradients; log_softmax moves more, an fp32 [rows, V]
output, not counted) and gb_per_s = bytes / median time. Gradient cases restore the input logits before
every round, outside the timed region.
"""
from __future__ import annotations

import gc
import math
import os
import time

import pytest
import torch

from redone_fast._ext import has_cuda_kernels, has_extension
from redone_fast.ops import _torch_rows

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
VOCAB = 151936
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE = _DTYPES[os.environ.get("REDONE_BENCH_DTYPE", "bfloat16" if CUDA else "float32")]
ROWS = [int(r) for r in os.environ.get("REDONE_BENCH_ROWS", "1024,4096" if CUDA else "64,256").split(",") if r.strip()]
TARGET_S = float(os.environ.get("REDONE_BENCH_TARGET_S", "1.0" if CUDA else "0.5"))
MIN_ROUNDS, MAX_ROUNDS = (10, 200) if CUDA else (3, 30)

OPS = ("row_stats", "row_stats_entropy", "ce_grad_", "logprob_grad_")
IMPLS = ("cpp", "cuda", "triton", "torch", "log_softmax")


def _row_module(impl: str):
    if impl == "torch":
        return _torch_rows
    if impl == "triton":
        from redone_fast.kernels import lm_head_rows

        return lm_head_rows
    from redone_fast.ops import _ext_rows

    return _ext_rows


def _skip_unavailable(op: str, impl: str) -> None:
    if impl == "cpp" and (CUDA or not has_extension()):
        pytest.skip("cpp: CPU kernels of redone_fast._C; " + ("timed on CPU runs" if CUDA else "extension not built"))
    if impl == "cuda" and not (CUDA and has_cuda_kernels()):
        pytest.skip("cuda: needs a CUDA device and redone_fast._C built with CUDA kernels")
    if impl == "triton" and not CUDA:
        pytest.skip("triton: CUDA only (the interpreter is not worth timing)")
    if impl == "log_softmax" and not op.startswith("row_stats"):
        pytest.skip("log_softmax: a baseline for the statistics only")


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def _timed(run):
    """run, then a device sync. A function of its own, not a closure over the test's `run`: deleting the
    test's names then frees the case's tensors."""
    def timed():
        run()
        _sync()
    return timed


def _case(op: str, impl: str, rows: int):
    """-> (timed function, setup function or None, bytes moved)."""
    torch.manual_seed(0)
    logits = (torch.randn(rows, VOCAB, device=DEVICE) * 2.0).to(DTYPE)
    target = torch.randint(0, VOCAB, (rows,), device=DEVICE)
    target[::10] = -100  # ignored tokens, as in a real batch
    nbytes = logits.numel() * logits.element_size()
    if impl == "log_softmax":
        safe = target.clamp(min=0)[:, None]
        entropy = op == "row_stats_entropy"

        def run():
            log_p = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
            out = log_p.gather(1, safe)
            if entropy:
                out = (out, -(log_p.exp() * log_p).sum(dim=-1))
            return out
        return run, None, nbytes

    module = _row_module(impl)
    if op.startswith("row_stats"):
        full = op == "row_stats_entropy"

        def run():
            return module.row_stats(logits, target, need_sum=full, need_entropy=full)
        return run, None, nbytes

    lse, _, _, entropy = _torch_rows.row_stats(logits, target, need_entropy=True)
    work = logits.clone()

    def restore():
        work.copy_(logits)
        _sync()
        return (), {}

    if op == "ce_grad_":
        row_scale = (target >= 0).float() / max(1, int((target >= 0).sum()))

        def run():
            module.ce_grad_(work, target, lse, row_scale, label_smoothing=0.0, z_loss=1e-4)
    else:
        grad_logp = torch.randn(rows, device=DEVICE)
        grad_entropy = torch.randn(rows, device=DEVICE) * 0.01
        safe = target.clamp(min=0)

        def run():
            module.logprob_grad_(work, safe, lse, entropy, grad_logp, grad_entropy)
    return run, restore, 2 * nbytes


@pytest.mark.parametrize("rows", ROWS, ids=lambda r: f"rows{r}")
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", OPS)
def test_row_kernel(benchmark, op, impl, rows):
    _skip_unavailable(op, impl)
    dtype = str(DTYPE).removeprefix("torch.")
    benchmark.group = f"{op} rows={rows} V={VOCAB} {dtype}"
    run, restore, nbytes = _case(op, impl, rows)
    timed = _timed(run)
    if restore is not None:
        restore()
    timed()  # warm-up (Triton compiles here)
    if restore is not None:
        restore()
    start = time.perf_counter()
    timed()
    elapsed = time.perf_counter() - start
    rounds = max(MIN_ROUNDS, min(MAX_ROUNDS, math.ceil(TARGET_S / max(elapsed, 1e-6))))
    benchmark.pedantic(timed, setup=restore, rounds=rounds, iterations=1) if restore is not None else \
        benchmark.pedantic(timed, rounds=rounds, iterations=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        op=op, impl=impl, rows=rows, V=VOCAB, dtype=dtype, device=DEVICE.type, bytes=nbytes, rounds=rounds,
        gb_per_s=nbytes / median / 1e9 if median > 0 else None, torch_num_threads=torch.get_num_threads(),
    )
    del run, restore, timed
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()
