"""SNS-Bench parity: redone_fast.rewards.sns_bench against a separate re-implementation of the official evaluators.

The references below were written for this test from reading the official SNS-Bench evaluation code,
https://github.com/HC-Guo/SNS-Bench at commit fbe9840231412881aba2aa09515fa2317cfd21c0, files
opencompass/opencompass/datasets/sns_bench/*.py (cited per function as sns/<file>), the dataset configs
opencompass/opencompass/configs/datasets/sns_bench/*.py (which evaluator and post-processor each file uses)
and the OpenCompass pieces they rely on (AccEvaluator, EMEvaluator, general_postprocess, the eval task's
dataset_postprocessor). They follow the official control flow step by step, use the official regular
expressions as written (the module under test uses reduced, explained ones), and raise where the official
code crashes. Two deliberate differences, both documented in the module under test: eval() is replaced by
ast.literal_eval (identical on literals, which is all the generated predictions contain), and emoji are
removed by a small table of the emoji the generators use (demoji's own method: longest sequence first, then
variation selectors) - on the real benchmark, by demoji when installed, else by the module's strip_emoji.
BLEU and ROUGE are re-implemented from nltk's and the `rouge` package's definitions; when those packages are
installed they are checked against them too.

For every file, predictions are generated from synthetic items in the file's format (right, wrong, empty and
noisy: "Answer:" prefixes, trailing periods and commas, newlines, quotes, list literals, case changes, and the
substrings the official patterns mis-handle: "end", "im_end", "<", ">", brackets inside list items), and the
module's score must equal the reference. The same is done on the real benchmark when its folder is present
(REDONE_SNS_BENCH, default ../shared/sns-bench; skipped otherwise).
"""
from __future__ import annotations

import ast
import json
import math
import random
import re
import sys
import warnings
from collections import Counter
from fractions import Fraction

import pytest

from redone_fast.data.schema import Sample
from redone_fast.data.sns_bench import BUILDERS, SNS_BENCH_FILES, TASK_PREFIX, default_root, load_sns_bench
from redone_fast.rewards import sns_bench
from redone_fast.rewards.sns_bench import OFFICIAL_COMMIT, evaluate

COMMIT = "fbe9840231412881aba2aa09515fa2317cfd21c0"


class OfficialCrash(Exception):
    """The official evaluator would raise here and report no number."""


# ===================================================================================================
# Official post-processors (sns/taxonomy.py, sns/hashtag.py, sns/gender.py, sns/querycorr_explain.py,
# sns/ner.py), with their patterns exactly as the official files write them.

TAXONOMY_PATTERN = r'[\n.,]|<|endofresponse|>|<|end|>|<|im_end|>'  # taxonomy.py, hashtag.py (single)
YES_NO_PATTERN = r'[\n.,]|<|endofresponse|>'  # gender.py, querycorr_explain.py
LIST_PATTERN = r'[\n]|<|endofresponse|>'  # hashtag.py (multiple), ner.py, querygen.py


def official_single(text, pattern):
    """The single-answer post-processors: drop "Answer:", strip, keep what precedes the first split, strip."""
    cleaned = text.replace("Answer:", "").strip()
    return re.split(pattern, cleaned, maxsplit=1)[0].strip()


def official_list(text):
    """note_hashtag_multi_postprocess / note_ner_postprocess (delimiter ",")."""
    cleaned = text.replace("Answer:", "").strip()
    head = re.split(LIST_PATTERN, cleaned, maxsplit=1)[0]
    kept = []
    for piece in head.split(","):
        if piece:  # tested before stripping
            kept.append(piece.strip())
    return kept


def general_postprocess(text):
    """OpenCompass utils/text_postprocessors.py general_postprocess (EMEvaluator normalises with it)."""
    text = re.split(r'[\n.,]', text, maxsplit=1)[0]
    text = re.sub(r'[^\w\s]', '', text)
    text = re.sub(r'\b(a|an|the)\b', '', text, flags=re.IGNORECASE)
    return re.sub(r'\s+', ' ', text).strip()


def official_eval(text):
    """Stand-in for the official eval(): the same value for literals, never runs code."""
    return ast.literal_eval(text)


# ===================================================================================================
# Official evaluators, one per kind of file


def ref_accuracy(predictions, references, pattern):
    """AccEvaluator (openicl/icl_evaluator/icl_hf_evaluator.py) after the file's pred_postprocessor; the
    reference is left as the file holds it. Labels are mapped to ids by their str(): plain equality."""
    processed = [official_single(p, pattern) for p in predictions]
    correct = [str(p) == str(r) for p, r in zip(processed, references)]
    return sum(correct) / len(correct) * 100


def ref_taxonomy_multiple(predictions, references):
    """EMEvaluator (openicl/icl_evaluator/icl_em_evaluator.py); sns/taxonomy.py wraps the answer in a list."""
    count = 0
    for prediction, reference in zip(predictions, references):
        pred = general_postprocess(official_single(prediction, TAXONOMY_PATTERN))
        answers = [general_postprocess(reference)]
        if pred in answers or pred in [reference]:
            count += 1
    return count / len(predictions) * 100


def ref_micro_f1(predictions, references):
    """NoteHashtagNEREvaluator (sns/hashtag.py) and NoteNEREvaluator (sns/ner.py); both sides post-processed
    (the configs' pred_postprocessor and dataset_postprocessor)."""
    hits = n_pred = n_ref = 0
    for prediction, reference in zip(predictions, references):
        results, labels = set(official_list(prediction)), set(official_list(reference))
        hits += len(labels & results)
        n_pred += len(results)
        n_ref += len(labels)
    f1 = round(hits * 2 / (n_pred + n_ref + 0.0001), 4)
    return f1 * 100


