"""SNS-Bench scores: the number the official evaluators report for each of the benchmark's twelve files, 0-100.

`score(task, predictions, items)` takes the file (its stem, "Note-NER", or the task "sns_bench/Note-NER"),
the model's raw outputs and the Samples `redone_fast.data.sns_bench.load_sns_bench` made from that file,
in the same order. `evaluate(...)` returns the same number with its parts (BenchScore).

Parity. Every file is scored as the official SNS-Bench code scores it, quirks included, so that the numbers
are comparable with published ones. The official code is the OpenCompass port shipped in
https://github.com/HC-Guo/SNS-Bench at commit fbe9840231412881aba2aa09515fa2317cfd21c0 (OFFICIAL_COMMIT);
paths below are in that repository, `sns/` standing for `opencompass/opencompass/datasets/sns_bench/` and
`cfg/` for `opencompass/opencompass/configs/datasets/sns_bench/`. The reference of an item is the file's
own answer (Sample.meta["raw_answer"]) after the official dataset loader and dataset post-processor, not
Sample.answer. Predictions are the raw outputs; nothing is stripped or lower-cased unless the official code
does it. tests/test_sns_bench_parity.py re-implements the official logic separately and checks every file.

Official post-processors (what their regular expressions really match):
- "Answer:" is removed wherever it occurs (str.replace, case-sensitive), not only as a prefix; the text is
  stripped, cut before the first match of the file's pattern, stripped again. "answer:" stays.
- Taxonomy and Hashtag-single (sns/taxonomy.py, sns/hashtag.py): the pattern
  `[\\n.,]|<|endofresponse|>|<|end|>|<|im_end|>` is an alternation of single pieces, not of the tags
  "<|endofresponse|>", "<|end|>", "<|im_end|>": it cuts at a newline, ".", ",", "<", ">", "im_end" or ANY
  "end". "Fashion Trends" becomes "Fashion Tr", "Weekend Trip" "Week": such answers can never be matched
  (with those holding a period or a comma, 24 of Note-Taxonomy-single's 1205 references and 32 of
  Note-Hashtag-single's 800; 39 of Note-Taxonomy-multiple's 800, where only the other cuts count).
- Gender and QueryCorr-explain (sns/gender.py, sns/querycorr_explain.py): `[\\n.,]|<|endofresponse|>`:
  newline, ".", ",", "<", ">" or "endofresponse" (no bare "end").
- Hashtag-multiple and NER (sns/hashtag.py, sns/ner.py): `[\\n]|<|endofresponse|>`, then split on ","; an
  item is kept when it is non-empty BEFORE stripping, so "a, ,b" has an empty item "" and "a,,b" has not.
  The reference goes through the same function (the configs' dataset_postprocessor).

Per file (the score, then the quirks):
- Note-Taxonomy-single, Note-Hashtag-single, Note-Gender, Note-QueryCorr-explain: accuracy x 100 of the
  post-processed prediction against the raw reference (AccEvaluator, exact and case-sensitive string
  equality; cfg/sns_note_taxonomy_gen.py, cfg/sns_note_hashtag_gen.py, cfg/sns_note_gender_gen.py,
  cfg/sns_note_querycorr_explain_gen.py). "yes" is wrong for "Yes"; a rationale before the answer is wrong
  (the cut keeps the text before its first newline or period). The reference is not post-processed, which
  is why cut references are never matched.
- Note-Taxonomy-multiple: exact-match accuracy x 100 of the whole "primary | secondary | tertiary" path, not
  a per-level accuracy (EMEvaluator, openicl/icl_evaluator/icl_em_evaluator.py; the loader wraps the answer
  in a list, sns/taxonomy.py). The prediction is cut like Taxonomy-single (any "end" included), then both
  sides are normalised (utils/text_postprocessors.py general_postprocess): cut at the first newline, "." or
  ",", every character that is not a word character or whitespace deleted (so "|" and "&" go), the words
  a/an/the deleted in any case, whitespace runs made one space. A hit is that normalised prediction equal
  to the normalised reference or to the raw one. Still case-sensitive.
- Note-Hashtag-multiple, Note-NER: micro set F1 (sns/hashtag.py NoteHashtagNEREvaluator, sns/ner.py
  NoteNEREvaluator): hits, predicted and expected counts summed over the file, F1 = 2 hits / (predicted +
  expected + 0.0001), ROUNDED to 4 decimals, x 100. Items are compared case-sensitively after stripping.
- Note-CHLW (sns/chlw.py): the reference and the prediction are read with eval(); the prediction is the
  first bracketed block without nested brackets (`\\[[^\\[\\]]*\\]`), else the whole output. It must be a
  list of strings, otherwise the item is a failure (so is an item whose reference does not read). A list
  whose strings hold "[" or "]" cannot be read back: the search stops at the inner pair. An empty
  list counts as [""] on either side: [] for [] is one hit. Items are compared raw (no strip, no case
  folding). Micro F1 as above, rounded to 4 decimals, times the success ratio: score =
  (1 - failures / items) x 100 x F1 ("success-f1").
- Note-QueryCorr-topic (sns/querycorr_topic.py): no post-processor; the level is the first match of
  `(-1|0|1|2|3)` anywhere in the raw output, reasoning included: "10" reads as 1, "2024" as 2; no match is a
  failure. Per level P = tp / (tp + fp + 1e-5) x 100, R likewise with fn, F1 = 2PR / (P + R + 1e-5) on that
  0-100 scale; the score is the mean of the five levels' F1 x (1 - failures / items) ("success-macro-f1").
  The epsilons keep a perfect file just under 100, and a level absent from the file scores 0.
- Note-MRC-simple (sns/mrc_simple.py): the reference is the answer's spans joined with NO separator. The
  prediction is read with eval() like CHLW and joined with newlines; anything str.join refuses is a failure
  (a bare quoted string passes and is joined character by character); the bracket search is CHLW's, so 46
  of the 800 answers, whose spans hold "[" or "]", fail even when given back exactly. Existence counts: tp (both
  non-empty), fp, fn; P = tp / (tp + fp + 0.0001), R likewise, F1 = 2PR / (P + R + 0.0001). Over the tp
  pairs, with newlines and U+FFFD deleted and emoji removed (the `demoji` package): sentence BLEU of nltk
  (4-grams, no smoothing: a missing n-gram order makes BLEU about 1e-77, not 0) and ROUGE-1/2/L F of the
  `rouge` package, both on jieba tokens. The `rouge` package splits sentences at every "." and counts
  DISTINCT n-grams and words (sets, not counts); its ROUGE-L is the summary-level union LCS over those
  sets, with 1e-8 in the F denominators. The official code reports success-f1, success-blue and
  success-rouge-1/2/L, each its metric x success ratio (0-100); the score here is their mean.
- Note-MRC-complex (sns/mrc_complex.py): the options are read from the LAST `<Result>...</Result>` of each
  side (lookaround regex, at least one character), leading characters in "`json" and trailing backticks
  stripped, JSON list of objects with string "Option" and "Reason" (later duplicates of an option replace
  earlier ones); anything else is a failure. total-F1 is the existence F1 without epsilons (no true
  positive: 0); option-F1 and option-EM per item as in SNS-Bench (both empty 1, one empty 0, else the mean
  over predicted options of the best token-LCS F1 / exact match against the reference options, tokens:
  lower-cased, some punctuation deleted, each CJK character one token, every other run one token - the
  deleted list holds "……" as one entry, which never equals one character, so "…" stays). The score is the
  mean of success-total-f1, success-option-f1 and success-option-em (each x success ratio, 0-100).
- Note-QueryGen (sns/querygen.py): per item (cosine x 100 + ANLS) / 2, averaged. The cosine compares the
  prediction stripped and cut at `[\\n]|<|endofresponse|>` with the reference; ANLS compares the WHOLE RAW
  prediction (not stripped, not cut) with the reference: 100 x (1 - Levenshtein / longer length).

Where the official code gives no number, or cannot be followed, this module decides (documented choices):
- eval() of model output is never run: the text is read with ast.literal_eval, which gives the same value
  for every literal; an expression that is not a literal (a name, a call, "'a' + 'b'") is a failure here,
  where eval() would have run it.
- Note-MRC-simple: a set literal is joined in sorted order (eval's set order varies between runs).
  Where the `rouge` package raises (a prediction or reference left with no sentence once emoji and periods
  are gone, e.g. "['...']" or "['😀']"; or, in its recursive LCS, sentences of about 1000 words together),
  the official run stops with "Rouge Error"; here that pair's ROUGE-1/2/L are 0. Emoji are removed as
  demoji 2.0.0 does (Emoji 16.0; also every U+FE0E/U+FE0F): every Emoji-property character outside ASCII
  with its modifiers, ZWJ sequences, keycaps, flags and tag sequences (Unicode data of the `regex` module).
  On the real benchmark's text this differs from demoji once in 20,067 fields (a non-standard ZWJ
  sequence, whose joiner demoji leaves); older demoji releases know fewer emoji.
- Note-MRC-complex: where the official total-F1 divides by zero (no true positive but both false positives
  and false negatives) it is 0 here.
- Note-QueryGen: an empty prediction for an empty reference has ANLS 100 (the official code divides by
  zero; no reference is empty).

!!! Note-QueryGen's cosine is an embedding model's (bge-large-en-v1.5 in cfg/sns_note_querygen_gen.py). No
!!! embedding model is available offline here, so by default it is REPLACED by the cosine of word-count
!!! vectors (lower-cased \\w+ tokens). That score is NOT comparable to SNS-Bench's published numbers: the
!!! result says so (BenchScore.metric, BenchScore.stand_in) and a warning is raised. Pass
!!! `similarity=fn` (fn(prediction, reference) -> cosine in [-1, 1], e.g. a sentence-transformers model)
!!! to compute the real metric.
"""
from __future__ import annotations

