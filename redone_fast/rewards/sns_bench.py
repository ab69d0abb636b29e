"""SNS-Bench scores: the number the benchmark reports for each of its twelve files, on 0-100.

`score(task, predictions, items)` takes the file (its stem, "Note-NER", or the task "sns_bench/Note-NER"),
the model's raw outputs and the Samples `redone_fast.data.sns_bench.load_sns_bench` made from that
file, in the same order. `evaluate(...)` returns the same number with its parts (BenchScore).

Post-processing (redone_fast.rewards.normalize), the same for outputs and references: the answer is the
text after the last "Answer:" (the whole output when there is none), stripped, cut at the first line
break, quotes stripped; single-answer files also cut at the first period or comma. Comparisons ignore
case. References are the Samples' answers, i.e. in the format the prompts ask for (lists
comma-separated, "None" for an empty list, taxonomy levels separated by " | "), so a reference goes
through exactly the parsing its prediction does: the two Note-MRC-complex options and the one
Note-CHLW word that contain a comma are scored as two items on both sides.

A list answer ("list form" below) is the answer line split on commas; a line that opens with a list
literal ("['a', 'b']" or '["a"]', what SNS-Bench's own prompts asked for: "[" then a quote or "]")
is read as that literal instead. Items are stripped, compared case-insensitively, duplicates dropped;
"None" alone (or "[]") is the empty list.

Parse success, for the files whose score SNS-Bench multiplies by the share of outputs it could parse:
- Note-QueryCorr-topic: the answer line contains a level (the first match of "-1|0|1|2|3" is the
  prediction, as in SNS-Bench's regex).
- Note-CHLW, Note-MRC-simple, Note-MRC-complex: the answer line is not empty and, when it opens with a
  list literal, that literal is well-formed (a list of quoted strings). Unparsed outputs are left out
  of the metric's counts and cost through the ratio, as in SNS-Bench.

Metrics (all x 100):
- Note-Taxonomy-single, Note-Hashtag-single, Note-QueryCorr-explain, Note-Gender: accuracy (single
  answers: cut at the first period or comma).
- Note-Taxonomy-multiple: the answer split on "|" into primary | secondary | tertiary, each level cut
  like a single answer; accuracy per level; the score is the mean of the three level accuracies.
- Note-Hashtag-multiple, Note-NER: micro set F1 over the file, 2 * sum|P & R| / (sum|P| + sum|R|),
  list form (SNS-Bench ships no evaluator for these two; micro-F1 is what its CHLW evaluator computes).
- Note-CHLW: micro set F1 as above, an empty list counting as one "empty" item on either side
  (SNS-Bench's [""] rule: an empty prediction for an empty reference is a hit), x parse-success ratio.
- Note-QueryCorr-topic: macro F1 over the five levels {-1, 0, 1, 2, 3} (per level F1 of precision
  and recall; a level with no true positive scores 0, so a subset missing a level cannot reach 100,
  as in SNS-Bench), x parse-success ratio.
- Note-MRC-simple: the answer is a text ("None" = no answer). Existence F1 over the parsed items
  (true positive: both have an answer; false positive: only the prediction; false negative: only the
  reference); over the true positives, mean sentence BLEU and ROUGE-1/2/L F1; the score is the mean
  of those five x parse-success ratio (SNS-Bench's reported "success-" average).
- Note-MRC-complex: list form. total-F1: existence F1 over the parsed items as for MRC-simple;
  option-F1 and option-EM per parsed item (both empty: 1; one empty: 0; else the mean over predicted
  options of the best match against the reference options: F1 of the longest common run of tokens,
  or exact equality), averaged over the items; the score is their mean x parse-success ratio
  (SNS-Bench's "success-" variants). Tokens as SNS-Bench's: lower-cased, some punctuation removed,
  every CJK character one token and every run of other characters one token; so for English
  options, which hold no CJK, option-F1 equals option-EM.
- Note-QueryGen: per item (similarity x 100 + ANLS) / 2, averaged, with ANLS = 100 x (1 - Levenshtein
  distance / length of the longer string), on characters, case kept, no threshold (SNS-Bench's form).

!!! Note-QueryGen's similarity is an embedding model's cosine in SNS-Bench. No embedding model is
!!! available offline here, so by default it is REPLACED by the cosine of word-count vectors
!!! (lower-cased \\w+ tokens). That score is NOT comparable to SNS-Bench's published numbers: the
!!! result says so (BenchScore.metric, BenchScore.stand_in) and a warning is raised. Pass
!!! `similarity=fn` (fn(prediction, reference) -> cosine in [-1, 1], e.g. a sentence-transformers
!!! model) to compute the real metric.

Departures from SNS-Bench's code, all deliberate: no 1e-4/1e-5 epsilons in the F1 denominators
(perfect predictions score exactly 100; an undefined precision or recall counts 0); its
MRC-complex success ratio divides by a constant 1000 instead of the number of items (here: the
number of items); its single-answer cut also splits at "<", ">" and the text "end" (a
regular-expression slip that cuts "Trends" to "Tr"; if it touches predictions only, 24 Taxonomy-single
and 30 Hashtag-single references can never be matched there), not reproduced; its MRC-simple joins
the reference spans with no separator and reads the prediction as a list literal joined by newlines,
and scores BLEU/ROUGE with nltk and the `rouge` package on jieba tokens: here spans are joined by a
space on both sides (the prompt's format), with sacrebleu's sentence BLEU (13a tokens, exponential
smoothing) and this package's ROUGE (rouge-score's tokens); its QueryGen ANLS reads the whole raw
output, here the answer line (the embedding side already used the first line).
"""
from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from redone_fast.data.sns_bench import SNS_BENCH_FILES, TASK_PREFIX, parse_list_literal
from redone_fast.rewards.match import exact_match
from redone_fast.rewards.normalize import answer_text, canonical, cut_single, strip_wrappers
from redone_fast.rewards.overlap import rouge_f1, sentence_bleu

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
# Parsing answers