def ref_chlw(predictions, references):
    """NoteCommentHLWEvaluator (sns/chlw.py): success-f1."""
    hits = n_pred = n_ref = 0
    errors = 0
    for prediction, reference in zip(predictions, references):
        try:
            reference = official_eval(reference)
            if len(reference) == 0:
                reference = [""]
            block = re.compile(r'\[[^\[\]]*\]', re.DOTALL).search(prediction)
            if block:
                prediction = block.group(0)
            prediction = official_eval(prediction)
            assert isinstance(prediction, list)
            if len(prediction) == 0:
                prediction = [""]
            assert all(isinstance(item, str) for item in prediction)
        except Exception:
            errors += 1
            continue
        results, labels = set(prediction), set(reference)
        hits += len(labels & results)
        n_pred += len(results)
        n_ref += len(labels)
    f1 = round(hits * 2 / (n_pred + n_ref + 0.0001), 4)
    success = (1 - errors / len(predictions)) * 100
    return success * f1


LEVELS = ['-1', '0', '1', '2', '3']


def ref_query_corr_topic(predictions, references):
    """NoteQueryCorrTopicEvaluator (sns/querycorr_topic.py): success-macro-f1."""
    table = {level: {"tp": 0, "fp": 0, "fn": 0} for level in LEVELS}
    errors = 0
    for prediction, reference in zip(predictions, references):
        found = re.findall(r"(-1|0|1|2|3)", prediction)
        if not found:
            errors += 1
            continue
        if found[0] == reference:
            table[reference]["tp"] += 1
        else:
            table[reference]["fn"] += 1
            table[found[0]]["fp"] += 1
    f1s = []
    for level in LEVELS:
        c = table[level]
        precision = c["tp"] / (c["tp"] + c["fp"] + 1e-5) * 100
        recall = c["tp"] / (c["tp"] + c["fn"] + 1e-5) * 100
        f1s.append(2 * precision * recall / (precision + recall + 1e-5))
    return sum(f1s) / len(f1s) * (1 - errors / len(predictions))


# --- Note-MRC-simple: sns/mrc_simple.py with nltk's sentence_bleu and the `rouge` package's Rouge --------

TEST_EMOJI = ["👩‍👩‍👧", "❤️", "👍🏻", "🌞", "😀", "🍆", "™", "1️⃣", "🇨🇳"]  # what the generators insert


def table_demoji(text):
    """demoji.replace(text, '') restricted to TEST_EMOJI: longest first, then variation selectors."""
    for emoji in sorted(TEST_EMOJI, key=len, reverse=True):
        text = text.replace(emoji, "")
    return re.sub("[\ufe0e\ufe0f]", "", text)


def jieba_cut(text):
    import jieba
    return list(jieba.cut(text))


def reference_bleu(reference, hypothesis):
    """nltk sentence_bleu([reference], hypothesis): corpus_bleu over one pair, weights 0.25, method0."""
    numerators, denominators = {}, {}
    for n in range(1, 5):
        hyp_grams = Counter(tuple(hypothesis[i:i + n]) for i in range(len(hypothesis) - n + 1))
        ref_grams = Counter(tuple(reference[i:i + n]) for i in range(len(reference) - n + 1))
        numerators[n] = sum(min(c, ref_grams[g]) for g, c in hyp_grams.items())
        denominators[n] = max(1, sum(hyp_grams.values()))
    hyp_len, ref_len = len(hypothesis), len(reference)
    if hyp_len > ref_len:
        bp = 1
    elif hyp_len == 0:
        bp = 0
    else:
        bp = math.exp(1 - ref_len / hyp_len)
    if numerators[1] == 0:
        return 0
    precisions = []
    for n in range(1, 5):
        if numerators[n] != 0:
            precisions.append(Fraction(numerators[n], denominators[n]))
        else:
            precisions.append(sys.float_info.min)
    return bp * math.exp(math.fsum(0.25 * math.log(p) for p in precisions if p > 0))


