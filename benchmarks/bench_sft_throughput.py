"""SFT training throughput (tokens/s) and MFU of the real loop on Qwen3 architectures with random weights.

    python benchmarks/bench_sft_throughput.py --arch qwen3-4b --head fused --head torch --out auto

Each (arch, head) pair builds a fresh model from a `transformers.Qwen3Config` written out below (the
published Qwen3 configs; no download) with `redone_fast.parallelize.build_model` (meta build, activation
checkpointing per decoder block, FSDP2, random weights from one seed, fp32 master weights, bf16 compute on
CUDA / fp32 on CPU), a fused AdamW from `redone_fast.loop.optim`, and runs `redone_fast.loop.step.train_step`
on synthetic packed micro-batches: `--warmup` untimed steps, then `--steps` timed steps, each timed between
two `torch.cuda.synchronize()` calls (on CUDA). A step is the whole optimizer step: forward and backward
over `--micro-batches` micro-batches, gradient norm and clipping, AdamW, schedule.

Heads (the only difference between the two runs of an arch):
  fused  `TokenCrossEntropy`: `redone_fast.ops.linear_cross_entropy(hidden, W, labels, reduction="sum")`,
         chunked, never the full [T, V] logits.
  torch  what Hugging Face's `ForCausalLMLoss` does: `F.linear(hidden, W)` to the full [T, V] logits in the
         compute dtype, `.float()`, `F.cross_entropy(..., ignore_index=-100, reduction="sum")`.
Both start from the same weights, so their first-step losses must agree (recorded; a correctness check).

Micro-batches: `--tokens-per-micro-batch` tokens (16384 by default) of random token ids, packed from
samples of `--sample-len` tokens (or lengths drawn uniformly from [--sample-len-min, --sample-len]); the
last sample is cut to fill the budget exactly. position_ids restart at 0 per sample, cu_seqlens mark the
samples, labels are the next token within the sample (-100 at each sample's last token). The same
micro-batches are used at every step.

Model FLOPs of one step (forward + backward, each matmul counted once):

    F = 6 * T * (n_layers * P_layer + H * V)  +  12 * n_layers * n_heads * d_head * sum_s L_s * (L_s + 1) / 2

    P_layer = H * n_heads*d_head (q) + 2 * H * n_kv*d_head (k, v) + n_heads*d_head * H (o) + 3 * H * I (MLP)

  T: tokens in the step (all micro-batches; every packed token, labelled or not), H hidden size, I MLP
  intermediate size, V vocabulary, L_s the length of each packed sample. 6 = 2 (multiply-add) x 3
  (forward, backward to the input, backward to the weight). The LM head counts H * V once whether or not
  it is tied to the embedding (the embedding lookup is not a matmul). Attention: per layer, QK^T and PV
  cost 2 * 2 * n_heads * d_head FLOPs per (query, key) pair in forward and twice that in backward, so 12
  per pair; a packed causal sample of length L has L * (L + 1) / 2 pairs (each token sees itself and the
  earlier tokens of its own sample; no cross-sample pairs). Not counted: norms (incl. Qwen3's q/k norms),
  RoPE, SiLU, softmax, the loss, the optimizer.
  The activation-checkpointing recompute is NOT counted: MFU counts the model's FLOPs, not the hardware's.
  `hfu` adds it as an estimate (one more forward of every decoder block: 2 * T * n_layers * P_layer +
  4 * n_layers * n_heads * d_head * pairs; the head is not recomputed; flash attention's own backward
  recompute of QK^T is not included either).

MFU = F / (mean step time) / peak. Peak: the best measured rate of a `--peak-size`^3 `torch.matmul` in the
compute dtype: bf16 on CUDA (8192^3 by default; a measured peak is below the datasheet's, so MFU against
it is higher than against the datasheet); on CPU the compute is fp32, so the fp32 matmul rate is
measured (1024^3) and said so. `--peak-tflops X` uses X TFLOP/s instead (the measured rate is still
recorded). Under torchrun every rank runs the same micro-batches; tokens/s is the sum over ranks and
MFU is per GPU.

Memory: on CUDA `torch.cuda.max_memory_allocated()` over the timed steps (stats reset after warm-up) and
`memory_allocated()` just before them (the steady state: fp32 weights, gradients, AdamW moments); on CPU
(Linux) the process's peak resident memory over the timed steps (VmHWM after resetting it through
/proc/self/clear_refs), else the process lifetime's `ru_maxrss`. A head that runs out of GPU memory is
recorded with status "oom" (the full-logits torch head at 16k tokens needs ~5 GB of bf16 logits, an fp32
copy and its gradient) and the run goes on.

Output: a table; `--out FILE` writes the results JSON (`--out auto`:
benchmarks/results/sft_throughput-<device-slug>-<YYYYMMDD>[-N].json). Exit status 1 when a head failed
with an error other than out-of-memory.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.util
import inspect
import json
import math
import os
import platform
import random
import re
import resource
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

_HERE = Path(__file__).resolve().parent


def _load_sibling(name: str):
    """benchmarks/<name>.py as a module, without putting benchmarks/ on sys.path."""
    spec = importlib.util.spec_from_file_location(f"_redone_bench_{name}", _HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


record = _load_sibling("record")  # versions, git state, slugs and the results folder

# An inherited TRITON_INTERPRET=1 (the tests set it) would time numpy emulation of the fused head's Triton
# kernels instead of the kernels; Triton reads it when a kernel is decorated, i.e. on first import.
_REMOVED_TRITON_INTERPRET = None
if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    _REMOVED_TRITON_INTERPRET = os.environ.pop("TRITON_INTERPRET")
    warnings.warn(f"bench_sft_throughput: removed TRITON_INTERPRET={_REMOVED_TRITON_INTERPRET!r} "
                  "(interpreted kernels are not worth timing)", stacklevel=1)

from transformers import Qwen3Config  # noqa: E402

import redone_fast  # noqa: E402
from redone_fast.data.packing import IGNORE_INDEX, PackedBatch  # noqa: E402
from redone_fast.distributed import destroy_distributed, init_distributed  # noqa: E402
from redone_fast.loop.optim import OptimConfig, build_optimizer, build_scheduler  # noqa: E402
from redone_fast.loop.step import TokenCrossEntropy, train_step  # noqa: E402
from redone_fast.model import default_attn_implementation  # noqa: E402
from redone_fast.parallelize import ParallelConfig, build_model  # noqa: E402

GIB = 1 << 30
HEADS = ("fused", "torch")

# Published Qwen3 configs (Qwen/Qwen3-{0.6B,1.7B,4B} config.json): all tie the LM head to the embedding,
# head_dim 128, 8 KV heads, vocab 151936, rope_theta 1e6, no attention bias, no sliding window.
# Non-embedding parameters per the model cards: 0.44B, 1.4B, 3.6B (tests/test_bench_sft_throughput.py).
_QWEN3 = dict(vocab_size=151936, head_dim=128, num_key_value_heads=8, hidden_act="silu", rms_norm_eps=1e-6,
              max_position_embeddings=40960, attention_bias=False, tie_word_embeddings=True,
              use_sliding_window=False)
ARCHS: dict[str, dict] = {
    "qwen3-0.6b": dict(_QWEN3, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, max_window_layers=28),
    "qwen3-1.7b": dict(_QWEN3, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                       num_attention_heads=16, max_window_layers=28),
    "qwen3-4b": dict(_QWEN3, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                     num_attention_heads=32, max_window_layers=36),
    # For the CPU smoke test only: the same structure at toy size.
    "tiny": dict(_QWEN3, vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                 max_window_layers=2),
}
ROPE_THETA = 1_000_000.0

# The issue's target: 4B-architecture SFT at >= 45% MFU on one GPU with activation checkpointing.
TARGET = {"arch": "qwen3-4b", "head": "fused", "mfu": 0.45}


def arch_config(name: str) -> Qwen3Config:
    """A `Qwen3Config` for one of ARCHS (random weights come from build_model)."""
    kwargs = dict(ARCHS[name])
    if "rope_parameters" in inspect.signature(Qwen3Config.__init__).parameters:  # transformers 5.x
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": ROPE_THETA}
    else:  # pragma: no cover - older transformers
        kwargs["rope_theta"] = ROPE_THETA
    config = Qwen3Config(**kwargs)
    config.dtype = "bfloat16"  # what the published checkpoints are stored in (exports only)
    return config


# --------------------------------------------------------------------------------------------------
# FLOPs (module docstring)
# --------------------------------------------------------------------------------------------------
def _dims(config) -> tuple[int, int, int, int, int, int, int]:
    H, I_mlp, V = config.hidden_size, config.intermediate_size, config.vocab_size
    n_layers, n_heads = config.num_hidden_layers, config.num_attention_heads
    n_kv = config.num_key_value_heads or n_heads
    d_head = getattr(config, "head_dim", None) or H // n_heads
    return H, I_mlp, V, n_layers, n_heads, n_kv, d_head


def layer_matmul_params(config) -> int:
    """Matmul weights of one decoder block: q, k, v, o projections and the gated MLP (no biases in Qwen3)."""
    H, I_mlp, _, _, n_heads, n_kv, d_head = _dims(config)
    return H * n_heads * d_head + 2 * H * n_kv * d_head + n_heads * d_head * H + 3 * H * I_mlp


def causal_pairs(sample_lengths) -> int:
    """(query, key) pairs attended in packed causal samples: sum of L * (L + 1) / 2."""
    return sum(L * (L + 1) // 2 for L in sample_lengths)


def flop_breakdown(config, sample_lengths) -> dict:
    """Model FLOPs of one forward + backward over packed samples of these lengths, and their parts."""
    H, _, V, n_layers, n_heads, _, d_head = _dims(config)
    tokens = sum(sample_lengths)
    body_params = n_layers * layer_matmul_params(config)
    head_params = H * V
    pairs = causal_pairs(sample_lengths)
    dense = 6 * tokens * (body_params + head_params)
    attention = 12 * n_layers * n_heads * d_head * pairs
    recompute = 2 * tokens * body_params + 4 * n_layers * n_heads * d_head * pairs
    return {
        "tokens": tokens,
        "samples": len(sample_lengths),
        "matmul_params_non_embedding": body_params,
        "head_params": head_params,
        "causal_pairs": pairs,
        "dense_flops": dense,
        "attention_flops": attention,
        "model_flops": dense + attention,
        "model_flops_per_token": (dense + attention) / tokens if tokens else 0.0,
        "ac_recompute_flops": recompute,
    }


def model_flops(config, sample_lengths) -> int:
    """F of the module docstring: 6*T*(n_layers*P_layer + H*V) + 12*n_layers*n_heads*d_head*sum L(L+1)/2."""
    return flop_breakdown(config, sample_lengths)["model_flops"]


# --------------------------------------------------------------------------------------------------
# Synthetic packed micro-batches
# --------------------------------------------------------------------------------------------------
def sample_lengths(tokens: int, sample_len: int, sample_len_min: int | None, rng: random.Random) -> list[int]:
    """Lengths of the samples packed into one micro-batch of exactly `tokens` tokens."""
    lengths, left = [], tokens
    while left > 0:
        length = sample_len if sample_len_min is None else rng.randint(sample_len_min, sample_len)
        length = min(length, left)
        lengths.append(length)
        left -= length
    return lengths


def packed_micro_batch(lengths: list[int], vocab_size: int, generator: torch.Generator) -> PackedBatch:
    tokens = sum(lengths)
    input_ids = torch.randint(0, vocab_size, (tokens,), generator=generator, dtype=torch.long)
    lens = torch.tensor(lengths, dtype=torch.long)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.long)
    cu[1:] = torch.cumsum(lens, 0)
    position_ids = torch.arange(tokens) - torch.repeat_interleave(cu[:-1], lens)
    labels = torch.full((tokens,), IGNORE_INDEX, dtype=torch.long)
    labels[:-1] = input_ids[1:]
    labels[cu[1:] - 1] = IGNORE_INDEX  # each sample's last token has no next token
    return PackedBatch(input_ids=input_ids, position_ids=position_ids, cu_seqlens=cu.to(torch.int32),
                       labels=labels, sample_indices=list(range(len(lengths))), max_seqlen=max(lengths))


# --------------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------------
class TorchLinearCrossEntropy:
    """Hugging Face's loss: full [T, V] logits in the compute dtype, upcast to fp32, torch cross-entropy."""

    def denominator(self, batch) -> torch.Tensor:
        return (batch.labels != IGNORE_INDEX).sum()

    def loss(self, hidden, weight, batch):
        logits = F.linear(hidden, weight).float()
        loss = F.cross_entropy(logits, batch.labels.to(hidden.device), ignore_index=IGNORE_INDEX, reduction="sum")
        return loss, {}


