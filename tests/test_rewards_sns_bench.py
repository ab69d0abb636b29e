"""SNS-Bench scores: hand-built items with scores computed by hand under the official SNS-Bench rules (the
module docstring; tests/test_sns_bench_parity.py checks them against a re-implementation of the official
code), and the real benchmark's files (the loader's answers score what the official code gives them, empty
outputs 0). The real data is read from REDONE_SNS_BENCH or ../shared/sns-bench; those tests skip when it is
absent."""
import json
import math
import warnings

import pytest

from redone_fast.data.schema import Sample
from redone_fast.data.sns_bench import BUILDERS, SNS_BENCH_FILES, TASK_PREFIX, default_root, load_sns_bench
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
# Hand-built items, scores computed by hand with the official SNS-Bench rules (the module docstring)


def test_accuracy_files():
    refs = taxonomy_items(["Food", "Travel", "Pets", "Art", "Mr. X"])
    predictions = ["Food", "travel", "Answer: Pets, because of the cat", "Food", "Mr. X"]
    # hits: Food; "travel" misses (case-sensitive); Pets ("Answer:" deleted, cut at the comma); Food is
    # not Art; "Mr. X" is cut at its period to "Mr", and the reference is not cut: a miss -> 2/5 = 40
    assert score("Note-Taxonomy-single", predictions, refs) == pytest.approx(40.0)
    gender = items("Note-Gender", [{"content": "c", "answer": a} for a in ("Yes", "No", "No", "Yes")])
    # "Yes." hit (cut at the period), "No" hit, "Yes" miss, "" miss -> 2/4 = 50
    assert score("sns_bench/Note-Gender", ["Yes.", "No", "Yes", ""], gender) == pytest.approx(50.0)
    explain = items("Note-QueryCorr-explain", [{"sentence1": "q", "sentence2": "n", "answer": "No"}])
    assert score("Note-QueryCorr-explain.json", ["'No'"], explain) == 0.0  # quotes are kept
    assert score("Note-QueryCorr-explain", ["No<|im_end|>"], explain) == 100.0  # cut at "<"
    hashtag = items("Note-Hashtag-single", [{"content": "c", "candidates": "A, B", "answer": "B"}])
    assert score("Note-Hashtag-single", ["A"], hashtag) == 0.0
    # any "end" cuts the prediction ("Trends" -> "Tr"): that reference can never be matched
    trends = items("Note-Hashtag-single", [{"content": "c", "candidates": "Trends, B", "answer": "Trends"}])
    assert score("Note-Hashtag-single", ["Trends"], trends) == 0.0


def test_taxonomy_multiple():
    refs = items("Note-Taxonomy-multiple", [
        {"content": "c", "candidates_primary": "['P1', 'P2']", "candidates_secondary": "['S1', 'S2']",
         "candidates_tertiary": "['T1', 'T2']", "answer": answer}
        for answer in ("P1 | S1 | T1", "P2 | S2 | T2", "P1 | S1 | T1", "Trend | S1 | T1")])
    predictions = ["P1 | S1 | T1.", "The P2 | S2 | T2", "P1|S1|T1", "Trend | S1 | T1"]
    # whole-path exact match after normalisation ("|" and articles deleted, spaces collapsed):
    # "P1 S1 T1" hit; "P2 S2 T2" hit; "P1S1T1" miss; "Trend..." is cut to "Tr" first: miss -> 2/4
    result = evaluate("Note-Taxonomy-multiple", predictions, refs)
    assert result.parts == {"accuracy": 50.0}
    assert result.score == 50.0


def test_set_f1_files():
    hashtags = items("Note-Hashtag-multiple", [{"content": "c", "candidates": "a, b, c, d", "answer": "a, b"},
                                               {"content": "c", "candidates": "a, b, c, d", "answer": "d"}])
    # item 1: P {A, c}, R {a, b}: no hit (case-sensitive); item 2: P {d}, R {d}: 1 hit
    # F1 = 2 * 1 / (3 + 3 + 0.0001) = 0.33332..., rounded to 0.3333
    assert score("Note-Hashtag-multiple", ["A, c", "d, d"], hashtags) == pytest.approx(33.33)
    ner = items("Note-NER", [{"question": "brands?", "content": "c", "answer": "Nike, Adidas, Puma"}])
    # P {Nike, Reebok}, R {Nike, Adidas, Puma}: 2 * 1 / (5 + 0.0001), rounded: 0.4
    assert score("Note-NER", ["Nike, Reebok\nextra line"], ner) == pytest.approx(40.0)
    assert score("Note-NER", [""], ner) == 0.0


