"""SNS-Bench scores: hand-built items with hand-computed scores, and the real benchmark's files
(perfect predictions score 100, empty ones 0). The real data is read from REDONE_SNS_BENCH or
../shared/sns-bench; those tests skip when it is absent."""
import json
import math
import warnings

import pytest

from redone_fast.data.sns_bench import (BUILDERS, SNS_BENCH_FILES, TASK_PREFIX, default_root, load_sns_bench,
                                        parse_list_literal)
from redone_fast.data.schema import Sample
from redone_fast.rewards import sns_bench
from redone_fast.rewards.sns_bench import anls, evaluate, score, word_cosine


def items(stem, raw_items):
    """Samples built from raw benchmark-style items by the loader's own builders."""
    samples = []
    for index, item in enumerate(raw_items):
        prompt, answer, extra = BUILDERS[stem](item)
        samples.append(Sample(task=TASK_PREFIX + stem, prompt=prompt, answer=answer,
                              reward={"name": "exact_match", "params": {}}, split="eval", id=f"{stem}/{index}",
                              meta={"file": f"{stem}.json", "index": index, "raw_answer": item["answer"], **extra}))
    return samples


def taxonomy_items(answers):
    return items("Note-Taxonomy-single", [{"content": "note", "candidates": "Food, Travel, Pets, Art, Mr. X",
                                          "answer": a} for a in answers])


# ---------------------------------------------------------------------------------------------------
# Hand-built items, hand-computed scores


def test_accuracy_files():
    refs = taxonomy_items(["Food", "Travel", "Pets", "Art", "Mr. X"])
    predictions = ["Food", "travel.", "Reasoning first.\nAnswer: Pets, because of the cat", "Food", "Mr"]
    # hits: Food, travel (period cut, case ignored), Pets (after the marker, comma cut), not Art,
    # "Mr" == "Mr. X" cut at its period -> 4/5 = 80
    assert score("Note-Taxonomy-single", predictions, refs) == pytest.approx(80.0)
    gender = items("Note-Gender", [{"content": "c", "answer": a} for a in ("Yes", "No", "No", "Yes")])
    # "yes." hit, "No" hit, "Yes" miss, "" miss -> 2/4 = 50
    assert score("sns_bench/Note-Gender", ["yes.", "No", "Yes", ""], gender) == pytest.approx(50.0)
    explain = items("Note-QueryCorr-explain", [{"sentence1": "q", "sentence2": "n", "answer": "No"}])
    assert score("Note-QueryCorr-explain.json", ["'No'"], explain) == 100.0
    hashtag = items("Note-Hashtag-single", [{"content": "c", "candidates": "A, B", "answer": "B"}])
    assert score("Note-Hashtag-single", ["A"], hashtag) == 0.0


def test_taxonomy_multiple():
    refs = items("Note-Taxonomy-multiple", [
        {"content": "c", "candidates_primary": "['P1', 'P2']", "candidates_secondary": "['S1', 'S2']",
         "candidates_tertiary": "['T1', 'T2']", "answer": answer} for answer in ("P1 | S1 | T1", "P2 | S2 | T2")])
    result = evaluate("Note-Taxonomy-multiple", ["p1 | S1 | T9", "Answer: P2 | S9"], refs)
    # primary 2/2 = 100, secondary 1/2 = 50, tertiary 0/2 = 0 (T9 wrong, the second has no third level)
    assert result.parts == pytest.approx({"primary_accuracy": 100.0, "secondary_accuracy": 50.0,
                                          "tertiary_accuracy": 0.0})
    assert result.score == pytest.approx(50.0)  # mean of the three


