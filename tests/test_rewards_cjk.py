"""Overlap rewards on Chinese, mixed, Japanese, Korean and emoji text: tokenisation chosen per sample.

ROUGE is held equal to rouge-score given the same CJK tokenizer, BLEU to sacrebleu's "zh" tokenizer,
chrF to sacrebleu on the re-spaced text; ASCII text keeps rouge-score's and 13a's numbers.
"""
import random

import jieba
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from redone_fast.data.reward_spec import check_reward_spec, missing_tokenizer_modules
from redone_fast.rewards import bleu, chrf, length, rouge, set_f1
from redone_fast.rewards.format_checks import word_count
from redone_fast.rewards.overlap import (
    bleu_tokenizer,
    chrf_tokenizer,
    cjk_language,
    cjk_tokens,
    rouge_f1,
    rouge_tokenizer,
    rouge_tokens,
    spaced_cjk,
)

VARIANTS = ("rouge1", "rouge2", "rougeL")
OVERLAP_REWARDS = {
    **{variant: (lambda variant: lambda p, r: rouge(p, r, variant=variant))(variant) for variant in VARIANTS},
    "bleu": bleu,
    "chrf++": chrf,
    "chrf": lambda p, r: chrf(p, r, word_order=0),
}
# 20 characters each (the first holds a full-width comma)
SENTENCES = ["今天天气很好，我们一起去公园散步吧朋友们", "这家店的拿铁咖啡味道浓郁价格也很实惠推荐",
             "小红书上的穿搭笔记总是能给我很多新的灵感"]
IDENTICAL = SENTENCES + [
    "我用iPhone 15拍了这张照片，效果很好！",  # mixed Chinese and English
    "好吃😀😀 推荐给大家❤️",  # emoji
    "👍",  # emoji only
    "東京の桜はとてもきれいです",  # Japanese
    "오늘 날씨가 정말 좋네요",  # Korean
    "Привет, как дела?",  # Cyrillic
    "ＯＯＴＤ分享：２０２４春季",  # full-width letters and digits
]


# ---------------------------------------------------------------------------------------------------
# Identical and near-identical answers


@pytest.mark.parametrize("text", IDENTICAL)
@pytest.mark.parametrize("reward", sorted(OVERLAP_REWARDS))
def test_identical_answers_score_one(reward, text):
    # one token has no bigram: ROUGE-2 is 0 then, as rouge-score gives for "one" against "one"
    expected = 0.0 if reward == "rouge2" and len(cjk_tokens(text)) < 2 else 1.0
    assert OVERLAP_REWARDS[reward](text, text) == expected
    assert OVERLAP_REWARDS[reward]("Reasoning first.\nAnswer: " + text, text) == expected


@pytest.mark.parametrize("text", IDENTICAL)
def test_identical_lists_score_one(text):
    assert set_f1(text, text) == 1.0


@pytest.mark.parametrize("sentence", SENTENCES)
@pytest.mark.parametrize("reward", sorted(OVERLAP_REWARDS))
def test_one_changed_character_scores_near_one(reward, sentence):
    assert len(sentence) == 20
    for position in range(0, 20, 3):
        changed = sentence[:position] + "猫" + sentence[position + 1:]
        assert 0.7 < OVERLAP_REWARDS[reward](changed, sentence) < 1.0, (position, changed)


def test_the_default_tokenizers_cannot_read_chinese():
    # What the rewards did before (still available by name): all or nothing.
    a = SENTENCES[0]
    b = a.replace("公园", "公圆")
    assert rouge(a, a, tokenize="default") == rouge(a, b, tokenize="default") == 0.0
    assert bleu(a, b, tokenize="13a") == 0.0
    assert rouge(a, b) > 0.9 and bleu(a, b) > 0.85


def test_different_answers_score_low():
    a, b = SENTENCES[1], SENTENCES[2]
    for name, reward in OVERLAP_REWARDS.items():
        assert reward(a, b) < 0.35, name


# ---------------------------------------------------------------------------------------------------
# Tokenizers


