"""Chat formatting and masks, packing (fill, boundaries, shifted labels, overlong policy), and the
task-balanced sampler (determinism, restore, balance)."""
import collections

import pytest
import torch

from redone_fast.data.formatting import encode_sample, target_text
from redone_fast.data.packing import IGNORE_INDEX, pack, shifted_labels
from redone_fast.data.sampler import TaskBalancedSampler
from redone_fast.data.schema import Sample
from tiny_tokenizer import tiny_tokenizer


def sample(task="note_taxonomy", prompt="Pick the category. Note: latte art ☕️\nAnswer:", answer="Food", rationale=None,
           i=0):
    return Sample(task=task, prompt=prompt, answer=answer, reward={"name": "exact_match", "params": {}},
                  rationale=rationale, id=f"{task}/{i}")


def test_encode_masks_exactly_the_target():
    tok = tiny_tokenizer()
    s = sample(rationale="Coffee is food and drink.")
    enc = encode_sample(tok, s)
    prompt_text = tok.decode(enc.input_ids[:enc.prompt_length])
    assert prompt_text.endswith("<|im_start|>assistant\n") and "latte art ☕️" in prompt_text
    target_ids = [t for t, m in zip(enc.input_ids, enc.loss_mask) if m]
    assert enc.loss_mask == [False] * enc.prompt_length + [True] * (len(enc) - enc.prompt_length)
    assert tok.decode(target_ids) == "Coffee is food and drink.\nAnswer: Food<|im_end|>"
    assert target_text(sample()) == "Food" and not enc.truncated


def test_encode_truncates_and_says_so():
    enc = encode_sample(tiny_tokenizer(), sample(), max_length=5)
    assert len(enc) == 5 and enc.truncated


def test_shifted_labels_stay_inside_the_sample():
    enc = encode_sample(tiny_tokenizer(), sample())
    labels = shifted_labels(enc)
    for t in range(len(enc) - 1):
        assert labels[t] == (enc.input_ids[t + 1] if enc.loss_mask[t + 1] else IGNORE_INDEX)
    assert labels[-1] == IGNORE_INDEX
    assert sum(label != IGNORE_INDEX for label in labels) == enc.num_targets


def test_packed_batches_restart_positions_and_never_cross_samples():
    tok = tiny_tokenizer()
    encoded = [encode_sample(tok, sample(answer="x" * (i % 7 + 1), i=i)) for i in range(40)]
    batches, stats = pack(encoded, token_budget=256)
    assert stats.packed == 40 and stats.dropped == 0 and stats.truncated == 0
    seen = []
    for batch in batches:
        assert batch.num_tokens <= 256
        bounds = batch.cu_seqlens.tolist()
        assert batch.max_seqlen == max(b - a for a, b in zip(bounds, bounds[1:]))
        assert bounds[0] == 0 and bounds[-1] == batch.num_tokens and batch.cu_seqlens.dtype == torch.int32
        for k, index in enumerate(batch.sample_indices):
            start, end = bounds[k], bounds[k + 1]
            assert batch.input_ids[start:end].tolist() == encoded[index].input_ids
            assert batch.position_ids[start:end].tolist() == list(range(end - start))
            assert batch.labels[start:end].tolist() == shifted_labels(encoded[index])
            assert batch.labels[end - 1] == IGNORE_INDEX  # the last token predicts nothing across the boundary
        seen += batch.sample_indices
    assert sorted(seen) == list(range(40))


def test_packing_fills_the_budget():
    tok = tiny_tokenizer()
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 60, (600,), generator=gen).tolist()
    encoded = [encode_sample(tok, sample(answer="ab " * n, i=i)) for i, n in enumerate(lengths)]
    batches, stats = pack(encoded, token_budget=1024)
    assert stats.fill >= 0.95, stats
    assert stats.tokens == sum(len(e) for e in encoded)


@pytest.mark.parametrize("overlong,expect_truncated,expect_dropped", [("truncate", 1, 1), ("drop", 0, 2)])
def test_overlong_policy_is_applied_and_counted(overlong, expect_truncated, expect_dropped):
    tok = tiny_tokenizer()
    short = encode_sample(tok, sample())
    long_answer = encode_sample(tok, sample(answer="word " * 80))  # prompt fits in 40, answer does not
    long_prompt = encode_sample(tok, sample(prompt="lol " * 80))  # no target survives a cut at 40
    batches, stats = pack([short, long_answer, long_prompt], token_budget=64, max_length=40, overlong=overlong)
    assert (stats.truncated, stats.dropped) == (expect_truncated, expect_dropped)
    assert 2 in stats.dropped_indices
    assert all(batch.num_tokens <= 64 for batch in batches)
    with pytest.raises(ValueError, match="overlong"):
        pack([short], 64, overlong="wrap")


def pools():
    sns = {"note_taxonomy": [sample(i=i) for i in range(200)],
           "hashtag_choice": [sample("hashtag_choice", i=i) for i in range(20)],
           "entity_extraction": [sample("entity_extraction", i=i) for i in range(2)]}
    general = {"arithmetic": [sample("arithmetic", i=i) for i in range(50)]}
    return sns, general


def test_sampler_is_deterministic_and_restorable():
    sns, general = pools()
    a = TaskBalancedSampler(sns, general, general_ratio=0.1, temperature=2.0, seed=7)
    b = TaskBalancedSampler(sns, general, general_ratio=0.1, temperature=2.0, seed=7)
    assert [s.id for s in a.take(300)] == [s.id for s in b.take(300)]
    state = a.state_dict()
    expected = [s.id for s in a.take(100)]
    c = TaskBalancedSampler(sns, general, general_ratio=0.1, temperature=2.0, seed=7)
    c.load_state_dict(state)
    assert [s.id for s in c.take(100)] == expected
    other_seed = TaskBalancedSampler(sns, general, general_ratio=0.1, seed=8)
    assert [s.id for s in other_seed.take(50)] != expected[:50]
    with pytest.raises(ValueError, match="seed"):
        other_seed.load_state_dict(state)


def test_sampler_balances_tasks_and_mixes_general():
    sns, general = pools()
    sampler = TaskBalancedSampler(sns, general, general_ratio=0.2, temperature=4.0, seed=0)
    counts = collections.Counter(s.task for s in sampler.take(4000))
    probs = sampler.task_probabilities()
    assert abs(sum(probs.values()) - 1.0) < 1e-9
    for task, p in probs.items():
        assert abs(counts[task] / 4000 - p) < 0.03, (task, counts[task], p)
    assert abs(probs["arithmetic"] - 0.2) < 1e-9
    # temperature 4: the 2-sample task gets far more than its 1% share of the SNS data
    assert probs["entity_extraction"] > 0.1
    # no repeats within a pass over a task
    first_pass = [s.id for s in TaskBalancedSampler({"t": sns["hashtag_choice"]}, seed=1).take(20)]
    assert len(set(first_pass)) == 20


def test_packing_fills_budgets_on_the_bundled_data():
    """The issue's bar: at least 95% of the token budget filled on the bundled corpus."""
    from transformers import AutoTokenizer

    from redone_fast.data.formatting import encode_sample
    from redone_fast.data.schema import load_jsonl
    from redone_fast.tiny import data_path, model_path

    tokenizer = AutoTokenizer.from_pretrained(model_path())
    for split in ("rl", "sft_pool"):
        encoded = [encode_sample(tokenizer, s) for s in load_jsonl(data_path(split))]
        _, stats = pack(encoded, token_budget=2048)
        assert stats.fill >= 0.95 and stats.dropped == 0, (split, stats.fill)
