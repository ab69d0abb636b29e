"""The learning tests of the RL stage on the bundled tiny model, each under half a minute on 2 CPU cores.

Both score the bundled query_relevance prompts (grade a query-note pair 0-3) with a reward the base model
meets about half the time (the grade is low, or high): a preference it can sample, so a working DAPO stage
must raise the reward of all sampled answers within a few rollouts. They test the machinery, not the world:
on the first bundled base (the plain world) the exact-match rewards did not rise beyond their noise in 16
rollouts (0.27 -> 0.365 over the first / last three rollouts with one sampling stream, 0.27 -> 0.27 with
another); the pipeline's stage 1 measures the shipped world's own rewards (README).
- on-policy (the tiny preset: one update per rollout); it also checks what a step logs;
- off-policy (the paper's setting: 4 updates per rollout, so updates 2-4 train on answers an older policy
  sampled and the clip is active): each rollout's first update is exactly on-policy (ratio 1: the old
  log-probs are taken before any update) and the later ones clip.
"""
import json

from redone_fast.loop import LoopSettings, read_metrics
from redone_fast.loop.optim import OptimConfig
from redone_fast.stages.rl import run_rl
from redone_fast.tiny import data_path
from small_rl import SMALL_FLAGS, small_rl_config

LOW_GRADE = {"name": "regex", "params": {"pattern": "(?s).*[01]"}}
HIGH_GRADE = {"name": "regex", "params": {"pattern": "(?s).*[23]"}}


def _relabelled_prompts(path, task: str, reward: dict) -> str:
    """The bundled RL prompts of `task`, scored by `reward` instead of their own."""
    with open(path, "w") as out:
        for file in [str(data_path("rl"))]:
            for line in open(file):
                record = json.loads(line)
                if record["task"] == task:
                    out.write(json.dumps(record | {"reward": reward}) + "\n")
    return str(path)


def test_on_policy_dapo_run_raises_the_reward(dist_ctx, tmp_path):
    rollouts = 8
    data = _relabelled_prompts(tmp_path / "high_grade.jsonl", "query_relevance", HIGH_GRADE)
    cfg = small_rl_config(train_files=[data], rollout_steps=rollouts, export=False,
                          loop=LoopSettings(checkpoint_every=4),
                          optim=OptimConfig(lr=1e-3, weight_decay=0.0, schedule="constant", warmup_steps=0))
    summary = run_rl(cfg, tmp_path / "run")
    assert summary["status"] == "finished" and summary["rollouts"] == rollouts
    rows = [r for r in read_metrics(tmp_path / "run") if "reward" in r]
    assert len(rows) == rollouts
    # Measured: 0.47 on the first rollout (before any update), 0.96 by the fourth, 1.0 by the eighth.
    sampled = [r["reward_generated"] for r in rows]
    assert sampled[-1] >= sampled[0] + 0.25, [round(x, 3) for x in sampled]
    row = next(r for r in reversed(rows) if not r["idle_step"])  # an idle step (no group kept) logs no update
    for key in ("reward/query_relevance", "accuracy/query_relevance", "reward/sns", "response_length_mean",
                "response_length_max", "truncated_share", "clip_frac_high", "clip_frac_low", "approx_kl", "entropy",
                "groups_dropped", "groups_kept", "generate_s", "reward_s", "old_logprob_s", "update_s",
                "generate_tokens_per_s", "tokens_per_s", "reward_errors/query_relevance", "reward_generated",
                "signal_share", "idle_updates", "rollout_k3", "rollout_abs_delta_max"):
        assert key in row, key
    assert row["groups_kept"] == cfg.prompts_per_step or row["generation_rounds"] == cfg.max_refill_rounds + 1
    assert 0 < row["entropy"] and row["reward_errors/query_relevance"] == 0


def test_off_policy_dapo_run_raises_the_reward_and_clips(dist_ctx, tmp_path):
    updates, rollouts = 4, 6
    data = _relabelled_prompts(tmp_path / "low_grade.jsonl", "query_relevance", LOW_GRADE)
    cfg = small_rl_config(train_files=[data], rollout_steps=rollouts, updates_per_rollout=updates,
                          export=False, loop=LoopSettings(checkpoint_every=3),
                          optim=OptimConfig(lr=5e-4, weight_decay=0.0, schedule="constant", warmup_steps=0))
    summary = run_rl(cfg, tmp_path / "run")
    assert summary["status"] == "finished" and summary["step"] == updates * rollouts
    rows = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, updates * rollouts + 1))
    rollout_rows = [r for r in rows if "reward" in r]
    assert [r["step"] for r in rollout_rows] == list(range(1, updates * rollouts + 1, updates))
    # Measured: 0.47 on the first rollout (before any update), 0.96 by the fourth, 0.99 by the sixth.
    sampled = [r["reward_generated"] for r in rollout_rows]
    assert sampled[-1] >= sampled[0] + 0.25, [round(x, 3) for x in sampled]
    for r in rollout_rows:  # each rollout's first update: the policy that sampled is the policy trained
        assert r["approx_kl"] < 1e-6 and r["clip_frac_high"] == 0 and r["clip_frac_low"] == 0, r
    later = [r for r in rows if "reward" not in r]
    assert all(r["approx_kl"] > 0 for r in later)
    assert sum(r["clip_frac_high"] + r["clip_frac_low"] > 0 for r in later) >= len(later) // 2
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints[-1] == f"step_{updates * rollouts:08d}"  # rollout boundaries only


def test_rl_stage_runs_under_torchrun_on_two_processes(tmp_path):
    """Each rank generates and scores half of the prompts; the groups are gathered so every rank packs the
    same mini-batches (dynamic sampling decides identically everywhere); the export is written once."""
    import json
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "redone_fast.stages.rl", "--run-dir", str(tmp_path), "--tasks", "hashtag_choice",
                           *SMALL_FLAGS, "--rollout-steps", "2", "--updates-per-rollout", "2"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((tmp_path / "rl_result.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "finished" and summary["step"] == 4
    rows = [r for r in read_metrics(tmp_path) if "reward" in r]
    assert len(rows) == 2 and all(r["groups_kept"] == 16 for r in rows)
    assert (tmp_path / "export" / "model.safetensors").is_file()
