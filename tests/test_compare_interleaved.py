"""benchmarks/compare_interleaved.py at a tiny shape: every implementation timed in every round, the
per-round ratios derived from those times, and the results file's fields."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_paired_rounds_and_results_file(tmp_path):
    out = tmp_path / "paired.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare_interleaved.py"), "--shape", "64,32,500", "--rounds", "3",
         "--suites", "ce fwd+bwd,logp+H fwd+bwd", "--impls", "fused,fused_loss,torch_eager,gemm3", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["suite"] == "lm_head_paired" and data["rounds"] == 3 and data["git_commit"]
    ce, logp = data["results"]
    assert (ce["T"], ce["H"], ce["V"]) == (64, 32, 500)
    assert set(ce["times_ms"]) == {"fused", "torch_eager", "gemm3"}  # fused_loss is not a CE implementation
    assert set(logp["times_ms"]) == {"fused", "fused_loss", "torch_eager", "gemm3"}
    for result in (ce, logp):
        assert all(len(t) == 3 and min(t) > 0 for t in result["times_ms"].values())
        times = result["times_ms"]
        for key, ratios in result["ratios"].items():
            num, den = key.split("/")
            assert ratios == [a / b for a, b in zip(times[num], times[den])]
    assert "fused_loss/gemm3" in logp["ratios"] and "fused/fused_loss" in logp["ratios"]
