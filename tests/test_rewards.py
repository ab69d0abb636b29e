"""Reward functions: normalisation, hand-checked values, and equality with sacrebleu / rouge-score."""
import math
import random

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from redone_fast.rewards import bleu, chrf, exact_match, json_format, keywords, length, regex, rouge, set_f1
from redone_fast.rewards.normalize import after_marker, answer_text, canonical, normalize_answer, split_items
from redone_fast.rewards.overlap import cjk_language, lcs_length, rouge_f1, rouge_tokens

# ---------------------------------------------------------------------------------------------------
# Normalisation


@pytest.mark.parametrize("text, expected", [
    ("Food", "Food"),
    ("  Food  ", "Food"),
    ("Answer: Food", "Food"),
    ("The note is about meals.\nAnswer: Food", "Food"),  # a rationale, then the answer
    ("Answer: Travel\nreasoning...\nAnswer: Food", "Food"),  # the LAST marker wins
    ("answer: Food", "Food"),  # any case
    ("Final Answer: Food", "Food"),
    ("**Answer:** Food", "Food"),  # markdown bold around the marker
    ("答案：Food", "Food"),  # SNS-Bench also strips the full-width Chinese marker
    ("Answer:\nFood\nbecause it shows a meal", "Food"),  # stripped before the newline cut
    ("Food\nmore text", "Food"),  # no marker: first line of the whole output
    ("", ""),
    ("Answer:", ""),
])
def test_answer_text(text, expected):
    assert answer_text(text) == expected


def test_after_marker_keeps_every_line():
    assert after_marker("thinking\nAnswer: {\n  \"a\": 1\n}") == "{\n  \"a\": 1\n}"


@pytest.mark.parametrize("text, single, expected", [
    ("Food.", True, "Food"),
    ("Food, because it shows a meal", True, "Food"),
    ('"Food"', True, "Food"),
    ("'Food', I think", True, "Food"),  # quotes stripped, then the comma cut, then stripped again
    ("Mr. Zhang's Old Amber", True, "Mr"),  # a Hashtag-single reference: cut like a prediction would be
    ("No. 9 Electric Scooter", True, "No"),
    ("Food, Travel", False, "Food, Travel"),  # lists are not cut
    ("`None`", True, "None"),  # "None" is an ordinary answer
    ("Answer: 3.\nThe note fully meets the need.", True, "3"),
])
def test_normalize_answer(text, single, expected):
    assert normalize_answer(text, single=single) == expected


def test_canonical_ignores_case_and_spacing():
    assert canonical("  Fashion   Trends ") == canonical("fashion trends") == "fashion trends"
    assert canonical("STRASSE") == canonical("straße")  # casefold, not lower


def test_split_items():
    assert split_items("a, b ,, 'c'") == ["a", "b", "c"]
    assert split_items("['a', 'b, c']") == ["a", "b, c"]  # a list literal is read as one
    assert split_items('["x"]') == ["x"]
    assert split_items("[Topic] tag, other") == ["[Topic] tag", "other"]  # not a literal: split
    assert split_items("a | b | c", "|") == ["a", "b", "c"]
    assert split_items("") == []


# ---------------------------------------------------------------------------------------------------
# exact_match and set_f1


@pytest.mark.parametrize("prediction, reference, params, expected", [
    ("Food", "food", {}, 1.0),  # case-insensitive
    ("Reasoning here.\nAnswer: Food", "Food", {}, 1.0),
    ("Food.", "Food", {}, 0.0),  # without single, the period stays
    ("Food.", "Food", {"single": True}, 1.0),
    ("Food, since it shows noodles", "Food", {"single": True}, 1.0),
    ("Mr", "Mr. Zhang's Old Amber", {"single": True}, 1.0),  # the reference is cut too
    ("None", "None", {"single": True}, 1.0),
    ("None", "Food", {"single": True}, 0.0),
    ("Food", "Travel", {}, 0.0),
    ("  Food  ", "Food", {"normalize": False}, 1.0),  # only surrounding whitespace is forgiven
    ("food", "Food", {"normalize": False}, 0.0),  # case matters without normalisation
    ('"Food"', "Food", {"normalize": False}, 0.0),
    ("Answer: Food\nmore", "Food", {"normalize": False}, 1.0),
    ("", "", {}, 1.0),
])
def test_exact_match(prediction, reference, params, expected):
    assert exact_match(prediction, reference, **params) == expected