import ast
import json
import math
import re
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from redone_fast.data.sns_bench import SNS_BENCH_FILES, TASK_PREFIX

OFFICIAL_REPO = "https://github.com/HC-Guo/SNS-Bench"
OFFICIAL_COMMIT = "fbe9840231412881aba2aa09515fa2317cfd21c0"

QUERY_GEN_STAND_IN = ("Note-QueryGen: the embedding cosine of SNS-Bench's metric is replaced by a word-count "
                      "cosine (no embedding model offline); this score is not comparable to published "
                      "SNS-Bench numbers. Pass similarity=... for the real metric.")


@dataclass(frozen=True)
class BenchScore:
    task: str  # the file's stem, e.g. "Note-NER"
    score: float  # 0-100: what SNS-Bench reports for the file (unless stand_in is set)
    metric: str  # how `score` was computed
    parts: dict[str, float] = field(default_factory=dict)  # its components, 0-100 ("parse_success" too)
    items: int = 0
    stand_in: str | None = None  # set when part of SNS-Bench's metric was replaced by something else


def _stem(task: str) -> str:
    stem = task[len(TASK_PREFIX):] if task.startswith(TASK_PREFIX) else task
    stem = stem[:-len(".json")] if stem.endswith(".json") else stem
    if stem not in SNS_BENCH_FILES:
        raise ValueError(f"unknown SNS-Bench file {task!r} (known: {', '.join(SNS_BENCH_FILES)})")
    return stem


