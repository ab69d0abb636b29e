"""The learning test of the RL stage: on the bundled tiny model, a short DAPO run on a simple bundled task
(hashtag_choice: pick the hashtag that fits a note, exact-match reward) raises the mean reward of the
sampled answers by a clear margin, in about two minutes on 2 CPU cores. It also checks what a step logs."""
import dataclasses

from redone_fast.loop import read_metrics
from redone_fast.loop.optim import OptimConfig
from redone_fast.stages.rl import preset, run_rl

ROLLOUTS = 16


def test_short_dapo_run_raises_the_reward(dist_ctx, tmp_path):
    cfg = dataclasses.replace(preset("tiny"), tasks=["hashtag_choice"], rollout_steps=ROLLOUTS, export=False,
                              checkpoint_every_rollouts=8,
                              optim=OptimConfig(lr=2e-3, weight_decay=0.0, schedule="constant", warmup_steps=0))
    summary = run_rl(cfg, tmp_path)
    assert summary["status"] == "finished" and summary["rollouts"] == ROLLOUTS
    rows = [r for r in read_metrics(tmp_path) if "reward" in r]
    assert len(rows) == ROLLOUTS
    first = sum(r["reward"] for r in rows[:3]) / 3
    last = sum(r["reward"] for r in rows[-3:]) / 3
    # Measured here: about 0.33 over the first three rollouts and 0.6 over the last three.
    assert last >= first + 0.12, [round(r["reward"], 3) for r in rows]
    row = rows[-1]
    for key in ("reward/hashtag_choice", "accuracy/hashtag_choice", "reward/sns", "response_length_mean",
                "response_length_max", "truncated_share", "clip_frac_high", "clip_frac_low", "approx_kl", "entropy",
                "groups_dropped", "groups_kept", "generate_s", "reward_s", "old_logprob_s", "update_s",
                "generate_tokens_per_s", "tokens_per_s", "reward_errors/hashtag_choice"):
        assert key in row, key
    assert row["groups_kept"] == cfg.prompts_per_step
    assert 0 < row["entropy"] and row["reward_errors/hashtag_choice"] == 0
