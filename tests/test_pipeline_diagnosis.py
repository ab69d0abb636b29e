"""The failure-bucket rule, rare-task up-weighting, the rationale share of stage 3 and the soft-label pick."""
from __future__ import annotations

import json

import pytest

from redone_fast.data.schema import Sample, load_jsonl
from redone_fast.pipeline.config import DiagnosisConfig, HardSubsetConfig, SoftLabelConfig
from redone_fast.pipeline.diagnosis import (
    diagnose,
    hard_subset,
    raise_rationale_share,
    split_by_domain,
    upweight_rare,
    write_capability_map,
)
from redone_fast.pipeline.scoring import first_per_task
from redone_fast.pipeline.soft_labels import pick, reward_judge, soft_label

EM = {"name": "exact_match", "params": {"single": True}}


def sample(task: str, i: int, *, rationale: str | None = None, answer: str = "yes") -> Sample:
    return Sample(task=task, prompt=f"{task} question {i}\nAnswer:", answer=answer, reward=EM, rationale=rationale,
                  id=f"{task}-{i}")


def test_bucket_rule_low_pass_and_weak_tasks():
    pool = [sample("note_taxonomy", i) for i in range(4)] + [sample("hashtag_choice", i) for i in range(4)]
    rates = [0.0, 0.25, 0.75, 1.0,  # note_taxonomy: strong task, only the two under 0.5 go in
             0.0, 0.75, 0.9, 1.0]  # hashtag_choice: weak task, all of it goes in (mastered samples too)
    cfg = DiagnosisConfig(weak_task_below=50.0, low_pass_below=0.5, rare_floor=0.0, anchor_ratio=0.0)
    cmap = diagnose({"note_taxonomy": 80.0, "hashtag_choice": 30.0, "arithmetic": 10.0}, pool, rates, cfg)
    ids = [s.id for s in cmap.bucket]
    assert sorted(ids) == ["hashtag_choice-0", "hashtag_choice-1", "hashtag_choice-2", "hashtag_choice-3",
                           "note_taxonomy-0", "note_taxonomy-1"]
    note, tag = cmap.tasks["note_taxonomy"], cmap.tasks["hashtag_choice"]
    assert (note.weak, note.low_pass_samples, note.bucket_samples, note.pool_samples) == (False, 2, 2, 4)
    assert (tag.weak, tag.low_pass_samples, tag.bucket_samples) == (True, 1, 4)
    assert not cmap.tasks["arithmetic"].weak  # a general task is measured, never targeted
    assert note.mean_pass_rate == pytest.approx(0.5) and tag.mean_pass_rate == pytest.approx(2.65 / 4)


@pytest.mark.parametrize("ratio, anchors", [(1.0, [2, 4, 5]), (0.5, [2, 4]), (0.3, [2]), (3.0, [2, 4, 5]), (0.0, [])])
def test_a_strong_tasks_failures_bring_passed_anchors(ratio, anchors):
    """Not weak: the failures plus ceil(ratio x failures) passed samples in pool order (at most all of them);
    a weak task gets none (it has all its samples already)."""
    pool = [sample("note_taxonomy", i) for i in range(6)] + [sample("hashtag_choice", i) for i in range(3)]
    rates = [0.0, 0.25, 0.75, 0.0, 1.0, 0.5,  # note_taxonomy (strong): failures 0, 1, 3; passed 2, 4, 5
             0.0, 1.0, 1.0]
    cfg = DiagnosisConfig(weak_task_below=50.0, low_pass_below=0.5, rare_floor=0.0, anchor_ratio=ratio)
    cmap = diagnose({"note_taxonomy": 80.0, "hashtag_choice": 30.0}, pool, rates, cfg)
    notes = [s.id for s in cmap.bucket if s.task == "note_taxonomy"]
    assert notes == [f"note_taxonomy-{i}" for i in [0, 1, 3, *anchors]]
    assert cmap.tasks["note_taxonomy"].low_pass_samples == 3
    assert [s.id for s in cmap.bucket if s.task == "hashtag_choice"] == [f"hashtag_choice-{i}" for i in range(3)]
    assert cmap.tasks["note_taxonomy"].bucket_samples == 3 + len(anchors)
    assert cmap.rule["anchor_ratio"] == ratio