def _package_ngrams(words, n):
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _package_lcs_words(x, y):
    """The `rouge` package's _recon_lcs (exclusive): LCS table, traceback from the end, as a set."""
    table = {}
    for i in range(len(x) + 1):
        for j in range(len(y) + 1):
            if i == 0 or j == 0:
                table[i, j] = 0
            elif x[i - 1] == y[j - 1]:
                table[i, j] = table[i - 1, j - 1] + 1
            else:
                table[i, j] = max(table[i - 1, j], table[i, j - 1])
    found, i, j = [], len(x), len(y)
    while i > 0 and j > 0:
        if x[i - 1] == y[j - 1]:
            found.append(x[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1, j] > table[i, j - 1]:
            i -= 1
        else:
            j -= 1
    return set(found)


def reference_rouge(hypothesis, reference):
    """Rouge().get_scores(hypothesis, reference)[0][m]['f'] for rouge-1, rouge-2, rouge-l (package 1.0.1)."""
    hyp = [" ".join(piece.split()) for piece in hypothesis.split(".") if len(piece) > 0]
    ref = [" ".join(piece.split()) for piece in reference.split(".") if len(piece) > 0]
    if not hyp or not ref:
        raise OfficialCrash("Rouge Error")

    def words(sentences):
        return [w for s in sentences for w in s.split(" ")]

    def f_score(overlap, n_hyp, n_ref):
        p = overlap / n_hyp if n_hyp else 0.0
        r = overlap / n_ref if n_ref else 0.0
        return 2.0 * ((p * r) / (p + r + 1e-8))

    scores = []
    for n in (1, 2):
        h, r = _package_ngrams(words(hyp), n), _package_ngrams(words(ref), n)
        scores.append(f_score(len(h & r), len(h), len(r)))
    m, n = len(set(words(ref))), len(set(words(hyp)))
    union, total = set(), 0
    for ref_sentence in ref:
        before = len(union)
        for hyp_sentence in hyp:
            union = union | _package_lcs_words(ref_sentence.split(" "), hyp_sentence.split(" "))
        total += len(union) - before
    recall, precision = total / m, total / n
    scores.append(2.0 * ((precision * recall) / (precision + recall + 1e-8)))
    return scores


def ref_mrc_simple(predictions, references, demoji=table_demoji):
    """NoteMRCSimpleEvaluator (sns/mrc_simple.py); the loader joins the reference spans with ''. The score is
    the mean of its success-f1, success-blue, success-rouge-1/2/L."""
    tp, tn, fp, fn = [], [], [], []
    errors = 0
    for pred, spans in zip(predictions, references):
        ref = "".join(spans)
        try:
            block = re.compile(r'\[[^\[\]]*\]', re.DOTALL).search(pred)
            if block:
                pred = block.group(0)
            value = official_eval(pred)
            if isinstance(value, set) and len(value) > 1:
                value = sorted(value)  # eval's order is not reproducible: the module's documented choice
            pred = "\n".join(value).strip()
        except Exception:
            errors += 1
            continue
        if pred == "" and ref == "":
            tn.append((pred, ref))
        elif pred == "" and ref != "":
            fn.append((pred, ref))
        elif pred != "" and ref == "":
            fp.append((pred, ref))
        else:
            tp.append((pred, ref))
    precision = len(tp) / (len(tp) + len(fp) + 0.0001)
    recall = len(tp) / (len(tp) + len(fn) + 0.0001)
    f1 = 2 * precision * recall / (precision + recall + 0.0001)

    def clean(text):
        return demoji(text.replace('\n', '').replace('\ufffd', ''))

    bleu, rouge1, rouge2, rougel = [], [], [], []
    for pred, ref in tp:
        hyp_tokens, ref_tokens = jieba_cut(clean(pred)), jieba_cut(clean(ref))
        bleu.append(reference_bleu(ref_tokens, hyp_tokens))
        r1, r2, rl = reference_rouge(" ".join(hyp_tokens), " ".join(ref_tokens))
        rouge1.append(r1)
        rouge2.append(r2)
        rougel.append(rl)
    success = (1 - errors / len(predictions)) * 100
    reported = [success * f1] + [success * (sum(v) / len(v)) if v else 0 for v in (bleu, rouge1, rouge2, rougel)]
    return sum(reported) / len(reported)


# --- Note-MRC-complex: sns/mrc_complex.py ------------------------------------------------------------


def v4_result(text):
    """v4_result_postprocess: (options as {Option: Reason}, ok)."""
    try:
        matches = list(re.finditer(r'(?<=<Result>).+?(?=</Result>)', text, re.DOTALL))
        body = matches[-1].group(0).strip()
        body = body.lstrip('```json').rstrip('```')
        parsed = json.loads(body)
        assert isinstance(parsed, list)
        dedup = {}
        for entry in parsed:
            assert "Option" in entry and "Reason" in entry
            assert isinstance(entry['Option'], str) and isinstance(entry['Reason'], str)
            dedup[entry['Option']] = entry['Reason']
        return [{'Option': k, 'Reason': v} for k, v in dedup.items()], True
    except Exception:
        return [], False


CJK_BLOCKS = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
              (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)]
DROPPED = [':', '_', '`', '，', '。', '：', '？', '！', '(', ')', '“', '”', '；', '’', '《', '》', '……', '·', '、',
           ',', '「', '」', '（', '）', '－', '～', '『', '』', '|']


def mrc_normalize(text):
    return ''.join(ch for ch in text.lower() if ch not in DROPPED)


def mrc_tokens(text):
    out, buffer = [], ""
    for ch in text:
        if ch == "=" or any(lo <= ord(ch) <= hi for lo, hi in CJK_BLOCKS):
            if buffer:
                out.append(buffer)
                buffer = ""
            out.append(ch)
        else:
            buffer += ch
    if buffer:
        out.append(buffer)
    return out


def longest_common_substring(a, b):
    best = 0
    grid = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a)):
        for j in range(len(b)):
            if a[i] == b[j]:
                grid[i + 1][j + 1] = grid[i][j] + 1
                best = max(best, grid[i + 1][j + 1])
    return best


def option_f1(answers, prediction):
    values = []
    for answer in answers:
        a, p = mrc_tokens(mrc_normalize(answer)), mrc_tokens(mrc_normalize(prediction))
        common = longest_common_substring(a, p)
        if common == 0:
            values.append(0)
            continue
        prec, rec = 1.0 * common / len(p), 1.0 * common / len(a)
        values.append((2 * prec * rec) / (prec + rec))
    return max(values)


def option_em(answers, prediction):
    return int(any(mrc_normalize(a) == mrc_normalize(prediction) for a in answers))


def ref_mrc_complex(predictions, references):
    """NoteMRCComplexEvaluator (sns/mrc_complex.py): mean of success-total-f1, success-option-f1/-em."""
    tp = tn = fp = fn = 0
    errors = 0
    f1_list, em_list = [], []
    for pred, gt in zip(predictions, references):
        pred, pred_ok = v4_result(pred)
        gt, gt_ok = v4_result(gt)
        if not gt_ok or not pred_ok:
            errors += 1
            continue
        if gt == [] and pred == []:
            tn += 1
        elif gt == [] and pred != []:
            fp += 1
        elif gt != [] and pred == []:
            fn += 1
        else:
            tp += 1
        if gt == [] and pred == []:
            f1_list.append(1)
            em_list.append(1)
        elif gt == [] or pred == []:
            f1_list.append(0)
            em_list.append(0)
        else:
            answers = [item['Option'] for item in gt]
            options = [item['Option'] for item in pred]
            f1_list.append(sum(option_f1(answers, o) for o in options) / len(options))
            em_list.append(sum(option_em(answers, o) for o in options) / len(options))
    precision = tp / (tp + fp) if tp + fp != 0 else -1
    recall = tp / (tp + fn) if tp + fn != 0 else -1
    if precision + recall == 0:
        raise OfficialCrash("ZeroDivisionError in total_f1")
    total_f1 = 2 * precision * recall / (precision + recall)
    success = (1 - errors / len(references)) * 100
    reported = [success * total_f1 if total_f1 > 0 else 0,
                success * (sum(f1_list) / len(f1_list)) if f1_list else 0,
                success * (sum(em_list) / len(em_list)) if em_list else 0]
    return sum(reported) / 3


