"""Overlap rewards for open answers: BLEU and chrF++ (translation), ROUGE (comprehension).

BLEU and chrF come from sacrebleu (the implementation MT papers report), at sentence level, divided by
100. ROUGE is implemented here after Lin (2004), "ROUGE: A Package for Automatic Evaluation of
Summaries": ROUGE-N is n-gram overlap, ROUGE-L the longest common subsequence (LCS), each reported as
the F1 of precision (overlap / prediction size) and recall (overlap / reference size). The LCS uses the
bit-parallel recurrence (Allison and Dix 1986; Hyyrö 2004), one big-integer step per token, so long
passages stay cheap.

Each reward extracts the answer first (redone_fast.rewards.normalize.answer_text: after the last
"Answer:", first line) from the prediction and the reference alike.

Tokenisation, chosen per sample from both texts (the same choice for both sides, so a prediction that
drifts into another script is scored, not ignored) unless the reward's `tokenize` parameter names one:

- ROUGE (`tokenize`: "auto", "default", "jieba", "char"). "default" is rouge-score's tokenizer
  (lower-case, every run of characters outside [a-z0-9] is a separator, no stemming): the tests hold
  it equal to `rouge_score.rouge_scorer.RougeScorer(use_stemmer=False)`; it drops CJK, most non-Latin
  letters and emoji, so two identical Chinese answers score 0 under it. "jieba" reads every script
  (`cjk_tokens`): NFKC (full-width letters and digits become ASCII) and lower case, Chinese runs cut
  into words by jieba, each kana a token, runs of other letters, digits and marks (English, accented
  Latin, Cyrillic, Korean) one word, each non-ASCII symbol (emoji, ©, ★) a token, punctuation and
  spaces separators; emoji variation selectors and skin tones are ignored. "char" is the same with
  each Chinese character a token. On ASCII text all three give the same tokens. "auto" (the reward's
  default): "char" when either text holds kana (Japanese: jieba is a Chinese segmenter), else
  "jieba" when either holds a CJK character, an emoji or symbol, or a letter or digit outside ASCII
  and Latin, else "default" (ASCII and accented Latin keep rouge-score's numbers).
- BLEU (`tokenize`: "auto" or a sacrebleu tokenizer: "13a", "zh", "char", "intl", "none",
  "ja-mecab", "ko-mecab"; the last two need sacrebleu's optional MeCab packages). "auto": kana ->
  "ja-mecab" when installed, else "char"; Chinese characters -> "zh" (each character a token, the
  rest as 13a: what sacrebleu uses for Chinese targets); Hangul -> "ko-mecab" when installed, else
  "13a" (Korean is written with spaces); anything else -> "13a", sacrebleu's default (an unspaced
  Chinese phrase is one 13a word: all or nothing).
- chrF: character n-grams are taken after deleting all whitespace (sacrebleu's whitespace=False), so
  they read CJK and emoji as they are, and inserting spaces never changes them. chrF++'s word n-grams
  (word_order > 0) split on whitespace only (ASCII punctuation is split off word ends), so an
  unspaced Chinese sentence is one "word" and one changed character zeroes that part (a
  near-identical 20-character sentence scores 0.68 instead of 0.79 for plain chrF). `tokenize`
  ("auto", "default", "jieba", "char") therefore inserts spaces around Chinese words ("jieba") or
  each CJK character ("char") before scoring, changing only the word n-grams; "default" leaves the
  text to sacrebleu; "auto" picks "char" for kana, "jieba" for Chinese characters, else "default".
"""
from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from itertools import groupby

from sacrebleu.metrics import BLEU, CHRF

from redone_fast.data.reward_spec import (
    BLEU_TOKENIZERS,
    CHRF_MAX_WORD_ORDER,
    CHRF_TOKENIZERS,
    ROUGE_TOKENIZERS,
    ROUGE_VARIANTS,
    missing_tokenizer_modules,
)
from redone_fast.rewards.normalize import answer_text

# ---------------------------------------------------------------------------------------------------
# Scripts

_HAN = ((0x3005, 0x3005), (0x3007, 0x3007), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF),
        (0x20000, 0x2FA1F), (0x30000, 0x323AF))
