"""The rollout step's small functions (redone_fast/rl/source.py) on hand-made groups: no model, no engine."""
from __future__ import annotations

import dataclasses
import statistics

import pytest

from redone_fast.rl.config import RLConfig
from redone_fast.rl.source import Group, pack_mini_batches, sample_until_full, sequence_advantages, split_evenly


def _group(rewards, task_rewards=None, prompt=(1, 2, 3), response=(4, 5)):
    n = len(rewards)
    return Group(sample=None, prompt_ids=list(prompt), responses=[list(response) for _ in range(n)],
                 truncated=[False] * n, task_rewards=list(task_rewards if task_rewards is not None else rewards),
                 rewards=list(rewards), errors=[None] * n, rollout_logprobs=[[-0.5] * len(response)] * n)


@pytest.mark.parametrize("count, parts", [(0, 3), (2, 4), (7, 3), (12, 4), (13, 1)])
def test_split_evenly_covers_everything_in_order_with_sizes_one_apart(count, parts):
    ranges = split_evenly(count, parts)
    assert len(ranges) == parts
    assert [i for r in ranges for i in r] == list(range(count))
    sizes = [len(r) for r in ranges]
    assert max(sizes) - min(sizes) <= 1


def _rounds(cfg, round_groups):
    """sample_until_full over scripted rounds; returns its Rounds and how many prompts each round asked for."""
    asked, script = [], iter(round_groups)

    def take(n):
        asked.append(n)
        return [object()] * n

    def generate(samples):
        return next(script), {"generate_s": 1.0}

    return sample_until_full(take, generate, cfg), asked


def test_dynamic_sampling_refills_until_the_batch_is_full():
    cfg = RLConfig(prompts_per_step=3, max_refill_rounds=3)
    flat, mixed = _group([1.0, 1.0]), _group([0.0, 1.0])
    rounds, asked = _rounds(cfg, [[flat, mixed, flat], [flat, flat, mixed], [mixed, mixed, mixed], [flat]])
    assert asked == [3, 3, 3]  # full rounds of new prompts, as DAPO's reference; none once the batch is full
    assert rounds.rounds == 3 and rounds.dropped == 4
    assert len(rounds.kept) == 3 and all(g is mixed for g in rounds.kept)  # round 3's surplus (one) not kept
    assert len(rounds.generated) == 9 and rounds.stats["generate_s"] == 3.0
    assert rounds.last_round == [mixed, mixed, mixed]


def test_dynamic_sampling_stops_after_the_refill_rounds_and_filters_on_task_rewards():
    cfg = RLConfig(prompts_per_step=2, max_refill_rounds=1)
    shaped_only = _group([1.0, 0.9], task_rewards=[1.0, 1.0])  # differs only after the overlong penalty
    rounds, asked = _rounds(cfg, [[shaped_only, shaped_only], [shaped_only, shaped_only], [_group([0, 1])] * 2])
    assert asked == [2, 2] and rounds.kept == [] and rounds.dropped == 4
    rounds, _ = _rounds(dataclasses.replace(cfg, filter_metric="shaped_reward"), [[shaped_only, shaped_only]])
    assert len(rounds.kept) == 2 and rounds.rounds == 1
    rounds, _ = _rounds(dataclasses.replace(cfg, dynamic_sampling=False), [[shaped_only, _group([1.0, 1.0])]])
    assert len(rounds.kept) == 2  # off: every group is kept


def test_sequence_advantages_are_group_relative():
    kept = [_group([0.0, 1.0, 1.0]), _group([2.0, 2.0]), _group([0.5, -0.5])]
    got = sequence_advantages(kept, scale_by_std=True)
    expected = []
    for g in kept:
        mean, std = statistics.fmean(g.rewards), statistics.stdev(g.rewards)
        expected += [(r - mean) / (std + 1e-6) for r in g.rewards]
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    got = sequence_advantages(kept, scale_by_std=False)  # Dr. GRPO: no std scaling
    assert got == pytest.approx([r - statistics.fmean(g.rewards) for g in kept for r in g.rewards], abs=1e-6)


def test_pack_mini_batches_gives_exactly_the_updates_and_idles_where_nothing_is_learnt():
    kept = [_group([0.0, 1.0]), _group([1.0, 1.0]), _group([1.0, 1.0])]
    advantages = [-1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    cfg = RLConfig(updates_per_rollout=3, micro_batch_tokens=64)
    batches = list(pack_mini_batches(kept, advantages, cfg))
    assert len(batches) == 3
    assert batches[1] is None and batches[2] is None  # only zero advantages and no KL term: idle steps
    micro = batches[0]
    assert sum(b.num_sequences for b in micro) == 2
    assert sorted(i for b in micro for i in b.rollout_indices) == [0, 1]
    with_kl = list(pack_mini_batches(kept, advantages, dataclasses.replace(cfg, kl_coef=0.1)))
    assert all(b is not None for b in with_kl)  # a KL term is something to learn