# ---------------------------------------------------------------------------------------------------
# The official post-processors. Only the text before the first match is kept, so each pattern below is
# the official alternation reduced to what can start a match first (e.g. "endofresponse" starts with "end").

_CUT_TAGGED = re.compile(r"[\n.,<>]|im_end|end")  # Taxonomy, Hashtag-single: any "end" cuts
_CUT_SINGLE = re.compile(r"[\n.,<>]|endofresponse")  # Gender, QueryCorr-explain
_CUT_LIST = re.compile(r"[\n<>]|endofresponse")  # Hashtag-multiple, NER; QueryGen's cosine side


def _before(text: str, pattern: re.Pattern) -> str:
    """The text before the first match of `pattern` (all of it when there is none)."""
    found = pattern.search(text)
    return text[:found.start()] if found else text


def _single_answer(output: str, pattern: re.Pattern) -> str:
    """Every "Answer:" deleted, stripped, cut before the first match, stripped."""
    return _before(output.replace("Answer:", "").strip(), pattern).strip()


def _list_answer(output: str) -> list[str]:
    """Hashtag-multiple / NER items: items non-empty before stripping are kept, then stripped."""
    head = _before(output.replace("Answer:", "").strip(), _CUT_LIST)
    return [item.strip() for item in head.split(",") if item]


_NOT_WORD = re.compile(r"[^\w\s]")
_ARTICLE = re.compile(r"\b(a|an|the)\b", re.IGNORECASE)
_SPACES = re.compile(r"\s+")
_FIRST_STOP = re.compile(r"[\n.,]")


def _em_normal(text: str) -> str:
    """EMEvaluator's normalisation: cut at a newline/period/comma, punctuation and articles deleted."""
    text = _before(text, _FIRST_STOP)
    text = _ARTICLE.sub("", _NOT_WORD.sub("", text))
    return _SPACES.sub(" ", text).strip()


