"""Routing samples to rewards, failures scored 0 and counted, and the worker pool's timeouts and crashes."""
import importlib.util
import math
import os
import sys
import time
import types

import pytest

from redone_fast.data.reward_spec import REWARD_PARAMS, check_reward_spec
from redone_fast.data.schema import Sample
from redone_fast.rewards import REWARD_FUNCTIONS, RewardPool, compute_reward, score_sample


def make(reward, answer="", task="t", params=None, valid=True):
    spec = {"name": reward, "params": dict(params or {})}
    if valid and reward in REWARD_PARAMS:  # what a data file could hold
        assert check_reward_spec(spec) is None, check_reward_spec(spec)
    return Sample(task=task, prompt="p", answer=answer, reward=spec)


# One valid spec per reward name with a completion that earns 1.0 and one that earns 0.0.
ROUTES = {
    "exact_match": ({"single": True, "normalize": True}, "Food", "Answer: food.", "Travel"),
    "set_f1": ({"separator": "|"}, "a | b", "b | a", "c"),
    "bleu": ({}, "the cat sat on the mat", "the cat sat on the mat", "xyz"),
    "chrf": ({"word_order": 2}, "the cat sat", "the cat sat", "xyz"),
    "rouge": ({"variant": "rouge2"}, "the cat sat", "the cat sat", "sat cat the"),
    "regex": ({"pattern": r"\d+"}, "", "42", "forty-two"),
    "json_format": ({"required_keys": ["a"]}, "", '{"a": 1}', '{"b": 1}'),
    "length": ({"min_words": 1, "max_words": 2}, "", "two words", "far too many words"),
    "keywords": ({"include": ["tea"], "exclude": ["coffee"]}, "", "green tea", "tea and coffee"),
    "code_exec": ({"expected_output": "5\n", "stdin": "", "timeout_s": 3}, "", "print(5)", "print(6)"),
}


def test_every_reward_name_has_a_function():
    assert set(REWARD_FUNCTIONS) == set(REWARD_PARAMS)
    assert set(ROUTES) == set(REWARD_PARAMS)


def _fake_code_exec(prediction, reference, *, expected_output, stdin="", timeout_s=5.0):
    """Stands in for the sandbox: "runs" print(N) programs only."""
    _fake_code_exec.calls.append((prediction, expected_output, stdin, timeout_s))
    return float(prediction.startswith("print(") and prediction[6:-1] + "\n" == expected_output)


@pytest.fixture
def fake_sandbox(monkeypatch):
    """redone_fast.rewards.code_exec replaced by a fake (the router imports it lazily, by name)."""
    module = types.ModuleType("redone_fast.rewards.code_exec")
    module.code_exec = _fake_code_exec
    _fake_code_exec.calls = []
    monkeypatch.setitem(sys.modules, "redone_fast.rewards.code_exec", module)
    return _fake_code_exec.calls


@pytest.mark.parametrize("name", sorted(REWARD_PARAMS))
def test_every_reward_is_routed(name, fake_sandbox):
    params, answer, good, bad = ROUTES[name]
    sample = make(name, answer, params=params)
    outcome = score_sample(sample, good)
    assert (outcome.score, outcome.error, outcome.timed_out) == (1.0, None, False)
    outcome = score_sample(sample, bad)
    assert outcome.score == 0.0 and outcome.error is None and outcome.seconds >= 0
    if name == "code_exec":  # the sample's parameters reach the sandbox
        assert fake_sandbox[0] == ("print(5)", "5\n", "", 3)


@pytest.mark.skipif(importlib.util.find_spec("redone_fast.rewards.code_exec") is None,
                    reason="redone_fast.rewards.code_exec (the sandbox) is not in this checkout yet")
def test_code_exec_routes_to_the_real_sandbox():
    sample = make("code_exec", params={"expected_output": "5", "timeout_s": 10})
    assert score_sample(sample, "print(2 + 3)").score == 1.0
    assert score_sample(sample, "print(2 + 4)").score == 0.0


def _raises(prediction, reference, **params):
    raise RuntimeError("reward bug")


def _too_big(prediction, reference, **params):
    return 2.0


def _not_a_number(prediction, reference, **params):
    return float("nan")


def _text(prediction, reference, **params):
    return "1"