_LIST_START = re.compile(r"\[\s*(?:['\"]|\])")  # "[" then a quote or "]": a list literal, not "[Tag] text"
_LIST_BLOCK = re.compile(r"\[[^\[\]]*\]")
_NONE = canonical("None")


def _line(output: str) -> str:
    return strip_wrappers(answer_text(output))


def _literal(line: str) -> list[str] | None:
    """The items of the list literal the line is, or opens with; None when it is malformed."""
    try:
        return parse_list_literal(line)
    except ValueError:
        pass
    block = _LIST_BLOCK.match(line)  # a literal followed by other text (items holding no brackets)
    if block is None:
        return None
    try:
        return parse_list_literal(block.group(0))
    except ValueError:
        return None


def _parse_list(output: str) -> list[str] | None:
    """List form: canonical items, deduplicated in order, [] for "None"; None when unparsable."""
    line = _line(output)
    if not line:
        return None
    if _LIST_START.match(line):
        raw = _literal(line)
        if raw is None:
            return None
    else:
        raw = line.split(",")
    items = list(dict.fromkeys(canonical(strip_wrappers(item)) for item in raw))
    items = [item for item in items if item]
    return [] if items == [_NONE] else items


def _parse_text(output: str) -> str | None:
    """A free-text answer: the line ("" for "None" or an empty list literal); None when unparsable."""
    line = _line(output)
    if not line:
        return None
    if _LIST_START.match(line):
        raw = _literal(line)
        if raw is None:
            return None
        line = strip_wrappers(" ".join(" ".join(item.split()) for item in raw if item.strip()))
    return "" if canonical(line) == _NONE else line


# ---------------------------------------------------------------------------------------------------
# Small metrics


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _micro_f1(pairs: Sequence[tuple[set, set]]) -> float:
    hits = sum(len(predicted & expected) for predicted, expected in pairs)
    return _ratio(2 * hits, sum(len(predicted) + len(expected) for predicted, expected in pairs))


def _existence_f1(pairs: Sequence[tuple[bool, bool]]) -> float:
    """F1 of "has an answer": pairs of (prediction has one, reference has one)."""
    tp = sum(p and r for p, r in pairs)
    fp = sum(p and not r for p, r in pairs)
    fn = sum(r and not p for p, r in pairs)
    return _f1(_ratio(tp, tp + fp), _ratio(tp, tp + fn))


