"""Microbenchmarks of the fused LM-head ops against the obvious alternatives (see benchmarks/README.md).

Run with `pytest benchmarks/bench_lm_head.py` (or `python benchmarks/record.py`, which also writes a
results file). Three suites, each parametrised over implementation and shape:

  test_linear_cross_entropy_fwd_bwd   mean cross-entropy (~10% ignored tokens), forward + backward to
                                      hidden and weight: fused | torch_eager | torch_compile | liger |
                                      cce | torch_native | gemm3
  test_linear_logprobs_fwd_nograd     per-token log-probabilities (and entropies) under torch.no_grad():
                                      fused | torch_eager | torch_compile | gemm1
  test_linear_logprobs_fwd_bwd        log-probabilities (and entropies), backward with random upstream
                                      gradients: fused | fused_loss | torch_eager | torch_compile | gemm3

Shapes: CUDA -> bf16, T in {4096, 16384, 32768}, H in {2560, 4096}, V = 151936; CPU -> fp32, four small
shapes and T=4096, H=512, V=32768, the one CPU shape where the compiled peers run by default (issue 16's
CPU comparison). Environment overrides:
  REDONE_BENCH_SIZES="T,H,V;T,H,V"   shapes to run
  REDONE_BENCH_DTYPE=bfloat16        float32 | bfloat16 | float16
  REDONE_BENCH_CPU_COMPILE=1         run torch_compile and cce on CPU at every shape (slow to compile)
  REDONE_BENCH_TARGET_S=2.0          timed seconds to aim for per case (rounds are derived from it)

Every case records in `benchmark.extra_info`: op, impl, T, H, V, dtype, flops, peak extra memory (one
separate untimed call, see `_measure_peak_extra`), the bytes of the returned outputs, and for `fused`
the backend and chunk budget the op resolved. TFLOP/s is derived by benchmarks/record.py.
"""
from __future__ import annotations

import ctypes
import gc
import math
import os
import re
import sys
import time
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from redone_fast.ops import linear_cross_entropy, linear_logprob_loss, linear_logprobs
from redone_fast.ops._backend import resolve_backend, resolve_chunk_bytes

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
IGNORE_INDEX = -100
IGNORED_FRACTION = 0.1

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE = _DTYPES[os.environ.get("REDONE_BENCH_DTYPE", "bfloat16" if CUDA else "float32")]

# (T, H, V). The GPU set is the spec's. The CPU set runs the whole module in 1.5-3 minutes on two cores
# (an AMD EPYC VM: 0.08-0.17 TFLOP/s fp32); with T=1024 at V=151936 it took almost four on a busy machine.
# fp32 on CPU: CPUs have no fast bf16 GEMM to speak of, and it keeps the memory comparison clean.
CUDA_SIZES = [(t, h, 151936) for h in (2560, 4096) for t in (4096, 16384, 32768)]
CPU_SIZES = [(256, 256, 32000), (1024, 256, 32000), (256, 256, 151936), (512, 256, 151936), (4096, 512, 32768)]
# The one CPU shape where the compiled peers (torch_compile, cce's torch.compile implementation) run by
# default: a user would try them, and one compile per op fits the CPU run's budget.
CPU_COMPILE_SIZE = (4096, 512, 32768)


def _sizes() -> list[tuple[int, int, int]]:
    spec = os.environ.get("REDONE_BENCH_SIZES", "").strip()
    if not spec:
        return CUDA_SIZES if CUDA else CPU_SIZES
    sizes = []
    for item in spec.split(";"):
        if not item.strip():
            continue
        parts = [int(p) for p in item.split(",")]
        if len(parts) != 3 or min(parts) <= 0:
            raise ValueError(f"REDONE_BENCH_SIZES entries must be 'T,H,V' with positive ints, got {item!r}")
        sizes.append(tuple(parts))
    return sizes


SIZES = _sizes()

