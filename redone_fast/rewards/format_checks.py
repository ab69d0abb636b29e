"""Format-compliance rewards (instruction following): regex, JSON object, length, keywords.

These judge the shape of the answer, not its agreement with a reference (the `reference` argument is
accepted for the common signature and ignored). They look at the whole answer: the text after the
last "Answer:" marker (redone_fast.rewards.normalize.after_marker), all of its lines, because a JSON
object, a list or a paragraph of N words spans lines. Each returns 1.0 or 0.0. `length` counts each
Chinese character or kana as a word (word_count).
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence

from redone_fast.rewards.normalize import after_marker
from redone_fast.rewards.overlap import CJK_CHAR

# Answers longer than this fail the regex check outright: Python's `re` has no time limit, and a
# pattern with nested quantifiers can take polynomial or exponential time on a long answer.
MAX_REGEX_INPUT_CHARS = 20_000


def regex(prediction: str, reference: str = "", *, pattern: str) -> float:
    """1.0 when the pattern matches the WHOLE answer (re.fullmatch), else 0.0.

    fullmatch, not search: a format rule describes the entire answer ("\\d{6}" means six digits and
    nothing else); write ".*word.*" (with "(?s)" across lines) for "contains". Inline flags such as
    "(?i)" work. Patterns come from the data files, which are trusted; a catastrophic pattern (nested
    quantifiers, "(a+)+$") can still run for minutes on a crafted answer: answers over
    MAX_REGEX_INPUT_CHARS score 0, and RewardPool's per-reward timeout (worker processes) stops any
    match that hangs. An invalid pattern raises re.error (the router scores it 0 and records why).
    """
    compiled = re.compile(pattern)
    answer = after_marker(prediction)
    if len(answer) > MAX_REGEX_INPUT_CHARS:
        return 0.0
    return float(compiled.fullmatch(answer) is not None)


_FENCE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?```$", re.S)


def json_format(prediction: str, reference: str = "", *, required_keys: Sequence[str] = ()) -> float:
    """1.0 when the answer parses as a JSON object (a dict) holding every key in required_keys.

    A markdown code fence around the object (```json ... ```) is allowed.
    """
    answer = after_marker(prediction)
    fenced = _FENCE.match(answer)
    if fenced:
        answer = fenced.group(1).strip()
    try:
        value = json.loads(answer)
    except (json.JSONDecodeError, RecursionError):
        return 0.0
    if not isinstance(value, dict):
        return 0.0
    return float(all(key in value for key in required_keys))


def word_count(text: str) -> int:
    """Whitespace-separated words; in text holding Chinese characters or kana (written without
    spaces), each of those counts as one word (the usual character count, 字数) and so does each
    remaining whitespace-separated piece holding a letter or digit ("我用iPhone拍照。" is 5)."""
    if not CJK_CHAR.search(text):
        return len(text.split())
    characters = len(CJK_CHAR.findall(text))
    rest = CJK_CHAR.sub(" ", text).split()
    return characters + sum(any(char.isalnum() for char in piece) for piece in rest)


def length(prediction: str, reference: str = "", *, min_words: int = 0, max_words: int | None = None) -> float:
    """1.0 when the answer's `word_count` is within [min_words, max_words] (bounds inclusive)."""
    if max_words is not None and max_words < min_words:
        raise ValueError(f"max_words ({max_words}) < min_words ({min_words})")
    words = word_count(after_marker(prediction))
    return float(words >= min_words and (max_words is None or words <= max_words))


def _pattern(keyword: str) -> re.Pattern:
    """Case-insensitive; an ASCII letter or digit at either end of the keyword must not touch another
    one ("cat" is not found in "category"), other keywords (CJK, emoji, "#tag") match anywhere."""
    body = re.escape(keyword)
    if keyword[0].isascii() and keyword[0].isalnum():
        body = r"(?<![A-Za-z0-9])" + body
    if keyword[-1].isascii() and keyword[-1].isalnum():
        body = body + r"(?![A-Za-z0-9])"
    return re.compile(body, re.IGNORECASE)


def keywords(prediction: str, reference: str = "", *, include: Sequence[str] = (),
             exclude: Sequence[str] = ()) -> float:
    """1.0 when every `include` keyword is in the answer and no `exclude` keyword is (case-insensitive).

    Blank keywords are ignored; with nothing to check the answer passes.
    """
    answer = after_marker(prediction)
    wanted = [word.strip() for word in include if word.strip()]
    banned = [word.strip() for word in exclude if word.strip()]
    if not all(_pattern(word).search(answer) for word in wanted):
        return 0.0
    return float(not any(_pattern(word).search(answer) for word in banned))