@pytest.mark.parametrize("prediction, reference, params, expected", [
    # |P & R| = 2 ({b, c}), |P| = 3, |R| = 4: 2 * 2 / (3 + 4) = 4/7
    ("a, b, c", "b, c, d, e", {}, 4 / 7),
    ("A, B", "b, a", {}, 1.0),  # order and case do not matter
    ("a, a, b", "a, b", {}, 1.0),  # duplicates count once
    ("x", "a, b", {}, 0.0),
    ("", "", {}, 1.0),  # both empty
    ("", "a", {}, 0.0),
    ("None", "None", {}, 1.0),
    ("Fashion | Bags | Totes", "Fashion | Bags | Wallets", {"separator": "|"}, 2 / 3),  # 2*2/(3+3)
    ("['a', 'b']", "a, b", {}, 1.0),  # a list literal answer
    ("Thinking...\nAnswer: a, b\nc", "a, b", {}, 1.0),  # first line after the marker
])
def test_set_f1(prediction, reference, params, expected):
    assert set_f1(prediction, reference, **params) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------------
# BLEU and chrF++: hand-checked, and equal to sacrebleu called directly


def test_bleu_by_hand():
    # hyp "the cat sat on the mat", ref "the cat sat on a mat" (13a: 6 tokens each, brevity penalty 1)
    # clipped n-gram precisions: 1-gram 5/6 ("the" counts once), 2-gram 3/5, 3-gram 2/4, 4-gram 1/3
    # BLEU = (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = (1/12) ** 0.25 = 0.537285
    assert bleu("the cat sat on the mat", "the cat sat on a mat") == pytest.approx((1 / 12) ** 0.25)
    # hyp "the cat sat" against "the cat sat down": precisions 3/3, 2/2, 1/1 (effective order 3),
    # brevity penalty exp(1 - 4/3) = 0.716531
    assert bleu("the cat sat", "the cat sat down") == pytest.approx(math.exp(1 - 4 / 3))
    assert bleu("Answer: the cat sat", "the cat sat") == pytest.approx(1.0)
    assert bleu("dog", "the cat sat") == 0.0


def test_chrf_by_hand():
    # "ab" vs "ac", plain chrF (char orders 1-6, beta 2): order 1: P = R = 1/2; order 2: P = R = 0;
    # orders 3-6 have no n-grams (left out). Mean P = mean R = 1/4; F2 = 5 PR / (4P + R) = 1/4.
    assert chrf("ab", "ac", word_order=0) == pytest.approx(0.25)
    # chrF++ adds word orders: 1-grams "ab" vs "ac": P = R = 0; no word 2-grams. Mean P = R =
    # (1/2 + 0 + 0) / 3 = 1/6, F2 = 1/6.
    assert chrf("ab", "ac") == pytest.approx(1 / 6)
    assert chrf("same text", "same text") == 1.0
    assert chrf("xyz", "abc") == 0.0


SEGMENTS = [
    ("the cat sat on the mat", "the cat sat on a mat"),
    ("A quick brown fox jumps.", "The quick brown fox jumped over the dog."),
    ("Hello, world!", "hello world"),
    ("Café crème brûlée 😀", "café crème brulee"),
    ("这是一个测试", "这是测试"),
    ("", "something"),
    ("one", "one"),
    ("long " * 40, "long " * 35),
]


@pytest.mark.parametrize("hypothesis, reference", SEGMENTS)
def test_bleu_equals_sacrebleu(hypothesis, reference):
    expected = sacrebleu.sentence_bleu(hypothesis.strip(), [reference]).score / 100
    assert bleu(hypothesis, reference, tokenize="13a") == pytest.approx(min(expected, 1.0), abs=1e-12)
    if cjk_language(hypothesis, reference) is None:  # "auto" is 13a there (CJK: tests/test_rewards_cjk.py)
        assert bleu(hypothesis, reference) == pytest.approx(min(expected, 1.0), abs=1e-12)


@pytest.mark.parametrize("word_order", [0, 1, 2])
@pytest.mark.parametrize("hypothesis, reference", SEGMENTS)
def test_chrf_equals_sacrebleu(hypothesis, reference, word_order):
    sentence = sacrebleu.sentence_chrf(hypothesis.strip(), [reference], word_order=word_order).score / 100
    corpus = sacrebleu.corpus_chrf([hypothesis.strip()], [[reference]], word_order=word_order).score / 100
    assert chrf(hypothesis, reference, word_order=word_order, tokenize="default") == pytest.approx(sentence, abs=1e-12)
    if cjk_language(hypothesis, reference) is None or word_order == 0:  # "auto" only re-cuts CJK words
        assert chrf(hypothesis, reference, word_order=word_order) == pytest.approx(sentence, abs=1e-12)
    assert sentence == pytest.approx(corpus, abs=1e-12)  # one segment: corpus and sentence agree