# Timing policy: one warm-up call (two for torch.compile: compile, then autotuned steady state), one
# untimed call that measures memory, then `rounds` timed calls with rounds chosen from the memory
# call's duration so that a case takes about TARGET_S.
TARGET_S = float(os.environ.get("REDONE_BENCH_TARGET_S", "2.0" if CUDA else "0.5"))
MIN_ROUNDS, MAX_ROUNDS = (5, 50) if CUDA else (3, 20)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def _make_inputs(T: int, H: int, V: int, *, grad: bool) -> dict:
    torch.manual_seed(0)
    hidden = torch.randn(T, H, device=DEVICE, dtype=DTYPE)
    # Scaled so that logits are O(1), as in a trained model's LM head (timing does not depend on it).
    weight = (torch.randn(V, H, device=DEVICE, dtype=torch.float32) * H**-0.5).to(DTYPE)
    target = torch.randint(0, V, (T,), device=DEVICE, dtype=torch.int64)
    ce_target = target.clone()
    ce_target[torch.rand(T, device=DEVICE) < IGNORED_FRACTION] = IGNORE_INDEX
    if grad:
        hidden.requires_grad_(True)
        weight.requires_grad_(True)
    return {"hidden": hidden, "weight": weight, "target": target, "ce_target": ce_target}


# ---------------------------------------------------------------------------------------------
# Implementations. Each builder returns a zero-argument callable doing one full step and returning
# its outputs (so the memory probe can count them); the timed wrapper drops them and synchronises.
# ---------------------------------------------------------------------------------------------
def _eager_ce(hidden, weight, target):
    # What a user writes: full [T, V] logits in the input dtype, torch's cross-entropy on them.
    return F.cross_entropy(F.linear(hidden, weight), target, ignore_index=IGNORE_INDEX)


def _eager_logprobs(hidden, weight, target):
    # linear + log_softmax + gather, all in the input dtype (the gathered [T] result is cast to fp32,
    # like the fused op's output; that cast is negligible).
    logits = F.linear(hidden, weight)
    return torch.log_softmax(logits, dim=-1).gather(1, target[:, None])[:, 0].float()


def _compiled(fn):
    # A fresh compile per case: dynamo's per-function recompile limit must never fall back to eager
    # silently across the many shapes of a run.
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)


def _liger_loss_class():
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
    return LigerFusedLinearCrossEntropyLoss


def _cce_function():
    from cut_cross_entropy import linear_cross_entropy as cce_linear_cross_entropy
    return cce_linear_cross_entropy


COMPILED_IMPLS = ("torch_compile", "cce")  # compiled on CPU (cce's CPU implementation is torch.compile)


def _skip_unavailable(impl: str, size) -> None:
    if (impl in COMPILED_IMPLS and not CUDA and tuple(size) != CPU_COMPILE_SIZE
            and os.environ.get("REDONE_BENCH_CPU_COMPILE", "0") in ("", "0")):
        pytest.skip(
            f"{impl} runs on CPU at T,H,V = {CPU_COMPILE_SIZE} only: inductor's C++ compile takes ~15 s per shape "
            "and op on 2 cores (set REDONE_BENCH_CPU_COMPILE=1 to run it at every shape)"
        )
    if impl == "cce":
        try:
            _cce_function()
        except Exception as exc:  # ImportError, or its Triton kernels failing to import
            pytest.skip(f"cce: cut_cross_entropy not importable ({type(exc).__name__}: {exc})")
    if impl == "torch_native" and not (hasattr(F, "linear_cross_entropy")
                                       and hasattr(torch.nn, "LinearCrossEntropyOptions")):
        pytest.skip(f"torch_native: torch {torch.__version__} has no chunked F.linear_cross_entropy")
    if impl == "liger":
        if not CUDA:
            pytest.skip("liger: liger_kernel's fused linear cross entropy is Triton-only and needs CUDA")
        try:
            _liger_loss_class()
        except Exception as exc:  # ImportError, or a triton/torch mismatch raised at import
            pytest.skip(f"liger: liger_kernel not importable ({type(exc).__name__}: {exc})")


