"""The SFT stage's data (redone_fast.stages.sft_data): epoch mix, steps, resume and rank sharing; CPU only.

Every sample's first token identifies it: task sample k starts with TASK_ID + k, general sample j with
GENERAL_ID + j, so orders and micro-batch contents can be checked exactly.
"""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from redone_fast.data.formatting import EncodedSample
from redone_fast.data.packing import IGNORE_INDEX
from redone_fast.stages.sft_data import EpochMix, SFTBatches, pack_for_rank

TASK_ID = 1_000
GENERAL_ID = 100_000


def _sample(first_token: int, length: int, prompt: int) -> EncodedSample:
    ids = [first_token] + [(first_token * 7 + t) % 997 + 1 for t in range(1, length)]
    return EncodedSample(ids, [False] * prompt + [True] * (length - prompt), prompt_length=prompt)


def _pool(base: int, count: int, lengths=(5, 17, 9, 30, 3, 12, 24, 7)) -> list[EncodedSample]:
    samples = []
    for k in range(count):
        length = lengths[k % len(lengths)] + k % 3
        samples.append(_sample(base + k, length, prompt=max(1, length // 3)))
    return samples


def _ident(sample: EncodedSample) -> int:
    return sample.input_ids[0]


def _source(task=None, general=None, **overrides) -> SFTBatches:
    settings = dict(epochs=2, general_ratio=0.2, batch_size=6, batch_tokens=0, micro_batch_tokens=48,
                    max_length=48, overlong="truncate", seed=3, rank=0, world_size=1)
    settings.update(overrides)
    task = task if task is not None else _pool(TASK_ID, 37)
    general = general if general is not None else _pool(GENERAL_ID, 40)
    return SFTBatches(task, general, **settings)


def _drain(source: SFTBatches) -> list[list]:
    steps = []
    while True:
        try:
            steps.append(source.next_step())
        except StopIteration:
            return steps


def _same_batch(a, b) -> bool:
    return (torch.equal(a.input_ids, b.input_ids) and torch.equal(a.position_ids, b.position_ids)
            and torch.equal(a.cu_seqlens, b.cu_seqlens) and torch.equal(a.labels, b.labels)
            and a.sample_indices == b.sample_indices and a.max_seqlen == b.max_seqlen)


def _same_steps(xs, ys) -> bool:
    return len(xs) == len(ys) and all(len(x) == len(y) and all(_same_batch(a, b) for a, b in zip(x, y))
                                      for x, y in zip(xs, ys))


# ---------------------------------------------------------------- EpochMix

@pytest.mark.parametrize("num_task, ratio, expected", [
    (100, 0.056, 6), (10, 0.5, 10), (30, 0.25, 10), (7, 0.0, 0), (1, 0.3, 0), (3, 0.9, 27),
])
def test_general_share(num_task, ratio, expected):
    mix = EpochMix(num_task, 50, ratio, seed=0)
    assert mix.general_per_epoch == expected == round(num_task * ratio / (1 - ratio))
    order = mix.order(0)
    assert sum(pool == "general" for pool, _ in order) == expected
    assert len(order) == num_task + expected


@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_every_task_sample_once_and_no_general_repeat(epoch):
    mix = EpochMix(100, 30, 0.056, seed=11)
    order = mix.order(epoch)
    tasks = [i for pool, i in order if pool == "task"]
    general = [j for pool, j in order if pool == "general"]
    assert sorted(tasks) == list(range(100))
    assert len(general) == 6 and len(set(general)) == 6
    assert all(0 <= j < 30 for j in general)
    assert {pool for pool, _ in order} == {"task", "general"}


def test_general_pool_is_cycled_when_small():
    mix = EpochMix(30, 4, 0.25, seed=2)  # 10 general samples from a pool of 4
    general = Counter(j for pool, j in mix.order(0) if pool == "general")
    assert sum(general.values()) == 10
    assert set(general) == {0, 1, 2, 3}
    assert sorted(general.values()) == [2, 2, 3, 3]  # drawn without repeats, then cycled


def test_orders_are_functions_of_seed_and_epoch():
    mix = EpochMix(60, 40, 0.2, seed=5)
    again = EpochMix(60, 40, 0.2, seed=5)
    other_seed = EpochMix(60, 40, 0.2, seed=6)
    orders = [mix.order(e) for e in range(4)]
    assert orders == [again.order(e) for e in range(4)]  # same seed, same orders
    assert mix.order(2) == orders[2]  # recomputing an epoch gives it again
    assert all(orders[a] != orders[b] for a in range(4) for b in range(a + 1, 4))  # epochs differ
    assert other_seed.order(0) != orders[0]
    # the general samples chosen change from epoch to epoch (15 of 40 per epoch)
    chosen = [frozenset(j for pool, j in order if pool == "general") for order in orders]
    assert len(set(chosen)) == 4
    assert len(frozenset().union(*chosen)) > 15
    # the mix is shuffled: not all task samples first
    positions = [k for k, (pool, _) in enumerate(orders[0]) if pool == "general"]
    assert positions != list(range(60, 75))
    assert [i for pool, i in orders[0] if pool == "task"] != list(range(60))


def test_task_order_is_reshuffled_every_epoch():
    mix = EpochMix(50, 0, 0.0, seed=9)
    orders = [mix.order(e) for e in range(3)]
    assert all(sorted(order) == [("task", i) for i in range(50)] for order in orders)
    assert orders[0] != orders[1] and orders[1] != orders[2] and orders[0] != orders[2]
    assert orders[0] != [("task", i) for i in range(50)]
    assert EpochMix(50, 0, 0.0, seed=10).order(0) != orders[0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_task=5, num_general=5, general_ratio=1.0), "general_ratio"),
    (dict(num_task=5, num_general=5, general_ratio=-0.1), "general_ratio"),
    (dict(num_task=5, num_general=0, general_ratio=0.1), "general pool is empty"),
    (dict(num_task=0, num_general=0, general_ratio=0.0), "no training samples"),
    (dict(num_task=0, num_general=5, general_ratio=0.5), "no training samples"),
])
def test_mix_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EpochMix(seed=0, **kwargs)


