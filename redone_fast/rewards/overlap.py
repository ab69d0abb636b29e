"""Overlap rewards for open answers: BLEU and chrF++ (translation), ROUGE (comprehension).

BLEU and chrF come from sacrebleu (the implementation MT papers report), at sentence level, divided by
100. ROUGE is implemented here after Lin (2004), "ROUGE: A Package for Automatic Evaluation of
Summaries": ROUGE-N is n-gram overlap, ROUGE-L the longest common subsequence (LCS), each reported as
the F1 of precision (overlap / prediction size) and recall (overlap / reference size). Its tokenizer is
rouge-score's default one (lower-case, every run of characters outside [a-z0-9] is a separator, so
non-ASCII letters, CJK and emoji are dropped; no stemming), and the tests hold it equal to
`rouge_score.rouge_scorer.RougeScorer(use_stemmer=False)`. The LCS uses the bit-parallel recurrence
(Allison and Dix 1986; Hyyrö 2004), one big-integer step per token, so long passages stay cheap.

Each reward extracts the answer first (redone_fast.rewards.normalize.answer_text: after the last
"Answer:", first line) from the prediction and the reference alike.
"""
from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

from sacrebleu.metrics import BLEU, CHRF

from redone_fast.rewards.normalize import answer_text

# sacrebleu.sentence_bleu's defaults: 13a tokenizer, exponential smoothing, effective order.
_SENTENCE_BLEU = BLEU(effective_order=True)


@lru_cache(maxsize=8)
def _chrf_metric(word_order: int) -> CHRF:
    return CHRF(word_order=word_order)


def _unit(score: float) -> float:
    """A 0-100 sacrebleu score as a reward in [0, 1] (sacrebleu may return 100.00000000000004)."""
    return min(1.0, max(0.0, score / 100.0))


def sentence_bleu(hypothesis: str, reference: str) -> float:
    """sacrebleu.sentence_bleu(hypothesis, [reference]).score / 100, for two texts as they are."""
    return _unit(_SENTENCE_BLEU.sentence_score(hypothesis, [reference]).score)


def bleu(prediction: str, reference: str) -> float:
    """sacrebleu sentence BLEU of the answer against the reference, / 100."""
    return sentence_bleu(answer_text(prediction), answer_text(reference))


def chrf(prediction: str, reference: str, *, word_order: int = 2) -> float:
    """sacrebleu sentence chrF (word_order=2: chrF++, the default; 0: plain chrF), / 100."""
    if word_order < 0:
        raise ValueError(f"word_order must be >= 0, got {word_order}")
    return _unit(_chrf_metric(word_order).sentence_score(answer_text(prediction), [answer_text(reference)]).score)


# ---------------------------------------------------------------------------------------------------
# ROUGE

_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")
ROUGE_VARIANTS = ("rouge1", "rouge2", "rougeL")


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's default tokens: lower-cased, split at every character outside [a-z0-9]."""
    return _NON_ALPHANUMERIC.sub(" ", text.lower()).split()


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


def rouge_f1(predicted: str, reference: str, variant: str = "rougeL") -> float:
    """ROUGE F1 of two texts (no answer extraction): rouge-score's fmeasure for that variant."""
    pred_tokens, ref_tokens = rouge_tokens(predicted), rouge_tokens(reference)
    if variant == "rougeL":
        return rouge_l(pred_tokens, ref_tokens)[2]
    if variant in ("rouge1", "rouge2"):
        return rouge_n(pred_tokens, ref_tokens, int(variant[-1]))[2]
    raise ValueError(f"unknown ROUGE variant {variant!r} (known: {', '.join(ROUGE_VARIANTS)})")


def rouge(prediction: str, reference: str, *, variant: str = "rougeL") -> float:
    """ROUGE F1 ("rouge1", "rouge2" or "rougeL", the default) of the answer against the reference."""
    return rouge_f1(answer_text(prediction), answer_text(reference), variant)