_KANA = ((0x3041, 0x3096), (0x3099, 0x309F), (0x30A1, 0x30FA), (0x30FC, 0x30FF), (0x31F0, 0x31FF),
         (0xFF66, 0xFF9F), (0x1B000, 0x1B16F))
_HANGUL = ((0x1100, 0x11FF), (0x3131, 0x318E), (0xA960, 0xA97F), (0xAC00, 0xD7AF), (0xD7B0, 0xD7FF),
           (0xFFA0, 0xFFDC))


def _class_of(ranges: tuple[tuple[int, int], ...]) -> re.Pattern:
    return re.compile("[" + "".join(f"{chr(low)}-{chr(high)}" for low, high in ranges) + "]")


_HAN_CHAR, _KANA_CHAR, _HANGUL_CHAR = _class_of(_HAN), _class_of(_KANA), _class_of(_HANGUL)
CJK_CHAR = _class_of(_HAN + _KANA)  # a Chinese character or a kana: written without spaces
# Emoji presentation selectors and skin-tone modifiers: "❤️" is "❤", "👍🏽" is "👍".
_IGNORED = dict.fromkeys([*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0), *range(0x1F3FB, 0x1F400)])


def cjk_language(*texts: str) -> str | None:
    """"ja" when any text holds kana, else "zh" when any holds a Chinese character, else "ko" when
    any holds Hangul, else None."""
    for language, pattern in (("ja", _KANA_CHAR), ("zh", _HAN_CHAR), ("ko", _HANGUL_CHAR)):
        if any(pattern.search(text) for text in texts):
            return language
    return None


@lru_cache(maxsize=1 << 16)
def _kind(char: str) -> tuple[str, bool]:
    """(group, foreign) of one character. group: "w" word character, "h" Chinese character, "k" kana,
    "s" symbol (its own token), " " separator. foreign: rouge-score's tokenizer would lose it (a CJK
    or non-Latin letter, a non-ASCII digit or symbol; accented Latin letters and marks are not)."""
    if char.isascii():
        return ("w" if char.isalnum() else " "), False
    code = ord(char)
    if any(low <= code <= high for low, high in _HAN):
        return "h", True
    if any(low <= code <= high for low, high in _KANA):
        return "k", True
    category = unicodedata.category(char)[0]
    if category == "M":  # a combining mark belongs to the word it sits in
        return "w", False
    if category == "L":
        return "w", not unicodedata.name(char, "").startswith("LATIN")
    if category == "N":
        return "w", True
    if category == "S":
        return "s", True
    return " ", False


def _has_foreign(text: str) -> bool:
    return not text.isascii() and any(_kind(char)[1] for char in text)


@lru_cache(maxsize=1)
def _jieba():
    import jieba  # imported on first use: loading its dictionary costs about 0.6 s

    jieba.setLogLevel(logging.WARNING)  # no "Building prefix dict..." on every worker's stderr
    jieba.initialize()
    return jieba


def _han_words(run: str, han: str) -> list[str]:
    return _jieba().lcut(run) if han == "jieba" else list(run)


def cjk_tokens(text: str, han: str = "jieba") -> list[str]:
    """Tokens of any script (the module docstring's "jieba" and "char" tokenizers).

    The text is NFKC-normalised and lower-cased, emoji selectors and skin tones removed; runs of
    Chinese characters become jieba words (han="jieba") or single characters (han="char"); each kana
    and each non-ASCII symbol is a token; runs of other letters, digits and combining marks are words;
    everything else separates. On ASCII text this equals `rouge_tokens`.
    """
    if han not in ("jieba", "char"):
        raise ValueError(f"han must be 'jieba' or 'char', got {han!r}")
    text = unicodedata.normalize("NFKC", text).lower().translate(_IGNORED)
    tokens: list[str] = []
    for group, chars in groupby(text, key=lambda char: _kind(char)[0]):
        if group == " ":
            continue
        run = "".join(chars)
        if group == "w":
            tokens.append(run)
        elif group == "h":
            tokens.extend(_han_words(run, han))
        else:  # kana, symbols: one token each
            tokens.extend(run)
    return tokens


