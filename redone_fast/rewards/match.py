"""Matching rewards: exact match (classification, multiple choice) and set F1 (extraction, hashtags).

Both post-process prediction and reference the same way (redone_fast.rewards.normalize) and compare
case-insensitively. Each is `(prediction, reference, **params) -> float in [0, 1]`. Chinese lists use
full-width separators ("北京，上海、广州；深圳"): with the default separator "," these split items too.
"""
from __future__ import annotations

import json

from redone_fast.rewards.normalize import answer_text, canonical, cut_single, normalize_answer, split_items


def exact_match(prediction: str, reference: str, *, single: bool = False, normalize: bool = True) -> float:
    """1.0 when the answers are equal, else 0.0.

    single: cut both at the first period or comma (single-choice answers: "Food." == "Food").
    normalize: compare canonical forms (case-folded, whitespace collapsed, quotes stripped). With
    normalize=False the answers (after the last "Answer:", first line, stripped) must be identical,
    character for character: for tasks where case matters, such as copying a string.
    """
    if not normalize:
        left, right = answer_text(prediction), answer_text(reference)
        if single:
            left, right = cut_single(left).strip(), cut_single(right).strip()
        return float(left == right)
    left = canonical(normalize_answer(prediction, single=single))
    right = canonical(normalize_answer(reference, single=single))
    return float(left == right)


DEFAULT_SEPARATOR = ","
# Read as the default separator: the full-width comma, the enumeration comma 、 (and its half-width
# form), the full-width semicolon. Inside a quoted list-literal item they become "," on both sides alike.
_FULL_WIDTH_SEPARATORS = str.maketrans(dict.fromkeys("，、､；", DEFAULT_SEPARATOR))


def item_set(text: str, separator: str = DEFAULT_SEPARATOR) -> set[str]:
    """The canonical items of a list answer, as a set (full-width separators count as the default one)."""
    answer = answer_text(text)
    if separator == DEFAULT_SEPARATOR:
        answer = answer.translate(_FULL_WIDTH_SEPARATORS)
    return {canonical(item) for item in split_items(answer, separator)} - {""}


def object_item_set(text: str, key: str) -> set[str]:
    """The canonical `key` values of the objects in the text's JSON list, from its first "[" to its last
    "]" (e.g. SNS-Bench MRC-complex's `<Result>[{"Option": ..., "Reason": ...}]</Result>`); empty when
    there is no such list (never evaluated as code)."""
    start, end = text.find("["), text.rfind("]")
    try:
        entries = json.loads(text[start:end + 1]) if 0 <= start < end else []
    except (json.JSONDecodeError, RecursionError):
        return set()
    if not isinstance(entries, list):
        return set()
    values = (entry.get(key) for entry in entries if isinstance(entry, dict))
    return {canonical(value) for value in values if isinstance(value, str)} - {""}


def set_f1(prediction: str, reference: str, *, separator: str = DEFAULT_SEPARATOR, item_key: str = "") -> float:
    """F1 of the predicted item set against the reference item set.

    Items are split on `separator` (the default "," also splits at "，", "、" and "；"), or read from a
    list literal, stripped and compared case-insensitively; duplicates count once. With `item_key`, the
    items are that field of the objects of a JSON list anywhere in the text (`object_item_set`).
    F1 = 2|P & R| / (|P| + |R|); both empty -> 1.0.
    """
    if item_key:
        predicted, expected = object_item_set(prediction, item_key), object_item_set(reference, item_key)
    else:
        predicted, expected = item_set(prediction, separator), item_set(reference, separator)
    if not predicted and not expected:
        return 1.0
    return 2 * len(predicted & expected) / (len(predicted) + len(expected))