_BRACKET_BLOCK = re.compile(r"\[[^\[\]]*\]")


def _literal(output: str) -> object:
    """What the official eval() gives: the first bracketed block without nested brackets (else the whole
    output), read as a Python literal and never run. Raises ValueError where eval would fail, and for any
    expression that is not a literal."""
    block = _BRACKET_BLOCK.search(output)
    try:
        return ast.literal_eval(block.group(0) if block else output)
    except Exception as exc:  # literal_eval raises SyntaxError, ValueError, TypeError, MemoryError, ...
        raise ValueError(f"not a literal: {exc}") from None


def _string_list(value: object) -> list[str] | None:
    """The value when it is a list of strings (CHLW's two asserts), else None."""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


def _chlw_prediction(output: str) -> set[str] | None:
    """CHLW's prediction as a set ([] read as [""]); None when it is not a list of strings."""
    try:
        items = _string_list(_literal(output))
    except ValueError:
        return None
    return None if items is None else set(items or [""])


def _chlw_reference(text: str) -> set | None:
    """CHLW's reference: the whole text read (no bracket search, no type check), [""] when empty."""
    try:
        value = ast.literal_eval(text)
        return set(value) if len(value) else {""}
    except Exception:  # whatever eval(), len() or set() would raise: the item is a failure
        return None


# ---------------------------------------------------------------------------------------------------
# Small metrics


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _success_ratio(failures: int, total: int) -> float:
    """The official success ratio, on 0-100."""
    return (1 - failures / total) * 100


def _rounded_micro_f1(pairs: Iterable[tuple[set, set]]) -> float:
    """Summed hits / predicted / expected, F1 with the official 0.0001 and rounding to 4 decimals (0-1)."""
    hits = predicted = expected = 0
    for results, labels in pairs:
        hits += len(labels & results)
        predicted += len(results)
        expected += len(labels)
    return round(hits * 2 / (predicted + expected + 0.0001), 4)


# ---------------------------------------------------------------------------------------------------
# One scorer per kind of file; each takes (predictions, official references), returns (score, metric, parts)

Scored = tuple[float, str, dict[str, float]]


def _accuracy(predictions: Sequence[str], references: Sequence[str], pattern: re.Pattern) -> Scored:
    hits = sum(_single_answer(p, pattern) == str(r) for p, r in zip(predictions, references))
    accuracy = hits / len(predictions) * 100
    return accuracy, "accuracy (case-sensitive exact match)", {"accuracy": accuracy}


def _tagged_accuracy(predictions: Sequence[str], references: Sequence[str]) -> Scored:
    return _accuracy(predictions, references, _CUT_TAGGED)


def _plain_accuracy(predictions: Sequence[str], references: Sequence[str]) -> Scored:
    return _accuracy(predictions, references, _CUT_SINGLE)


def _taxonomy_multiple(predictions: Sequence[str], references: Sequence[str]) -> Scored:
    hits = 0
    for prediction, reference in zip(predictions, references):
        predicted = _em_normal(_single_answer(prediction, _CUT_TAGGED))
        hits += predicted in (_em_normal(reference), reference)
    accuracy = hits / len(predictions) * 100
    return accuracy, "exact-match accuracy of the whole path (normalised)", {"accuracy": accuracy}


def _set_f1(predictions: Sequence[str], references: Sequence[str]) -> Scored:
    pairs = [(set(_list_answer(p)), set(_list_answer(r))) for p, r in zip(predictions, references)]
    f1 = _rounded_micro_f1(pairs) * 100
    return f1, "micro set F1 (rounded to 4 decimals)", {"f1": f1}


def _chlw(predictions: Sequence[str], references: Sequence[str]) -> Scored:
    pairs, failures = [], 0
    for prediction, reference in zip(predictions, references):
        expected, predicted = _chlw_reference(reference), _chlw_prediction(prediction)
        if expected is None or predicted is None:
            failures += 1
            continue
        pairs.append((predicted, expected))
    f1 = _rounded_micro_f1(pairs)
    success = _success_ratio(failures, len(predictions))
    parts = {"f1": f1 * 100, "parse_success": success}
    return success * f1, "micro set F1 (rounded) x success ratio", parts


QUERY_CORR_LEVELS = ("-1", "0", "1", "2", "3")
_LEVEL = re.compile(r"-1|0|1|2|3")


