"""Paired timings of the fused LM-head ops against their peers at one shape, rounds interleaved.

    python benchmarks/compare_interleaved.py [--shape 4096,512,32768] [--rounds 9] [--out auto|PATH]

`bench_lm_head.py` times each implementation's rounds back to back, so a shared machine whose speed drifts
between cases (a 2-core VM: the same case measured 15% apart in two runs 15 minutes apart) moves the ratios.
Here every round runs each implementation once, in turn, and the ratio fused / peer is taken within the
round: drift common to a round cancels. Reported per implementation: median and min of its times, and per
peer the median, min and max of the per-round ratios. The implementations and inputs are
bench_lm_head.py's (same builders), fp32 on the CPU (or bf16 on CUDA), two warm-up calls each (compile).

    ce fwd+bwd      fused | torch_compile | cce | torch_native | torch_eager | gemm3
    logp fwd+bwd    fused | fused_loss | torch_compile | torch_eager | gemm3   (random upstream per token)
    logp+H fwd+bwd  the same, with the entropy and its own upstream gradient

`--out auto` writes benchmarks/results/lm_head_paired-<device-slug>-<YYYYMMDD>.json (device, versions,
commit, command, shape, every round's times).
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_lm_head as B  # noqa: E402  (the builders and inputs)
import record  # noqa: E402  (device, versions and commit, as every results file records them)

SUITES = {
    "ce fwd+bwd": (lambda impl, inp: B._build_ce_fwd_bwd(impl, inp),
                   ["fused", "torch_compile", "cce", "torch_native", "torch_eager", "gemm3"]),
    "logp fwd+bwd": (lambda impl, inp: B._build_logprobs_fwd_bwd(impl, inp, False),
                     ["fused", "fused_loss", "torch_compile", "torch_eager", "gemm3"]),
    "logp+H fwd+bwd": (lambda impl, inp: B._build_logprobs_fwd_bwd(impl, inp, True),
                       ["fused", "fused_loss", "torch_compile", "torch_eager", "gemm3"]),
}


def _available(impl: str) -> bool:
    if impl == "cce":
        try:
            B._cce_function()
        except Exception:  # noqa: BLE001 - any import failure means: not available here
            return False
    if impl == "torch_native":
        return hasattr(torch.nn, "LinearCrossEntropyOptions")
    return True


def run_suite(name: str, shape, rounds: int, only: set[str] | None = None) -> dict:
    builder, impls = SUITES[name]
    impls = [i for i in impls if _available(i) and (only is None or i in only)]
    if "fused" not in impls:
        raise SystemExit(f"compare_interleaved: {name}: the ratios need 'fused' among the implementations")
    T, H, V = shape
    runs = {}
    for impl in impls:  # separate inputs per impl (builders add buffers to them), all from seed 0
        inp = B._make_inputs(T, H, V, grad=True)
        run = builder(impl, inp)
        for _ in range(2):  # warm-up; the first call compiles the compiled peers
            run()
            B._sync()
        runs[impl] = run
    times = {impl: [] for impl in impls}
    for _ in range(rounds):
        for impl in impls:
            gc.collect()
            start = time.perf_counter()
            runs[impl]()
            B._sync()
            times[impl].append((time.perf_counter() - start) * 1e3)
    ratios = {}
    for impl in impls:
        if impl == "fused":
            continue
        per_round = [f / o for f, o in zip(times["fused"], times[impl])]
        ratios[f"fused/{impl}"] = per_round
        if "fused_loss" in times and impl != "fused_loss":
            ratios[f"fused_loss/{impl}"] = [f / o for f, o in zip(times["fused_loss"], times[impl])]
    runs.clear()
    B._free()
    return {"suite": name, "T": T, "H": H, "V": V, "times_ms": times, "ratios": ratios}


def summary_lines(result: dict) -> list[str]:
    lines = [f"{result['suite']}  T={result['T']} H={result['H']} V={result['V']}"]
    for impl, ts in result["times_ms"].items():
        lines.append(f"  {impl:<14} median {statistics.median(ts):8.1f} ms   min {min(ts):8.1f} ms")
    for key, rs in result["ratios"].items():
        lines.append(f"  {key:<26} per-round ratio median {statistics.median(rs):.3f}  "
                     f"[{min(rs):.3f}, {max(rs):.3f}]")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="4096,512,32768", help="T,H,V")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--suites", default=",".join(SUITES), help="comma-separated: " + ", ".join(SUITES))
    parser.add_argument("--impls", default="", help="comma-separated subset of each suite's implementations")
    parser.add_argument("--out", default=None, help="auto | PATH (default: print only)")
    args = parser.parse_args(argv)
    shape = tuple(int(x) for x in args.shape.split(","))
    started = dt.datetime.now(dt.timezone.utc)
    results = []
    for name in args.suites.split(","):
        only = {i.strip() for i in args.impls.split(",") if i.strip()} or None
        results.append(run_suite(name.strip(), shape, args.rounds, only))
        print("\n".join(summary_lines(results[-1])), flush=True)
    if args.out:
        from redone_fast.info import cpu_model

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{cpu_model()} ({cores} cores)"
        slug = record._slug(device) if torch.cuda.is_available() else f"cpu-{record._slug(cpu_model())}-{cores}c"
        if args.out == "auto":
            path = record.new_results_path(f"lm_head_paired-{slug}-{started:%Y%m%d}")
        else:
            path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"suite": "lm_head_paired", "date_utc": started.isoformat(), "command": " ".join(sys.argv),
                   "device": device, "threads": torch.get_num_threads(), "dtype": str(B.DTYPE),
                   "versions": {lib: record._version(lib) for lib in ("torch", "triton", "cut-cross-entropy")},
                   "git_commit": record._git("rev-parse", "HEAD"),
                   "git_dirty": bool(record._git("status", "--porcelain")),
                   "rounds": args.rounds, "results": results}
        path.write_text(json.dumps(payload, indent=1))
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