def make_objective(head: str):
    if head == "fused":
        return TokenCrossEntropy()
    if head == "torch":
        return TorchLinearCrossEntropy()
    raise ValueError(f"head: {head!r} is not one of {HEADS}")


# --------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def measure_matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> dict:
    """Best rate of size^3 matmuls in `dtype` (FLOP/s): batches of back-to-back matmuls, best batch."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    c = torch.empty(size, size, device=device, dtype=dtype)
    flops = 2 * size ** 3
    torch.matmul(a, b, out=c)
    _sync(device)
    start = time.perf_counter()
    torch.matmul(a, b, out=c)
    _sync(device)
    one = max(time.perf_counter() - start, 1e-9)
    iters = max(1, min(50, int(0.1 / one)))  # about 0.1 s per batch
    for _ in range(iters):  # warm-up (clocks, cuBLAS heuristics)
        torch.matmul(a, b, out=c)
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            torch.matmul(a, b, out=c)
        _sync(device)
        best = min(best, (time.perf_counter() - start) / iters)
    del a, b, c
    return {"flops_per_s": flops / best, "tflops": flops / best / 1e12, "dtype": str(dtype).removeprefix("torch."),
            "size": size, "iters_per_batch": iters, "batches": repeats, "best_matmul_s": best,
            "method": f"best of {repeats} batches of {iters} torch.matmul [{size}x{size}] @ [{size}x{size}]"}


def _read_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_cpu_peak() -> str:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        if _read_status_kib("VmHWM") is not None:
            return "linux_vmhwm"
    except OSError:
        pass
    return "ru_maxrss_lifetime"


def _cpu_peak_bytes(method: str) -> int:
    if method == "linux_vmhwm":
        return _read_status_kib("VmHWM") * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_head(arch: str, head: str, micro_batches: list, args, ctx, pcfg: ParallelConfig) -> dict:
    """Build a fresh model, warm up, time `args.steps` optimizer steps; one result row."""
    device = ctx.device
    config = arch_config(arch)
    model = build_model(config, ctx.mesh, pcfg, device=device, random_init_seed=args.seed)
    optim_cfg = OptimConfig(lr=args.lr, schedule="constant", grad_clip=1.0)
    optimizer = build_optimizer(model, optim_cfg)
    scheduler = build_scheduler(optimizer, optim_cfg, args.warmup + args.steps)
    objective = make_objective(head)
    attn = getattr(model.config, "_attn_implementation", None)

    def step():
        return train_step(model, optimizer, scheduler, micro_batches, objective, grad_clip=optim_cfg.grad_clip,
                          world_size=ctx.world_size, device=device)

    results = []
    warm_start = time.perf_counter()
    for _ in range(args.warmup):
        results.append(step())
    _sync(device)
    warmup_s = time.perf_counter() - warm_start

    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        steady_bytes = torch.cuda.memory_allocated(device)
        memory_method = "cuda_max_memory_allocated"
    else:
        steady_bytes = None
        memory_method = _reset_cpu_peak()
    times = []
    for _ in range(args.steps):
        _sync(device)
        start = time.perf_counter()
        results.append(step())
        _sync(device)
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak_bytes = torch.cuda.max_memory_allocated(device)
        reserved_bytes = torch.cuda.max_memory_reserved(device)
    else:
        peak_bytes, reserved_bytes = _cpu_peak_bytes(memory_method), None
    floats = [r.as_floats() for r in results]  # syncs, after the timing
    row = {
        "arch": arch, "head": head, "status": "ok",
        "attn_implementation": attn,
        "step_times_s": times,
        "mean_step_s": sum(times) / len(times),
        "median_step_s": statistics.median(times),
        "min_step_s": min(times),
        "warmup_s": warmup_s,
        "peak_memory_bytes": peak_bytes,
        "peak_reserved_bytes": reserved_bytes,
        "steady_memory_bytes": steady_bytes,
        "memory_method": memory_method,
        "first_loss": floats[0]["loss"],
        "last_loss": floats[-1]["loss"],
        "loss_tokens_per_step": floats[0]["loss_tokens"],
        "skipped_steps": sum(1 for f in floats if f["skipped"]),
    }
    if head == "fused":
        from redone_fast.ops._backend import resolve_backend, resolve_chunk_bytes
        row["backend"] = resolve_backend(None, device)
        row["chunk_bytes"] = resolve_chunk_bytes(None, device)
    return row


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------
def device_info(device: torch.device) -> dict:
    from redone_fast.info import cpu_model

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"type": device.type, "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "cpu_usable": usable,
            "torch_num_threads": torch.get_num_threads(), "name": None, "capability": None, "memory_bytes": None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=torch.cuda.get_device_name(device), capability=f"{props.major}.{props.minor}",
                    memory_bytes=props.total_memory, device_count=torch.cuda.device_count())
    else:
        info["name"] = f"{info['cpu_model']} ({usable} usable cores, torch threads {info['torch_num_threads']})"
    return info


def device_slug(info: dict) -> str:
    if info["type"] == "cuda":
        return record._slug(info["name"] or "cuda")
    return f"cpu-{record._slug(info['cpu_model'] or platform.machine())}-{info['cpu_usable']}c"


def auto_out_path(info: dict, started: dt.datetime) -> Path:
    return record.new_results_path(f"sft_throughput-{device_slug(info)}-{started.strftime('%Y%m%d')}")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(result: dict) -> None:
    peak = result["peak"]
    header = (f"{'arch':<11} {'head':<6} {'tok/step':>8} {'steps':>5} {'step s':>8} {'tokens/s':>10} "
              f"{'TFLOP/s':>8} {'MFU':>6} {'HFU':>6} {'peak GiB':>9} {'loss 1st->last':>15} status")
    print("\n" + header)
    print("-" * len(header))
    for r in result["rows"]:
        arch = result["archs"][r["arch"]]
        mem = r.get("peak_memory_bytes")
        loss = f"{r['first_loss']:.3f}->{r['last_loss']:.3f}" if r.get("first_loss") is not None else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        hfu = f"{100 * r['hfu']:.1f}%" if r.get("hfu") is not None else "-"
        print(f"{r['arch']:<11} {r['head']:<6} {arch['tokens_per_step']:>8} {len(r.get('step_times_s', [])):>5} "
              f"{_fmt(r.get('mean_step_s'), '.4f'):>8} {_fmt(r.get('tokens_per_s'), '.1f'):>10} "
              f"{_fmt(r.get('tflops'), '.3f'):>8} {mfu:>6} {hfu:>6} "
              f"{_fmt(mem / GIB if mem is not None else None, '.3f'):>9} {loss:>15} {r['status']}")
    print(f"\npeak: {peak['used_tflops']:.3f} TFLOP/s ({peak['source']})")
    if peak["dtype"] != "bfloat16":
        print(f"      note: {peak['dtype']} matmul peak, not bf16 (the model computes in {peak['dtype']} here)")
    ac = "on" if result["config"]["activation_checkpointing"] else "off"
    for name, arch in result["archs"].items():
        print(f"{name}: {arch['model_flops_per_token'] / 1e9:.4f} GFLOP/token model FLOPs "
              f"({arch['samples_per_step']} samples, {arch['tokens_per_step']} tokens per step, "
              f"{arch['micro_batches']} micro-batch(es); AC {ac}, "
              f"{result['config']['compute_dtype']}, attention {result['config']['attn_implementation']})")
    for c in result["comparisons"]:
        print(f"{c['arch']}: fused/torch tokens/s {_fmt(c['fused_over_torch_tokens_per_s'], '.3f')}, "
              f"peak memory {_fmt(c['peak_memory_fused_over_torch'], '.3f')}, first-step loss |fused - torch| "
              f"{_fmt(c['first_loss_abs_diff'], '.2e')}")
    for t in result["targets"]:
        status = "not measured" if t["met"] is None else ("met" if t["met"] else "NOT met")
        print(f"target: {t['target']}: {_fmt(t['value'], '.3f')} (want {t['threshold']}): {status}")
    for r in result["rows"]:
        if r["status"] != "ok":
            print(f"{r['arch']} {r['head']}: {r['status']}: {r.get('error', '')[:300]}")


def build_parser() -> argparse.ArgumentParser:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " See the module docstring.")
    p.add_argument("--arch", action="append", choices=sorted(ARCHS),
                   help="architecture (repeatable); default qwen3-4b on CUDA, tiny on CPU")
    p.add_argument("--head", action="append", choices=HEADS, help="LM head + loss (repeatable); default both")
    p.add_argument("--tokens-per-micro-batch", type=int, default=16384, help="packed tokens per micro-batch (16384)")
    p.add_argument("--micro-batches", type=int, default=1, help="micro-batches per optimizer step (1)")
    p.add_argument("--sample-len", type=int, default=2048,
                   help="sample length (2048; the longest when --sample-len-min)")
    p.add_argument("--sample-len-min", type=int, default=None, help="draw lengths uniformly from [min, --sample-len]")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps (3)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (10)")
    p.add_argument("--no-activation-checkpointing", dest="activation_checkpointing", action="store_false",
                   help="no recompute (activation checkpointing is on by default)")
    p.add_argument("--attn", default=None, help="attn_implementation (default: flash_attention_2 on CUDA when "
                                                "flash_attn imports, else sdpa)")
    p.add_argument("--param-dtype", default=None, help="compute dtype (default bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--peak-size", type=int, default=None,
                   help="matmul size for the peak (default 8192 CUDA, 1024 CPU)")
    p.add_argument("--peak-repeats", type=int, default=5 if cuda else 3,
                   help="timed batches of matmuls (5 CUDA, 3 CPU)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="use this peak (TFLOP/s) instead of the measured one")
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate, constant (1e-5)")
    p.add_argument("--seed", type=int, default=0, help="weights and micro-batches (0)")
    p.add_argument("--out", default=None, help="results JSON file; 'auto': benchmarks/results/sft_throughput-...json")
    return p


def _ratio(a, b):
    return a / b if a is not None and b else None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.tokens_per_micro_batch < 1 or args.micro_batches < 1:
        raise SystemExit("need --steps >= 1, --warmup >= 0, --tokens-per-micro-batch >= 1, --micro-batches >= 1")
    if args.sample_len < 1 or (args.sample_len_min is not None and not 1 <= args.sample_len_min <= args.sample_len):
        raise SystemExit("need 1 <= --sample-len-min <= --sample-len")
    started = dt.datetime.now(dt.timezone.utc)
    owns_group = not torch.distributed.is_initialized()
    ctx = init_distributed(args.device)
    try:
        return _run(args, ctx, started)
    finally:
        if owns_group:
            destroy_distributed()


def _run(args, ctx, started: dt.datetime) -> int:
    device = ctx.device
    archs = args.arch or (["qwen3-4b"] if device.type == "cuda" else ["tiny"])
    heads = list(dict.fromkeys(args.head or HEADS))
    pcfg = ParallelConfig(activation_checkpointing=args.activation_checkpointing, param_dtype=args.param_dtype,
                          attn_implementation=args.attn)
    compute_dtype = getattr(torch, args.param_dtype) if args.param_dtype else (
        torch.bfloat16 if device.type == "cuda" else torch.float32)

    attn = args.attn or default_attn_implementation(device, compute_dtype)  # what build_model picks
    peak_size = args.peak_size or (8192 if device.type == "cuda" else 1024)
    peak = measure_matmul_peak(device, compute_dtype, peak_size, args.peak_repeats)
    _free(device)
    if args.peak_tflops:
        peak.update(used_tflops=args.peak_tflops, source=f"--peak-tflops {args.peak_tflops} (measured "
                    f"{peak['tflops']:.3f} TFLOP/s {peak['dtype']} {peak_size}^3)")
    else:
        where = "CUDA" if device.type == "cuda" else "CPU: fp32 compute, so fp32 peak" if \
            compute_dtype == torch.float32 else "CPU"
        peak.update(used_tflops=peak["tflops"], source=f"measured {peak['dtype']} matmul {peak_size}^3 on {where}")
    peak_flops = peak["used_tflops"] * 1e12

    rows, arch_info = [], {}
    for arch in archs:
        config = arch_config(arch)
        rng = random.Random(args.seed)
        generator = torch.Generator().manual_seed(args.seed)
        lengths = [sample_lengths(args.tokens_per_micro_batch, args.sample_len, args.sample_len_min, rng)
                   for _ in range(args.micro_batches)]
        micro_batches = [packed_micro_batch(ls, config.vocab_size, generator).to(device) for ls in lengths]
        flat = [L for ls in lengths for L in ls]
        flops = flop_breakdown(config, flat)
        hardware = flops["model_flops"] + (flops["ac_recompute_flops"] if args.activation_checkpointing else 0)
        arch_info[arch] = {
            "config": dict(ARCHS[arch], rope_theta=ROPE_THETA),
            "tokens_per_step": flops["tokens"], "tokens_per_micro_batch": args.tokens_per_micro_batch,
            "micro_batches": args.micro_batches, "samples_per_step": flops["samples"],
            "sample_lengths": lengths,
            "model_flops_per_step": flops["model_flops"],
            "model_flops_per_token": flops["model_flops_per_token"],
            "hardware_flops_per_step_estimate": hardware,
            "flops": flops,
        }
        if device.type == "cuda" and "flash" not in attn and max(len(ls) for ls in lengths) > 1:
            arch_info[arch]["attention_warning"] = warning = (
                f"{attn} with several samples per micro-batch: transformers gives it a dense [T, T] block-causal "
                "mask, so it computes every (query, key) pair of the micro-batch, not only the causal ones "
                "(install flash-attn for flash_attention_2, the varlen kernel)")
            if ctx.is_main:
                print(f"{arch}: warning: {warning}", file=sys.stderr)
        for head in heads:
            _free(device)
            try:
                row = run_head(arch, head, micro_batches, args, ctx, pcfg)
            except torch.OutOfMemoryError as exc:
                row = {"arch": arch, "head": head, "status": "oom", "error": str(exc).splitlines()[0]}
            except Exception as exc:  # record it and go on with the other cases
                row = {"arch": arch, "head": head, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
            _free(device)
            if row["status"] == "ok":
                t = row["mean_step_s"]
                row["tokens_per_s"] = ctx.world_size * flops["tokens"] / t
                row["tflops"] = flops["model_flops"] / t / 1e12  # per GPU
                row["mfu"] = flops["model_flops"] / t / peak_flops
                row["hfu"] = hardware / t / peak_flops
                row["median_mfu"] = flops["model_flops"] / row["median_step_s"] / peak_flops
            rows.append(row)
            if ctx.is_main and row["status"] != "ok":
                print(f"{arch} {head}: {row['status']}: {row['error'][:500]}", file=sys.stderr)
        del micro_batches

    comparisons = []
    for arch in archs:
        by_head = {r["head"]: r for r in rows if r["arch"] == arch and r["status"] == "ok"}
        if "fused" in by_head and "torch" in by_head:
            f, t = by_head["fused"], by_head["torch"]
            comparisons.append({
                "arch": arch,
                "fused_over_torch_tokens_per_s": _ratio(f["tokens_per_s"], t["tokens_per_s"]),
                "peak_memory_fused_over_torch": _ratio(f["peak_memory_bytes"], t["peak_memory_bytes"]),
                "first_loss_abs_diff": abs(f["first_loss"] - t["first_loss"]),
            })
    target_row = next((r for r in rows if r["arch"] == TARGET["arch"] and r["head"] == TARGET["head"]
                       and r["status"] == "ok"), None)
    on_target = (device.type == "cuda" and args.activation_checkpointing and ctx.world_size == 1
                 and compute_dtype == torch.bfloat16 and target_row is not None)
    value = target_row["mfu"] if on_target else None
    targets = [{"target": f"{TARGET['arch']} SFT MFU, {TARGET['head']} head, activation checkpointing, one GPU, bf16",
                "value": value, "threshold": f">= {TARGET['mfu']}",
                "met": None if value is None else value >= TARGET["mfu"]}]

    commit = record._git("rev-parse", "HEAD")
    dirty_lines = (record._git("status", "--porcelain") or "").splitlines()
    info = device_info(device)
    result = {
        "suite": "sft_throughput",
        "date_utc": started.isoformat(timespec="seconds"),
        "device": info,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "triton": record._version("triton"),
            "transformers": record._version("transformers"),
            "flash_attn": record._version("flash-attn") or record._version("flash_attn"),
            "redone_fast": getattr(redone_fast, "__version__", None),
        },
        "git": {
            "commit": commit,
            "dirty": bool(dirty_lines) if commit is not None else None,
            "dirty_paths": [line[3:] for line in dirty_lines][:100],
        },
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "args": vars(args),
        "cwd": os.getcwd(),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(record.ENV_KEYS)},
        "removed_TRITON_INTERPRET": _REMOVED_TRITON_INTERPRET,
        "world_size": ctx.world_size,
        "config": {
            "archs": archs, "heads": heads,
            "tokens_per_micro_batch": args.tokens_per_micro_batch, "micro_batches": args.micro_batches,
            "sample_len": args.sample_len, "sample_len_min": args.sample_len_min,
            "warmup_steps": args.warmup, "timed_steps": args.steps,
            "activation_checkpointing": args.activation_checkpointing,
            "compute_dtype": str(compute_dtype).removeprefix("torch."),
            "attn_implementation": attn,
            "reshard_after_forward": pcfg.reshard_after_forward,
            "reduce_dtype": pcfg.reduce_dtype,
            "optimizer": "AdamW (fused), fp32 master weights, constant lr, grad clip 1.0",
            "lr": args.lr, "seed": args.seed,
        },
        "peak": peak,
        "archs": arch_info,
        "rows": rows,
        "comparisons": comparisons,
        "targets": targets,
        "notes": [
            "model FLOPs per step F = 6*T*(n_layers*P_layer + H*V) + 12*n_layers*n_heads*d_head*sum_s L_s*(L_s+1)/2, "
            "P_layer = H*n_heads*d_head + 2*H*n_kv*d_head + n_heads*d_head*H + 3*H*I; activation-checkpointing "
            "recompute not counted (hfu adds it: 2*T*n_layers*P_layer + 4*n_layers*n_heads*d_head*pairs).",
            "mfu = F / mean step time / peak; tflops = F / mean step time (per GPU); tokens_per_s counts every "
            "packed token, over all ranks.",
            "a step = train_step: forward + backward over the micro-batches, grad norm + clip, fused AdamW, schedule.",
            "peak: best measured matmul rate in the compute dtype (bf16 on CUDA, fp32 on CPU) unless --peak-tflops.",
            "first_loss: loss of the first (warm-up) step; every head starts from the same random weights, so "
            "fused and torch must agree.",
        ],
    }
    if ctx.is_main:
        print_table(result)
        if args.out:
            out = auto_out_path(info, started) if args.out == "auto" else Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1) + "\n")
            print(f"\nresults: {out}")
    return 1 if any(r["status"] == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
