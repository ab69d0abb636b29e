"""The SNS-Bench reader.

Tests on the real benchmark read it from REDONE_SNS_BENCH (default ../shared/sns-bench beside the
repository) and skip when it is absent; the data itself never enters the repository. Error handling
and the list parser are tested on small made-up files and strings, so they run everywhere.
"""
import json
import re
from pathlib import Path

import pytest

from redone_fast.data import sns_bench
from redone_fast.data.reward_spec import REWARD_PARAMS, check_reward_spec
from redone_fast.data.schema import DataError, parse_sample
from redone_fast.data.sns_bench import (
    ENV_VAR,
    SNS_BENCH_FILES,
    SNS_BENCH_TOTAL,
    default_root,
    load_sns_bench,
    parse_candidates,
    parse_list_literal,
    summary,
)
from redone_fast.data.tasks import TASKS

CANDIDATE_FILES = ("Note-Taxonomy-single", "Note-Taxonomy-multiple", "Note-Hashtag-single", "Note-Hashtag-multiple",
                   "Note-CHLW")


@pytest.fixture(scope="module")
def bench():
    root = default_root()
    if not root.is_dir():
        pytest.skip(f"SNS-Bench data not found at {root}: set {ENV_VAR} to the benchmark's data/ folder "
                    "(github.com/HC-Guo/SNS-Bench) to run these tests")
    return root, load_sns_bench(root)


def _raw_items(root, stem):
    return json.loads((root / f"{stem}.json").read_text(encoding="utf-8"))


def _separator(sample):
    return sample.reward["params"].get("separator", ",")


# ------------------------------------------------------------------------------------------------
# The real benchmark


def test_counts_per_file_and_total(bench):
    _, samples = bench
    assert summary(samples) == [(f"sns_bench/{stem}", n) for stem, n in SNS_BENCH_FILES.items()]
    assert sum(n for _, n in summary(samples)) == SNS_BENCH_TOTAL == 6658


def test_every_sample_round_trips_through_the_schema(bench):
    _, samples = bench
    for task, task_samples in samples.items():
        stem = task.removeprefix("sns_bench/")
        assert task in TASKS
        for index, sample in enumerate(task_samples):
            assert parse_sample(json.loads(json.dumps(sample.to_json(), ensure_ascii=False))) == sample
            assert (sample.task, sample.split, sample.id) == (task, "eval", f"{stem}/{index}")
            assert (sample.meta["file"], sample.meta["index"]) == (f"{stem}.json", index)


def test_rewards_are_known_and_match_the_task_registry(bench):
    _, samples = bench
    for task, task_samples in samples.items():
        default = TASKS[task].reward
        for sample in task_samples:
            assert sample.reward["name"] in REWARD_PARAMS and check_reward_spec(sample.reward) is None
            assert sample.reward == {"name": default["name"], "params": default.get("params", {})}


def test_prompts_end_with_answer_and_hold_the_item_text(bench):
    root, samples = bench
    text_fields = {"Note-MRC-simple": ("query", "content"), "Note-NER": ("question", "content"),
                   "Note-QueryCorr-explain": ("sentence1", "sentence2")}
    for task, task_samples in samples.items():
        stem = task.removeprefix("sns_bench/")
        for item, sample in zip(_raw_items(root, stem), task_samples, strict=True):
            assert sample.prompt.endswith("\nAnswer:")
            assert sample.meta["raw_answer"] == item["answer"]
            if stem == "Note-CHLW":  # the comment, without the file's own output instruction
                comment = re.split(r"(?i)\s(?:possible|potential)\s+highlight", item["content"])[0].strip()
                assert comment.startswith(("Comment", "The comment")) and comment in sample.prompt, sample.id
                assert "Your output is" not in sample.prompt
                continue
            for field in text_fields.get(stem, ("content",)):
                assert item[field].strip() in sample.prompt, (sample.id, field)


def test_candidates_appear_in_the_prompt(bench):
    _, samples = bench
    for stem in CANDIDATE_FILES:
        for sample in samples[f"sns_bench/{stem}"]:
            candidates = sample.meta["candidates"]
            levels = candidates.values() if isinstance(candidates, dict) else [candidates]
            for level in levels:
                assert level and all(candidate and candidate in sample.prompt for candidate in level), sample.id


