"""The bundled corpus: deterministic under a seed, splits disjoint, the held-out task held out, every
shipped record valid, rationales where they belong, and the shipped files equal to what the code makes."""
import collections
import functools

import pytest

from redone_fast.data import corpus as corpus_module
from redone_fast.data.corpus import (
    EVAL_PER_TASK,
    EXPLAIN,
    GENERAL_TASKS,
    HELDOUT_TASKS,
    SNS_TASKS,
    SPLITS,
    generate_corpus,
    write_corpus,
)
from redone_fast.data.schema import load_jsonl
from redone_fast.data.tasks import TASKS
from redone_fast.tiny import BUILD_SEED, SHIPPED_SPLITS, data_path


@functools.cache
def corpus(seed=BUILD_SEED):
    return generate_corpus(seed)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = write_corpus(tmp_path / "a", seed=3)
    b = write_corpus(tmp_path / "b", seed=3)
    c = write_corpus(tmp_path / "c", seed=4)
    for split in SPLITS:
        assert a[split].read_bytes() == b[split].read_bytes(), split
        assert a[split].read_bytes() != c[split].read_bytes(), split


def test_shipped_files_are_what_the_code_generates():
    """Changing corpus.py without rebuilding (python -m redone_fast.tiny.build) fails here."""
    from redone_fast.data.schema import Sample  # noqa: F401
    for split in SHIPPED_SPLITS:
        assert load_jsonl(data_path(split)) == corpus()[split], split


def test_every_shipped_record_validates_and_carries_its_split():
    for split in SHIPPED_SPLITS:
        samples = load_jsonl(data_path(split))  # validates every line
        assert {s.split for s in samples} == {split}
        assert len({s.id for s in samples}) == len(samples)
        for s in samples:
            assert s.prompt.endswith("Answer:") and s.answer and "\n" not in s.answer
            assert s.reward["name"] == TASKS[s.task].reward["name"]
            assert s.meta["difficulty"] in ("easy", "hard")


def test_no_prompt_is_shared_between_splits():
    key = corpus_module._prompt_key
    by_split = {split: [key(s.prompt) for s in samples] for split, samples in corpus().items()}
    pretrain = set(by_split["pretrain"])
    for split, keys in by_split.items():
        assert len(set(keys)) == len(keys), f"duplicate prompts inside {split}"
        if split != "pretrain":
            assert not pretrain & set(keys), f"pretrain shares prompts with {split}"
    every = [k for keys in by_split.values() for k in keys]
    assert len(set(every)) == len(every)


def test_sft_pool_topup_leaves_pretrain_and_the_first_draw_unchanged():
    """The general top-up of sft_pool is drawn after pretrain from RNG streams of its own: the pretrain split
    (and so the base model) and the pool's first draw are what they were without it, ids stay unique."""
    plain = generate_corpus(BUILD_SEED, sft_pool_topup={})
    full = corpus()
    assert full["pretrain"] == plain["pretrain"] and full["eval"] == plain["eval"]
    assert full["sft_pool"][:len(plain["sft_pool"])] == plain["sft_pool"]
    added = collections.Counter(s.task for s in full["sft_pool"][len(plain["sft_pool"]):])
    assert added == corpus_module.SFT_POOL_GENERAL_TOPUP
    assert len({s.id for s in full["sft_pool"]}) == len(full["sft_pool"])


def test_heldout_task_only_in_heldout_and_eval_covers_every_other_task():
    for split, samples in corpus().items():
        tasks = {s.task for s in samples}
        if split == "heldout":
            assert tasks == set(HELDOUT_TASKS)
        else:
            assert not tasks & set(HELDOUT_TASKS), split
    counts = collections.Counter(s.task for s in corpus()["eval"])
    assert counts == {t: EVAL_PER_TASK for t in SNS_TASKS + GENERAL_TASKS}
    with pytest.raises(ValueError, match="held out"):
        generate_corpus(0, sizes={"rl": {"comment_sentiment": 3}})


def test_rationales_mixed_into_training_splits_only():
    for split, samples in corpus().items():
        for domain, (low, high) in {"sns": (0.25, 0.45), "general": (0.35, 0.55)}.items():
            group = [s for s in samples if TASKS[s.task].domain == domain and s.task not in HELDOUT_TASKS]
            if not group:
                continue
            share = sum(s.rationale is not None for s in group) / len(group)
            if split in ("eval", "heldout"):
                assert share == 0, split
            else:
                assert low <= share <= high, (split, domain, share)
        # the prompt asks for the rationale exactly when the sample has one
        assert all((s.rationale is not None) == (EXPLAIN in s.prompt) for s in samples)


def test_tasks_have_variety():
    evals = corpus()["eval"]
    for task in SNS_TASKS + GENERAL_TASKS:
        answers = collections.Counter(s.answer for s in evals if s.task == task)
        assert len(answers) >= 4, task  # not one constant answer
        assert answers.most_common(1)[0][1] <= 0.4 * EVAL_PER_TASK, task
    labels = collections.Counter(s.answer for s in evals if s.task == "query_relevance")
    assert set(labels) == {"0", "1", "2", "3"}


def test_cli_writes_one_file_per_split(tmp_path, capsys):
    assert corpus_module.main(["--out", str(tmp_path), "--seed", "1", "--splits", "eval", "heldout"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.jsonl", "heldout.jsonl"]
    assert len(load_jsonl(tmp_path / "eval.jsonl")) == EVAL_PER_TASK * (len(SNS_TASKS) + len(GENERAL_TASKS))
    assert "eval" in capsys.readouterr().out