# ---------------------------------------------------------------------------------------------------
# One scorer per kind of file; each returns (score, metric, parts) with parts on 0-100

Scored = tuple[float, str, dict[str, float]]


def _accuracy(predictions: Sequence[str], references: Sequence[str]) -> Scored:
    hits = [exact_match(p, r, single=True) for p, r in zip(predictions, references)]
    accuracy = 100 * _mean(hits)
    return accuracy, "accuracy", {"accuracy": accuracy}


_LEVELS = ("primary", "secondary", "tertiary")


def _levels(output: str) -> list[str]:
    return [canonical(strip_wrappers(cut_single(strip_wrappers(level)))) for level in _line(output).split("|")]


def _taxonomy_multiple(predictions: Sequence[str], references: Sequence[str]) -> Scored:
    per_level: list[list[float]] = [[] for _ in _LEVELS]
    for prediction, reference in zip(predictions, references):
        predicted, expected = _levels(prediction), _levels(reference)
        for k in range(len(_LEVELS)):
            correct = k < len(predicted) and k < len(expected) and bool(expected[k]) and predicted[k] == expected[k]
            per_level[k].append(float(correct))
    parts = {f"{level}_accuracy": 100 * _mean(hits) for level, hits in zip(_LEVELS, per_level)}
    return _mean(list(parts.values())), "mean of the per-level accuracies (primary, secondary, tertiary)", parts


def _set_f1(predictions: Sequence[str], references: Sequence[str]) -> Scored:
    pairs = [(set(_parse_list(p) or []), set(_parse_list(r) or [])) for p, r in zip(predictions, references)]
    f1 = 100 * _micro_f1(pairs)
    return f1, "micro set F1", {"f1": f1}


def _chlw(predictions: Sequence[str], references: Sequence[str]) -> Scored:
    pairs = []
    for prediction, reference in zip(predictions, references):
        predicted, expected = _parse_list(prediction), _parse_list(reference)
        if predicted is None:
            continue  # unparsed: costs through the ratio
        # An empty list is one "empty" item (SNS-Bench turns [] into [""]): empty for empty is a hit.
        pairs.append((set(predicted) or {""}, set(expected or []) or {""}))
    success = _ratio(len(pairs), len(predictions))
    f1 = 100 * _micro_f1(pairs)
    return f1 * success, "micro set F1 x parse-success ratio", {"f1": f1, "parse_success": 100 * success}


QUERY_CORR_LEVELS = ("-1", "0", "1", "2", "3")
_LEVEL = re.compile(r"-1|0|1|2|3")


def _query_corr_topic(predictions: Sequence[str], references: Sequence[str]) -> Scored:
    counts = {level: Counter() for level in QUERY_CORR_LEVELS}
    parsed = 0
    for prediction, reference in zip(predictions, references):
        found = _LEVEL.search(_line(prediction))
        expected = _line(reference)
        if found is None:
            continue
        parsed += 1
        predicted = found.group(0)
        if predicted == expected:
            counts[expected]["tp"] += 1
        else:
            counts[predicted]["fp"] += 1
            if expected in counts:
                counts[expected]["fn"] += 1
    parts = {}
    for level, c in counts.items():
        parts[f"level({level})_f1"] = 100 * _f1(_ratio(c["tp"], c["tp"] + c["fp"]), _ratio(c["tp"], c["tp"] + c["fn"]))
    success = _ratio(parsed, len(predictions))
    macro = _mean(list(parts.values()))
    parts.update(macro_f1=macro, parse_success=100 * success)
    return macro * success, "macro F1 over levels -1..3 x parse-success ratio", parts