def test_mix_without_general_pool():
    order = EpochMix(9, 0, 0.0, seed=1).order(0)
    assert sorted(order) == [("task", i) for i in range(9)]


# ---------------------------------------------------------------- steps

def test_steps_follow_the_epoch_order_in_batch_size_groups():
    source = _source()  # 37 task + round(37 * 0.25) = 9 general = 46 samples, batches of 6
    for epoch in range(2):
        steps = source.steps_of_epoch(epoch)
        assert [len(step) for step in steps] == [6] * 7 + [4]
        flat = [_ident(s) for step in steps for s in step]
        expected = [(TASK_ID if pool == "task" else GENERAL_ID) + i for pool, i in source.mix.order(epoch)]
        assert flat == expected
    assert source.total_steps == 16


def test_batch_tokens_groups_consecutive_samples_until_the_budget():
    task = _pool(TASK_ID, 40) + [_sample(TASK_ID + 40, 90, prompt=10)]  # over max_length: counts 48
    source = _source(task=task, batch_tokens=100)
    steps = source.steps_of_epoch(0)

    def tokens(step):
        return sum(min(len(s), 48) for s in step)

    assert len(steps) > 3
    for step in steps[:-1]:
        assert tokens(step) >= 100  # full
        assert tokens(step[:-1]) < 100  # and not one sample more than needed
    assert 0 < tokens(steps[-1])
    assert tokens(steps[-1][:-1]) < 100
    flat = [_ident(s) for step in steps for s in step]
    assert len(flat) == 41 + source.mix.general_per_epoch
    assert sorted(i for i in flat if i < GENERAL_ID) == list(range(TASK_ID, TASK_ID + 41))
    # batch_tokens takes precedence over batch_size (6 here)
    assert any(len(step) != 6 for step in steps[:-1])


def test_batch_tokens_count_over_long_samples_at_max_length():
    task = [_sample(TASK_ID + k, 30, prompt=5) for k in range(9)]  # each counts 20 tokens (max_length)
    source = _source(task=task, general=[], general_ratio=0.0, batch_tokens=60, micro_batch_tokens=20,
                     max_length=20)
    assert [len(step) for step in source.steps_of_epoch(0)] == [3, 3, 3]
    assert source.total_steps == 6
    micro_batches = source.next_step()
    assert len(micro_batches) == 3 and all(b.num_tokens == 20 for b in micro_batches)
    assert source.last_step_tokens == 60


def test_total_steps_counts_every_epoch_and_matches_next_step():
    source = _source(epochs=3, batch_size=5)
    per_epoch = [len(source.steps_of_epoch(e)) for e in range(3)]
    assert source.total_steps == sum(per_epoch) == 3 * 10  # 46 samples in batches of 5
    steps = _drain(_source(epochs=3, batch_size=5))
    assert len(steps) == source.total_steps