def _build_ce_fwd_bwd(impl: str, inp: dict) -> Callable[[], tuple]:
    h, w, t = inp["hidden"], inp["weight"], inp["ce_target"]
    if impl == "fused":
        def run():
            loss = linear_cross_entropy(h, w, t, ignore_index=IGNORE_INDEX)
            return (loss, *torch.autograd.grad(loss, (h, w)))
    elif impl in ("torch_eager", "torch_compile"):
        loss_fn = _eager_ce if impl == "torch_eager" else _compiled(_eager_ce)

        def run():
            loss = loss_fn(h, w, t)
            return (loss, *torch.autograd.grad(loss, (h, w)))
    elif impl == "liger":
        liger = _liger_loss_class()(ignore_index=IGNORE_INDEX, reduction="mean")

        def run():
            loss = liger(w, h, t)  # liger's argument order: (lin_weight, input, target)
            return (loss, *torch.autograd.grad(loss, (h, w)))
    elif impl == "cce":
        # cut-cross-entropy (Apple, arXiv 2411.09009): its Triton kernel on CUDA; on CPU its torch.compile
        # implementation (the one it offers where Triton cannot run). filter_eps left at its default.
        cce = _cce_function()
        cce_impl = "cce" if CUDA else "torch_compile"
        torch._dynamo.reset()

        def run():
            loss = cce(h, w, t, ignore_index=IGNORE_INDEX, reduction="mean", impl=cce_impl)
            return (loss, *torch.autograd.grad(loss, (h, w)))
    elif impl == "torch_native":
        # torch's own chunked op (F.linear_cross_entropy with LinearCrossEntropyOptions(): the chunked
        # path, its "auto" chunking and accumulation picks); torch >= 2.12, skipped where absent.
        options = torch.nn.LinearCrossEntropyOptions()

        def run():
            loss = F.linear_cross_entropy(h, w, t, ignore_index=IGNORE_INDEX, options=options)
            return (loss, *torch.autograd.grad(loss, (h, w)))
    elif impl == "gemm3":
        hd, wd = h.detach(), w.detach()
        # The floor: the three GEMMs any LM-head fwd+bwd must do. dlogits is a full [T, V] buffer,
        # allocated (and filled) here, outside the timed region and before the memory probe's
        # baseline, so neither its allocation nor its bytes are counted in this case's figures.
        dlogits = torch.randn(hd.shape[0], wd.shape[0], device=DEVICE, dtype=DTYPE)
        inp["dlogits"] = dlogits  # freed with the other inputs

        def run():
            logits = hd @ wd.t()
            grad_h = dlogits @ wd
            grad_w = dlogits.t() @ hd
            return logits, grad_h, grad_w
    else:
        raise AssertionError(impl)
    return run


def _eager_logprobs_entropy(hidden, weight, target):
    log_probs = torch.log_softmax(F.linear(hidden, weight), dim=-1)
    logp = log_probs.gather(1, target[:, None])[:, 0].float()
    return logp, -(log_probs.exp() * log_probs).sum(dim=-1).float()


def _fused_logprobs_entropy(hidden, weight, target):
    return linear_logprobs(hidden, weight, target, with_entropy=True)


def _logprobs_fn(impl: str, entropy: bool):
    eager = _eager_logprobs_entropy if entropy else _eager_logprobs
    if impl == "fused":
        return _fused_logprobs_entropy if entropy else linear_logprobs
    if impl == "torch_eager":
        return eager
    if impl == "torch_compile":
        return _compiled(eager)
    raise AssertionError(impl)


def _build_logprobs_nograd(impl: str, inp: dict, entropy: bool = False) -> Callable[[], tuple]:
    h, w, t = inp["hidden"], inp["weight"], inp["target"]
    if impl == "gemm1":
        def fn(hidden, weight, _target):
            return hidden @ weight.t()  # the one GEMM any LM-head forward must do
    else:
        fn = _logprobs_fn(impl, entropy)

    def run():
        with torch.no_grad():
            out = fn(h, w, t)
            return out if isinstance(out, tuple) else (out,)
    return run