def _query_corr_topic(predictions: Sequence[str], references: Sequence[str]) -> Scored:
    counts = {level: Counter() for level in QUERY_CORR_LEVELS}
    failures = 0
    for prediction, reference in zip(predictions, references):
        found = _LEVEL.search(prediction)
        if found is None:
            failures += 1
            continue
        if found.group(0) == reference:
            counts[reference]["tp"] += 1
        else:
            counts[reference]["fn"] += 1
            counts[found.group(0)]["fp"] += 1
    parts = {}
    for level, c in counts.items():
        precision = c["tp"] / (c["tp"] + c["fp"] + 1e-5) * 100
        recall = c["tp"] / (c["tp"] + c["fn"] + 1e-5) * 100
        parts[f"level({level})_f1"] = 2 * precision * recall / (precision + recall + 1e-5)
    macro = _mean([parts[f"level({level})_f1"] for level in QUERY_CORR_LEVELS])
    kept = 1 - failures / len(predictions)
    parts.update(macro_f1=macro, parse_success=kept * 100)
    return macro * kept, "macro F1 over levels -1..3 x success ratio", parts


# --- Note-MRC-simple --------------------------------------------------------------------------------


def _joined_prediction(output: str) -> str | None:
    """'\\n'.join(eval(...)).strip() as the official code does it; None where that raises."""
    try:
        value = _literal(output)
        items = list(value)  # what str.join iterates: list items, dict keys, a string's characters
    except (ValueError, TypeError):
        return None
    if not all(isinstance(item, str) for item in items):
        return None
    if isinstance(value, (set, frozenset)):
        items.sort()  # eval's set order varies between runs: a fixed order instead
    return "\n".join(items).strip()


@lru_cache(maxsize=1)
def _emoji_pattern():
    import regex  # a dependency of transformers; `re` has no Unicode emoji properties
    base = r"[\p{Emoji}--[\x00-\x7F]--\p{Regional_Indicator}]"
    element = base + r"\uFE0F?\p{Emoji_Modifier}?"
    tags = r"[\U000E0020-\U000E007E]+\U000E007F"
    keycap = r"[#*0-9]\uFE0F?\u20E3"
    flag = r"\p{Regional_Indicator}{2}"
    return regex.compile(rf"{keycap}|{flag}|{element}(?:{tags}|(?:\u200D{element})*)", regex.V1)


_VARIATION_SELECTORS = re.compile("[\uFE0E\uFE0F]")


def strip_emoji(text: str) -> str:
    """Emoji removed as demoji 2.0.0's replace(text, "") does (see the module docstring)."""
    return _VARIATION_SELECTORS.sub("", _emoji_pattern().sub("", text))


def _mrc_clean(text: str) -> str:
    """The official preprocess_sentence: newlines and U+FFFD deleted, emoji removed."""
    return strip_emoji(text.replace("\n", "").replace("\ufffd", ""))


@lru_cache(maxsize=1)
def _jieba():
    import logging

    import jieba  # imported on first use: loading its dictionary costs about 0.6 s
    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def _jieba_tokens(text: str) -> list[str]:
    """jieba.cut(text) with its defaults (whitespace comes back as tokens too)."""
    return list(_jieba().cut(text))


