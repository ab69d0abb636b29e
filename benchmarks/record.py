"""Run the LM-head microbenchmarks and record the results.

    python benchmarks/record.py [pytest args...]        e.g.  -k "not torch_compile"

Runs `pytest benchmarks/bench_lm_head.py` (in a child process, extra arguments passed through) with
--benchmark-json and --junitxml to a temporary directory, then writes
    benchmarks/results/lm_head-<device-slug>-<YYYYMMDD>.json
(UTC date; a later run on the same day and device gets -2, -3, ... appended, never replacing one)
holding the device, library versions, git commit, the command, one row per case, the fused/baseline
ratios per (op, shape), the spec's targets where their shape was run, and the skipped or failed cases
with their reasons.
A compact table is printed at the end. The exit status is pytest's.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE = "benchmarks/bench_lm_head.py"
# REDONE_BENCH_RESULTS_DIR: write there instead (benchmarks/gpu_check.sh points it under $OUT).
RESULTS_DIR = Path(os.environ.get("REDONE_BENCH_RESULTS_DIR") or ROOT / "benchmarks" / "results")
GIB = 1 << 30

# The gemm floor each op is compared against (time of fused / time of the floor).
# (op whose case holds the floor, floor impl); the entropy variants share their op's floor.
GEMM_BASELINE = {
    "linear_cross_entropy": ("linear_cross_entropy", "gemm3"),
    "linear_logprobs_nograd": ("linear_logprobs_nograd", "gemm1"),
    "linear_logprobs_entropy_nograd": ("linear_logprobs_nograd", "gemm1"),
    "linear_logprobs_fwd_bwd": ("linear_logprobs_fwd_bwd", "gemm3"),
    "linear_logprobs_entropy_fwd_bwd": ("linear_logprobs_fwd_bwd", "gemm3"),
}
OP_SHORT = {
    "linear_cross_entropy": "ce fwd+bwd",
    "linear_logprobs_nograd": "logp nograd",
    "linear_logprobs_entropy_nograd": "logp+H nograd",
    "linear_logprobs_fwd_bwd": "logp fwd+bwd",
    "linear_logprobs_entropy_fwd_bwd": "logp+H fw+bw",
}
# The spec's targets, all at one shape on GPU in bf16.
TARGET_SHAPE = {"T": 16384, "H": 2560, "V": 151936, "dtype": "bfloat16", "device": "cuda"}
# Issue 16's CPU targets, at the one CPU shape where the compiled peers run by default, fp32.
CPU_TARGET_SHAPE = {"T": 4096, "H": 512, "V": 32768, "dtype": "float32", "device": "cpu"}
ENV_KEYS = ("REDONE_BENCH_", "REDONE_FAST_", "TRITON_", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "PYTORCH_")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    # Read-only queries; --no-optional-locks keeps `status` from refreshing the index.
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", *args], cwd=ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.rstrip("\n")  # not strip(): porcelain lines start with a meaningful space


def new_results_path(stem: str) -> Path:
    """RESULTS_DIR / `<stem>.json`, or `<stem>-2.json`, `-3`, ... when taken: a run never replaces an earlier one
    (a second run of the day, a GPU run split with -k). Every benchmark script names its files through this."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path, suffix = RESULTS_DIR / f"{stem}.json", 2
    while path.exists():
        path, suffix = RESULTS_DIR / f"{stem}-{suffix}.json", suffix + 1
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def _skips_and_failures(junit_path: Path) -> tuple[list, list]:
    skipped, failed = [], []
    if not junit_path.exists():
        return skipped, failed
    for case in ET.parse(junit_path).getroot().iter("testcase"):
        name = case.get("name")
        for child in case:
            message = child.get("message") or ""
            if not message:
                lines = (child.text or "").strip().splitlines()
                message = lines[-1] if lines else ""
            if child.tag == "skipped":
                skipped.append({"case": name, "reason": re.sub(r"^Skipped: ", "", message)})
            elif child.tag in ("failure", "error"):
                failed.append({"case": name, "kind": child.tag, "message": message[:2000]})
    return skipped, failed


