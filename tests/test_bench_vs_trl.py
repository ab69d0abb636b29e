"""benchmarks/bench_vs_trl.py at a tiny size: the trainers' SFT losses agree on the same work, the RL
comparison runs both trainers on the same prompts, and the results JSON has its fields.

TRL is a benchmark-only dependency (the `bench` extra), which `make test` (and so CI) installs next to
`dev`; the test skips, saying why, only in an environment without it.
The harness runs in a child process: it sets one torch thread and creates a process group, neither of
which should leak into the other tests.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_vs_trl.py"
NO_TRL_EXIT = 3  # the script's exit status when trl / accelerate / datasets cannot be imported
STEPS = 3
PROMPTS, GROUP = 4, 4


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("vs_trl") / "vs_trl.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, str(SCRIPT), "all", "--steps", str(STEPS), "--warmup", "1", "--seeds", "0",
           "--batch-size", "8", "--prompts", str(PROMPTS), "--group-size", str(GROUP), "--max-completion", "8",
           "--overlong-buffer", "4", "--reward-window", "2", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode == NO_TRL_EXIT:
        pytest.skip("trl is not importable (a benchmark-only dependency: pip install -e '.[bench]', which "
                    f"make test does): {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text()), proc.stdout


def test_results_file_fields(result):
    data, _ = result
    for key in ("suite", "date_utc", "command", "device", "versions", "git", "threads", "config", "differences",
                "sft", "rl"):
        assert key in data, key
    assert data["suite"] == "vs_trl"
    assert data["device"]["cpu_model"] and data["device"]["cpu_count"] >= 1
    assert data["device"]["torch_num_threads"] == 1 and data["threads"]["OMP_NUM_THREADS"] == "1"
    for lib in ("python", "torch", "transformers", "trl", "accelerate", "datasets"):
        assert data["versions"][lib], lib
    assert "commit" in data["git"]
    assert "bench_vs_trl.py" in data["command"]
    assert set(data["differences"]) == {"sft", "rl"} and all(data["differences"].values())


def test_sft_losses_agree_on_the_same_work(result):
    sft = result[0]["sft"]
    assert set(sft["trainers"]) == {"ours", "trl", "hf"}
    shapes = sft["shapes"]
    assert shapes["steps"] == STEPS and len(shapes["per_step"]) == STEPS
    assert all(s["samples"] == 8 for s in shapes["per_step"])
    for name, t in sft["trainers"].items():
        assert len(t["losses"]) == STEPS and len(t["grad_norms"]) == STEPS, name
        assert len(t["step_times_s"]) == STEPS and t["timed_steps"] == STEPS - 1, name
        assert 0 < t["step_s"]["min"] <= t["step_s"]["mean"], name
        assert t["tokens_per_s"] > t["loss_tokens_per_s"] > 0, name
        assert t["normalisation"], name
    # padding is processed only by the padded trainer
    assert sft["trainers"]["hf"]["processed_tokens_per_s"] > sft["trainers"]["hf"]["tokens_per_s"]
    assert sft["trainers"]["ours"]["processed_tokens_per_s"] == sft["trainers"]["ours"]["tokens_per_s"]
    # our loss counts exactly the loss tokens the other trainers' labels carry
    assert sft["trainers"]["ours"]["loss_tokens_counted"] == [s["loss_tokens"] for s in shapes["per_step"]]
    agreement = sft["loss_agreement"]
    assert agreement["all_agree"]
    assert set(agreement["pairs"]) == {"ours_vs_trl", "ours_vs_hf", "trl_vs_hf"}
    for pair, a in agreement["pairs"].items():
        assert a["first_step_rel_diff"] < 1e-6, pair  # same weights, same batch: rounding only
        assert a["max_rel_diff"] <= 1e-5, pair
    assert all(sft["same_weight_decay_sets_as_ours"].values())
    for other in ("trl", "hf"):
        assert sft["ratios"][other]["tokens_per_s_ours_over_theirs"] > 0
        assert sft["trainers"][other]["optimizer"]["fused"] and sft["trainers"]["ours"]["optimizer"]["fused"]


def test_rl_both_trainers_on_the_same_prompts(result):
    rl = result[0]["rl"]
    assert set(rl["trainers"]) == {"ours", "trl"}
    assert rl["shapes"]["completions_per_step"] == PROMPTS * GROUP
    for name, t in rl["trainers"].items():
        run = t["per_seed"]["0"]
        assert len(run["steps"]) == STEPS, name
        for step in run["steps"]:
            assert step["completions"] == PROMPTS * GROUP, name
            assert step["generate_s"] > 0 and step["update_s"] > 0 and step["score_s"] > 0, name
            assert step["prepare_other_s"] >= 0, name
            assert step["step_s"] >= step["generate_s"] + step["score_s"] + step["update_s"], name
            assert 0.0 <= step["task_reward"] <= 1.0, name
            assert 0 < step["generated_tokens"] <= PROMPTS * GROUP * 8, name
        assert 0.0 <= run["task_reward_last_window"] <= 1.0, name
        assert t["step_s"]["mean"] > 0 and t["generated_tokens_per_s"] > 0, name
    assert rl["trainers"]["trl"]["per_seed"]["0"]["prompt_ids_match_ours"]
    assert rl["same_prompts_per_step"] == {"0": True}
    assert len(rl["trainers"]["ours"]["per_seed"]["0"]["prompt_sample_ids_per_step"]) == STEPS
    assert rl["ratios"]["trl"]["step_s_mean_ours_over_theirs"] > 0


def test_printed_summary(result):
    _, stdout = result
    assert "loss ours_vs_trl" in stdout and "ours/trl" in stdout and "results:" in stdout