# --- Note-QueryGen: sns/querygen.py ----------------------------------------------------------------


def edit_distance(a, b):
    grid = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        for j in range(len(b) + 1):
            if i == 0 or j == 0:
                grid[i][j] = i + j
            elif a[i - 1] == b[j - 1]:
                grid[i][j] = grid[i - 1][j - 1]
            else:
                grid[i][j] = min(grid[i - 1][j], grid[i][j - 1], grid[i - 1][j - 1]) + 1
    return grid[len(a)][len(b)]


def ref_query_gen(predictions, references, cosine):
    """NoteQueryGenEvaluator (sns/querygen.py), `cosine` standing for the embedding model's."""
    scores = []
    for pred, ref in zip(predictions, references):
        truncated = re.split(LIST_PATTERN, pred.strip(), maxsplit=1)[0]
        similarity = cosine(truncated, ref) * 100
        longest = max(len(pred), len(ref))
        if longest == 0:
            raise OfficialCrash("ZeroDivisionError in ANLS")
        anls = (1.0 - edit_distance(pred, ref) / longest) * 100
        scores.append((similarity + anls) / 2)
    return sum(scores) / len(scores)


def char_set_cosine(a, b):
    """A deterministic stand-in for the embedding cosine: Jaccard of the lower-cased character sets."""
    x, y = set(a.lower()), set(b.lower())
    return len(x & y) / len(x | y) if x | y else 0.0


def words_cosine(a, b):
    """The module's documented default stand-in, rewritten: cosine of lower-cased \\w+ count vectors."""
    x, y = Counter(re.findall(r"\w+", a.casefold())), Counter(re.findall(r"\w+", b.casefold()))
    norm = math.sqrt(sum(v * v for v in x.values())) * math.sqrt(sum(v * v for v in y.values()))
    return sum(c * y[w] for w, c in x.items()) / norm if norm else 0.0


# ===================================================================================================
# The official number per file: (file's raw answers, predictions) -> score


def official_score(stem, predictions, raw_answers, demoji=table_demoji, cosine=words_cosine):
    if stem in ("Note-Taxonomy-single", "Note-Hashtag-single"):
        return ref_accuracy(predictions, raw_answers, TAXONOMY_PATTERN)
    if stem in ("Note-Gender", "Note-QueryCorr-explain"):
        return ref_accuracy(predictions, raw_answers, YES_NO_PATTERN)
    if stem == "Note-Taxonomy-multiple":
        return ref_taxonomy_multiple(predictions, raw_answers)
    if stem in ("Note-Hashtag-multiple", "Note-NER"):
        return ref_micro_f1(predictions, raw_answers)
    if stem == "Note-CHLW":
        return ref_chlw(predictions, raw_answers)
    if stem == "Note-QueryCorr-topic":
        return ref_query_corr_topic(predictions, raw_answers)
    if stem == "Note-MRC-simple":
        return ref_mrc_simple(predictions, raw_answers, demoji)
    if stem == "Note-MRC-complex":
        return ref_mrc_complex(predictions, raw_answers)
    if stem == "Note-QueryGen":
        return ref_query_gen(predictions, raw_answers, cosine)
    raise KeyError(stem)


# ===================================================================================================
# Noisy predictions


def noisy_single(rng, answer, pool):
    """Right, wrong, empty and decorated forms of a single answer."""
    wrong = rng.choice(pool)
    forms = [answer, answer, f"Answer: {answer}", f"Answer:{answer}", f"answer: {answer}", f"{answer}.",
             f"{answer}, because it fits", f"{answer}\nBecause of the note.", f"'{answer}'", f'"{answer}"',
             answer.lower(), answer.upper(), f"  {answer}\t", f"{answer}<|im_end|>", f"{answer}<|end|>",
             f"{answer}<|endofresponse|>", f"['{answer}']", f"The answer is {answer}", f"Answer: Answer: {answer}",
             f"Let me think.\nAnswer: {answer}", f"**{answer}**", f"答案：{answer}", f"{answer}。",
             f"{answer} endofresponse", f"Sure! Answer: {answer}", f"{answer} >", f"<{answer}>", wrong,
             f"Answer: {wrong}", "", "   ", f"\n{answer}", f"{answer}\n"]
    return rng.choice(forms)


def noisy_items(rng, items, pool):
    """A noisy selection of list items: the right ones, fewer, more, shuffled, repeated, recased."""
    items = list(items)
    extra = [rng.choice(pool) for _ in range(2)]
    choice = rng.randrange(7)
    if choice == 1 and items:
        items = items[:-1]
    elif choice == 2:
        items = items + extra[:1]
    elif choice == 3:
        rng.shuffle(items)
    elif choice == 4 and items:
        items = items + [items[0]]
    elif choice == 5 and items:
        items[0] = items[0].lower()
    elif choice == 6:
        items = extra
    return items


def noisy_comma_list(rng, answer, pool):
    """Hashtag-multiple / NER: comma lists with blank items, other separators, literals and cut markers."""
    items = noisy_items(rng, [t.strip() for t in answer.split(",")], pool)
    joined = ", ".join(items)
    forms = [joined, joined, ",".join(items), " , ".join(items), "; ".join(items), str(items), f"Answer: {joined}",
             f"{joined}\nThese are the tags.", f"{joined}<|im_end|>", f"{joined}, , ", f", {joined},",
             ",,".join(items), f"{joined}, Answer: extra", f"{joined} endofresponse more", f"{joined} > x",
             f"'{joined}'", joined.upper(), "", f"\n{joined}"]
    return rng.choice(forms)