def test_rare_tasks_are_repeated_up_to_the_floor():
    by_task = {"a": [sample("note_taxonomy", i) for i in range(10)], "b": [sample("hashtag_choice", 0)],
               "c": []}
    out = upweight_rare(by_task, 0.5)
    assert len(out["a"]) == 10 and len(out["b"]) == 5 and out["c"] == []
    assert {s.id for s in out["b"]} == {"hashtag_choice-0"}
    assert upweight_rare(by_task, 0.0)["b"] == by_task["b"]
    pool = by_task["a"] + by_task["b"]
    cmap = diagnose({}, pool, [0.0] * len(pool), DiagnosisConfig(rare_floor=0.5))
    assert cmap.tasks["hashtag_choice"].bucket_samples == 5 and cmap.tasks["hashtag_choice"].weight == 5.0
    assert len(cmap.bucket) == 15


def test_empty_bucket_when_everything_passes(tmp_path):
    pool = [sample("note_taxonomy", i) for i in range(3)]
    cmap = diagnose({"note_taxonomy": 90.0}, pool, [1.0, 1.0, 0.8], DiagnosisConfig())
    assert cmap.bucket == [] and cmap.to_json()["bucket_size"] == 0
    write_capability_map(tmp_path, cmap, pool=pool, pass_rates=[1.0, 1.0, 0.8], model="m")
    record = json.loads((tmp_path / "capability_map.json").read_text())
    assert record["tasks"]["note_taxonomy"]["bucket_samples"] == 0 and record["model"] == "m"
    assert (tmp_path / "failure_bucket.jsonl").read_text() == ""
    capability_map = (tmp_path / "capability_map.md").read_text()
    assert "| note_taxonomy | sns | 90.0 | 0.93 | 3 | 0 | no | 0 | 0.00 |" in capability_map


def test_capability_map_files_round_trip(tmp_path):
    pool = [sample("note_taxonomy", i) for i in range(3)]
    cmap = diagnose({"note_taxonomy": 70.0}, pool, [0.0, 0.5, 1.0], DiagnosisConfig(rare_floor=0, anchor_ratio=0))
    write_capability_map(tmp_path, cmap, pool=pool, pass_rates=[0.0, 0.5, 1.0], model="m")
    assert [s.id for s in load_jsonl(tmp_path / "failure_bucket.jsonl")] == ["note_taxonomy-0"]
    rates = [json.loads(line)["pass_rate"] for line in (tmp_path / "pass_rates.jsonl").read_text().splitlines()]
    assert rates == [0.0, 0.5, 1.0]


def test_diagnose_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 pass rates for 1 pool samples"):
        diagnose({}, [sample("note_taxonomy", 0)], [0.0, 1.0], DiagnosisConfig())


def test_rationale_share_is_raised_per_task():
    group = [sample("note_taxonomy", i, rationale="because" if i < 2 else None) for i in range(10)]  # 20%
    out = raise_rationale_share(group, 0.57)
    share = sum(bool(s.rationale) for s in out) / len(out)
    assert share >= 0.57
    fewer = raise_rationale_share(group, 0.5)  # one copy fewer would fall under the share
    copies = sum(bool(s.rationale) for s in fewer) // 2
    assert 2 * (copies - 1) / (2 * (copies - 1) + 8) < 0.5 <= 2 * copies / (2 * copies + 8)
    assert [s.id for s in out if not s.rationale] == [s.id for s in group if not s.rationale]
    assert raise_rationale_share(group, 0.1) == group  # already above
    no_rationale = [sample("hashtag_choice", i) for i in range(3)]
    assert raise_rationale_share(no_rationale, 0.57) == no_rationale
    with pytest.raises(ValueError, match="rationale_share"):
        raise_rationale_share(group, 1.0)


def test_hard_subset_keeps_low_pass_prompts():
    prompts = [sample("note_taxonomy", i, rationale="r" if i == 0 else None) for i in range(4)]
    hard = hard_subset(prompts, [0.0, 0.5, 0.8, 1.0], HardSubsetConfig(pass_below=0.75, rationale_share=0.0))
    assert [s.id for s in hard] == ["note_taxonomy-0", "note_taxonomy-1"]
    raised = hard_subset(prompts, [0.0, 0.5, 0.8, 1.0], HardSubsetConfig(pass_below=0.75, rationale_share=0.6))
    assert sum(bool(s.rationale) for s in raised) / len(raised) >= 0.6


