"""benchmarks/gpu_check.sh end to end on CPU in its dry mode, and its refusal to pretend without a GPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry mode is the CPU machine's run")
def test_dry_run_runs_the_cpu_steps_and_names_each_skipped_gpu_step(tmp_path):
    # aot is its own test (tests/test_aot_check.py); skipping it here keeps the suite ~35 s shorter.
    env = {**ENV, "OUT": str(tmp_path), "PYTHON": sys.executable, "GPU_CHECK_SKIP": "aot"}
    out = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["mode"] == "dry" and report["device"]["type"] == "cpu"
    assert report["git"]["commit"] and report["versions"]["torch"] == torch.__version__
    status = {step["step"]: step for step in report["steps"]}
    for gpu_only in ("build", "gpu_tests", "bench_gpu_shapes"):
        assert status[gpu_only]["status"] == "skipped" and "GPU-only" in status[gpu_only]["note"]
        assert f"gpu_check: {gpu_only} skipped: GPU-only" in out.stdout
    assert status["aot"]["status"] == "skipped" and "GPU_CHECK_SKIP" in status["aot"]["note"]
    for ran in ("env", "gpu_tests_collect", "bench_lm_head", "bench_rows"):
        assert status[ran]["status"] == "ok", status[ran]
    assert "5 tests collected" in (tmp_path / "gpu_tests_collect.log").read_text()
    lm_head = report["bench"]["lm_head"]
    impls = {row["impl"] for row in lm_head["rows"]}
    assert {"fused", "torch_eager", "gemm3", "gemm1"} <= impls
    assert all(row["median_ms"] > 0 and row["T"] == 128 and row["V"] == 333 for row in lm_head["rows"])
    assert any(row["op"] == "row_stats" and row["gb_per_s"] > 0 for row in report["bench"]["rows"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_and_without_dry_it_refuses(tmp_path):
    env = {**ENV, "OUT": str(tmp_path), "PYTHON": sys.executable}
    out = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert "no CUDA GPU" in out.stderr and "--dry" in out.stderr
    assert not (tmp_path / "gpu_check.json").exists()
