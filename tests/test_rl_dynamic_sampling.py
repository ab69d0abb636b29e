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
from redone_fast.rl.source import RLSource
from redone_fast.tiny import data_path, model_path
from small_rl import small_rl_config


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
                                             truncated=False, logprobs=[-1.0] * length))
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


def cfg_updates(source):
    return float(source.cfg.updates_per_rollout)


def _source(dist_ctx, tiny_parts, score, **overrides):
    tokenizer, samples = tiny_parts
    settings = dict(prompts_per_step=6, samples_per_prompt=4, updates_per_rollout=2, overlong_buffer=0)
    cfg = small_rl_config(**{**settings, **overrides})
    model = build_model(model_path(), dist_ctx.mesh, ParallelConfig(activation_checkpointing=False))
    sampler = TaskBalancedSampler({"note_taxonomy": samples}, seed=3)
    engine = ScriptedEngine(tokenizer.eos_token_id)
    source = RLSource(cfg, sampler=sampler, tokenizer=tokenizer, engine=engine, model=model,
                      objective=DAPOObjective(), ctx=dist_ctx, score_fn=score)
    return source, engine, model


def test_all_equal_groups_are_dropped_and_refilled(dist_ctx, tiny_parts):
    # Every third prompt (by id) is all-correct, every third all-wrong, the rest mixed.
    def pattern(s):
        return ("all1", "all0", "mixed")[int(s.id.rsplit("-", 1)[1]) % 3]

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

    def pattern(s):
        return ("all1", "mixed")[int(s.id.rsplit("-", 1)[1]) % 2]

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
    # Nothing had signal: an idle step (no micro-batches: the loop takes no optimizer step).
    assert batches == [] and metrics["idle_updates"] == cfg_updates(source) and metrics["groups_kept"] == 0
    assert metrics["signal_share"] == 0.0 and metrics["reward_generated"] == 1.0


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


def test_dynamic_sampling_filters_on_the_task_reward_not_the_shaped_one(dist_ctx, tiny_parts):
    """All four answers right, one ran into the overlong buffer (shaped 0.75). On the shaped reward that group
    was kept and std scaling gave the long answer an advantage of -1.5, as if it were wrong; DAPO's
    reference filters on accuracy, so by default the group carries no signal."""

    def lengths(p, j):
        return (4, 4, 4, 7)[j]  # free up to 6 of 10 tokens: 7 costs -0.25

    settings = dict(score=_score_by_prompt(lambda s: "all1"), max_response_tokens=10, overlong_buffer=4,
                    max_refill_rounds=0)
    source, engine, _ = _source(dist_ctx, tiny_parts, **settings)
    engine.length_of = lengths
    assert source.next_step() == []
    metrics = source.pop_metrics()
    assert metrics["groups_kept"] == 0 and metrics["groups_dropped"] == 6 and metrics["signal_share"] == 0.0
    source, engine, _ = _source(dist_ctx, tiny_parts, filter_metric="shaped_reward", **settings)
    engine.length_of = lengths
    batches = source.next_step() + source.next_step()
    assert source.pop_metrics()["groups_kept"] == 6
    assert min(float(b.advantages.min()) for b in batches) == pytest.approx(-1.5, rel=1e-4)


def test_accuracy_filter_counts_partial_scores_as_wrong(tiny_parts):
    from redone_fast.rl.source import Group, filter_values, has_signal
    group = Group(sample=None, prompt_ids=[1], responses=[[2], [3]], truncated=[False, False],
                  task_rewards=[0.4, 0.7], rewards=[0.4, 0.7], errors=[None, None])
    assert filter_values(group, "accuracy") == [0.0, 0.0] and not has_signal(group, "accuracy")
    assert has_signal(group, "task_reward") and has_signal(group, "shaped_reward")
    with pytest.raises(ValueError, match="filter_metric"):
        filter_values(group, "acc")


@pytest.mark.parametrize("prompts, updates", [(5, 4), (6, 4), (9, 4), (3, 4), (7, 3)])
def test_every_rollout_gives_exactly_updates_per_rollout_steps(dist_ctx, tiny_parts, prompts, updates):
    """5, 6 or 9 kept groups over 4 updates gave 3 mini-batches: the rollout then spilled into the next
    rollout's steps and checkpoints left rollout boundaries. Now the sequences are split evenly."""
    source, engine, _ = _source(dist_ctx, tiny_parts, _score_by_prompt(lambda s: "mixed"), prompts_per_step=prompts,
                                updates_per_rollout=updates)
    steps = [source.next_step() for _ in range(updates)]
    assert len(engine.calls) == 1 and source.pending == []
    sizes = [sum(b.num_sequences for b in step) for step in steps]
    assert sum(sizes) == prompts * 4 and max(sizes) - min(sizes) <= 1 and min(sizes) > 0
    indices = sorted(i for step in steps for b in step for i in b.rollout_indices)
    assert indices == list(range(prompts * 4))  # every sequence trained once
    source.next_step()
    assert len(engine.calls) == 2  # the next step starts the next rollout


def test_rollout_logprobs_reach_the_micro_batches(dist_ctx, tiny_parts):
    source, _, _ = _source(dist_ctx, tiny_parts, _score_by_prompt(lambda s: "mixed"))
    for batch in source.next_step():
        engine = batch.rollout_logprobs[batch.loss_mask]
        assert engine.numel() > 0 and bool((engine == -1.0).all())  # what ScriptedEngine reported


def test_vllm_settings_reach_the_engine(monkeypatch):
    import redone_fast.rollout.vllm_engine as vllm_engine
    from redone_fast.rl.config import check_config, rollout_is_cap
    from redone_fast.rl.source import make_rollout_engine
    from redone_fast.stages import rl

    made = {}
    monkeypatch.setattr(vllm_engine, "VLLMEngine", lambda model, tokenizer, **kw: made.update(kw) or "engine")
    cfg = rl.parse_args(
        ["--run-dir", "x", "--engine", "vllm", "--vllm.gpu-memory-utilization", "0.55", "--vllm.sleep-level", "2",
         "--vllm.enforce-eager", "--vllm.max-model-len", "4096", "--generation-batch", "128"]).cfg
    assert make_rollout_engine(cfg, None, SimpleNamespace(device="cpu")) == "engine"
    assert made == {"dtype": "auto", "gpu_memory_utilization": 0.55, "max_model_len": 4096, "sleep_level": 2,
                    "enforce_eager": True}
    assert cfg.generation_batch == 128 and rollout_is_cap(cfg) == 2.0  # truncated IS on with vLLM by default
    assert rollout_is_cap(dataclasses.replace(cfg, engine="hf")) is None
    assert rollout_is_cap(dataclasses.replace(cfg, engine="hf", rollout_correction="truncate")) == 2.0
    with pytest.raises(ValueError, match="filter_metric"):
        check_config(dataclasses.replace(cfg, filter_metric="acc"))