def _rows(bench_json: dict) -> list[dict]:
    rows = []
    for bench in bench_json.get("benchmarks", []):
        info, stats = bench.get("extra_info", {}), bench["stats"]
        median_s = stats["median"]
        peak = info.get("peak_extra_bytes")
        out_bytes = info.get("output_bytes")
        rows.append({
            "case": bench["name"],
            "op": info.get("op"),
            "impl": info.get("impl"),
            "T": info.get("T"), "H": info.get("H"), "V": info.get("V"),
            "shapes": {"hidden": [info.get("T"), info.get("H")], "weight": [info.get("V"), info.get("H")],
                       "target": [info.get("T")]},
            "dtype": info.get("dtype"),
            "device": info.get("device"),
            "median_ms": median_s * 1e3,
            "min_ms": stats["min"] * 1e3,
            "max_ms": stats["max"] * 1e3,
            "mean_ms": stats["mean"] * 1e3,
            "stddev_ms": stats["stddev"] * 1e3,
            "rounds": stats["rounds"],
            "flops": info.get("flops"),
            "tflops": info["flops"] / median_s / 1e12 if info.get("flops") and median_s > 0 else None,
            "peak_extra_bytes": peak,
            "output_bytes": out_bytes,
            "working_bytes": peak - out_bytes if peak is not None and out_bytes is not None else None,
            "memory_method": info.get("memory_method"),
            "backend": info.get("backend"),
            "chunk_bytes": info.get("chunk_bytes"),
            "ignored_fraction": info.get("ignored_fraction"),
        })
    rows.sort(key=lambda r: (r["op"] or "", r["T"] or 0, r["H"] or 0, r["V"] or 0, r["impl"] or ""))
    return rows


def _ratio(a, b):
    return a / b if a is not None and b else None