def spaced_cjk(text: str, han: str = "jieba") -> str:
    """The text with a space around every Chinese word (han="jieba") or character (han="char") and
    every kana; nothing else changes (no normalisation, case kept): what chrF++'s word n-grams need."""
    pieces = []
    for group, chars in groupby(text, key=lambda char: _kind(char)[0]):
        run = "".join(chars)
        if group == "h":
            pieces.append(" " + " ".join(_han_words(run, han)) + " ")
        elif group == "k":
            pieces.append(" " + " ".join(run) + " ")
        else:
            pieces.append(run)
    return "".join(pieces)


def _check_choice(parameter: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {parameter} {value!r} (known: {', '.join(allowed)})")


def _choose(parameter: str, tokenize: str, allowed: tuple[str, ...], texts: tuple[str, str],
            pick: Callable[[str | None, tuple[str, str]], str]) -> str:
    """`tokenize` when it names a tokenizer, else (for "auto") pick(cjk_language(*texts), texts)."""
    _check_choice(parameter, tokenize, allowed)
    return tokenize if tokenize != "auto" else pick(cjk_language(*texts), texts)


# ---------------------------------------------------------------------------------------------------
# BLEU and chrF


@lru_cache(maxsize=16)
def _bleu_metric(tokenize: str) -> BLEU:
    # sacrebleu.sentence_bleu's defaults otherwise: exponential smoothing, effective order.
    return BLEU(effective_order=True, tokenize=tokenize)


@lru_cache(maxsize=16)
def _chrf_metric(word_order: int) -> CHRF:
    return CHRF(word_order=word_order)


def _unit(score: float) -> float:
    """A 0-100 sacrebleu score as a reward in [0, 1] (sacrebleu may return 100.00000000000004)."""
    return min(1.0, max(0.0, score / 100.0))


def _installed(tokenize: str) -> bool:
    return not missing_tokenizer_modules(tokenize)


def _auto_bleu(language: str | None, texts: tuple[str, str]) -> str:
    if language == "ja":
        return "ja-mecab" if _installed("ja-mecab") else "char"
    if language == "zh":
        return "zh"
    if language == "ko" and _installed("ko-mecab"):
        return "ko-mecab"
    return "13a"


def bleu_tokenizer(hypothesis: str, reference: str, tokenize: str = "auto") -> str:
    """The sacrebleu tokenizer `tokenize` stands for with these two texts (see the module docstring)."""
    return _choose("BLEU tokenizer", tokenize, BLEU_TOKENIZERS, (hypothesis, reference), _auto_bleu)


def sentence_bleu(hypothesis: str, reference: str, tokenize: str = "13a") -> float:
    """sacrebleu.sentence_bleu(hypothesis, [reference], tokenize=...).score / 100, for two texts as
    they are; tokenize="auto" picks the tokenizer from the texts (`bleu_tokenizer`)."""
    tokenizer = bleu_tokenizer(hypothesis, reference, tokenize)
    return _unit(_bleu_metric(tokenizer).sentence_score(hypothesis, [reference]).score)


def bleu(prediction: str, reference: str, *, tokenize: str = "auto") -> float:
    """sacrebleu sentence BLEU of the answer against the reference, / 100 (tokenizer: module docstring)."""
    return sentence_bleu(answer_text(prediction), answer_text(reference), tokenize)


def chrf_tokenizer(hypothesis: str, reference: str, tokenize: str = "auto") -> str:
    """"default", "jieba" or "char": how chrF++'s words are cut for these two texts (module docstring)."""
    return _choose("chrF tokenizer", tokenize, CHRF_TOKENIZERS, (hypothesis, reference),
                   lambda language, texts: {"ja": "char", "zh": "jieba"}.get(language, "default"))


def chrf(prediction: str, reference: str, *, word_order: int = 2, tokenize: str = "auto") -> float:
    """sacrebleu sentence chrF (word_order=2: chrF++, the default; 0: plain chrF), / 100.

    tokenize only changes the word n-grams (module docstring); with word_order=0 it has no effect.
    """
    if not 0 <= word_order <= CHRF_MAX_WORD_ORDER:
        raise ValueError(f"word_order must be in [0, {CHRF_MAX_WORD_ORDER}], got {word_order}")
    hypothesis, target = answer_text(prediction), answer_text(reference)
    mode = chrf_tokenizer(hypothesis, target, tokenize)
    if word_order and mode != "default":
        hypothesis, target = spaced_cjk(hypothesis, mode), spaced_cjk(target, mode)
    return _unit(_chrf_metric(word_order).sentence_score(hypothesis, [target]).score)


# ---------------------------------------------------------------------------------------------------
# ROUGE

_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's default tokens: lower-cased, split at every character outside [a-z0-9]."""
    return _NON_ALPHANUMERIC.sub(" ", text.lower()).split()


def _auto_rouge(language: str | None, texts: tuple[str, str]) -> str:
    if language == "ja":
        return "char"
    if language is not None or any(map(_has_foreign, texts)):
        return "jieba"
    return "default"


def rouge_tokenizer(predicted: str, reference: str, tokenize: str = "auto") -> str:
    """"default", "jieba" or "char": the ROUGE tokenizer `tokenize` stands for with these two texts."""
    return _choose("ROUGE tokenizer", tokenize, ROUGE_TOKENIZERS, (predicted, reference), _auto_rouge)


def _tokens(text: str, mode: str) -> list[str]:
    return rouge_tokens(text) if mode == "default" else cjk_tokens(text, mode)


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(predicted: list[str], reference: list[str], n: int) -> tuple[float, float, float]:
    """(precision, recall, F1) of n-gram overlap; overlap counts each n-gram min(count) times."""
    pred_grams, ref_grams = _ngrams(predicted, n), _ngrams(reference, n)
    overlap = sum((pred_grams & ref_grams).values())
    precision = overlap / max(sum(pred_grams.values()), 1)
    recall = overlap / max(sum(ref_grams.values()), 1)
    return precision, recall, _f1(precision, recall)


def lcs_length(a: list, b: list) -> int:
    """Length of the longest common subsequence of two sequences (bit-parallel, O(len(a)) big-int ops).

    Bit j of `row` is 1 while column j of b is not yet matched in the LCS table's current row
    (Allison-Dix / Hyyrö): each token of `a` updates row = (row + (row & match)) | (row & ~match),
    and the LCS is the number of zero bits at the end.
    """
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    match: dict = {}
    for j, token in enumerate(b):
        match[token] = match.get(token, 0) | (1 << j)
    mask = (1 << len(b)) - 1
    row = mask
    for token in a:
        hits = match.get(token)
        if hits:
            kept = row & hits
            row = ((row + kept) | (row - kept)) & mask
    return len(b) - row.bit_count()


def rouge_l(predicted: list[str], reference: list[str]) -> tuple[float, float, float]:
    """(precision, recall, F1) of the LCS (sentence-level ROUGE-L); 0 when either side is empty."""
    if not predicted or not reference:
        return 0.0, 0.0, 0.0
    common = lcs_length(predicted, reference)
    precision, recall = common / len(predicted), common / len(reference)
    return precision, recall, _f1(precision, recall)


def rouge_f1(predicted: str, reference: str, variant: str = "rougeL", tokenize: str = "default") -> float:
    """ROUGE F1 of two texts (no answer extraction): rouge-score's fmeasure for that variant.

    tokenize: "default" (rouge-score's tokens, this helper's default), "jieba", "char" or "auto"
    (chosen from the two texts; see the module docstring).
    """
    _check_choice("ROUGE variant", variant, ROUGE_VARIANTS)
    mode = rouge_tokenizer(predicted, reference, tokenize)
    pred_tokens, ref_tokens = _tokens(predicted, mode), _tokens(reference, mode)
    if variant == "rougeL":
        return rouge_l(pred_tokens, ref_tokens)[2]
    return rouge_n(pred_tokens, ref_tokens, int(variant[-1]))[2]


def rouge(prediction: str, reference: str, *, variant: str = "rougeL", tokenize: str = "auto") -> float:
    """ROUGE F1 ("rouge1", "rouge2" or "rougeL", the default) of the answer against the reference,
    tokenized as the texts need (tokenize="auto"; see the module docstring)."""
    return rouge_f1(answer_text(prediction), answer_text(reference), variant, tokenize)