def test_exhausted_source_stays_exhausted():
    source = _source(epochs=1, batch_size=50)  # one step per epoch
    assert source.total_steps == 1
    first = source.next_step()
    assert first and all(b.num_tokens <= 48 for b in first)
    for _ in range(3):  # every further call says the data is exhausted, never an extra epoch
        with pytest.raises(StopIteration):
            source.next_step()
    assert source.state_dict() == {"epoch": 1, "step_in_epoch": 0}


def test_step_contents_and_token_accounting():
    source = _source(batch_size=6)
    samples = source.steps_of_epoch(0)[0]
    micro_batches = source.next_step()
    # one step's micro-batches hold exactly that step's samples, each once, within the budget
    packed = sorted(i for batch in micro_batches for i in batch.sample_indices)
    assert packed == list(range(len(samples)))
    assert all(batch.num_tokens <= 48 for batch in micro_batches)
    firsts = sorted(int(batch.input_ids[batch.cu_seqlens[k]]) for batch in micro_batches
                    for k in range(batch.num_samples))
    assert firsts == sorted(_ident(s) for s in samples)
    expected_tokens = sum(min(len(s), 48) for s in samples)
    assert source.last_step_tokens == expected_tokens
    assert source.packing.samples == 6 and source.packing.tokens == expected_tokens
    source.next_step()
    assert source.packing.samples == 12
    assert source.packing.micro_batches >= 2 and source.packing.token_budget == 48


def test_labels_are_shifted_targets_of_each_sample():
    sample = _sample(TASK_ID, 6, prompt=3)  # ids t0..t5, targets t3..t5
    source = _source(task=[sample], general=[], general_ratio=0.0, epochs=1)
    (batch,) = source.next_step()
    ids = sample.input_ids
    assert batch.labels.tolist() == [IGNORE_INDEX, IGNORE_INDEX, ids[3], ids[4], ids[5], IGNORE_INDEX]
    assert batch.position_ids.tolist() == list(range(6))


def test_overlong_samples_truncate_or_drop():
    long_sample = _sample(TASK_ID, 80, prompt=5)
    short = _sample(TASK_ID + 1, 10, prompt=2)
    truncating = _source(task=[long_sample, short], general=[], general_ratio=0.0, epochs=1, batch_size=2)
    batches = truncating.next_step()
    assert sum(b.num_tokens for b in batches) == 48 + 10
    assert truncating.packing.truncated == 1 and truncating.packing.dropped == 0
    dropping = _source(task=[long_sample, short], general=[], general_ratio=0.0, epochs=1, batch_size=2,
                       overlong="drop")
    (batch,) = dropping.next_step()
    assert batch.num_tokens == 10 and int(batch.input_ids[0]) == TASK_ID + 1
    assert dropping.packing.dropped == 1


# ---------------------------------------------------------------- determinism and resume

def test_same_seed_same_micro_batches_other_seed_differs():
    first, second = _drain(_source()), _drain(_source())
    assert _same_steps(first, second)
    other = _drain(_source(seed=4))
    assert not _same_steps(first, other)


@pytest.mark.parametrize("stop_after", [1, 5, 8, 9, 13])  # 8 steps per epoch: 8 is the epoch's end
def test_resume_continues_with_the_same_micro_batches(stop_after):
    reference = _drain(_source())
    assert len(reference) == 16

    interrupted = _source()
    head = [interrupted.next_step() for _ in range(stop_after)]
    state = interrupted.state_dict()
    assert set(state) == {"epoch", "step_in_epoch"}

    resumed = _source()
    resumed.load_state_dict(dict(state))
    tail = _drain(resumed)
    assert _same_steps(head + tail, reference)
    assert len(tail) == 16 - stop_after


def test_state_round_trips_through_json_types():
    import json

    source = _source()
    for _ in range(3):
        source.next_step()
    state = json.loads(json.dumps(source.state_dict()))
    assert state == {"epoch": 0, "step_in_epoch": 3}
    resumed = _source()
    resumed.load_state_dict({"epoch": "0", "step_in_epoch": 3.0})  # coerced to int
    assert resumed.state_dict() == {"epoch": 0, "step_in_epoch": 3}
    assert _same_steps([resumed.next_step()], [source.next_step()])


def test_resume_into_the_last_epoch_end_stops():
    source = _source()
    source.load_state_dict({"epoch": 1, "step_in_epoch": 8})  # every step done
    with pytest.raises(StopIteration):
        source.next_step()


# ---------------------------------------------------------------- ranks