def _mrc_simple(predictions: Sequence[str], references: Sequence[str]) -> Scored:
    existence, overlaps = [], []
    for prediction, reference in zip(predictions, references):
        predicted, expected = _parse_text(prediction), _parse_text(reference) or ""
        if predicted is None:
            continue
        existence.append((bool(predicted), bool(expected)))
        if predicted and expected:
            overlaps.append((sentence_bleu(predicted, expected), rouge_f1(predicted, expected, "rouge1"),
                             rouge_f1(predicted, expected, "rouge2"), rouge_f1(predicted, expected, "rougeL")))
    success = _ratio(len(existence), len(predictions))
    parts = {"f1": 100 * _existence_f1(existence)}
    for k, name in enumerate(("bleu", "rouge1", "rouge2", "rougeL")):
        parts[name] = 100 * _mean([row[k] for row in overlaps])
    mean = _mean(list(parts.values()))
    parts["parse_success"] = 100 * success
    return mean * success, "mean of existence F1, BLEU, ROUGE-1/2/L x parse-success ratio", parts


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
    best = 0.0
    for reference in references:
        expected = _option_tokens(reference)
        common = _longest_common_run(expected, predicted)
        if common:
            best = max(best, _f1(common / len(predicted), common / len(expected)))
    return best


def _mrc_complex(predictions: Sequence[str], references: Sequence[str]) -> Scored:
    existence, option_f1, option_em = [], [], []
    for prediction, reference in zip(predictions, references):
        predicted, expected = _parse_list(prediction), _parse_list(reference) or []
        if predicted is None:
            continue
        existence.append((bool(predicted), bool(expected)))
        if not predicted or not expected:
            both_empty = float(not predicted and not expected)
            option_f1.append(both_empty)
            option_em.append(both_empty)
            continue
        normal_refs = {_option_normal(r) for r in expected}
        option_f1.append(_mean([_option_f1(expected, option) for option in predicted]))
        option_em.append(_mean([float(_option_normal(option) in normal_refs) for option in predicted]))
    success = _ratio(len(existence), len(predictions))
    parts = {"total_f1": 100 * _existence_f1(existence), "option_f1": 100 * _mean(option_f1),
             "option_em": 100 * _mean(option_em)}
    mean = _mean(list(parts.values()))
    parts["parse_success"] = 100 * success
    return mean * success, "mean of total-F1, option-F1, option-EM x parse-success ratio", parts


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
    return 100.0 if longest == 0 else 100.0 * (1.0 - _levenshtein(prediction, reference) / longest)


_WORD = re.compile(r"\w+")


def word_cosine(prediction: str, reference: str) -> float:
    """Cosine of the two texts' word-count vectors (lower-cased \\w+ tokens); 0 when either has none."""
    a, b = Counter(_WORD.findall(prediction.casefold())), Counter(_WORD.findall(reference.casefold()))
    norm = math.sqrt(sum(v * v for v in a.values())) * math.sqrt(sum(v * v for v in b.values()))
    return _ratio(sum(count * b[word] for word, count in a.items()), norm)


def _query_gen(predictions: Sequence[str], references: Sequence[str],
               similarity: Callable[[str, str], float] | None) -> Scored:
    cosine = similarity or word_cosine
    sims, edits = [], []
    for prediction, reference in zip(predictions, references):
        predicted, expected = _line(prediction), _line(reference)
        sims.append(100 * float(cosine(predicted, expected)))
        edits.append(anls(predicted, expected))
    name = "embedding cosine" if similarity else "word-count cosine (stand-in for embedding cosine)"
    parts = {"similarity": _mean(sims), "anls": _mean(edits)}
    return _mean([(s + e) / 2 for s, e in zip(sims, edits)]), f"mean of ({name} x 100 + ANLS) / 2", parts


_SCORERS: dict[str, Callable[[Sequence[str], Sequence[str]], Scored]] = {
    "Note-Taxonomy-single": _accuracy,
    "Note-Taxonomy-multiple": _taxonomy_multiple,
    "Note-Hashtag-single": _accuracy,
    "Note-Hashtag-multiple": _set_f1,
    "Note-QueryCorr-topic": _query_corr_topic,
    "Note-QueryCorr-explain": _accuracy,
    "Note-MRC-simple": _mrc_simple,
    "Note-MRC-complex": _mrc_complex,
    "Note-NER": _set_f1,
    "Note-Gender": _accuracy,
    "Note-CHLW": _chlw,
}
assert set(_SCORERS) | {"Note-QueryGen"} == set(SNS_BENCH_FILES)


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
    references = [item.answer for item in items]
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