def test_cjk_tokens():
    assert cjk_tokens("今天天气很好") == jieba.lcut("今天天气很好") == ["今天天气", "很", "好"]
    assert cjk_tokens("今天天气很好", "char") == list("今天天气很好")
    # English words stay words (lower case, split at punctuation as rouge-score does); numbers too
    assert cjk_tokens("我用iPhone 15拍照，Top-10!") == ["我用", "iphone", "15", "拍照", "top", "10"]
    # each emoji (or symbol) is a token; presentation selectors and skin tones are ignored
    assert cjk_tokens("好吃😀😀 ❤️ 👍🏽") == ["好吃", "😀", "😀", "❤", "👍"]
    assert cjk_tokens("ＯＯＴＤ２０２４") == ["ootd2024"]  # NFKC: full-width forms are ASCII
    assert cjk_tokens("東京の桜", "char") == ["東", "京", "の", "桜"]  # kana: one token each
    assert cjk_tokens("Привет, мир! café naïve") == ["привет", "мир", "café", "naïve"]
    assert cjk_tokens("。！？……") == []
    with pytest.raises(ValueError):
        cjk_tokens("x", "mecab")


def test_cjk_tokens_equal_rouge_tokens_on_ascii():
    rng = random.Random(2)
    alphabet = "abcXYZ019 _-.,!?'\"()[]{}\t\n@#$%^&*+=/\\|~`<>;:"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert cjk_tokens(text) == cjk_tokens(text, "char") == rouge_tokens(text), text


def test_spaced_cjk_keeps_every_character():
    text = "我用iPhone拍照，很好😀 ok."
    assert spaced_cjk(text) == " 我用 iPhone 拍照 ， 很 好 😀 ok."
    assert spaced_cjk(text, "char") == " 我 用 iPhone 拍 照 ， 很 好 😀 ok."
    assert "".join(spaced_cjk(text).split()) == "".join(text.split())
    assert spaced_cjk("plain English, as is.") == "plain English, as is."


@pytest.mark.parametrize("prediction, reference, language, rouge_mode, bleu_mode, chrf_mode", [
    ("the cat sat", "the cat", None, "default", "13a", "default"),
    ("Café naïve", "cafe naive", None, "default", "13a", "default"),  # accented Latin: rouge-score's
    ("the cat", "猫在睡觉", "zh", "jieba", "zh", "jieba"),  # either side decides
    ("猫在睡觉", "the cat", "zh", "jieba", "zh", "jieba"),
    ("東京の桜", "東京", "ja", "char", "ja-mecab" if not missing_tokenizer_modules("ja-mecab") else "char", "char"),
    ("오늘 날씨", "날씨", "ko", "jieba", "ko-mecab" if not missing_tokenizer_modules("ko-mecab") else "13a",
     "default"),
    ("great 👍", "great", None, "jieba", "13a", "default"),  # emoji: kept as tokens
    ("Привет", "Привет", None, "jieba", "13a", "default"),  # Cyrillic: rouge-score would drop it
])
def test_auto_tokenizer_choice(prediction, reference, language, rouge_mode, bleu_mode, chrf_mode):
    assert cjk_language(prediction, reference) == language
    assert rouge_tokenizer(prediction, reference) == rouge_mode
    assert bleu_tokenizer(prediction, reference) == bleu_mode
    assert chrf_tokenizer(prediction, reference) == chrf_mode


def test_unknown_tokenizers_raise():
    for call in (lambda: rouge("a", "a", tokenize="mecab"), lambda: bleu("a", "a", tokenize="jieba"),
                 lambda: chrf("a", "a", tokenize="zh")):
        with pytest.raises(ValueError, match="unknown"):
            call()


# ---------------------------------------------------------------------------------------------------
# Equal to the reference implementations


class _Tokenizer:
    """What rouge-score's RougeScorer(tokenizer=...) takes: an object with tokenize(text)."""

    def __init__(self, han):
        self.han = han

    def tokenize(self, text):
        return cjk_tokens(text, self.han)


def _random_texts(seed, count):
    rng = random.Random(seed)
    vocabulary = ["我们", "今天", "天气", "很", "好", "公园", "散步", "咖啡", "的", "了", "是", "在", "小红书",
                  "笔记", "，", "。", "！", "iPhone", "ok", "15", "😀", " "]
    return [("".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 25))),
             "".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 25)))) for _ in range(count)]