def noisy_path(rng, answer, pool):
    """Taxonomy-multiple: the three-level path with other separators, missing levels, articles, case."""
    levels = [part.strip() for part in answer.split("|")]
    other = [part.strip() for part in rng.choice(pool).split("|")]
    forms = [answer, " | ".join(levels), "|".join(levels), " > ".join(levels), ", ".join(levels),
             " / ".join(levels), " | ".join(levels[:2]), " | ".join(levels).lower(), f"The {answer}",
             f"Answer: {answer}", f"{answer}.", f"{answer}\nreason", " | ".join(levels[:2] + other[2:]),
             " | ".join(other), f"  {answer}  ", " & ".join(levels), f"{answer}<|im_end|>", ""]
    return rng.choice(forms)


def noisy_level(rng, answer, pool):
    """QueryCorr-topic: the level inside text, other numbers first, signs, words."""
    wrong = rng.choice(LEVELS)
    forms = [answer, answer, f"Level: {answer}", f"Answer: {answer}", f"{answer}.", f"I'd say {answer} (of 3)",
             f"Score 10 -> {answer}", f"In 2024 the note ... {answer}", f"−{answer}", f"{answer}-", "none", "",
             "three", f"Relevance {wrong}", wrong, f"-{answer}", f"level {answer}\n1",
             f"Step 1: read the note.\nAnswer: {answer}", f"Reasoning about the query.\nAnswer: {answer}",
             f"-2 or {answer}", f"-0{answer}", "-3"]
    return rng.choice(forms)


def noisy_chlw(rng, answer, pool):
    """CHLW: list literals in several spellings, empty lists, comma text, broken literals."""
    words = ast.literal_eval(answer)
    words = noisy_items(rng, words, pool)
    literal = str(words)
    forms = [answer, literal, literal, json.dumps(words), "[]", "None", ", ".join(words), literal[:-1],
             str(tuple(words)), f"Answer: {literal}", f"I pick {literal} rather than ['other']",
             f"[Highlight] {literal}", str([w.upper() for w in words]), str([f" {w}" for w in words]),
             f"{literal}\nDone.", "", "[1, 2]", f"```python\n{literal}\n```", json.dumps(words).replace('"', "'")]
    return rng.choice(forms)


def noisy_spans(rng, spans, pool):
    """MRC-simple: list literals of spans, strings, tuples, dicts, prose, leading bracketed tags."""
    chosen = noisy_items(rng, spans, pool)
    literal = json.dumps(chosen, ensure_ascii=False)
    text = " ".join(chosen)
    forms = [json.dumps(spans, ensure_ascii=False), literal, literal, str(chosen), "[]", "None", text, repr(text),
             str(tuple(chosen)), json.dumps({s: 1 for s in chosen}, ensure_ascii=False), f"Answer: {literal}",
             f"[Note] {literal}", f"```json\n{literal}\n```", f"{literal}\nThat is all.", "",
             str({chosen[0]}) if chosen else "set()", f"{literal} and [more]"]
    return rng.choice(forms)


def result_block(options):
    entries = [{"Option": option, "Reason": f"because {option}"} for option in options]
    return f"<Result>{json.dumps(entries, ensure_ascii=False)}</Result>"


def result_options(raw):
    return [entry["Option"] for entry in json.loads(re.findall(r"<Result>(.*?)</Result>", raw, re.S)[-1])]


def noisy_result(rng, answer, pool):
    """MRC-complex: <Result> blocks right, partial, empty, fenced, malformed, repeated."""
    options = result_options(answer)
    chosen = noisy_items(rng, options, pool)
    block = result_block(chosen)
    body = block[len("<Result>"):-len("</Result>")]
    forms = [answer, block, block, f"<rewrite_query>q</rewrite_query>\n{block}", "<Result>[]</Result>",
             f"<Result>```json\n{body}\n```</Result>", f"<Result>json{body}</Result>", body, "",
             f"<Result>{body[:-1]}</Result>", "<Result>[{\"Option\": \"x\"}]</Result>",
             f"<Result>[]</Result> then {block}", f"<Result></Result> {block}", block.lower(),
             result_block([o.upper() for o in chosen]), result_block(chosen + chosen[:1]),
             "<Result>[{\"Option\": 1, \"Reason\": \"r\"}]</Result>", result_block([f"{o}:" for o in chosen])]
    return rng.choice(forms)