def chlw_items(answers):
    content = "Comment: \nabout things\n\nPossible highlight word options list:\n['x', 'y', 'z', 'w']\n\nPlease answer."
    return items("Note-CHLW", [{"content": content, "answer": a} for a in answers])


def test_chlw():
    refs = chlw_items(["['x']", "[]", "['y', 'z']", "[]"])
    predictions = ["['x']", "[]", "", "Answer: ['w']"]
    # item 3 is a failure (eval of ""): success ratio 75. Pairs: {x}/{x} 1 hit; {""}/{""} 1 hit ([] counts
    # as [""]); {w}/{""} none. F1 = 2 * 2 / (3 + 3 + 0.0001), rounded 0.6667; score 75 * 0.6667
    result = evaluate("Note-CHLW", predictions, refs)
    assert result.parts == pytest.approx({"f1": 66.67, "parse_success": 75.0})
    assert result.score == pytest.approx(75 * 0.6667)
    # a comma list or "None" is no list literal: failures
    assert evaluate("Note-CHLW", ["x", "None", "['y', 'z']", "[]"], refs).parts["parse_success"] == 50.0


def test_query_corr_topic():
    refs = items("Note-QueryCorr-topic", [{"content": "Query: q\nNote: n", "answer": a} for a in ("3", "3", "2", "-1")])
    predictions = ["3", "Level 2.", "2", "none"]
    # "none" holds no level: a failure (3/4 kept). level 3: tp 1, fn 1; level 2: tp 1, fp 1; others 0.
    result = evaluate("Note-QueryCorr-topic", predictions, refs)
    p3, r3 = 1 / (1 + 1e-5) * 100, 1 / (2 + 1e-5) * 100
    p2, r2 = 1 / (2 + 1e-5) * 100, 1 / (1 + 1e-5) * 100
    macro = (2 * p3 * r3 / (p3 + r3 + 1e-5) + 2 * p2 * r2 / (p2 + r2 + 1e-5)) / 5
    assert result.parts["macro_f1"] == pytest.approx(macro)
    assert result.parts["parse_success"] == 75.0
    assert result.score == pytest.approx(macro * 0.75)
    # "-1" is read as minus one; the first level anywhere in the output counts, reasoning included
    p = 100 / (1 + 1e-5)  # precision and recall of level -1; the four other levels score 0
    alone = 2 * p * p / (2 * p + 1e-5) / 5
    assert score("Note-QueryCorr-topic", ["-1"], refs[3:]) == pytest.approx(alone)
    assert score("Note-QueryCorr-topic", ["Step 1: read it.\nAnswer: -1"], refs[3:]) == 0.0


def mrc_simple_items(answers):
    return items("Note-MRC-simple", [{"query": "q", "content": "c", "answer": a} for a in answers])


def _existence_f1(tp, fp, fn):
    precision, recall = tp / (tp + fp + 0.0001), tp / (tp + fn + 0.0001)
    return 2 * precision * recall / (precision + recall + 0.0001)


def test_mrc_simple():
    refs = mrc_simple_items([["alpha beta gamma delta"], [], [], ["epsilon"]])
    predictions = ['Answer: ["alpha beta gamma delta"]', "[]", "['alpha']", "epsilon"]
    # item 4 is a failure ("epsilon" is no literal): success 75. Existence: tp 1, tn 1, fp 1.
    # The true positive is identical: BLEU 1; ROUGE F = 2 / (2 + 1e-8) (the package's epsilon)
    rouge = 2.0 * (1.0 / (2.0 + 1e-8))
    result = evaluate("Note-MRC-simple", predictions, refs)
    assert result.parts == pytest.approx({"success_f1": 75 * _existence_f1(1, 1, 0), "success_bleu": 75.0,
                                          "success_rouge1": 75 * rouge, "success_rouge2": 75 * rouge,
                                          "success_rougeL": 75 * rouge, "parse_success": 75.0})
    assert result.score == pytest.approx(75 * (_existence_f1(1, 1, 0) + 1 + 3 * rouge) / 5)