def _ngram_counts(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def nltk_sentence_bleu(reference: Sequence[str], hypothesis: Sequence[str]) -> float:
    """nltk's sentence_bleu([reference], hypothesis) with its defaults: 4-gram weights 0.25, no smoothing.

    Clipped n-gram precisions, brevity penalty against the one reference; 0 when no unigram matches; an
    order with no match contributes log(sys.float_info.min) (nltk's method0), not minus infinity."""
    logs = []
    for n in range(1, 5):
        counts = _ngram_counts(hypothesis, n)
        available = _ngram_counts(reference, n)
        matched = sum(min(count, available[gram]) for gram, count in counts.items())
        if n == 1 and matched == 0:
            return 0.0
        precision = matched / max(1, sum(counts.values())) if matched else sys.float_info.min
        logs.append(0.25 * math.log(precision))
    if len(hypothesis) > len(reference):
        penalty = 1.0
    else:
        penalty = math.exp(1 - len(reference) / len(hypothesis))
    return penalty * math.exp(math.fsum(logs))


def _rouge_sentences(text: str) -> list[str]:
    """The `rouge` package's sentences: split at every ".", non-empty pieces, whitespace runs made one space."""
    return [" ".join(piece.split()) for piece in text.split(".") if len(piece) > 0]


def _rouge_words(sentences: Sequence[str]) -> list[str]:
    return [word for sentence in sentences for word in sentence.split(" ")]


def _rouge_f(overlap: int, hypothesis_size: int, reference_size: int) -> float:
    precision = overlap / hypothesis_size if hypothesis_size else 0.0
    recall = overlap / reference_size if reference_size else 0.0
    return 2.0 * ((precision * recall) / (precision + recall + 1e-8))


def _rouge_n(hypothesis: Sequence[str], reference: Sequence[str], n: int) -> float:
    """ROUGE-N F over the sets of word n-grams of all sentences run together (the package's default)."""
    hyp, ref = set(_ngram_counts(_rouge_words(hypothesis), n)), set(_ngram_counts(_rouge_words(reference), n))
    return _rouge_f(len(hyp & ref), len(hyp), len(ref))


def _lcs_words(x: Sequence[str], y: Sequence[str]) -> set[str]:
    """The words of the longest common subsequence of x and y, traced back as the `rouge` package does
    (from the end: a match goes diagonally, else up when the cell above is strictly larger, else left)."""
    if not set(x) & set(y):
        return set()
    table = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i, word in enumerate(x, start=1):
        row, above = table[i], table[i - 1]
        for j, other in enumerate(y, start=1):
            row[j] = above[j - 1] + 1 if word == other else max(above[j], row[j - 1])
    words, i, j = set(), len(x), len(y)
    while i and j:
        if x[i - 1] == y[j - 1]:
            words.add(x[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def _rouge_l(hypothesis: Sequence[str], reference: Sequence[str]) -> float:
    """Summary-level ROUGE-L F of the package: the union of the LCS word sets of every (reference sentence,
    hypothesis sentence) pair, against the numbers of distinct words."""
    union: set[str] = set()
    for ref_sentence in reference:
        ref_words = ref_sentence.split(" ")
        for hyp_sentence in hypothesis:
            union |= _lcs_words(ref_words, hyp_sentence.split(" "))
    return _rouge_f(len(union), len(set(_rouge_words(hypothesis))), len(set(_rouge_words(reference))))


def rouge_package_f(hypothesis: str, reference: str) -> tuple[float, float, float]:
    """(ROUGE-1, ROUGE-2, ROUGE-L) F of the `rouge` package's Rouge().get_scores(hypothesis, reference),
    on space-separated words; (0, 0, 0) where the package raises (a side with no sentence)."""
    hyp, ref = _rouge_sentences(hypothesis), _rouge_sentences(reference)
    if not hyp or not ref:
        return 0.0, 0.0, 0.0
    return _rouge_n(hyp, ref, 1), _rouge_n(hyp, ref, 2), _rouge_l(hyp, ref)


def _overlaps(prediction: str, reference: str) -> tuple[float, float, float, float]:
    """BLEU, ROUGE-1, ROUGE-2, ROUGE-L of one true-positive pair, on jieba tokens of the cleaned texts."""
    hyp_tokens, ref_tokens = _jieba_tokens(_mrc_clean(prediction)), _jieba_tokens(_mrc_clean(reference))
    bleu = nltk_sentence_bleu(ref_tokens, hyp_tokens)
    return (bleu, *rouge_package_f(" ".join(hyp_tokens), " ".join(ref_tokens)))


def _existence_counts(pairs: Iterable[tuple[bool, bool]]) -> tuple[int, int, int]:
    """(tp, fp, fn) of "has an answer" over (prediction has one, reference has one) pairs."""
    tp = fp = fn = 0
    for predicted, expected in pairs:
        tp += predicted and expected
        fp += predicted and not expected
        fn += expected and not predicted
    return tp, fp, fn


def _mrc_simple(predictions: Sequence[str], references: Sequence) -> Scored:
    existence, overlaps, failures = [], [], 0
    for prediction, reference in zip(predictions, references):
        predicted, expected = _joined_prediction(prediction), "".join(reference)
        if predicted is None:
            failures += 1
            continue
        existence.append((predicted != "", expected != ""))
        if predicted and expected:
            overlaps.append(_overlaps(predicted, expected))
    tp, fp, fn = _existence_counts(existence)
    precision, recall = tp / (tp + fp + 0.0001), tp / (tp + fn + 0.0001)
    f1 = 2 * precision * recall / (precision + recall + 0.0001)
    success = _success_ratio(failures, len(predictions))
    parts = {"success_f1": success * f1}
    for k, name in enumerate(("bleu", "rouge1", "rouge2", "rougeL")):
        parts[f"success_{name}"] = success * _mean([row[k] for row in overlaps]) if overlaps else 0.0
    mean = _mean(list(parts.values()))
    parts["parse_success"] = success
    return mean, "mean of success-F1, -BLEU, -ROUGE-1/2/L (each x success ratio)", parts


# --- Note-MRC-complex -------------------------------------------------------------------------------

_RESULT = re.compile(r"(?<=<Result>).+?(?=</Result>)", re.DOTALL)


def _result_options(text: str) -> list[str] | None:
    """The options of the last <Result> JSON list (deduplicated, first-seen order); None when unreadable."""
    found = None
    for found in _RESULT.finditer(text):
        pass
    if found is None:
        return None
    body = found.group(0).strip().lstrip("`json").rstrip("`")
    try:
        entries = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(entries, list):
        return None
    options: dict[str, str] = {}
    for entry in entries:
        if not (isinstance(entry, dict) and isinstance(entry.get("Option"), str)
                and isinstance(entry.get("Reason"), str)):
            return None
        options[entry["Option"]] = entry["Reason"]
    return list(options)


# Characters SNS-Bench's MRC-complex normalisation deletes before comparing options.
_OPTION_DROP = frozenset(":_`，。：？！()“”；’《》·、,「」（）－～『』|")
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in _CJK_RANGES)


def _option_normal(text: str) -> str:
    return "".join(char for char in text.lower() if char not in _OPTION_DROP)


def _option_tokens(text: str) -> list[str]:
    """Each CJK character (and "=") is a token; each run of other characters is one token."""
    tokens, run = [], ""
    for char in _option_normal(text):
        if char == "=" or _is_cjk(char):
            if run:
                tokens.append(run)
                run = ""
            tokens.append(char)
        else:
            run += char
    if run:
        tokens.append(run)
    return tokens


def _longest_common_run(a: list[str], b: list[str]) -> int:
    """Length of the longest common contiguous run of tokens."""
    best, previous = 0, [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            if x == y:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def _option_f1(references: list[str], option: str) -> float:
    predicted = _option_tokens(option)
    scores = []
    for reference in references:
        expected = _option_tokens(reference)
        common = _longest_common_run(expected, predicted)
        if not common:
            scores.append(0)
            continue
        precision, recall = common / len(predicted), common / len(expected)
        scores.append((2 * precision * recall) / (precision + recall))
    return max(scores)


def _option_scores(expected: list[str], predicted: list[str]) -> tuple[float, float]:
    """(option-F1, option-EM) of one parsed item."""
    if not expected or not predicted:
        both_empty = float(not expected and not predicted)
        return both_empty, both_empty
    normal_refs = {_option_normal(r) for r in expected}
    return (_mean([_option_f1(expected, option) for option in predicted]),
            _mean([float(_option_normal(option) in normal_refs) for option in predicted]))


def _mrc_complex(predictions: Sequence[str], references: Sequence[str]) -> Scored:
    existence, option_f1, option_em, failures = [], [], [], 0
    for prediction, reference in zip(predictions, references):
        predicted, expected = _result_options(prediction), _result_options(reference)
        if predicted is None or expected is None:
            failures += 1
            continue
        existence.append((bool(predicted), bool(expected)))
        f1, em = _option_scores(expected, predicted)
        option_f1.append(f1)
        option_em.append(em)
    tp, fp, fn = _existence_counts(existence)
    # With no true positive the official F1 is 0 or negative (reported 0), or a division by zero (0 here).
    total_f1 = 0.0
    if tp:
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        total_f1 = 2 * precision * recall / (precision + recall)
    success = _success_ratio(failures, len(predictions))
    parts = {"success_total_f1": success * total_f1,
             "success_option_f1": success * _mean(option_f1) if option_f1 else 0.0,
             "success_option_em": success * _mean(option_em) if option_em else 0.0}
    mean = _mean(list(parts.values()))
    parts["parse_success"] = success
    return mean, "mean of success-total-F1, -option-F1, -option-EM (each x success ratio)", parts


# --- Note-QueryGen ----------------------------------------------------------------------------------


def _levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def anls(prediction: str, reference: str) -> float:
    """SNS-Bench's ANLS on 0-100: 100 x (1 - edit distance / length of the longer string); 100 if both empty."""
    longest = max(len(prediction), len(reference))
    return 100.0 if longest == 0 else (1.0 - _levenshtein(prediction, reference) / longest) * 100


_WORD = re.compile(r"\w+")


def word_cosine(prediction: str, reference: str) -> float:
    """Cosine of the two texts' word-count vectors (lower-cased \\w+ tokens); 0 when either has none."""
    a, b = Counter(_WORD.findall(prediction.casefold())), Counter(_WORD.findall(reference.casefold()))
    norm = math.sqrt(sum(v * v for v in a.values())) * math.sqrt(sum(v * v for v in b.values()))
    return sum(count * b[word] for word, count in a.items()) / norm if norm else 0.0


def _query_gen(predictions: Sequence[str], references: Sequence[str],
               similarity: Callable[[str, str], float] | None) -> Scored:
    cosine = similarity or word_cosine
    sims, edits = [], []
    for prediction, reference in zip(predictions, references):
        sims.append(float(cosine(_before(prediction.strip(), _CUT_LIST), reference)) * 100)
        edits.append(anls(prediction, reference))  # the whole raw output, as the official code does
    name = "embedding cosine" if similarity else "word-count cosine (stand-in for embedding cosine)"
    parts = {"similarity": _mean(sims), "anls": _mean(edits)}
    return _mean([(s + e) / 2 for s, e in zip(sims, edits)]), f"mean of ({name} x 100 + ANLS) / 2", parts


_SCORERS: dict[str, Callable[[Sequence[str], Sequence], Scored]] = {
    "Note-Taxonomy-single": _tagged_accuracy,
    "Note-Taxonomy-multiple": _taxonomy_multiple,
    "Note-Hashtag-single": _tagged_accuracy,
    "Note-Hashtag-multiple": _set_f1,
    "Note-QueryCorr-topic": _query_corr_topic,
    "Note-QueryCorr-explain": _plain_accuracy,
    "Note-MRC-simple": _mrc_simple,
    "Note-MRC-complex": _mrc_complex,
    "Note-NER": _set_f1,
    "Note-Gender": _plain_accuracy,
    "Note-CHLW": _chlw,
}
assert set(_SCORERS) | {"Note-QueryGen"} == set(SNS_BENCH_FILES)


def official_reference(item) -> object:
    """The item's answer as the file holds it (Sample.meta["raw_answer"]): what the official code scores
    against. Raises ValueError for an item that does not carry it (not made by load_sns_bench)."""
    meta = getattr(item, "meta", None) or {}
    if "raw_answer" not in meta:
        raise ValueError(f"item {getattr(item, 'id', '?')!r} has no meta['raw_answer']: SNS-Bench items must come "
                         "from redone_fast.data.sns_bench.load_sns_bench")
    return meta["raw_answer"]


def evaluate(task: str, predictions: Sequence[str], items: Sequence, *,
             similarity: Callable[[str, str], float] | None = None) -> BenchScore:
    """The file's SNS-Bench score with its parts (see the module docstring for every definition).

    predictions: raw model outputs, one per item. items: that file's Samples (load_sns_bench), in
    the same order. similarity: Note-QueryGen only, the embedding cosine fn(prediction, reference).
    """
    stem = _stem(task)
    if len(predictions) != len(items):
        raise ValueError(f"{stem}: {len(predictions)} predictions for {len(items)} items")
    if not items:
        raise ValueError(f"{stem}: no items to score")
    wrong = {item.task for item in items if getattr(item, "task", TASK_PREFIX + stem) != TASK_PREFIX + stem}
    if wrong:
        raise ValueError(f"{stem}: items of other tasks given ({', '.join(sorted(wrong))})")
    references = [official_reference(item) for item in items]
    predictions = [str(prediction) for prediction in predictions]
    stand_in = None
    if stem == "Note-QueryGen":
        value, metric, parts = _query_gen(predictions, references, similarity)
        if similarity is None:
            stand_in = QUERY_GEN_STAND_IN
            warnings.warn(QUERY_GEN_STAND_IN, UserWarning, stacklevel=2)
    else:
        value, metric, parts = _SCORERS[stem](predictions, references)
    return BenchScore(task=stem, score=value, metric=metric, parts=parts, items=len(items), stand_in=stand_in)


def score(task: str, predictions: Sequence[str], items: Sequence, *,
          similarity: Callable[[str, str], float] | None = None) -> float:
    """The file's SNS-Bench score on 0-100 (evaluate(...).score). Note-QueryGen without `similarity`
    uses a stand-in for the embedding cosine and warns: see the module docstring."""
    return evaluate(task, predictions, items, similarity=similarity).score