def _build_logprobs_fwd_bwd(impl: str, inp: dict, entropy: bool = False) -> Callable[[], tuple]:
    if impl == "gemm3":
        return _build_ce_fwd_bwd("gemm3", inp)
    h, w, t = inp["hidden"], inp["weight"], inp["target"]
    # Random per-token upstream gradients (RL advantages, an entropy coefficient per token): each must reach
    # every token's row differently.
    torch.manual_seed(1)
    upstream = torch.randn(h.shape[0], device=DEVICE, dtype=torch.float32)
    upstream_entropy = torch.randn(h.shape[0], device=DEVICE, dtype=torch.float32)
    inp["upstream"], inp["upstream_entropy"] = upstream, upstream_entropy
    if impl == "fused_loss":
        # The RL objective's route: the per-token loss is a known function of each token's log-prob (here
        # upstream * logp + upstream_entropy * entropy), so linear_logprob_loss forms its gradient in the
        # forward pass (three GEMMs); autograd.grad of the scalar gives the same gradients as the rows below.
        def token_loss(logp, ent, start, end):
            loss = upstream[start:end] * logp
            return loss + upstream_entropy[start:end] * ent if ent is not None else loss

        def run():
            loss, logp, ent = linear_logprob_loss(h, w, t, token_loss, with_entropy=entropy)
            return (logp, *((ent,) if entropy else ()), *torch.autograd.grad(loss, (h, w)))
        return run
    fn = _logprobs_fn(impl, entropy)

    def run():
        out = fn(h, w, t)
        if entropy:
            logp, ent = out
            grads = torch.autograd.grad((logp, ent), (h, w), grad_outputs=(upstream, upstream_entropy))
            return (logp, ent, *grads)
        return (out, *torch.autograd.grad(out, (h, w), grad_outputs=upstream))
    return run


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------
def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def _free() -> None:
    gc.collect()
    if CUDA:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


_LIBC = None


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _linux_rss_probe_ok() -> bool:
    """Peak-RSS probing on CPU needs Linux's resettable high-water mark (/proc/self/clear_refs, '5').

    It also fixes glibc's mmap threshold at 1 MiB (mallopt, which turns off the dynamic threshold):
    every buffer of 1 MiB or more is then mapped on allocation and unmapped on free, so resident
    memory follows live memory. With the dynamic threshold, freed chunk-sized buffers of a few MiB are
    recycled through a fragmented heap and RSS overstates what is live. This applies to the whole
    process, so CPU timings are taken under it too (buffers >= 32 MiB are mmapped by default anyway).
    """
    global _LIBC
    if not sys.platform.startswith("linux"):
        return False
    try:
        _LIBC = ctypes.CDLL("libc.so.6")
        if _LIBC.mallopt(_M_MMAP_THRESHOLD, 1 << 20) != 1:
            return False
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _read_status_kib("VmHWM")
        return True
    except (OSError, AttributeError, ValueError):
        return False


def _read_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    if match is None:
        raise ValueError(f"{field} not in /proc/self/status")
    return int(match.group(1))


_CPU_PROBE = (not CUDA) and _linux_rss_probe_ok()


def _nbytes(outputs) -> int:
    return sum(o.numel() * o.element_size() for o in outputs if isinstance(o, torch.Tensor))


def _measure_peak_extra(run: Callable[[], tuple]) -> tuple[int | None, int, str | None, float]:
    """One untimed call -> (peak extra bytes, bytes of the outputs, method, seconds of the call).

    Peak extra = the most memory held at once during the call minus what was held just before it (the
    inputs), so it includes the returned outputs (the gradients: grad_weight alone is V*H elements).
    CUDA: the caching allocator's exact counters (max_memory_allocated after reset_peak_memory_stats).
    CPU (Linux): resident set size, with glibc's mmap threshold fixed (see _linux_rss_probe_ok). Freed
    heap pages are handed back first (gc + malloc_trim), the kernel's high-water mark is reset to the
    current RSS (write '5' to /proc/self/clear_refs), and the peak is read from VmHWM after the call.
    Page-granular, and it would also count lazily touched library memory, but the warm-up call before
    this one has done that touching; checked here to be exact within a few hundred KiB for single
    allocations of 1 MB to 300 MB. Elsewhere: None (no reliable probe: ru_maxrss cannot be reset
    within a process, and a child process per case would cost more than the CPU run's time budget).
    """
    gc.collect()
    if CUDA:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        start = time.perf_counter()
        outputs = run()
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() - before
        method = "cuda_max_memory_allocated"
    elif _CPU_PROBE:
        _LIBC.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before_kib = _read_status_kib("VmRSS")
        start = time.perf_counter()
        outputs = run()
        elapsed = time.perf_counter() - start
        peak = (_read_status_kib("VmHWM") - before_kib) * 1024
        method = "linux_vmhwm"
    else:
        start = time.perf_counter()
        outputs = run()
        elapsed = time.perf_counter() - start
        peak, method = None, None
    out_bytes = _nbytes(outputs)
    del outputs
    return peak, out_bytes, method, elapsed