def test_set_f1_files():
    hashtags = items("Note-Hashtag-multiple", [{"content": "c", "candidates": "a, b, c, d", "answer": "a, b"},
                                               {"content": "c", "candidates": "a, b, c, d", "answer": "d"}])
    # item 1: P {a, c}, R {a, b}: 1 hit; item 2: P {d} (duplicate dropped), R {d}: 1 hit
    # micro F1 = 2 * (1 + 1) / ((2 + 1) + (2 + 1)) = 4/6
    assert score("Note-Hashtag-multiple", ["A, c", "d, d"], hashtags) == pytest.approx(200 / 3)
    ner = items("Note-NER", [{"question": "brands?", "content": "c", "answer": "Nike, Adidas, Puma"}])
    # P {nike, reebok}, R {nike, adidas, puma}: 2 * 1 / (2 + 3) = 40
    assert score("Note-NER", ["Nike, Reebok\nextra line"], ner) == pytest.approx(40.0)
    assert score("Note-NER", [""], ner) == 0.0


def chlw_items(answers):
    content = "Comment: \nabout things\n\nPossible highlight word options list:\n['x', 'y', 'z', 'w']\n\nPlease answer."
    return items("Note-CHLW", [{"content": content, "answer": a} for a in answers])


def test_chlw():
    refs = chlw_items(["['x']", "[]", "['y', 'z']", "[]"])
    predictions = ["x", "None", "", "w"]
    # item 3 is unparsed (empty answer): left out, parse success 3/4.
    # pairs: {x}/{x} 1 hit; {""}/{""} 1 hit (empty for empty); {w}/{""} 0 hits
    # micro F1 = 2 * 2 / (3 + 3) = 2/3; score = 2/3 * 3/4 = 1/2
    result = evaluate("Note-CHLW", predictions, refs)
    assert result.parts == pytest.approx({"f1": 200 / 3, "parse_success": 75.0})
    assert result.score == pytest.approx(50.0)
    # SNS-Bench's own output format, a list literal, parses too; a malformed literal does not
    assert score("Note-CHLW", ["['x']", "[]", "['y', 'z']", "[]"], refs) == pytest.approx(100.0)
    assert evaluate("Note-CHLW", ["['x'", "[]", "['y', 'z']", "[]"], refs).parts["parse_success"] == 75.0


def test_query_corr_topic():
    refs = items("Note-QueryCorr-topic", [{"content": "Query: q\nNote: n", "answer": a} for a in ("3", "3", "2", "-1")])
    predictions = ["3", "Level 2.", "2", "none"]
    # "none" holds no level: unparsed (3/4 parsed), and its reference -1 is not counted.
    # level 3: tp 1, fn 1 -> P 1, R 1/2, F1 2/3; level 2: tp 1, fp 1 -> P 1/2, R 1, F1 2/3;
    # levels -1, 0, 1: no true positive -> 0. macro = (2/3 + 2/3) / 5 = 4/15; x 3/4 = 1/5
    result = evaluate("Note-QueryCorr-topic", predictions, refs)
    assert result.parts["macro_f1"] == pytest.approx(400 / 15)
    assert result.parts["parse_success"] == 75.0
    assert result.score == pytest.approx(20.0)
    # "-1" is read as minus one, not as "1"
    assert score("Note-QueryCorr-topic", ["-1"], refs[3:]) == pytest.approx(100.0 / 5)  # 4 levels absent: 0


def mrc_simple_items(answers):
    return items("Note-MRC-simple", [{"query": "q", "content": "c", "answer": a} for a in answers])


def test_mrc_simple():
    refs = mrc_simple_items([["alpha beta gamma"], [], [], ["delta"]])
    predictions = ["Answer: alpha beta gamma", "None", "alpha", ""]
    # item 4 unparsed (empty): success 3/4. Existence: tp 1 (item 1), tn 1, fp 1 (item 3):
    # P = 1/2, R = 1/1, F1 = 2/3. Over the one true positive BLEU = ROUGE-1/2/L = 1.
    # mean = (2/3 + 4) / 5 = 14/15; x 3/4 = 0.7
    result = evaluate("Note-MRC-simple", predictions, refs)
    assert result.parts == pytest.approx({"f1": 200 / 3, "bleu": 100.0, "rouge1": 100.0, "rouge2": 100.0,
                                          "rougeL": 100.0, "parse_success": 75.0})
    assert result.score == pytest.approx(70.0)