def test_mrc_simple_overlap_parts():
    refs = mrc_simple_items([["the cat sat down"]])
    result = evaluate("Note-MRC-simple", ['["the cat sat"]'], refs)
    # jieba tokens keep the spaces: 5 against 7, every n-gram of the hypothesis matches: BLEU = exp(1 - 7/5).
    # The package counts distinct words: ROUGE-1 P 1, R 3/4; ROUGE-2 P 1, R 2/3; ROUGE-L (LCS words 3 of 4) as -1
    def f(p, r):
        return 2.0 * ((p * r) / (p + r + 1e-8))
    assert result.parts == pytest.approx({"success_f1": 100 * _existence_f1(1, 0, 0),
                                          "success_bleu": 100 * math.exp(1 - 7 / 5),
                                          "success_rouge1": 100 * f(1, 3 / 4), "success_rouge2": 100 * f(1, 2 / 3),
                                          "success_rougeL": 100 * f(1, 3 / 4), "parse_success": 100.0})
    # the reference's spans are joined with no separator, the prediction's with newlines (then deleted)
    joined = mrc_simple_items([["the cat sat", "on the mat"]])  # the reference reads "the cat saton the mat"
    spans = evaluate("Note-MRC-simple", ['["the cat sat", "on the mat"]'], joined).parts["success_bleu"]
    assert spans == pytest.approx(100.0)
    assert evaluate("Note-MRC-simple", ['["the cat sat on the mat"]'], joined).parts["success_bleu"] < 50


def mrc_complex_items(option_lists):
    raw = []
    for options in option_lists:
        entries = json.dumps([{"Option": o, "Reason": "r"} for o in options])
        raw.append({"content": "Query: q\nLevel: Book Title\n\nDoc:\n<Doc>d</Doc>",
                    "answer": f"<rewrite_query>q</rewrite_query>\n<AnswerList>{json.dumps(options)}</AnswerList>\n"
                              f"<Result>{entries}</Result>"})
    return items("Note-MRC-complex", raw)


def result(options):
    return "<Result>" + json.dumps([{"Option": o, "Reason": "r"} for o in options]) + "</Result>"


def test_mrc_complex():
    refs = mrc_complex_items([["Book A", "Book B"], [], ["X"], ["Y"]])
    predictions = [result(["book a", "Book C"]), "<Result>[]</Result>", result([]), "Book A"]
    # item 4 has no <Result>: a failure, success 75. Existence: tp 1, tn 1, fn 1 -> P 1, R 1/2, total-F1 2/3.
    # option-F1 / option-EM per item: item 1 mean(1 for "book a", 0 for "Book C") = 1/2;
    # item 2 both empty = 1; item 3 = 0 -> mean 1/2 each. Each part x 75.
    result_ = evaluate("Note-MRC-complex", predictions, refs)
    assert result_.parts == pytest.approx({"success_total_f1": 50.0, "success_option_f1": 37.5,
                                           "success_option_em": 37.5, "parse_success": 75.0})
    assert result_.score == pytest.approx(125 / 3)


def test_mrc_complex_cjk_option_f1():
    refs = mrc_complex_items([["故宫100"]])
    # tokens: "故", "宫", "100" vs "故", "宫": common run 2, P = 2/2, R = 2/3, F1 = 0.8; not equal: EM 0
    result_ = evaluate("Note-MRC-complex", [result(["故宫"])], refs)
    assert result_.parts["success_option_f1"] == pytest.approx(80.0)
    assert result_.parts["success_option_em"] == 0.0
    assert result_.score == pytest.approx((100 + 80 + 0) / 3)
    # English options are one token each: partial overlap earns nothing
    assert evaluate("Note-MRC-complex", [result(["Book"])], mrc_complex_items([["Book A"]])).parts[
        "success_option_f1"] == 0.0


