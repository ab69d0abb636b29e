"""Answer extraction and normalisation for the training rewards, modelled on SNS-Bench's post-processing
(cut at the first line break, strip "Answer:") but forgiving where a reward should be: case-insensitive,
the answer after the last marker. The benchmark's exact, quirk-for-quirk scoring is
redone_fast.rewards.sns_bench, not this module.

A completion may carry reasoning before its answer: a sample with a rationale is trained to write
`rationale + "\\nAnswer: " + answer` (redone_fast.data.formatting). Every reward scores the answer
only, found the same way for the prediction and for the reference:

1. `answer_text`: the text after the LAST answer marker when there is one ("Answer:" in any case,
   or the full-width "答案：" that SNS-Bench also strips), else the whole text; stripped; then cut at
   the first line break (prompts ask for one line; SNS-Bench cuts every output there).
2. `single_answer`: for single-choice answers, also cut at the first period or comma ("Food." and
   "Food, because ..." both give "Food"). References go through the same cut: two Note-Hashtag-single
   references hold a period ("Mr. Zhang's Old Amber" -> "Mr"), so the cut must hit both sides.
3. `strip_wrappers`: surrounding whitespace, quotes, backticks and markdown asterisks removed.
4. `canonical`: case-folded, runs of whitespace made one space: the form that is compared.

"None" is an ordinary answer string here (the SNS-Bench prompts ask for it when nothing applies, and
"None" against "None" is a match). These helpers never raise on any string input.
"""
from __future__ import annotations

import re

from redone_fast.data.formatting import ANSWER_MARKER
from redone_fast.data.sns_bench import parse_list_literal

# "Answer:" (ANSWER_MARKER, any case: "Final answer:" counts) or the full-width Chinese marker.
_MARKER = re.compile(rf"(?:{re.escape(ANSWER_MARKER[:-1])}|答案)\s*[:：]", re.IGNORECASE)
_LINE_BREAK = re.compile(r"[\r\n\u2028\u2029]")
_SINGLE_CUT = re.compile(r"[.,。，]")
_WRAPPERS = " \t\r\n\"'`*“”‘’"  # stripped from both ends of an answer or a list item


def after_marker(text: str) -> str:
    """The text after the last answer marker (the whole text when there is none), stripped.

    Markdown bold around the marker ("**Answer:** X") leaves no stray asterisks behind.
    """
    last = None
    for last in _MARKER.finditer(text):
        pass
    if last is not None:
        text = text[last.end():]
    return text.strip().lstrip("*").strip()


def first_line(text: str) -> str:
    """Everything before the first line break."""
    return _LINE_BREAK.split(text, maxsplit=1)[0]


def answer_text(text: str) -> str:
    """The answer as SNS-Bench post-processes it: after the last marker, stripped, first line."""
    return first_line(after_marker(text)).strip()


def cut_single(text: str) -> str:
    """Everything before the first period or comma (ASCII or full-width)."""
    return _SINGLE_CUT.split(text, maxsplit=1)[0]


def strip_wrappers(text: str) -> str:
    """Whitespace, quotes, backticks and asterisks removed from both ends."""
    return text.strip(_WRAPPERS)


def canonical(text: str) -> str:
    """Case-folded with whitespace runs collapsed: two answers are equal when these are."""
    return " ".join(text.casefold().split())


def normalize_answer(text: str, *, single: bool = False) -> str:
    """answer_text, cut at the first period or comma when `single`, wrappers stripped (case kept)."""
    answer = answer_text(text)
    if single:
        answer = cut_single(strip_wrappers(answer))
    return strip_wrappers(answer)


def split_items(answer: str, separator: str = ",") -> list[str]:
    """The items of a list answer (already extracted with answer_text), wrappers stripped, empties dropped.

    A line that is a whole list literal ('["a", "b"]' or "['a', 'b']", the form SNS-Bench's own
    prompts asked for) is read as one (never evaluated as code); otherwise the line is split on
    `separator`. Order and duplicates are kept; callers that want sets make them.
    """
    answer = answer.strip()
    items: list[str] | None = None
    if answer.startswith("[") and answer.endswith("]"):
        try:
            items = parse_list_literal(answer)
        except ValueError:
            items = None
    if items is None:
        items = answer.split(separator) if separator else [answer]
    items = [strip_wrappers(item) for item in items]
    return [item for item in items if item]