def _run_case(benchmark, op: str, impl: str, size, builder, *, grad: bool, flops_factor: int) -> None:
    _skip_unavailable(impl, size)
    T, H, V = size
    benchmark.group = f"{op} T={T} H={H} V={V} {str(DTYPE).removeprefix('torch.')}"
    info = benchmark.extra_info
    info.update(
        op=op, impl=impl, T=T, H=H, V=V, dtype=str(DTYPE).removeprefix("torch."), device=DEVICE.type,
        flops=flops_factor * T * H * V, ignored_fraction=IGNORED_FRACTION if op == "linear_cross_entropy" else 0.0,
    )
    if impl == "fused":
        info["backend"] = resolve_backend(None, DEVICE)
        info["chunk_bytes"] = resolve_chunk_bytes(None, DEVICE, torch.empty(V, H, device="meta"))

    _free()
    inp = run = None
    try:
        inp = _make_inputs(T, H, V, grad=grad)
        run = builder(impl, inp)

        def timed():
            run()  # outputs are dropped at once; the synchronisation makes the time the real one
            _sync()

        for _ in range(2 if impl in COMPILED_IMPLS else 1):
            timed()
        peak, out_bytes, method, elapsed = _measure_peak_extra(run)
        info.update(peak_extra_bytes=peak, output_bytes=out_bytes, memory_method=method)
        rounds = max(MIN_ROUNDS, min(MAX_ROUNDS, math.ceil(TARGET_S / max(elapsed, 1e-6))))
        info["rounds"] = rounds
        benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1 if CUDA else 0)
    except torch.cuda.OutOfMemoryError as exc:
        run = inp = None
        _free()
        pytest.skip(f"{impl} {size}: CUDA out of memory ({str(exc).splitlines()[0]})")
    finally:
        run = inp = None  # drop the inputs (the timed closure holds `run` as a cell)
        _free()


# ---------------------------------------------------------------------------------------------
# The three suites
# ---------------------------------------------------------------------------------------------
def _params(impls):
    return [pytest.param(size, impl, id=f"{impl}-T{size[0]}-H{size[1]}-V{size[2]}") for size in SIZES for impl in impls]


@pytest.mark.parametrize("size,impl", _params(["fused", "torch_eager", "torch_compile", "liger", "cce",
                                                "torch_native", "gemm3"]))
def test_linear_cross_entropy_fwd_bwd(benchmark, size, impl):
    _run_case(benchmark, "linear_cross_entropy", impl, size, _build_ce_fwd_bwd, grad=True, flops_factor=6)


@pytest.mark.parametrize("entropy", [False, True], ids=["logp", "logp+entropy"])
@pytest.mark.parametrize("size,impl", _params(["fused", "torch_eager", "torch_compile", "gemm1"]))
def test_linear_logprobs_fwd_nograd(benchmark, size, impl, entropy):
    if entropy and impl == "gemm1":
        pytest.skip("gemm1 is the floor of both variants: recorded once, without entropy")
    op = "linear_logprobs_entropy_nograd" if entropy else "linear_logprobs_nograd"
    _run_case(benchmark, op, impl, size, lambda i, inp: _build_logprobs_nograd(i, inp, entropy), grad=False,
              flops_factor=2)


@pytest.mark.parametrize("entropy", [False, True], ids=["logp", "logp+entropy"])
@pytest.mark.parametrize("size,impl", _params(["fused", "fused_loss", "torch_eager", "torch_compile", "gemm3"]))
def test_linear_logprobs_fwd_bwd(benchmark, size, impl, entropy):
    if entropy and impl == "gemm3":
        pytest.skip("gemm3 is the floor of both variants: recorded once, without entropy")
    op = "linear_logprobs_entropy_fwd_bwd" if entropy else "linear_logprobs_fwd_bwd"
    _run_case(benchmark, op, impl, size, lambda i, inp: _build_logprobs_fwd_bwd(i, inp, entropy), grad=True,
              flops_factor=6)