def test_query_gen_anls_and_stand_in():
    assert anls("abd", "abc") == pytest.approx(100 * (1 - 1 / 3))  # one substitution in 3 characters
    # "Red shoes sale" vs "red shoes": R->r and 5 inserted characters = 6 edits over 14 characters
    assert anls("Red shoes sale", "red shoes") == pytest.approx(100 * 8 / 14)
    assert anls("", "") == 100.0 and anls("", "abc") == 0.0
    # counts {red, shoes, sale} vs {red, shoes}: 2 / (sqrt 3 * sqrt 2)
    assert word_cosine("Red shoes sale", "red shoes") == pytest.approx(2 / math.sqrt(6))
    refs = items("Note-QueryGen", [{"content": "c", "answer": "abc"}, {"content": "c", "answer": "red shoes"}])
    predictions = ["abd\nmore", "red shoes"]
    # item 1: the cosine reads the first line "abd" (no shared word: 0); ANLS reads the whole raw output,
    # "abd\nmore" (8 characters) against "abc": 6 edits -> 25. Item 2: 100 and 100.
    with pytest.warns(UserWarning, match="not comparable"):
        result_ = evaluate("Note-QueryGen", predictions, refs)
    assert result_.score == pytest.approx(((0 + 25) / 2 + 100) / 2)
    assert result_.stand_in is not None and "stand-in" in result_.metric
    # with a similarity function (an embedding model's cosine), no stand-in and no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        real = evaluate("Note-QueryGen", predictions, refs, similarity=lambda p, r: 1.0)
    assert real.stand_in is None and real.metric.startswith("mean of (embedding cosine")
    assert real.score == pytest.approx(((100 + 25) / 2 + 100) / 2)


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
    bare = Sample(task=TASK_PREFIX + "Note-Gender", prompt="p", answer="Yes", reward={"name": "exact_match"},
                  split="eval", id="x")
    with pytest.raises(ValueError, match="raw_answer"):  # the official reference is the file's own answer
        score("Note-Gender", ["Yes"], [bare])


# ---------------------------------------------------------------------------------------------------
# The real benchmark

ROOT = default_root()
needs_data = pytest.mark.skipif(not ROOT.is_dir(), reason=f"SNS-Bench data not found at {ROOT} "
                                                          f"(set REDONE_SNS_BENCH to the folder of its JSON files)")


@pytest.fixture(scope="module")
def bench():
    return load_sns_bench(ROOT)


# References the official post-processing can never match (an "end", a period or a comma cut the prediction)
UNREACHABLE = {"Note-Taxonomy-single": 24, "Note-Hashtag-single": 32, "Note-Taxonomy-multiple": 39}
EXACTLY_100 = ("Note-Hashtag-multiple", "Note-QueryCorr-explain", "Note-MRC-complex", "Note-NER", "Note-Gender",
               "Note-CHLW", "Note-QueryGen")


@needs_data
@pytest.mark.parametrize("stem", list(SNS_BENCH_FILES))
def test_real_files_answers_and_empty(bench, stem):
    """The loader's answers (what a model is asked to write) score what the official code gives them."""
    samples = bench[TASK_PREFIX + stem]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Note-QueryGen's stand-in warning
        perfect = evaluate(stem, [s.answer for s in samples], samples)
        empty = score(stem, [""] * len(samples), samples)
    assert empty == 0.0
    if stem in UNREACHABLE:
        assert perfect.score == pytest.approx(100 * (len(samples) - UNREACHABLE[stem]) / len(samples))
    elif stem in EXACTLY_100:
        assert perfect.score == pytest.approx(100.0, abs=1e-9), perfect
    elif stem == "Note-QueryCorr-topic":  # the 1e-5 epsilons keep it just under 100
        assert 99.9999 < perfect.score < 100.0
    else:  # Note-MRC-simple: 46 answers hold "[" or "]", so the bracket search cannot read them back
        assert perfect.parts["parse_success"] == pytest.approx(100 * (800 - 46) / 800)
        assert perfect.score == pytest.approx(perfect.parts["parse_success"], abs=0.01)


@needs_data
def test_real_files_in_sns_bench_own_list_format(bench):
    # Note-CHLW's references are Python list literals ("['CC mode']", "[]"): given back verbatim they score 100
    samples = bench[TASK_PREFIX + "Note-CHLW"]
    assert score("Note-CHLW", [s.meta["raw_answer"] for s in samples], samples) == pytest.approx(100.0)
    # a rationale before the answer is cut away at its first newline: nothing parses or matches
    gender = bench[TASK_PREFIX + "Note-Gender"]
    assert score("Note-Gender", [f"Let me think\nAnswer: {s.answer}" for s in gender], gender) == 0.0


@needs_data
def test_real_file_with_one_wrong_answer(bench):
    samples = bench[TASK_PREFIX + "Note-Gender"]
    predictions = [s.answer for s in samples]
    predictions[0] = "No" if samples[0].answer == "Yes" else "Yes"
    assert score("Note-Gender", predictions, samples) == pytest.approx(100 * (len(samples) - 1) / len(samples))


def test_module_documents_the_query_gen_stand_in():
    assert "NOT comparable" in sns_bench.__doc__ and "REPLACED" in sns_bench.__doc__