def test_mrc_simple_overlap_parts():
    refs = mrc_simple_items([["the cat sat", "down"]])  # spans joined by a space: "the cat sat down"
    result = evaluate("Note-MRC-simple", ["the cat sat"], refs)
    # BLEU: precisions 1 (orders 1-3), brevity penalty exp(1 - 4/3); ROUGE-1 = ROUGE-L = 6/7; ROUGE-2 0.8
    bleu = 100 * math.exp(1 - 4 / 3)
    assert result.parts == pytest.approx({"f1": 100.0, "bleu": bleu, "rouge1": 600 / 7, "rouge2": 80.0,
                                          "rougeL": 600 / 7, "parse_success": 100.0})
    assert result.score == pytest.approx((100 + bleu + 600 / 7 + 80 + 600 / 7) / 5)
    # the list-literal form is joined back into one text
    assert score("Note-MRC-simple", ["['the cat sat', 'down']"], refs) == pytest.approx(100.0)


def mrc_complex_items(option_lists):
    raw = []
    for options in option_lists:
        literal = "[" + ", ".join(f'"{o}"' for o in options) + "]"
        raw.append({"content": "Query: q\nLevel: Book Title\n\nDoc:\n<Doc>d</Doc>",
                    "answer": f"<rewrite_query>q</rewrite_query>\n<AnswerList>{literal}</AnswerList>\n<Result>[]</Result>"})
    return items("Note-MRC-complex", raw)


def test_mrc_complex():
    refs = mrc_complex_items([["Book A", "Book B"], [], ["X"], ["Y"]])
    predictions = ["book a, Book C", "None", "None", ""]
    # item 4 unparsed: success 3/4. Existence: tp 1, tn 1, fn 1 -> P 1, R 1/2, total-F1 2/3.
    # option-F1 / option-EM per item: item 1 mean(1 for "book a", 0 for "Book C") = 1/2;
    # item 2 both empty = 1; item 3 = 0 -> mean 1/2 each.
    # score = (2/3 + 1/2 + 1/2) / 3 * 3/4 = 5/9 * 3/4 = 5/12
    result = evaluate("Note-MRC-complex", predictions, refs)
    assert result.parts == pytest.approx({"total_f1": 200 / 3, "option_f1": 50.0, "option_em": 50.0,
                                          "parse_success": 75.0})
    assert result.score == pytest.approx(500 / 12)


def test_mrc_complex_cjk_option_f1():
    refs = mrc_complex_items([["故宫100"]])
    # tokens: "故", "宫", "100" vs "故", "宫": common run 2, P = 2/2, R = 2/3, F1 = 0.8; not equal: EM 0
    result = evaluate("Note-MRC-complex", ["故宫"], refs)
    assert result.parts["option_f1"] == pytest.approx(80.0)
    assert result.parts["option_em"] == 0.0
    assert result.score == pytest.approx((100 + 80 + 0) / 3)
    # English options are one token each: partial overlap earns nothing
    assert evaluate("Note-MRC-complex", ["Book"], mrc_complex_items([["Book A"]])).parts["option_f1"] == 0.0


def test_query_gen_anls_and_stand_in():
    assert anls("abd", "abc") == pytest.approx(100 * (1 - 1 / 3))  # one substitution in 3 characters
    # "Red shoes sale" vs "red shoes": R->r and 5 inserted characters = 6 edits over 14 characters
    assert anls("Red shoes sale", "red shoes") == pytest.approx(100 * 8 / 14)
    assert anls("", "") == 100.0 and anls("", "abc") == 0.0
    # counts {red, shoes, sale} vs {red, shoes}: 2 / (sqrt 3 * sqrt 2)
    assert word_cosine("Red shoes sale", "red shoes") == pytest.approx(2 / math.sqrt(6))
    refs = items("Note-QueryGen", [{"content": "c", "answer": "abc"}, {"content": "c", "answer": "red shoes"}])
    predictions = ["abd", "Answer: Red shoes sale"]
    # item 1: (0 + 66.667) / 2; item 2: (81.650 + 57.143) / 2; mean of the two
    expected = ((0 + 200 / 3) / 2 + (100 * 2 / math.sqrt(6) + 800 / 14) / 2) / 2
    with pytest.warns(UserWarning, match="not comparable"):
        result = evaluate("Note-QueryGen", predictions, refs)
    assert result.score == pytest.approx(expected)
    assert result.stand_in is not None and "stand-in" in result.metric
    # with a similarity function (an embedding model's cosine), no stand-in and no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        real = evaluate("Note-QueryGen", predictions, refs, similarity=lambda p, r: 1.0)
    assert real.stand_in is None and real.metric.startswith("mean of (embedding cosine")
    assert real.score == pytest.approx(((100 + 200 / 3) / 2 + (100 + 800 / 14) / 2) / 2)