def test_list_answers_are_in_the_official_formats(bench):
    _, samples = bench
    for task in ("sns_bench/Note-Hashtag-multiple", "sns_bench/Note-NER"):  # comma-separated
        for sample in samples[task]:
            parts = [part.strip() for part in sample.answer.split(_separator(sample))]
            assert sample.answer.strip() and all(parts), sample.id
            assert "\n" not in sample.answer and not sample.answer.startswith("["), sample.id
    taxonomy = samples["sns_bench/Note-Taxonomy-multiple"]
    assert all(len(sample.answer.split(" | ")) == 3 for sample in taxonomy)
    # Note-CHLW: the file's "['a', 'b']" becomes the JSON list '["a", "b"]' ("[]" stays), words from the options
    for sample in samples["sns_bench/Note-CHLW"]:
        words = parse_list_literal(sample.meta["raw_answer"])
        assert json.loads(sample.answer) == words
        assert set(words) <= set(sample.meta["candidates"]), sample.id
    for sample in samples["sns_bench/Note-MRC-simple"]:  # the list of spans as a JSON list
        assert json.loads(sample.answer) == sample.meta["raw_answer"]
    for sample in samples["sns_bench/Note-MRC-complex"]:  # the answer's <Result> part alone
        body = re.fullmatch(r"<Result>(.*)</Result>", sample.answer).group(1)
        raw_body = re.findall(r"<Result>(.*?)</Result>", sample.meta["raw_answer"], re.S)[-1]
        assert json.loads(body) == json.loads(raw_body)


def test_single_line_answers(bench):
    _, samples = bench
    for task_samples in samples.values():
        for sample in task_samples:
            assert sample.answer and "\n" not in sample.answer and sample.answer == sample.answer.strip(), sample.id
    assert {s.answer for s in samples["sns_bench/Note-QueryCorr-topic"]} == {"-1", "0", "1", "2", "3"}
    assert {s.answer for s in samples["sns_bench/Note-Gender"]} == {"Yes", "No"}


def test_subset_of_files(bench):
    root, samples = bench
    some = load_sns_bench(root, files=["Note-Gender", "sns_bench/Note-QueryGen", "Note-NER.json"])
    assert list(some) == ["sns_bench/Note-NER", "sns_bench/Note-Gender", "sns_bench/Note-QueryGen"]
    assert some["sns_bench/Note-Gender"] == samples["sns_bench/Note-Gender"]
    with pytest.raises(DataError, match="unknown SNS-Bench file 'Note-Astrology'"):
        load_sns_bench(root, files=["Note-Astrology"])


# ------------------------------------------------------------------------------------------------
# Parsing and errors, on made-up data


@pytest.mark.parametrize("text,expected", [
    ("red, green ,blue", ["red", "green", "blue"]),
    ("['red', 'green']", ["red", "green"]),
    ('["red", "dark, green"]', ["red", "dark, green"]),
    ("['the cat's bowl', 'dog']", ["the cat's bowl", "dog"]),  # unescaped apostrophe, as in the files
    ("['a\\'b', \"c\"]", ["a'b", "c"]),
    ("['x',]", ["x"]),
    ("[]", []),
    ("  [ 'spaced' ]  ", ["spaced"]),
])
def test_parse_candidates(text, expected):
    assert parse_candidates(text) == expected


@pytest.mark.parametrize("text", ["['a', b]", "['unterminated", "['a'] trailing", "[1, 2]"])
def test_parse_list_literal_rejects_malformed(text):
    with pytest.raises(ValueError):
        parse_list_literal(text)


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert default_root() == tmp_path.resolve()
    monkeypatch.delenv(ENV_VAR)
    repo_root = Path(sns_bench.__file__).resolve().parent.parent.parent
    assert default_root() == (repo_root.parent / "shared" / "sns-bench").resolve()


def _write(folder, stem, items):
    path = folder / f"{stem}.json"
    path.write_text(items if isinstance(items, str) else json.dumps(items), encoding="utf-8")
    return path


FAKE_CHLW = {"content": "Comment: \nWe tried the moon cake at Blue Harbour Bakery\n\n"
                        "Possible highlighted word options list:\n"
                        "['Blue Harbour Bakery', 'moon cake']\n\nPlease give the list. Your output is:",
             "answer": "['Blue Harbour Bakery']"}