def test_chrf_default_is_chrf_plus_plus():
    hypothesis, reference = SEGMENTS[1]
    assert chrf(hypothesis, reference) == pytest.approx(
        sacrebleu.corpus_chrf([hypothesis], [[reference]], word_order=2).score / 100)


# ---------------------------------------------------------------------------------------------------
# ROUGE: hand-checked, and equal to rouge-score


def test_rouge_by_hand():
    # "the cat sat" vs "the cat sat down": unigram overlap 3, P = 3/3, R = 3/4, F = 2*1*.75/1.75 = 6/7
    assert rouge("the cat sat", "the cat sat down", variant="rouge1") == pytest.approx(6 / 7)
    # bigrams {the cat, cat sat} vs {the cat, cat sat, sat down}: P = 2/2, R = 2/3, F = 0.8
    assert rouge("the cat sat", "the cat sat down", variant="rouge2") == pytest.approx(0.8)
    # LCS "the cat sat" = 3 tokens: same as ROUGE-1 here, 6/7 (rougeL is the default)
    assert rouge("the cat sat", "the cat sat down") == pytest.approx(6 / 7)
    # LCS of "a b c d" and "b a d c" is 2 ("a d", "b c", ...): P = R = 2/4, F = 0.5
    assert rouge("a b c d", "b a d c") == pytest.approx(0.5)
    assert rouge("Answer: the cat", "The CAT!") == 1.0  # answer extraction, rouge-score's tokens
    with pytest.raises(ValueError, match="unknown ROUGE variant"):
        rouge("a", "a", variant="rouge3")


ROUGE_CASES = [
    ("the cat sat", "the cat sat down"),
    ("The Cat, the HAT!", "the hat and the cat"),
    ("a b a b a", "b a b"),
    ("police killed the gunman", "the gunman police killed"),
    ("Café naïve résumé", "cafe naive resume"),  # non-ASCII letters are separators for rouge-score
    ("笔记 note 😀 notes", "note 笔记 notes"),  # CJK and emoji dropped (rouge_f1's default tokens)
    ("\u212a is the Kelvin sign", "k is the kelvin sign"),  # lower() turns the Kelvin sign into "k"
    ("İstanbul trip", "istanbul trip"),  # "İ".lower() is "i" + a combining dot
    ("", "something"),
    ("!!!", "???"),
    ("one", "one"),
    ("2024 top-10 list", "top 10 list of 2024"),
]


@pytest.mark.parametrize("variant", ["rouge1", "rouge2", "rougeL"])
@pytest.mark.parametrize("prediction, reference", ROUGE_CASES)
def test_rouge_equals_rouge_score(prediction, reference, variant):
    scorer = rouge_scorer.RougeScorer([variant], use_stemmer=False)
    expected = scorer.score(reference, prediction)[variant].fmeasure  # score(target, prediction)
    assert rouge_f1(prediction, reference, variant) == pytest.approx(expected, abs=1e-12)


def test_rouge_equals_rouge_score_on_random_texts():
    rng = random.Random(0)
    vocabulary = ["a", "b", "c", "d", "the", "cat", "Dog", "x1", "é", "猫", "!"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    for _ in range(60):
        prediction = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 30)))
        reference = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 30)))
        expected = scorer.score(reference, prediction)
        for variant in ("rouge1", "rouge2", "rougeL"):
            assert rouge_f1(prediction, reference, variant) == pytest.approx(expected[variant].fmeasure, abs=1e-12)


def _lcs_table(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_lcs_length_matches_dynamic_programming():
    rng = random.Random(1)
    for _ in range(300):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 40))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 90))]
        assert lcs_length(a, b) == _lcs_table(a, b)
    assert lcs_length(list("abc"), []) == 0


def test_rouge_tokens():
    assert rouge_tokens("Hello, World! 2024 café") == ["hello", "world", "2024", "caf"]


# ---------------------------------------------------------------------------------------------------
# Format checks