@pytest.mark.parametrize("sample, rewards, message", [
    (make("regex", params={"pattern": "("}, valid=False), None, "error"),  # re.error from a bad pattern
    (make("length", params={"min_words": 3, "max_words": 1}, valid=False), None, "max_words"),
    (make("rouge", params={"variant": "rougeW"}, valid=False), None, "unknown ROUGE variant"),
    (make("no_such_reward"), None, "unknown reward 'no_such_reward'"),
    (make("exact_match", params={"no_such_param": 1}, valid=False), None, "no_such_param"),  # TypeError
    (make("custom"), {"custom": _raises}, "RuntimeError: reward bug"),
    (make("custom"), {"custom": _too_big}, "outside [0, 1]"),
    (make("custom"), {"custom": _not_a_number}, "outside [0, 1]"),
    (make("custom"), {"custom": _text}, "not a number"),
])
def test_failures_score_zero_with_the_error(sample, rewards, message):
    outcome = score_sample(sample, "some completion", rewards=rewards)
    assert outcome.score == 0.0
    assert message in outcome.error
    with pytest.raises(Exception):
        compute_reward(sample.reward, "some completion", sample.answer, rewards=rewards)


def test_in_process_pool_counts_errors_per_task():
    samples = [make("exact_match", "a", task="cls"), make("regex", task="fmt", params={"pattern": "("}, valid=False),
               make("exact_match", "b", task="cls"), make("custom", task="fmt")]
    with RewardPool(workers=0, rewards={"custom": _raises}) as pool:
        outcomes = pool.score_many(samples, ["a", "x", "c", "y"])
        assert [o.score for o in outcomes] == [1.0, 0.0, 0.0, 0.0]
        assert [o.error is None for o in outcomes] == [True, False, True, False]
        stats = pool.stats()
        assert (stats["cls"].calls, stats["cls"].errors) == (2, 0)
        assert (stats["fmt"].calls, stats["fmt"].errors, stats["fmt"].timeouts) == (2, 2, 0)
        assert pool.error_counts() == {"fmt": 2}
        with pytest.raises(ValueError, match="completions"):
            pool.score_many(samples, ["a"])


def _crash(prediction, reference, **params):
    os._exit(7)  # the worker process dies without a word


# A catastrophic pattern: nested quantifiers against 32 "a"s that cannot end in "b" backtrack
# through ~2**32 ways to split the run (minutes): a reward that hangs.
HANGING = ("regex", {"pattern": "(a+)+b"}, "a" * 32)


def test_pool_times_out_and_survives_crashes():
    hang = make(HANGING[0], task="format", params=HANGING[1])
    crash = make("custom", task="crash")
    good = [make("exact_match", str(i), task="cls") for i in range(6)]
    samples = [good[0], hang, good[1], crash, good[2], good[3], hang, good[4], good[5]]
    completions = ["0", HANGING[2], "1", "x", "wrong", "3", HANGING[2], "4", "5"]
    with RewardPool(workers=2, timeout_s=1.0, rewards={"custom": _crash}) as pool:
        start = time.monotonic()
        outcomes = pool.score_many(samples, completions)
        elapsed = time.monotonic() - start
        assert [o.score for o in outcomes] == [1, 0, 1, 0, 0, 1, 0, 1, 1]
        for index in (1, 6):
            assert outcomes[index].timed_out and "timed out after 1 s" in outcomes[index].error
            assert outcomes[index].seconds >= 1.0
        assert "worker crashed (exit code 7)" in outcomes[3].error and not outcomes[3].timed_out
        assert outcomes[4].error is None  # a plain wrong answer
        assert elapsed < 30, elapsed  # the two hangs were cut at ~1 s each, not run for minutes
        stats = pool.stats()
        assert (stats["format"].calls, stats["format"].errors, stats["format"].timeouts) == (2, 2, 2)
        assert (stats["crash"].errors, stats["crash"].crashes, stats["crash"].timeouts) == (1, 1, 0)
        assert (stats["cls"].calls, stats["cls"].errors) == (6, 0)
        # The pool goes on after losing workers; results equal the in-process ones.
        again = pool.score_many(good, [str(i) for i in range(6)])
        assert [o.score for o in again] == [1.0] * 6
        with RewardPool(workers=0) as local:
            assert [o.score for o in local.score_many(good, ["0", "1", "x", "3", "4", "x"])] == [1, 1, 0, 1, 1, 0]


def test_pool_timeout_is_not_applied_to_code_exec_below_its_own_limit():
    pool = RewardPool(workers=1, timeout_s=1.0)
    assert pool._limit({"name": "code_exec", "params": {"expected_output": "", "timeout_s": 5}}) == 7.0
    assert pool._limit({"name": "regex", "params": {"pattern": "x"}}) == 1.0
    pool.close()


def test_pool_arguments_are_checked():
    with pytest.raises(ValueError):
        RewardPool(workers=-1)
    with pytest.raises(ValueError):
        RewardPool(workers=1, timeout_s=0)
    with pytest.raises(ValueError):
        RewardPool(workers=1, start_method="fork")
    pool = RewardPool(workers=0)
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.score_many([], [])


def test_outcome_scores_are_finite_floats():
    outcome = score_sample(make("bleu", "the cat"), "the cat")
    assert isinstance(outcome.score, float) and math.isfinite(outcome.score)