@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_share_the_micro_batches_of_one_rank(world_size):
    # small budget, so steps have several micro-batches (some steps not a multiple of world_size)
    settings = dict(batch_size=9, micro_batch_tokens=40, max_length=40)
    single = _drain(_source(**settings))
    per_rank = [_drain(_source(rank=r, world_size=world_size, **settings)) for r in range(world_size)]
    assert all(len(steps) == len(single) for steps in per_rank)

    fillers_seen = 0
    for step, reference in enumerate(single):
        counts = {len(per_rank[r][step]) for r in range(world_size)}
        assert counts == {-(-len(reference) // world_size)}  # every rank runs the same count
        for r in range(world_size):
            batches = per_rank[r][step]
            real = [b for b in batches if b.sample_indices]
            fillers = [b for b in batches if not b.sample_indices]
            # rank r takes micro-batches r, r + W, ...
            assert len(real) == len(reference[r::world_size])
            assert all(_same_batch(a, b) for a, b in zip(real, reference[r::world_size]))
            # fillers come last and carry no targets
            assert all(a is b for a, b in zip(batches, real))
            for filler in fillers:
                assert bool((filler.labels == IGNORE_INDEX).all())
                assert filler.num_tokens > 0
            fillers_seen += len(fillers)
        # the union over ranks is the one-rank step
        union = [b for r in range(world_size) for b in per_rank[r][step] if b.sample_indices]
        assert len(union) == len(reference)
        keys = sorted(tuple(b.input_ids.tolist()) for b in union)
        assert keys == sorted(tuple(b.input_ids.tolist()) for b in reference)
    assert fillers_seen > 0, "the settings should give some steps fewer micro-batches than ranks x count"
    assert max(len(step) for step in single) > world_size


def test_every_rank_knows_the_global_step_tokens():
    settings = dict(batch_size=9, micro_batch_tokens=40, max_length=40)
    sources = [_source(rank=r, world_size=2, **settings) for r in range(2)]
    single = _source(**settings)
    for _ in range(4):
        single.next_step()
        for source in sources:
            source.next_step()
        assert {s.last_step_tokens for s in sources} == {single.last_step_tokens}


def test_pack_for_rank_directly():
    samples = _pool(TASK_ID, 12)
    everything, stats = pack_for_rank(samples, micro_batch_tokens=32, max_length=32, overlong="truncate",
                                      rank=0, world_size=1)
    assert stats.samples == 12 and stats.micro_batches == len(everything) >= 4
    assert stats.tokens == sum(b.num_tokens for b in everything)
    world_size = len(everything) + 1  # more ranks than micro-batches: the last rank gets only a filler
    last, last_stats = pack_for_rank(samples, micro_batch_tokens=32, max_length=32, overlong="truncate",
                                     rank=world_size - 1, world_size=world_size)
    assert last_stats.tokens == stats.tokens  # the stats are the whole step's
    assert len(last) == 1 and last[0].sample_indices == []
    assert bool((last[0].labels == IGNORE_INDEX).all())
    second, _ = pack_for_rank(samples, micro_batch_tokens=32, max_length=32, overlong="truncate",
                              rank=1, world_size=world_size)
    assert len(second) == 1 and _same_batch(second[0], everything[1])


def test_pack_for_rank_with_everything_dropped():
    samples = [_sample(TASK_ID, 50, prompt=5), _sample(TASK_ID + 1, 60, prompt=5)]
    with pytest.raises(ValueError, match="over-long"):
        pack_for_rank(samples, micro_batch_tokens=32, max_length=32, overlong="drop", rank=0, world_size=1)


# ---------------------------------------------------------------- bad settings

@pytest.mark.parametrize("overrides", [
    dict(epochs=0), dict(batch_size=0), dict(micro_batch_tokens=1), dict(batch_tokens=-1),
    dict(general_ratio=1.0), dict(general_ratio=0.1, general=[]), dict(task=[], general_ratio=0.0),
    dict(task=[], general_ratio=0.3),
])
def test_bad_settings_raise(overrides):
    with pytest.raises(ValueError):
        _source(**overrides)


def test_bad_overlong_policy_raises_on_the_first_step():
    source = _source(overlong="squeeze")
    with pytest.raises(ValueError, match="overlong"):
        source.next_step()


def test_a_step_of_only_over_long_samples_raises():
    task = [_sample(TASK_ID + k, 60, prompt=5) for k in range(3)]
    source = _source(task=task, general=[], general_ratio=0.0, overlong="drop", batch_size=3)
    with pytest.raises(ValueError, match="nothing to train on"):
        source.next_step()