def noisy_query(rng, answer, pool):
    """QueryGen: the query decorated, cut, recased, replaced."""
    forms = [answer, f"Answer: {answer}", f"{answer}\nThis query finds the note.", f"{answer}<|im_end|>",
             answer.lower(), answer[: len(answer) // 2], f"  {answer}  ", rng.choice(pool), "", f"\"{answer}\"",
             f"Query: {answer}. Another: {rng.choice(pool)}"]
    return rng.choice(forms)


NOISE = {
    "Note-Taxonomy-single": noisy_single, "Note-Hashtag-single": noisy_single, "Note-Gender": noisy_single,
    "Note-QueryCorr-explain": noisy_single, "Note-Taxonomy-multiple": noisy_path,
    "Note-Hashtag-multiple": noisy_comma_list, "Note-NER": noisy_comma_list, "Note-QueryCorr-topic": noisy_level,
    "Note-CHLW": noisy_chlw, "Note-MRC-simple": noisy_spans, "Note-MRC-complex": noisy_result,
    "Note-QueryGen": noisy_query,
}
assert set(NOISE) == set(SNS_BENCH_FILES)


def _comma_items(answers):
    return [t.strip() for a in answers for t in a.split(",")]


POOLS = {  # what wrong answers are drawn from: units of the file's answers
    "Note-Hashtag-multiple": _comma_items, "Note-NER": _comma_items,
    "Note-CHLW": lambda answers: [w for a in answers for w in ast.literal_eval(a)],
    "Note-MRC-simple": lambda answers: [span for spans in answers for span in spans],
    "Note-MRC-complex": lambda answers: [o for a in answers for o in result_options(a)],
}


def noisy_predictions(stem, raw_answers, seed):
    rng = random.Random(seed)
    pool = POOLS.get(stem, list)(raw_answers) or ["x"]
    return [NOISE[stem](rng, answer, pool) for answer in raw_answers]


# ===================================================================================================
# Synthetic items in each file's format

LABELS = ["Food", "Travel", "Fashion Trends", "Weekend Trip", "Friend Portraits", "Mr. Zhang's Old Amber",
          "Rock, Paper", "Calendar Art", "Swim_end Club", "<Tag> Group", "A > B", "The Arts", "Pets & Animals",
          "Endurance", "Answer: Yes", "美食", "ACG", "Legend", "an Apple a Day", "Single Item Recommendation"]
PATHS = [("Fashion", "Accessories", "Jewelry"), ("Trend", "Footwear", "Sneakers"),
         ("The Arts", "Film & Video", "Other"),
         ("Food", "Recipes", "Home Cooking"), ("Travel", "Weekend Trips", "Friend Trips"),
         ("Fitness & Weight Loss", "Weight Loss", "Weight Loss Tutorials"), ("美食", "探店", "火锅"),
         ("Photography", "Portrait Photography", "Friend Portraits"), ("Education", "K12", "Math, Science")]
TAGS = ["Beach Outfit", "Savings", "Wuhan", "Bank", "Handmade Ball", "Trendy Toys", "A > B", "<Tag>", "Weekend",
        "im_end test", "美食探店", "Mr. X", "endofresponse", "High EQ", "Students", "Non-Greasy", "Refreshing"]
WORDS = ["CC mode", "Peking duck", "Huawei Smart Screen", "transparent Bluetooth speaker", "the teacher's book",
         "[Cry R] sticker", "noodles", "北京烤鸭", "end game", "Listen to Me, Thank You"]
SPANS = ["Initially a bit unaccustomed. After a while, got the hang of it.", "14 inches, perfect for a 95 cm baby",
         "🌞Summer (June - August)\n🍆Eggplant: very plump.", "夏天吃茄子，很好吃。", "Use the [Topic] tag 👍🏻",
         "The family 👩‍👩‍👧 loved it ❤️!", "Price 1.5 yuan™ only", "1️⃣ Step one... 2 step two", "Go to 🇨🇳 now",
         "He said 'yes' and left", "a", "Open 9 to 5, closed on Mondays"]
OPTIONS = ["The Forbidden City 100", "故宫100", "Book A", "Pet Hair Dryer Neck Mount Stand", "a=b", "《三体》",
           "Coody Coffee: latte", "Book A (2nd ed.)", "Trend Toys", "…more"]
QUERIES = ["Which is easier to learn, Xiao or Flute?", "Operating hours for Dalian Heda Cable Car", "美食推荐",
           "weekend trip ideas", "how to end a friendship", "iPhone 11 photography <tips>"]


def _sample(rng, population, low, high):
    return rng.sample(population, rng.randint(low, high))


def synthetic_items(stem, n, seed):
    """n raw items in the file's JSON format."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        if stem in ("Note-Taxonomy-single", "Note-Hashtag-single"):
            candidates = _sample(rng, LABELS, 4, 6)
            items.append({"content": f"Note {i}", "candidates": ", ".join(candidates), "answer": candidates[0]})
        elif stem == "Note-Taxonomy-multiple":
            path = rng.choice(PATHS)
            items.append({"content": f"Note {i}", **{f"candidates_{k}": str([p]) for k, p in
                                                     zip(("primary", "secondary", "tertiary"), path)},
                          "answer": " | ".join(path)})
        elif stem in ("Note-Hashtag-multiple", "Note-NER"):
            answer = ", ".join(_sample(rng, TAGS, 1, 4))
            extra = {"candidates": ", ".join(TAGS)} if stem == "Note-Hashtag-multiple" else {"question": "Which?"}
            items.append({"content": f"Note {i}", **extra, "answer": answer})
        elif stem == "Note-QueryCorr-topic":
            items.append({"content": f"Query: q{i}\nNote: n", "answer": rng.choice(LEVELS)})
        elif stem == "Note-QueryCorr-explain":
            items.append({"sentence1": f"q{i}", "sentence2": "n", "answer": rng.choice(["Yes", "No"])})
        elif stem == "Note-Gender":
            items.append({"content": f"Note {i}", "answer": rng.choice(["Yes", "No"])})
        elif stem == "Note-CHLW":
            words = _sample(rng, WORDS, 0, 3) if rng.random() < 0.6 else []
            content = f"Comment: \nabout things\n\nPossible highlight word options list:\n{WORDS}\n\nPlease answer."
            items.append({"content": content, "answer": str(words)})
        elif stem == "Note-MRC-simple":
            spans = _sample(rng, SPANS, 1, 3) if rng.random() < 0.7 else []
            items.append({"query": f"q{i}", "content": "the note", "answer": spans})
        elif stem == "Note-MRC-complex":
            options = _sample(rng, OPTIONS, 1, 3) if rng.random() < 0.6 else []
            answer = (f"<rewrite_query>q{i}</rewrite_query>\n<AnswerList>{json.dumps(options)}</AnswerList>\n"
                      f"{result_block(options)}")
            items.append({"content": f"Query: q{i}\nLevel: Book Title\n\nDoc:\n<Doc>d</Doc>", "answer": answer})
        elif stem == "Note-QueryGen":
            items.append({"content": f"Note {i}", "answer": rng.choice(QUERIES)})
    return items


def samples_from(stem, raw_items):
    """Samples built by the loader's own builders, as load_sns_bench makes them."""
    samples = []
    for index, item in enumerate(raw_items):
        prompt, answer, extra = BUILDERS[stem](item)
        samples.append(Sample(task=TASK_PREFIX + stem, prompt=prompt, answer=answer,
                              reward={"name": "exact_match", "params": {}}, split="eval", id=f"{stem}/{index}",
                              meta={"file": f"{stem}.json", "index": index, "raw_answer": item["answer"], **extra}))
    return samples


def module_score(stem, predictions, samples, similarity=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Note-QueryGen's stand-in warning
        return evaluate(stem, predictions, samples, similarity=similarity).score


# ===================================================================================================
# Tests on synthetic items (always run)

N_ITEMS, N_ROUNDS = 40, 4


def test_the_module_cites_the_commit_read():
    assert OFFICIAL_COMMIT == COMMIT and COMMIT in sns_bench.__doc__


@pytest.mark.parametrize("stem", list(SNS_BENCH_FILES))
def test_synthetic_items_score_as_the_official_code(stem):
    raw_items = synthetic_items(stem, N_ITEMS, seed=len(stem))
    samples = samples_from(stem, raw_items)
    raw_answers = [item["answer"] for item in raw_items]
    for round_ in range(N_ROUNDS):
        predictions = noisy_predictions(stem, raw_answers, seed=1000 * round_ + len(stem))
        if round_ == 0:  # the loader's own answers, what a model is asked to write, among them
            predictions[::3] = [s.answer for s in samples[::3]]
        expected = official_score(stem, predictions, raw_answers)
        assert module_score(stem, predictions, samples) == pytest.approx(expected, abs=1e-9), (stem, round_)
    assert module_score(stem, [""] * len(samples), samples) == pytest.approx(
        official_score(stem, [""] * len(samples), raw_answers), abs=1e-9)


def test_query_gen_with_a_similarity_function():
    raw_items = synthetic_items("Note-QueryGen", N_ITEMS, seed=7)
    samples, raw_answers = samples_from("Note-QueryGen", raw_items), [item["answer"] for item in raw_items]
    predictions = noisy_predictions("Note-QueryGen", raw_answers, seed=7)
    expected = official_score("Note-QueryGen", predictions, raw_answers, cosine=char_set_cosine)
    assert module_score("Note-QueryGen", predictions, samples, similarity=char_set_cosine) == pytest.approx(expected)


@pytest.mark.parametrize("stem,prediction,reference,hit", [
    # "end" anywhere cuts a Taxonomy / Hashtag-single answer: the reference itself can never be matched
    ("Note-Taxonomy-single", "Fashion Trends", "Fashion Trends", False),
    ("Note-Taxonomy-single", "Fashion Tr", "Fashion Trends", False),
    ("Note-Hashtag-single", "Weekend", "Weekend", False),
    ("Note-Hashtag-single", "Endurance", "Endurance", True),  # capital E: no "end"
    ("Note-Hashtag-single", "Swim_end Club", "Swim_end Club", False),  # cut at "im_end"
    ("Note-Hashtag-single", "Food<|im_end|>", "Food", True),
    ("Note-Hashtag-single", "Food, I think", "Food", True),
    ("Note-Hashtag-single", "food", "Food", False),  # case-sensitive
    ("Note-Hashtag-single", "Reasoning first.\nAnswer: Food", "Food", False),  # cut at the first period
    ("Note-Gender", "Yes<|end|>", "Yes", True),
    ("Note-Gender", "Yes endofresponse", "Yes", True),
    ("Note-Gender", "Answer: Answer: Yes", "Yes", True),
    ("Note-Gender", "answer: Yes", "Yes", False),  # only "Answer:" is removed
    ("Note-Gender", "'Yes'", "Yes", False),
    ("Note-QueryCorr-explain", "Noend", "No", False),  # no bare "end" in this pattern
])
def test_single_answer_quirks(stem, prediction, reference, hit):
    raw = synthetic_items(stem, 1, seed=0)[0]
    raw["answer"] = reference
    expected = 100.0 if hit else 0.0
    assert module_score(stem, [prediction], samples_from(stem, [raw])) == expected
    assert official_score(stem, [prediction], [reference]) == expected


def test_list_and_level_quirks():
    ner = samples_from("Note-NER", [{"question": "q", "content": "c", "answer": "Nike, Adidas"}])
    # " " is an item (kept, stripped to ""), ",," is not; "Answer:" is deleted mid-line
    assert module_score("Note-NER", ["Nike, , Adi" + "Answer:das"], ner) == round(2 * 2 / (3 + 2 + 0.0001), 4) * 100
    assert module_score("Note-NER", ["Nike,,Adidas"], ner) == 100.0
    topic = samples_from("Note-QueryCorr-topic", [{"content": "c", "answer": "1"}])
    # "10" reads as level 1; reasoning before the level counts: "Score 3 ... 1" reads as 3
    assert module_score("Note-QueryCorr-topic", ["10"], topic) == pytest.approx(
        official_score("Note-QueryCorr-topic", ["1"], ["1"]))
    assert module_score("Note-QueryCorr-topic", ["Score 3, so 1"], topic) == 0.0


def test_chlw_and_mrc_simple_read_the_first_bracket_block():
    raw = {**synthetic_items("Note-CHLW", 1, seed=0)[0], "answer": "['CC mode', 'noodles']"}
    chlw = samples_from("Note-CHLW", [raw])
    assert module_score("Note-CHLW", ["[Tag] ['CC mode', 'noodles']"], chlw) == 0.0  # "[Tag]" is read: a failure
    assert module_score("Note-CHLW", ['I choose ["noodles", "CC mode"] here'], chlw) == 100.0
    assert module_score("Note-CHLW", ["['cc mode', 'noodles ']"], chlw) == pytest.approx(0.0)  # raw comparison
    mrc = samples_from("Note-MRC-simple", [{"query": "q", "content": "c", "answer": ["Use the [Topic] tag"]}])
    assert evaluate("Note-MRC-simple", [json.dumps(["Use the [Topic] tag"])], mrc).parts["parse_success"] == 0.0
    # a bare quoted string is joined character by character, then the newlines are deleted: a full match
    assert evaluate("Note-MRC-simple", ["'abc'"], samples_from("Note-MRC-simple", [
        {"query": "q", "content": "c", "answer": ["abc"]}])).parts["parse_success"] == 100.0


def test_where_the_official_code_crashes_the_module_scores():
    mrc = samples_from("Note-MRC-simple", [{"query": "q", "content": "c", "answer": ["a long enough answer"]}])
    with pytest.raises(OfficialCrash):
        official_score("Note-MRC-simple", ["['...']"], [["a long enough answer"]])
    result = evaluate("Note-MRC-simple", ["['...']"], mrc)  # ROUGE of a sentence-less prediction: 0
    assert result.parts["success_rouge1"] == result.parts["success_rougeL"] == 0.0
    complex_items = samples_from("Note-MRC-complex", synthetic_items("Note-MRC-complex", 40, seed=3))
    with_options = [s for s in complex_items if result_options(s.meta["raw_answer"])]
    without = [s for s in complex_items if not result_options(s.meta["raw_answer"])]
    items = [with_options[0], without[0]]
    predictions = ["<Result>[]</Result>", result_block(["x"])]  # fn and fp, no tp: 0 / 0 in the official F1
    with pytest.raises(OfficialCrash):
        official_score("Note-MRC-complex", predictions, [s.meta["raw_answer"] for s in items])
    assert evaluate("Note-MRC-complex", predictions, items).parts["success_total_f1"] == 0.0


def test_bleu_and_rouge_re_implementations_agree():
    rng = random.Random(5)
    vocab = ["the", "cat", "sat", ".", "on", "mat", "猫", "坐", "在", "垫子", " ", "..", ",", "1.5", "dog"]
    for _ in range(300):
        ref = "".join(rng.choice(vocab) for _ in range(rng.randint(1, 20)))
        hyp = ref if rng.random() < 0.3 else "".join(rng.choice(vocab) for _ in range(rng.randint(1, 20)))
        hyp_tokens, ref_tokens = jieba_cut(hyp), jieba_cut(ref)
        assert sns_bench.nltk_sentence_bleu(ref_tokens, hyp_tokens) == reference_bleu(ref_tokens, hyp_tokens)
        try:
            expected = tuple(reference_rouge(" ".join(hyp_tokens), " ".join(ref_tokens)))
        except OfficialCrash:
            expected = (0.0, 0.0, 0.0)
        assert sns_bench.rouge_package_f(" ".join(hyp_tokens), " ".join(ref_tokens)) == expected


def test_bleu_matches_nltk_when_installed():
    bleu = pytest.importorskip("nltk.translate.bleu_score")
    rng = random.Random(6)
    vocab = ["a", "b", "c", "d", "e", " ", "。"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns about orders without a match
        for _ in range(300):
            ref = [rng.choice(vocab) for _ in range(rng.randint(1, 12))]
            hyp = ref[:] if rng.random() < 0.2 else [rng.choice(vocab) for _ in range(rng.randint(0, 12))]
            assert sns_bench.nltk_sentence_bleu(ref, hyp) == bleu.sentence_bleu([ref], hyp)


def test_rouge_and_emoji_match_their_packages_when_installed():
    rouge = pytest.importorskip("rouge")
    demoji = pytest.importorskip("demoji")
    scorer = rouge.Rouge()
    for text in SPANS + ["a . b . . c", "x y z", "猫 坐 在 垫子 上 。"]:
        assert sns_bench.strip_emoji(text) == demoji.replace(text, "")
        for other in SPANS[:4]:
            got = scorer.get_scores(text, other)[0]
            assert sns_bench.rouge_package_f(text, other) == tuple(got[m]["f"] for m in ("rouge-1", "rouge-2",
                                                                                          "rouge-l"))


def test_table_emoji_removal_agrees_with_the_module():
    for text in SPANS:
        assert sns_bench.strip_emoji(text) == table_demoji(text)


# ===================================================================================================
# The real benchmark (skipped without the data)

ROOT = default_root()


@pytest.fixture(scope="module")
def bench():
    if not ROOT.is_dir():
        pytest.skip(f"SNS-Bench data not found at {ROOT}: set REDONE_SNS_BENCH to the benchmark's data/ folder "
                    "(github.com/HC-Guo/SNS-Bench) to run the real-data parity tests")
    return load_sns_bench(ROOT)


def real_demoji():
    try:
        import demoji
    except ImportError:
        return sns_bench.strip_emoji  # measured against demoji 2.0.0: the module docstring says how close
    return lambda text: demoji.replace(text, "")


@pytest.mark.parametrize("stem", list(SNS_BENCH_FILES))
def test_real_items_score_as_the_official_code(bench, stem):
    samples = bench[TASK_PREFIX + stem]
    raw_answers = [s.meta["raw_answer"] for s in samples]
    predictions = noisy_predictions(stem, raw_answers, seed=17)
    expected = official_score(stem, predictions, raw_answers, demoji=real_demoji())
    assert module_score(stem, predictions, samples) == pytest.approx(expected, abs=1e-9)
    perfect = [s.answer for s in samples]  # the loader's answers: what a model is asked to write
    expected = official_score(stem, perfect, raw_answers, demoji=real_demoji())
    assert module_score(stem, perfect, samples) == pytest.approx(expected, abs=1e-9)
