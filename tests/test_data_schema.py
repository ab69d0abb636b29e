"""The JSONL sample schema: good records round-trip; each malformed file names its file and line."""
import json
import re

import pytest

from redone_fast.data.reward_spec import CODE_EXEC_MAX_TIMEOUT_S, REWARD_PARAMS, check_reward_spec
from redone_fast.data.schema import DataError, Sample, load_jsonl, write_jsonl

GOOD = {"task": "arithmetic", "prompt": "2+3=", "answer": "5", "reward": "exact_match"}


def write_lines(tmp_path, *lines):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_round_trip(tmp_path):
    samples = [
        Sample(task="note_taxonomy",
               prompt=({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Note: ☕️ latte art"}),
               answer="Food", reward={"name": "exact_match", "params": {"single": True}},
               rationale="It is about coffee.", split="train", id="n1", meta={"source": "gen"}),
        Sample(task="arithmetic", prompt="2+3=", answer="5", reward={"name": "exact_match", "params": {}}),
    ]
    path = tmp_path / "out.jsonl"
    assert write_jsonl(path, samples) == 2
    assert load_jsonl(path) == samples
    assert load_jsonl(path, split="train") == samples[:1]
    assert samples[1].messages() == [{"role": "user", "content": "2+3="}]


@pytest.mark.parametrize("lines,message", [
    (['{"task": "arithmetic", "prompt": "1+1=", "answer": "2", "reward": "exact_match"', ],
     r"data.jsonl:1: not valid JSON"),
    ([json.dumps(GOOD), json.dumps({k: v for k, v in GOOD.items() if k != "answer"})],
     r"data.jsonl:2: missing field 'answer'"),
    ([json.dumps({**GOOD, "answer": 5})], r"data.jsonl:1: field 'answer' must be a string, got int"),
    ([json.dumps({**GOOD, "reward": "bleurt"})], r"data.jsonl:1: unknown reward 'bleurt'"),
    ([json.dumps({**GOOD, "reward": {"name": "regex"}})], r"data.jsonl:1: reward 'regex' needs parameter 'pattern'"),
    ([json.dumps({**GOOD, "reward": {"name": "exact_match", "params": {"single": "yes"}}})],
     r"parameter 'single' must be bool, got str"),
    ([json.dumps({**GOOD, "task": "astrology"})], r"data.jsonl:1: unknown task 'astrology'"),
    ([json.dumps({**GOOD, "prompt": [{"role": "bot", "content": "hi"}]})], r"prompt\[0\] needs a role"),
    ([json.dumps({**GOOD, "score": 1})], r"unknown field\(s\) \['score'\]"),
    (["", json.dumps(GOOD), "[1, 2]"], r"data.jsonl:3: expected a JSON object, got list"),
    ([], r"data.jsonl: no samples \(empty file\)"),
])
def test_malformed_files_name_file_and_line(tmp_path, lines, message):
    with pytest.raises(DataError, match=message):
        load_jsonl(write_lines(tmp_path, *lines))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nope.jsonl: no such data file"):
        load_jsonl(tmp_path / "nope.jsonl")


def test_unknown_tasks_allowed_when_asked(tmp_path):
    path = write_lines(tmp_path, json.dumps({**GOOD, "task": "my_new_task"}))
    assert load_jsonl(path, known_tasks=None)[0].task == "my_new_task"


def test_every_reward_parameter_schema_is_checkable():
    for name, params in REWARD_PARAMS.items():
        required = {k: ("x" if str in types else 1 if int in types else [] if list in types else True)
                    for k, (types, needed) in params.items() if needed}
        assert check_reward_spec({"name": name, "params": required}) is None, name


# ---------------------------------------------------------------------------------------------------
# Parameter values checked at load time (what would otherwise fail, or hang, mid-training)


@pytest.mark.parametrize("reward, message", [
    ({"name": "regex", "params": {"pattern": "("}},
     r"parameter 'pattern' is not a valid regular expression: missing \)"),
    ({"name": "regex", "params": {"pattern": "a{2,1}"}},
     r"not a valid regular expression: min repeat greater than max"),
    ({"name": "code_exec", "params": {"expected_output": "", "timeout_s": 1e9}},
     r"'timeout_s' must be a number of seconds in \(0, 60\], got 1000000000.0"),
    ({"name": "code_exec", "params": {"expected_output": "", "timeout_s": 0}},
     r"'timeout_s' must be .* in \(0, 60\], got 0"),
    ({"name": "code_exec", "params": {"expected_output": "", "timeout_s": -1}}, r"'timeout_s' .* got -1"),
    ({"name": "code_exec", "params": {"expected_output": "", "timeout_s": float("nan")}}, r"'timeout_s' .* got nan"),
    ({"name": "code_exec", "params": {"expected_output": "", "timeout_s": float("inf")}}, r"'timeout_s' .* got inf"),
    ({"name": "code_exec", "params": {"expected_output": "", "timeout_s": True}},
     r"'timeout_s' must be int or float, got bool"),
    ({"name": "rouge", "params": {"variant": "rougeW"}},
     r"parameter 'variant' must be one of 'rouge1', 'rouge2', 'rougeL', got 'rougeW'"),
    ({"name": "rouge", "params": {"tokenize": "mecab"}},
     r"parameter 'tokenize' must be one of 'auto', 'default', 'jieba', 'char'"),
    ({"name": "bleu", "params": {"tokenize": "spm"}}, r"parameter 'tokenize' must be one of 'auto', '13a', 'zh'"),
    ({"name": "chrf", "params": {"word_order": -1}}, r"parameter 'word_order' must be in \[0, 6\], got -1"),
    ({"name": "chrf", "params": {"word_order": 10**9}}, r"parameter 'word_order' must be in \[0, 6\]"),
    ({"name": "chrf", "params": {"word_order": 2.0}}, r"parameter 'word_order' must be int, got float"),
    ({"name": "chrf", "params": {"word_order": True}}, r"parameter 'word_order' must be int, got bool"),
    ({"name": "length", "params": {"min_words": -1}}, r"parameter 'min_words' must be >= 0, got -1"),
    ({"name": "length", "params": {"max_words": -5}}, r"parameter 'max_words' must be >= 0, got -5"),
    ({"name": "length", "params": {"min_words": 3, "max_words": 1}}, r"max_words \(1\) < min_words \(3\)"),
    ({"name": "length", "params": {"max_words": False}}, r"parameter 'max_words' must be int, got bool"),
    ({"name": "keywords", "params": {"include": ["tea", 5]}},
     r"parameter 'include' must be a list of strings, item 1 is int"),
    ({"name": "keywords", "params": {"exclude": [None]}},
     r"parameter 'exclude' must be a list of strings, item 0 is NoneType"),
    ({"name": "keywords", "params": {"include": "tea"}}, r"parameter 'include' must be list, got str"),
    ({"name": "json_format", "params": {"required_keys": [["a"]]}},
     r"parameter 'required_keys' must be a list of strings, item 0 is list"),
    ({"name": "exact_match", "params": {"single": 1}}, r"parameter 'single' must be bool, got int"),
    ({"name": ["exact_match"]}, r"reward name must be a string, got list"),
    ({"name": {"n": "exact_match"}}, r"reward name must be a string, got dict"),
    ({"params": {}}, r"reward needs a 'name'"),
])
def test_bad_parameter_values_are_rejected(reward, message):
    problem = check_reward_spec(reward)
    assert problem is not None and re.search(message, problem), problem


def test_bad_values_are_named_with_file_and_line(tmp_path):
    bad = {**GOOD, "reward": {"name": "regex", "params": {"pattern": "("}}}
    with pytest.raises(DataError, match=r"data.jsonl:2: .*'pattern' is not a valid regular expression"):
        load_jsonl(write_lines(tmp_path, json.dumps(GOOD), json.dumps(bad)))
    nan = '{"task": "arithmetic", "prompt": "p", "answer": "a", "reward": {"name": "code_exec", "params": ' \
          '{"expected_output": "", "timeout_s": NaN}}}'  # Python's json reads NaN
    with pytest.raises(DataError, match=r"data.jsonl:1: .*'timeout_s' must be a number of seconds in \(0, 60\]"):
        load_jsonl(write_lines(tmp_path, nan))
    with pytest.raises(DataError, match=r"data.jsonl:1: reward name must be a string, got list"):
        load_jsonl(write_lines(tmp_path, json.dumps({**GOOD, "reward": {"name": ["regex"]}})))


@pytest.mark.parametrize("reward", [
    {"name": "code_exec", "params": {"expected_output": "", "timeout_s": CODE_EXEC_MAX_TIMEOUT_S}},
    {"name": "code_exec", "params": {"expected_output": "", "timeout_s": 0.5}},
    {"name": "length", "params": {"min_words": 0, "max_words": 0}},
    {"name": "length", "params": {"min_words": 2, "max_words": 2}},
    {"name": "chrf", "params": {"word_order": 0}},
    {"name": "keywords", "params": {"include": [], "exclude": ["x"]}},
    {"name": "regex", "params": {"pattern": r"(?i)\d{6}"}},
    {"name": "rouge", "params": {"variant": "rouge1", "tokenize": "char"}},
])
def test_good_parameter_values_pass(reward):
    assert check_reward_spec(reward) is None
