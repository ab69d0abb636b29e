"""Dynamic sampling and the rollout step of the RL stage, with a scripted engine and reward: groups whose
rewards are all equal are dropped and counted, more prompts are generated until the batch is full, the
number of refill rounds is bounded, and the kept groups become mini-batches with the advantages of
ops.group_advantages and the old policy's log-probs."""
import dataclasses
from types import SimpleNamespace

import pytest
import torch

from redone_fast.data.sampler import TaskBalancedSampler
from redone_fast.data.schema import load_jsonl
from redone_fast.model import load_tokenizer
from redone_fast.ops import group_advantages
from redone_fast.parallelize import ParallelConfig, build_model
from redone_fast.rl.loss import DAPOObjective
from redone_fast.stages.rl import RLSource, preset
from redone_fast.tiny import data_path, model_path


class ScriptedEngine:
    """Answers every prompt with n fixed responses; records calls (no model involved)."""

    def __init__(self, eos: int, length_of=lambda prompt_index, j: 3):
        self.calls, self.eos, self.length_of = [], eos, length_of
        self.loaded = 0

    def generate(self, prompts, sampling):
        self.calls.append(len(prompts))
        out = []
        for p, _ in enumerate(prompts):
            group = []
            for j in range(sampling.n):
                length = self.length_of(p, j)
                group.append(SimpleNamespace(response_ids=[5 + j % 3] * (length - 1) + [self.eos], finished=True,
                                             truncated=False))
            out.append(group)
        return out

    def load_weights(self, model):
        self.loaded += 1

    def sleep(self):
        pass

    def wake(self):
        pass


def _score_by_prompt(pattern):
    """Reward of answer j for a sample: pattern(sample) gives 'all0', 'all1' or 'mixed'."""
    def score(samples, completions):
        outs, seen = [], {}
        for sample in samples:
            j = seen.get(sample.id, 0)
            seen[sample.id] = j + 1
            kind = pattern(sample)
            value = {"all0": 0.0, "all1": 1.0}.get(kind, float(j % 2))
            outs.append(SimpleNamespace(score=value, error=None))
        return outs
    return score


@pytest.fixture(scope="module")
def tiny_parts():
    tokenizer = load_tokenizer(model_path())
    samples = [s for s in load_jsonl(data_path("rl")) if s.task == "note_taxonomy"][:200]
    return tokenizer, samples


def _source(dist_ctx, tiny_parts, score, **overrides):
    tokenizer, samples = tiny_parts
    settings = dict(prompts_per_step=6, samples_per_prompt=4, updates_per_rollout=2, overlong_buffer=0)
    cfg = dataclasses.replace(preset("tiny"), **{**settings, **overrides})
    model = build_model(model_path(), dist_ctx.mesh, ParallelConfig(activation_checkpointing=False))
    sampler = TaskBalancedSampler({"note_taxonomy": samples}, seed=3)
    engine = ScriptedEngine(tokenizer.eos_token_id)
    source = RLSource(cfg, sampler=sampler, tokenizer=tokenizer, engine=engine, model=model,
                      objective=DAPOObjective(), ctx=dist_ctx, score_fn=score)
    return source, engine, model


def test_all_equal_groups_are_dropped_and_refilled(dist_ctx, tiny_parts):
    # Every third prompt (by id) is all-correct, every third all-wrong, the rest mixed.
    pattern = lambda s: ("all1", "all0", "mixed")[int(s.id.rsplit("-", 1)[1]) % 3]
    source, engine, model = _source(dist_ctx, tiny_parts, _score_by_prompt(pattern), max_refill_rounds=10)
    first = source.next_step()
    metrics = source.pop_metrics()
    assert metrics["groups_kept"] == 6
    assert metrics["groups_dropped"] >= 1 and metrics["generation_rounds"] >= 2
    assert engine.calls == [6] * len(engine.calls)  # each round generates a full batch of new prompts
    # Kept + dropped covers every group of every round but the surplus of the last one.
    assert metrics["groups_dropped"] <= 6 * metrics["generation_rounds"] - 6
    assert engine.loaded == 1  # weights pushed to the engine once per rollout
    # Two updates per rollout: this step and the next come from the same rollout.
    calls_before = list(engine.calls)
    second = source.next_step()
    assert engine.calls == calls_before  # no new generation for the rollout's second update
    assert len(engine.calls) == metrics["generation_rounds"]
    sequences = sum(b.num_sequences for b in first + second)
    assert sequences == 6 * 4
    # Mixed groups: rewards 0,1,0,1 -> advantages equal ops.group_advantages on those rewards.
    expected = group_advantages(torch.tensor([0.0, 1, 0, 1]), torch.zeros(4, dtype=torch.long), 1).seq
    seen = {round(float(a), 5) for b in first + second for a in b.advantages[b.loss_mask]}
    assert seen == {round(float(x), 5) for x in expected}
    # Old log-probs are the current policy's (finite, non-positive, on the loss tokens).
    for b in first + second:
        old = b.old_logprobs[b.loss_mask]
        assert bool(torch.isfinite(old).all()) and bool((old <= 0).all()) and bool((old < 0).any())


def test_one_update_per_rollout_skips_the_old_logprob_pass(dist_ctx, tiny_parts):
    """On-policy: no recompute (old_logprobs None); two updates per rollout (above) do recompute."""
    pattern = lambda s: ("all1", "mixed")[int(s.id.rsplit("-", 1)[1]) % 2]
    source, _, _ = _source(dist_ctx, tiny_parts, _score_by_prompt(pattern), updates_per_rollout=1)
    batches = source.next_step()
    assert batches and all(b.old_logprobs is None for b in batches)
    assert source.pending == []  # the single update is this step


def test_refill_rounds_are_bounded(dist_ctx, tiny_parts):
    source, engine, _ = _source(dist_ctx, tiny_parts, _score_by_prompt(lambda s: "all1"), max_refill_rounds=2)
    batches = source.next_step()
    metrics = source.pop_metrics()
    assert metrics["generation_rounds"] == 3 and len(engine.calls) == 3  # the first round + 2 refills
    assert metrics["groups_dropped"] == 6 + 6 + 6
    # Nothing had signal: it trains on the last round's groups, whose advantages are all zero.
    assert all(float(b.advantages.abs().max()) == 0.0 for b in batches)


def test_dynamic_sampling_off_keeps_everything(dist_ctx, tiny_parts):
    source, engine, _ = _source(dist_ctx, tiny_parts, _score_by_prompt(lambda s: "all0"), dynamic_sampling=False)
    source.next_step()
    metrics = source.pop_metrics()
    assert metrics["groups_dropped"] == 0 and metrics["generation_rounds"] == 1 and engine.calls == [6]


def test_overlong_responses_are_penalised(dist_ctx, tiny_parts):
    tokenizer, _ = tiny_parts
    source, engine, _ = _source(dist_ctx, tiny_parts, _score_by_prompt(lambda s: "all1"), max_response_tokens=10,
                                overlong_buffer=4, dynamic_sampling=False)
    engine.length_of = lambda p, j: (4, 7, 8, 10)[j]  # penalties 0, -0.25, -0.5, -1 (free up to 6)
    source.next_step()
    metrics = source.pop_metrics()
    assert metrics["reward"] == 1.0  # the task reward
    assert metrics["shaped_reward"] == pytest.approx(1.0 + (0 - 0.25 - 0.5 - 1.0) / 4)