@pytest.mark.parametrize("prediction, pattern, expected", [
    ("123456", r"\d{6}", 1.0),
    ("code: 123456", r"\d{6}", 0.0),  # fullmatch: the whole answer must fit the pattern
    ("code: 123456", r".*\d{6}.*", 1.0),
    ("Reasoning.\nAnswer: 2024-01-31", r"\d{4}-\d{2}-\d{2}", 1.0),  # after the last marker
    ("YES", r"(?i)yes", 1.0),  # inline flags
    ("line one\nline two", r"(?s)line one.*two", 1.0),  # format checks see every line
])
def test_regex(prediction, pattern, expected):
    assert regex(prediction, "", pattern=pattern) == expected


def test_regex_refuses_huge_answers_and_bad_patterns():
    assert regex("a" * 20_001, "", pattern="a*") == 0.0
    with pytest.raises(Exception):
        regex("a", "", pattern="(")


@pytest.mark.parametrize("prediction, keys, expected", [
    ('{"name": "x", "tags": []}', ["name", "tags"], 1.0),
    ('{"name": "x"}', ["name", "tags"], 0.0),  # a required key is missing
    ('{"name": "x"}', [], 1.0),
    ("[1, 2]", [], 0.0),  # valid JSON, but not an object
    ("{name: x}", [], 0.0),  # not JSON
    ('Here it is.\nAnswer: ```json\n{"a": 1}\n```', ["a"], 1.0),  # fenced, after the marker
    ('Answer: {\n  "a": 1,\n  "b": 2\n}', ["a", "b"], 1.0),  # spans lines
    ("", [], 0.0),
])
def test_json_format(prediction, keys, expected):
    assert json_format(prediction, "", required_keys=keys) == expected


@pytest.mark.parametrize("prediction, params, expected", [
    ("one two three", {"min_words": 3, "max_words": 3}, 1.0),  # 3 words, bounds inclusive
    ("one two three", {"max_words": 2}, 0.0),
    ("one two three", {"min_words": 4}, 0.0),
    ("one two three", {}, 1.0),
    ("a b c d e f g h i j\nAnswer: one two", {"max_words": 2}, 1.0),  # only the answer counts
    ("", {"min_words": 1}, 0.0),
])
def test_length(prediction, params, expected):
    assert length(prediction, "", **params) == expected


def test_length_rejects_inverted_bounds():
    with pytest.raises(ValueError):
        length("x", "", min_words=3, max_words=1)


@pytest.mark.parametrize("prediction, include, exclude, expected", [
    ("Try the Matcha latte", ["matcha", "LATTE"], [], 1.0),  # case-insensitive
    ("Try the Matcha latte", ["matcha", "mocha"], [], 0.0),  # one include missing
    ("Try the Matcha latte", ["matcha"], ["latte"], 0.0),  # an exclude present
    ("A category of its own", [], ["cat"], 1.0),  # "cat" is not a word of "category"
    ("The cat's toy", ["cat"], [], 1.0),
    ("新品 #OOTD 分享", ["新品", "#ootd"], [], 1.0),  # CJK and "#" keywords match anywhere
    ("anything", [], [], 1.0),
    ("anything", [" "], [""], 1.0),  # blank keywords ignored
])
def test_keywords(prediction, include, exclude, expected):
    assert keywords(prediction, "", include=include, exclude=exclude) == expected


def test_set_f1_reads_a_field_of_a_json_object_list():
    """SNS-Bench MRC-complex's answer form: the items are the "Option" fields of a JSON list in <Result>."""
    from redone_fast.rewards import set_f1
    reference = '<Result>[{"Option": "Dune", "Reason": "a book"}, {"Option": "Emma", "Reason": "a novel"}]</Result>'
    assert set_f1(reference, reference, item_key="Option") == 1.0
    swapped = '<Result>[{"Option": "emma", "Reason": "x"}, {"Option": "Dune", "Reason": "y"}]</Result>'
    assert set_f1(swapped, reference, item_key="Option") == 1.0  # order, case and reasons do not matter
    half = '<Result>[{"Option": "Dune", "Reason": "x"}, {"Option": "Ulysses", "Reason": "y"}]</Result>'
    assert set_f1(half, reference, item_key="Option") == 0.5
    for broken in ("Dune, Emma", "<Result>[{\"Option\": \"Dune\"", "<Result>[\"Dune\"]</Result>", ""):
        assert set_f1(broken, reference, item_key="Option") == 0.0
    assert set_f1("<Result>[]</Result>", "<Result>[]</Result>", item_key="Option") == 1.0