def test_arguments_are_checked():
    refs = taxonomy_items(["Food"])
    with pytest.raises(ValueError, match="1 items"):
        score("Note-Taxonomy-single", ["a", "b"], refs)
    with pytest.raises(ValueError, match="unknown SNS-Bench file"):
        score("Note-Nothing", ["a"], refs)
    with pytest.raises(ValueError, match="other tasks"):
        score("Note-Gender", ["a"], refs)
    with pytest.raises(ValueError, match="no items"):
        score("Note-Gender", [], [])


# ---------------------------------------------------------------------------------------------------
# The real benchmark

ROOT = default_root()
needs_data = pytest.mark.skipif(not ROOT.is_dir(), reason=f"SNS-Bench data not found at {ROOT} "
                                                          f"(set REDONE_SNS_BENCH to the folder of its JSON files)")


@pytest.fixture(scope="module")
def bench():
    return load_sns_bench(ROOT)


@needs_data
@pytest.mark.parametrize("stem", list(SNS_BENCH_FILES))
def test_real_files_perfect_and_empty(bench, stem):
    samples = bench[TASK_PREFIX + stem]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Note-QueryGen's stand-in warning
        perfect = evaluate(stem, [s.answer for s in samples], samples)
        with_rationale = score(stem, [f"Let me think.\nAnswer: {s.answer}\nDone." for s in samples], samples)
        empty = score(stem, [""] * len(samples), samples)
    assert perfect.score == pytest.approx(100.0, abs=1e-9), perfect
    assert all(value == pytest.approx(100.0, abs=1e-9) for value in perfect.parts.values()), perfect.parts
    assert with_rationale == pytest.approx(100.0, abs=1e-9)
    assert empty == 0.0


@needs_data
def test_real_files_in_sns_bench_own_list_format(bench):
    # Note-CHLW's references are list literals ("['CC mode']", "[]"): given back verbatim they score 100,
    # except where a word holds a comma: the prompt's comma-separated reference ("Listen to Me, Thank
    # You") is two items, the literal one, so that item has no hit.
    samples = bench[TASK_PREFIX + "Note-CHLW"]
    with_comma = [s for s in samples if any("," in word for word in parse_list_literal(s.meta["raw_answer"]))]
    plain = [s for s in samples if s not in with_comma]
    assert len(with_comma) == 1 and len(plain) == len(samples) - 1
    assert score("Note-CHLW", [s.meta["raw_answer"] for s in plain], plain) == pytest.approx(100.0)
    assert score("Note-CHLW", [s.meta["raw_answer"] for s in with_comma], with_comma) == 0.0
    samples = bench[TASK_PREFIX + "Note-MRC-simple"]
    literals = [json.dumps(s.meta["raw_answer"], ensure_ascii=False) for s in samples]  # ["span", ...]
    assert score("Note-MRC-simple", literals, samples) == pytest.approx(100.0)


@needs_data
def test_real_file_with_one_wrong_answer(bench):
    samples = bench[TASK_PREFIX + "Note-Gender"]
    predictions = [s.answer for s in samples]
    predictions[0] = "No" if samples[0].answer == "Yes" else "Yes"
    assert score("Note-Gender", predictions, samples) == pytest.approx(100 * (len(samples) - 1) / len(samples))


def test_module_documents_the_query_gen_stand_in():
    assert "NOT comparable" in sns_bench.__doc__ and "REPLACED" in sns_bench.__doc__