def test_split_and_first_per_task():
    samples = [sample("arithmetic", 0), sample("note_taxonomy", 0), sample("note_taxonomy", 1), sample("copying", 0)]
    sns, general = split_by_domain(samples)
    assert [s.task for s in sns] == ["note_taxonomy", "note_taxonomy"]
    assert [s.task for s in general] == ["arithmetic", "copying"]
    assert [s.id for s in first_per_task(samples, 1)] == ["arithmetic-0", "note_taxonomy-0", "copying-0"]
    assert first_per_task(samples, 0) == samples


def test_pick_winner_fallback_and_ties():
    s = sample("arithmetic", 0, answer="12", rationale="six and six")
    label = pick(s, ["11", "12", "12 "], [0.0, 1.0, 1.0], min_reward=0.5)
    assert label.winner == 1 and not label.fallback  # ties: the earliest
    assert label.sample.answer == "12" and label.sample.rationale is None
    assert label.sample.meta["reference"] == "12" and label.sample.meta["soft_label"]
    wrong = pick(s, ["1", "2"], [0.0, 0.0], min_reward=0.5)
    assert wrong.fallback and wrong.winner == -1 and wrong.sample is s  # the reference is kept
    no_floor = pick(s, ["1", "2"], [0.0, 0.1], min_reward=None)
    assert no_floor.winner == 1 and no_floor.sample.answer == "2"
    empty = pick(s, ["", "  "], [5.0, 5.0], min_reward=None)
    assert empty.fallback
    assert pick(s, ["", "7"], [9.0, 0.1], min_reward=None).sample.answer == "7"  # an empty answer never wins
    with pytest.raises(ValueError, match="1 scores for 2 candidates"):
        pick(s, ["a", "b"], [1.0], min_reward=None)


def test_reward_judge_uses_the_samples_reward():
    s = Sample(task="entity_extraction", prompt="p", answer="Nora, Sam", reward={"name": "set_f1", "params": {}})
    assert reward_judge(s, ["Nora, Sam", "Nora", "Bob"]) == pytest.approx([1.0, 2 / 3, 0.0])


def test_soft_label_end_to_end_with_a_scripted_generator(monkeypatch):
    import redone_fast.pipeline.soft_labels as soft
    samples = [sample("arithmetic", 0, answer="4"), sample("arithmetic", 1, answer="9")]
    candidates = {"arithmetic-0": ["3", "4", "5"], "arithmetic-1": ["1", "2", "3"]}

    def fake_generate(engine, items, *, n, temperature, max_new_tokens, seed, ctx):
        assert n == 3 and temperature == 1.0
        return [candidates[s.id] for s in items]

    monkeypatch.setattr(soft, "generate_answers", fake_generate)
    labels = soft_label(None, samples, SoftLabelConfig(k=3))
    assert [label.sample.answer for label in labels] == ["4", "9"]
    assert [label.fallback for label in labels] == [False, True]
    assert labels[0].to_json()["candidates"] == ["3", "4", "5"] and labels[0].to_json()["scores"] == [0.0, 1.0, 0.0]
    assert len(soft_label(None, samples, SoftLabelConfig(k=3, max_prompts=1))) == 1


def test_model_judge_prefers_what_the_model_finds_likely():
    """`model:<folder>`: mean log-prob per answer token under a local model (the tiny model copies well)."""
    from redone_fast.pipeline.soft_labels import LikelihoodJudge, make_judge
    from redone_fast.tiny import data_path, model_path
    copying = [s for s in load_jsonl(data_path("eval")) if s.task == "copying" and s.meta.get("difficulty") == "easy"]
    judge = make_judge(f"model:{model_path()}")
    assert isinstance(judge, LikelihoodJudge)
    for s in copying[:3]:
        scores = judge(s, [s.answer, "zq xv wk", "Nairobi"])
        assert len(scores) == 3 and all(v < 0 for v in scores)
        assert scores[0] > max(scores[1:])  # the exact copy is the likeliest
    with pytest.raises(ValueError, match="model:<folder>"):
        make_judge("gpt-judge")
