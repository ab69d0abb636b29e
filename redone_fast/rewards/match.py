"""Matching rewards: exact match (classification, multiple choice) and set F1 (extraction, hashtags).

Both post-process prediction and reference the same way (redone_fast.rewards.normalize) and compare
case-insensitively. Each is `(prediction, reference, **params) -> float in [0, 1]`.
"""
from __future__ import annotations

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


def item_set(text: str, separator: str = ",") -> set[str]:
    """The canonical items of a list answer, as a set."""
    return {canonical(item) for item in split_items(answer_text(text), separator)} - {""}


def set_f1(prediction: str, reference: str, *, separator: str = ",") -> float:
    """F1 of the predicted item set against the reference item set.

    Items are split on `separator` (or read from a list literal), stripped and compared
    case-insensitively; duplicates count once. F1 = 2|P & R| / (|P| + |R|); both empty -> 1.0.
    """
    predicted, expected = item_set(prediction, separator), item_set(reference, separator)
    if not predicted and not expected:
        return 1.0
    return 2 * len(predicted & expected) / (len(predicted) + len(expected))