@pytest.mark.parametrize("han", ["jieba", "char"])
def test_rouge_equals_rouge_score_with_a_cjk_tokenizer(han):
    scorer = rouge_scorer.RougeScorer(list(VARIANTS), tokenizer=_Tokenizer(han))
    for prediction, reference in _random_texts(3, 60):
        expected = scorer.score(reference, prediction)
        for variant in VARIANTS:
            got = rouge_f1(prediction, reference, variant, tokenize=han)
            assert got == pytest.approx(expected[variant].fmeasure, abs=1e-12), (prediction, reference, variant)
            if han == "jieba" and cjk_language(prediction, reference) == "zh":  # what "auto" picks
                assert rouge(prediction, reference, variant=variant) == got


def test_bleu_equals_sacrebleu_zh():
    for prediction, reference in _random_texts(4, 60) + [(s[::-1], s) for s in SENTENCES]:
        expected = sacrebleu.sentence_bleu(prediction.strip(), [reference.strip()], tokenize="zh").score / 100
        assert bleu(prediction, reference, tokenize="zh") == pytest.approx(min(expected, 1.0), abs=1e-12)
        if cjk_language(prediction, reference) == "zh":
            assert bleu(prediction, reference) == pytest.approx(min(expected, 1.0), abs=1e-12)


def test_chrf_equals_sacrebleu_on_spaced_text():
    for prediction, reference in _random_texts(5, 40):
        prediction, reference = prediction.strip(), reference.strip()
        for mode in ("jieba", "char"):
            expected = sacrebleu.sentence_chrf(spaced_cjk(prediction, mode), [spaced_cjk(reference, mode)],
                                               word_order=2).score / 100
            assert chrf(prediction, reference, tokenize=mode) == pytest.approx(expected, abs=1e-12)
        plain = sacrebleu.sentence_chrf(prediction, [reference], word_order=0).score / 100
        for mode in ("auto", "default", "jieba", "char"):  # spacing never changes character n-grams
            assert chrf(prediction, reference, word_order=0, tokenize=mode) == pytest.approx(plain, abs=1e-12)


# ---------------------------------------------------------------------------------------------------
# set_f1 and length with Chinese


@pytest.mark.parametrize("prediction, reference, params, expected", [
    ("北京，上海、广州", "北京, 上海, 广州", {}, 1.0),  # full-width comma and 、 split like ","
    ("北京；上海", "上海,北京", {}, 1.0),
    ("北京，上海", "北京, 深圳", {}, 0.5),
    ("['北京'，'上海']", "北京、上海", {}, 1.0),  # a list literal written with a full-width comma
    ("北京，上海 | 广州", "北京，上海 | 广州", {"separator": "|"}, 1.0),  # another separator: not split at "，"
    ("北京，上海 | 广州", "北京 | 上海 | 广州", {"separator": "|"}, 0.4),  # {北京，上海, 广州} vs 3 items
    ("a; b", "a", {}, 0.0),  # ASCII ";" is not a separator (unchanged)
])
def test_set_f1_full_width_separators(prediction, reference, params, expected):
    assert set_f1(prediction, reference, **params) == pytest.approx(expected)


def test_length_counts_chinese_characters():
    assert word_count("我用iPhone拍照。") == 5  # 4 characters and one English word; punctuation is not
    assert word_count("one two .") == 3  # text without CJK: whitespace-separated, as before
    assert length("今天天气很好", min_words=6, max_words=6) == 1.0
    assert length("Answer: 今天天气很好", max_words=5) == 0.0


# ---------------------------------------------------------------------------------------------------
# Data files may set the tokenizers; bad values are rejected at load time


def test_tokenize_parameters_are_checked_at_load():
    for name, value in (("rouge", "jieba"), ("rouge", "char"), ("rouge", "default"), ("chrf", "jieba"),
                        ("bleu", "zh"), ("bleu", "13a"), ("bleu", "auto")):
        assert check_reward_spec({"name": name, "params": {"tokenize": value}}) is None
    assert "must be one of" in check_reward_spec({"name": "rouge", "params": {"tokenize": "zh"}})
    assert "must be one of" in check_reward_spec({"name": "bleu", "params": {"tokenize": "jieba"}})
    assert "must be one of" in check_reward_spec({"name": "bleu", "params": {"tokenize": "flores200"}})
    for tokenizer in ("ja-mecab", "ko-mecab"):
        problem = check_reward_spec({"name": "bleu", "params": {"tokenize": tokenizer}})
        assert (problem is None) == (not missing_tokenizer_modules(tokenizer))
        if problem:
            assert "not installed" in problem and "pip install" in problem