def _ratios(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        groups.setdefault((row["op"], row["T"], row["H"], row["V"], row["dtype"]), {})[row["impl"]] = row
    out = []
    for (op, T, H, V, dtype), impls in groups.items():
        fused = impls.get("fused")
        if fused is None:
            continue
        entry = {"op": op, "T": T, "H": H, "V": V, "dtype": dtype}
        floor_op, floor_impl = GEMM_BASELINE.get(op, (None, None))
        floor = groups.get((floor_op, T, H, V, dtype), {}).get(floor_impl)
        if floor is not None:
            entry["gemm_baseline"] = floor_impl
            entry["fused_over_gemm"] = _ratio(fused["median_ms"], floor["median_ms"])
        if "liger" in impls:
            entry["fused_over_liger"] = _ratio(fused["median_ms"], impls["liger"]["median_ms"])
        for other in ("torch_eager", "torch_compile", "cce", "torch_native"):
            if other in impls:
                entry[f"fused_over_{other}"] = _ratio(fused["median_ms"], impls[other]["median_ms"])
                entry[f"peak_fused_over_{other}"] = _ratio(fused["peak_extra_bytes"], impls[other]["peak_extra_bytes"])
        fused_loss = impls.get("fused_loss")  # linear_logprob_loss: the gradient formed in the forward
        if fused_loss is not None:
            for other, row in (("gemm", floor), ("torch_compile", impls.get("torch_compile")),
                               ("torch_eager", impls.get("torch_eager")), ("fused", fused)):
                if row is not None:
                    entry[f"fused_loss_over_{other}"] = _ratio(fused_loss["median_ms"], row["median_ms"])
        out.append(entry)
    return out


def _targets(rows: list[dict], ratios: list[dict]) -> list[dict]:
    def at_target(item):
        return all(item.get(k) == v for k, v in TARGET_SHAPE.items() if k != "device")

    on_target_device = any(r["device"] == TARGET_SHAPE["device"] and at_target(r) for r in rows)

    def target_ratio(op):
        return next((r for r in ratios if r["op"] == op and at_target(r)), {}) if on_target_device else {}

    ce = target_ratio("linear_cross_entropy")
    lp = target_ratio("linear_logprobs_nograd")
    ce_fused = next((r for r in rows if r["op"] == "linear_cross_entropy" and r["impl"] == "fused"
                     and r["device"] == "cuda" and at_target(r)), None)

    def check(name, value, threshold, better):
        met = None if value is None else (value <= threshold if better == "<=" else value >= threshold)
        return {"target": name, "value": value, "threshold": f"{better} {threshold}", "met": met}

    cpu_checks = _cpu_targets(rows, ratios, check)
    liger_speedup = 1.0 / ce["fused_over_liger"] if ce.get("fused_over_liger") else None
    peak_gib = ce_fused["peak_extra_bytes"] / GIB if ce_fused and ce_fused["peak_extra_bytes"] is not None else None
    working_gib = ce_fused["working_bytes"] / GIB if ce_fused and ce_fused["working_bytes"] is not None else None
    return [
        check("linear_cross_entropy fwd+bwd time / gemm3 time", ce.get("fused_over_gemm"), 1.25, "<="),
        check("liger time / linear_cross_entropy fwd+bwd time", liger_speedup, 1.3, ">="),
        check("linear_cross_entropy fwd+bwd peak extra memory, GiB (incl. returned grads)", peak_gib, 1.5, "<="),
        check("linear_cross_entropy fwd+bwd peak extra memory minus returned grads, GiB (informational)",
              working_gib, 1.5, "<="),
        check("linear_logprobs no-grad time / gemm1 time", lp.get("fused_over_gemm"), 1.15, "<="),
    ] + cpu_checks


def _cpu_targets(rows, ratios, check) -> list[dict]:
    """Issue 16 on CPU: each fused op within 1.15x of its GEMM floor and faster than torch.compile of the
    eager code; the cross-entropy's peak extra memory no larger than torch's native chunked op's."""
    def at_shape(item):
        return all(item.get(k) == v for k, v in CPU_TARGET_SHAPE.items() if k != "device")

    if not any(r["device"] == "cpu" and at_shape(r) for r in rows):
        return []
    checks = []
    for op in ("linear_cross_entropy", "linear_logprobs_nograd", "linear_logprobs_entropy_nograd",
               "linear_logprobs_fwd_bwd", "linear_logprobs_entropy_fwd_bwd"):
        r = next((x for x in ratios if x["op"] == op and at_shape(x)), {})
        name = f"cpu {OP_SHORT[op]} T=4096 H=512 V=32768 fp32"
        checks.append(check(f"{name}: fused time / {r.get('gemm_baseline', 'gemm')} time", r.get("fused_over_gemm"),
                            1.15, "<="))
        checks.append(check(f"{name}: fused time / torch_compile time", r.get("fused_over_torch_compile"), 1.0, "<="))
        if "fused_loss_over_gemm" in r:  # linear_logprob_loss, the route the RL objective takes
            checks.append(check(f"{name}: fused_loss time / gemm3 time", r["fused_loss_over_gemm"], 1.15, "<="))
            checks.append(check(f"{name}: fused_loss time / torch_compile time", r.get("fused_loss_over_torch_compile"),
                                1.0, "<="))
        if op == "linear_cross_entropy":
            checks.append(check(f"{name}: fused peak extra memory / torch_native's",
                                r.get("peak_fused_over_torch_native"), 1.0, "<="))
    return checks


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _print_table(rows, ratios, targets, skipped, failed, out_path):
    ratio_by_key = {(r["op"], r["T"], r["H"], r["V"], r["dtype"]): r for r in ratios}
    header = f"{'op':<13} {'impl':<13} {'T':>6} {'H':>5} {'V':>7} {'dtype':<8} {'median ms':>10} {'min ms':>10} " \
             f"{'max ms':>10} {'TFLOP/s':>8} {'peak MiB':>9} {'fused/x':>8}"
    print("\n" + header)
    print("-" * len(header))
    for r in rows:
        ratio = None
        if r["impl"] != "fused":
            fused = next((x for x in rows if x["impl"] == "fused" and (x["op"], x["T"], x["H"], x["V"], x["dtype"])
                          == (r["op"], r["T"], r["H"], r["V"], r["dtype"])), None)
            ratio = _ratio(fused["median_ms"], r["median_ms"]) if fused else None
        peak = r["peak_extra_bytes"] / (1 << 20) if r["peak_extra_bytes"] is not None else None
        print(f"{OP_SHORT.get(r['op'], r['op']):<13} {r['impl']:<13} {r['T']:>6} {r['H']:>5} {r['V']:>7} "
              f"{r['dtype']:<8} {r['median_ms']:>10.3f} {r['min_ms']:>10.3f} {r['max_ms']:>10.3f} "
              f"{_fmt(r['tflops'], '.3f'):>8} {_fmt(peak, '.1f'):>9} {_fmt(ratio, '.2f'):>8}")
    print("(fused/x: median time of fused divided by this row's; < 1 means fused is faster)")
    if ratios:
        print("\nper (op, shape): fused / gemm floor, fused / each peer (time; peak memory vs eager and native)")
        for key, r in ratio_by_key.items():
            print(f"  {OP_SHORT.get(r['op'], r['op']):<13} T={r['T']} H={r['H']} V={r['V']} {r['dtype']}: "
                  f"gemm {_fmt(r.get('fused_over_gemm'), '.2f')}, liger {_fmt(r.get('fused_over_liger'), '.2f')}, "
                  f"eager {_fmt(r.get('fused_over_torch_eager'), '.2f')}, "
                  f"compile {_fmt(r.get('fused_over_torch_compile'), '.2f')}, "
                  f"cce {_fmt(r.get('fused_over_cce'), '.2f')}, "
                  f"native {_fmt(r.get('fused_over_torch_native'), '.2f')}; "
                  f"peak vs eager {_fmt(r.get('peak_fused_over_torch_eager'), '.3f')}, "
                  f"vs native {_fmt(r.get('peak_fused_over_torch_native'), '.3f')}")
    print("\nspec targets (T=16384 H=2560 V=151936 bf16 on CUDA):")
    for t in targets:
        status = "not measured" if t["met"] is None else ("met" if t["met"] else "NOT met")
        print(f"  {t['target']}: {_fmt(t['value'], '.3f')} (want {t['threshold']}): {status}")
    if skipped:
        reasons: dict[str, int] = {}
        for s in skipped:
            reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
        print(f"\nskipped {len(skipped)} case(s):")
        for reason, count in reasons.items():
            print(f"  [{count}] {reason}")
    if failed:
        print(f"\nFAILED {len(failed)} case(s):")
        for f in failed:
            print(f"  {f['case']}: {f['kind']}: {f['message'][:200]}")
    print(f"\nresults: {out_path}")


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="redone-bench-") as tmp:
        json_path, junit_path = Path(tmp) / "bench.json", Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", MODULE, "-q", "-rs", "--benchmark-columns=min,median,max",
               f"--benchmark-json={json_path}", f"--junitxml={junit_path}", *argv]
        started = dt.datetime.now(dt.timezone.utc)
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        if not json_path.exists():
            print(f"record.py: pytest wrote no benchmark JSON (exit status {rc}); nothing recorded", file=sys.stderr)
            return rc or 1
        bench_json = json.loads(json_path.read_text())
        skipped, failed = _skips_and_failures(junit_path)

    machine = bench_json.get("machine_info", {})
    dev = machine.get("redone_bench", {})
    if dev.get("device_type") == "cuda":
        slug = _slug(dev.get("device_name", "cuda"))
    else:
        slug = f"cpu-{_slug(dev.get('cpu_model', platform.machine()))}-{dev.get('cpu_usable', os.cpu_count())}c"
    rows = _rows(bench_json)
    ratios = _ratios(rows)
    targets = _targets(rows, ratios)
    commit = _git("rev-parse", "HEAD")
    dirty_lines = (_git("status", "--porcelain") or "").splitlines()
    record = {
        "suite": "lm_head",
        "date_utc": started.isoformat(timespec="seconds"),
        "device": {
            "type": dev.get("device_type"),
            "name": dev.get("device_name"),
            "capability": dev.get("device_capability"),
            "memory_bytes": dev.get("device_memory_bytes"),
            "cpu_model": dev.get("cpu_model"),
            "cpu_count": dev.get("cpu_count"),
            "cpu_usable": dev.get("cpu_usable"),
            "torch_num_threads": dev.get("torch_num_threads"),
        },
        "versions": {
            "python": machine.get("python_version") or platform.python_version(),
            "torch": dev.get("torch") or _version("torch"),
            "torch_cuda": dev.get("torch_cuda"),
            "triton": dev.get("triton") if "triton" in dev else _version("triton"),
            "transformers": _version("transformers"),
            "liger_kernel": _version("liger-kernel"),
            "pytest_benchmark": _version("pytest-benchmark"),
        },
        "git": {
            "commit": commit,
            "dirty": bool(dirty_lines) if commit is not None else None,
            "dirty_paths": [line[3:] for line in dirty_lines][:100],
        },
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "cwd": os.getcwd(),
        "pytest_command": shlex.join(cmd),
        "pytest_exit_status": rc,
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_KEYS)},
        "notes": [
            "median/min/max_ms: wall time of one call, CUDA synchronised inside the timed function.",
            "tflops: flops / median time; flops = 6*T*H*V for forward+backward, 2*T*H*V for forward "
            "(model flops: the fused logprobs backward recomputes the logits, 8*T*H*V executed).",
            "peak_extra_bytes: peak memory during one separate untimed call minus memory held before it; "
            "includes the returned outputs (output_bytes: loss/logp and the gradients); working_bytes = "
            "peak_extra_bytes - output_bytes. memory_method says how it was measured.",
            "gemm3's dlogits [T, V] buffer is allocated outside the timed region and before the memory "
            "baseline: neither its time nor its bytes are counted.",
            "fused_over_*: time of fused / time of the other implementation (< 1: fused is faster).",
        ],
        "rows": rows,
        "ratios": ratios,
        "targets": targets,
        "skipped": skipped,
        "failed": failed,
    }
    out_path = new_results_path(f"lm_head-{slug}-{started.strftime('%Y%m%d')}")
    out_path.write_text(json.dumps(record, indent=1) + "\n")
    shown = out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path
    _print_table(rows, ratios, targets, skipped, failed, shown)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
