"""The report of benchmarks/gpu_check.sh: one JSON from what its steps left under OUT.

    python benchmarks/gpu_check_report.py OUT [--dry]

Reads OUT/steps.jsonl (each step's status and time), the JUnit files of the test steps, OUT/aot_check.json
(the compile report) and the benchmark files under OUT/bench, and writes OUT/gpu_check.json with the
device, library versions, git commit, UTC date, every step, the test counts and failures, the compile
summary with each kernel's highest register count, and the benchmark rows (shapes, times, memory) and
ratios. Prints a short summary. Exit status 1 when a step that ran did not succeed, else 0.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import record  # benchmarks/record.py: the same git, version and JUnit helpers as the LM-head results

RUN_STEPS = ("ok", "failed", "timeout")


def _device() -> dict:
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {"type": "cuda", "name": props.name, "capability": list(torch.cuda.get_device_capability(0)),
                "memory_bytes": props.total_memory, "count": torch.cuda.device_count()}
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else None
    return {"type": "cpu", "name": cpu, "cores": len(os.sched_getaffinity(0))}


def _tests(out: Path) -> dict:
    results = {}
    for junit in sorted(out.glob("*.xml")):
        root = ET.parse(junit).getroot()
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors",
                                                                          "skipped")}
        counts["seconds"] = round(sum(float(s.get("time", 0.0)) for s in suites), 1)
        skipped, failed = record._skips_and_failures(junit)
        results[junit.stem] = {**counts, "failed": failed, "skip_reasons": sorted({s["reason"] for s in skipped})}
    return results


def _aot(out: Path) -> dict | None:
    path = out / "aot_check.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    per_kernel = {}
    for result in data["results"]:
        kernel = result["label"].split()[0]
        per_kernel[kernel] = max(per_kernel.get(kernel, 0), result.get("registers") or 0)
    return {**data["summary"], "max_registers_per_kernel": per_kernel,
            "not_ok": [f"{r['arch']} {r['label']}: {r['error']}" for r in data["results"] if not r["ok"]]}


def _pytest_benchmark_rows(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    return [{"case": b["name"], "median_ms": b["stats"]["median"] * 1e3, "min_ms": b["stats"]["min"] * 1e3,
             "rounds": b["stats"]["rounds"], **b.get("extra_info", {})} for b in data.get("benchmarks", [])]


def _bench(out: Path) -> dict:
    bench = {}
    for index, path in enumerate(sorted((out / "bench").glob("lm_head-*.json"),
                                                    key=lambda p: p.stat().st_mtime)):
        data = json.loads(path.read_text())  # the first file: every impl but torch.compile; a second: it
        bench["lm_head" if index == 0 else f"lm_head_{index + 1}"] = {
            key: data.get(key) for key in ("rows", "ratios", "targets", "skipped", "failed", "pytest_exit_status")}
    for name in ("rows", "group_advantages"):
        path = out / "bench" / f"{name}.json"
        if path.exists():
            bench[name] = _pytest_benchmark_rows(path)
    return bench


def main(argv: list[str]) -> int:
    import torch

    out = Path(argv[0]).resolve()
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line.strip()]
    commit = record._git("rev-parse", "HEAD")
    report = {
        "suite": "gpu_check",
        "mode": "dry" if "--dry" in argv else "gpu",
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": _device(),
        "versions": {dist: record._version(dist) for dist in ("torch", "triton", "transformers", "liger-kernel",
                                                               "pytest", "pytest-benchmark")}
        | {"python": platform.python_version(), "torch_cuda": torch.version.cuda},
        "git": {"commit": commit, "dirty_paths": [line[3:] for line in
                                                  (record._git("status", "--porcelain") or "").splitlines()]},
        "steps": steps,
        "tests": _tests(out),
        "aot_check": _aot(out),
        "bench": _bench(out),
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    bad = [s for s in steps if s["status"] in RUN_STEPS and s["status"] != "ok"]
    ran = [s for s in steps if s["status"] in RUN_STEPS]
    print(f"gpu_check: {report['mode']} run on {report['device']['name']}: {len(ran) - len(bad)}/{len(ran)} steps "
          f"ok, {len(steps) - len(ran)} skipped; report {out / 'gpu_check.json'}")
    for step in bad:
        print(f"gpu_check: step {step['step']} {step['status']} ({step['note']}): see {out / (step['step'] + '.log')}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