def test_fake_folder_loads(monkeypatch, tmp_path):
    _write(tmp_path, "Note-CHLW", [FAKE_CHLW, {**FAKE_CHLW, "answer": "[]"}])
    _write(tmp_path, "Note-Gender", [{"content": "Title: A made-up note", "answer": "No"}])
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with pytest.warns(UserWarning, match="items, SNS-Bench has"):
        samples = load_sns_bench(files=["Note-CHLW", "Note-Gender"])
    first, second = samples["sns_bench/Note-CHLW"]
    assert (first.answer, second.answer) == ('["Blue Harbour Bakery"]', "[]")
    assert first.meta["candidates"] == ["Blue Harbour Bakery", "moon cake"]
    assert "We tried the moon cake" in first.prompt and "Blue Harbour Bakery, moon cake" in first.prompt
    assert samples["sns_bench/Note-Gender"][0].reward == {"name": "exact_match", "params": {"single": True}}


def test_missing_folder_is_named(monkeypatch, tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DataError, match=f"{missing}: no SNS-Bench folder"):
        load_sns_bench(missing)
    monkeypatch.setenv(ENV_VAR, str(missing))
    with pytest.raises(DataError, match=ENV_VAR):
        load_sns_bench()


def test_missing_file_is_named(tmp_path):
    _write(tmp_path, "Note-Gender", [{"content": "Title: A made-up note", "answer": "Yes"}])
    with pytest.raises(DataError, match=r"Note-QueryGen\.json: no such SNS-Bench file"), \
            pytest.warns(UserWarning, match=r"Note-Gender\.json: 1 items, SNS-Bench has 193"):
        load_sns_bench(tmp_path, files=["Note-Gender", "Note-QueryGen"])


@pytest.mark.parametrize("stem,items,message", [
    ("Note-Gender", [{"content": "fine", "answer": "Yes"}, {"content": 3, "answer": "No"}],
     r"Note-Gender\.json: item 1: field 'content' must be a string, got int"),
    ("Note-Gender", [{"content": "fine", "answer": "Maybe"}],
     r"Note-Gender\.json: item 0: answer 'Maybe' is not one of"),
    ("Note-NER", [{"content": "made-up text"}], r"Note-NER\.json: item 0: missing field 'question'"),
    ("Note-Hashtag-single", [{"content": "x", "candidates": "['a', b]", "answer": "a"}],
     r"Note-Hashtag-single\.json: item 0: field 'candidates' is not a candidate list"),
    ("Note-Taxonomy-multiple", [{"content": "x", "candidates_primary": "['a']", "candidates_secondary": "['b']",
                                 "candidates_tertiary": "['c']", "answer": "a | b"}],
     r"item 0: answer 'a \| b' is not a three-level path"),
    ("Note-MRC-simple", [{"query": "q", "content": "c", "answer": "not a list"}],
     r"Note-MRC-simple\.json: item 0: field 'answer' must be a list of strings"),
    ("Note-MRC-complex", [{"content": "c", "answer": "<AnswerList>[]</AnswerList>"}],
     r"item 0: answer has no <Result>"),
    ("Note-MRC-complex", [{"content": "c", "answer": "<Result>[{\"Option\": \"x\"}]</Result>"}],
     r"item 0: the answer's <Result> is not a list of"),
    ("Note-CHLW", [{"content": "Comment: no options here", "answer": "[]"}],
     r"item 0: field 'content' has no highlight"),
    ("Note-QueryGen", ["just a string"], r"Note-QueryGen\.json: item 0: expected a JSON object, got str"),
    ("Note-QueryGen", {"content": "x"}, r"Note-QueryGen\.json: expected a JSON list of items, got dict"),
    ("Note-QueryGen", "[{\"content\": ", r"Note-QueryGen\.json: not valid JSON"),
    ("Note-QueryGen", [], r"Note-QueryGen\.json: no items"),
])
def test_malformed_items_name_file_and_index(tmp_path, stem, items, message):
    _write(tmp_path, stem, items)
    with pytest.raises(DataError, match=message):
        load_sns_bench(tmp_path, files=[stem])
