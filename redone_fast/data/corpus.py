"""The bundled corpus: SNS-style and general tasks generated from small built-in vocabularies,
deterministically under a seed (docs/design.md, "Data").

    generate_corpus(seed) -> {"pretrain": [...], "rl": [...], "sft_pool": [...], "eval": [...], "heldout": [...]}
    python -m redone_fast.data.corpus --out DIR [--seed 0]      # one JSONL file per split

Tasks (redone_fast/data/tasks.py names them and their rewards):
  SNS      note_taxonomy      a note + 4-6 candidate categories -> one category          exact match
           hashtag_choice     a note + 4-5 candidate hashtags -> the one that fits        exact match
           query_relevance    a search query + a note -> relevance "0".."3"               exact match
           entity_extraction  a note + an entity type -> the entities, comma-separated    set F1
           slang_translation  a slang/emoji phrase -> plain words                         chrF
           comment_sentiment  a comment -> positive / negative / neutral (held out: only in "heldout")
  general  arithmetic (small sums and products), copying (repeat a string), simple_qa (capitals,
           colours, opposites, animal sounds and legs from fixed tables)

Splits:
  pretrain  builds the tiny base model only (redone_fast.tiny.build); mostly general data with a thin
            slice of SNS data whose notes cover half of the topics and two thirds of the slang
            (PRETRAIN_SCOPE), so the base model is strong on general tasks and weak on SNS ones, and
            its SNS failures are systematic (unseen topics) rather than noise
  rl        stage 1 / 3 training prompts        sft_pool  the pool stage 2 draws from
  eval      EVAL_PER_TASK samples per task (not comment_sentiment), never with a rationale
  heldout   comment_sentiment only
No prompt occurs twice anywhere: every generated prompt is checked against a content hash of all the
prompts generated before it, across all splits, and redrawn on a collision. So pretrain shares no
prompt with the other splits, and the general tasks' fixed facts reappear only in different wording.

Difficulty differs by design (the failure bucket of RedOne's stage 2 must not be empty): copying and
arithmetic are mostly pattern-following; note_taxonomy and hashtag_choice need a learned keyword ->
category (hashtag) map with distractor keywords; query_relevance needs word matching plus that map plus
a "related categories" relation; entity_extraction needs the right spans of one type, in order. Each
sample's `meta.difficulty` ("easy" / "hard") marks the harder variant of its task (more candidates,
distractors, more entities), for stage 3's harder subsets.

About a third of the SNS samples and close to half of the general ones in pretrain / rl / sft_pool carry
a `rationale`; their prompt asks for it ("Explain briefly, then answer."), so a model trained on the
mix answers plainly when not asked. The target text of such a sample is rationale + "\\nAnswer: " +
answer (redone_fast.data.formatting).
"""
from __future__ import annotations

import hashlib
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import tyro

from redone_fast.config import parse_command
from redone_fast.data.schema import Sample, write_jsonl
from redone_fast.data.slips import SLIPS, slip_share, slipped_answer
from redone_fast.data.tasks import TASKS
from redone_fast.errors import ConfigError, run_cli

Split = Literal["pretrain", "rl", "sft_pool", "eval", "heldout"]
SPLITS: tuple[str, ...] = Split.__args__
SNS_TASKS = ("note_taxonomy", "hashtag_choice", "query_relevance", "entity_extraction", "slang_translation")
GENERAL_TASKS = ("arithmetic", "copying", "simple_qa")
HELDOUT_TASKS = ("comment_sentiment",)
EVAL_PER_TASK = 100

# Samples per task and split. Pretrain is general-heavy (the base model's "general ability") with a thin
# slice of SNS data (its weak domain); rl and sft_pool are SNS-heavy, as in RedOne 2.0.
SPLIT_SIZES: dict[str, dict[str, int]] = {
    "pretrain": {"note_taxonomy": 1200, "hashtag_choice": 1500, "query_relevance": 1600, "entity_extraction": 1600,
                 "slang_translation": 1600, "arithmetic": 16000, "copying": 18000, "simple_qa": 5000},
    "rl": {**{t: 300 for t in SNS_TASKS}, **{t: 100 for t in GENERAL_TASKS}},
    "sft_pool": {**{t: 400 for t in SNS_TASKS}, **{t: 150 for t in GENERAL_TASKS}},
    "eval": {t: EVAL_PER_TASK for t in SNS_TASKS + GENERAL_TASKS},
    "heldout": {"comment_sentiment": 200},
}
# More distinct general prompts for stage 2's general mix (its soft labels), drawn after pretrain so that
# adding them left the pretrain split, and so the base model, unchanged. Stage 2 with the 150 per task
# above at the paper's 5.6% share cost the tiny slips model 4.3 / 3.7 / 3.3 general points (shipped eval,
# dev splits 21 / 22; seed 0); with 1000 distinct prompts per task at 35%: +0.3 / -2.0 / -2.3 (README, "How
# the tiny defaults were chosen").
SFT_POOL_GENERAL_TOPUP: dict[str, int] = {t: 850 for t in GENERAL_TASKS}
RATIONALE_SHARE = {"sns": 0.35, "general": 0.45}  # in pretrain / rl / sft_pool; never in eval / heldout
EXPLAIN = "Explain briefly, then answer."

# ---------------------------------------------------------------------------------------------------
# Vocabularies
# ---------------------------------------------------------------------------------------------------
# category -> keywords (things a note of that category talks about), emojis, hashtags (exactly three)
CATEGORIES: dict[str, dict[str, tuple[str, ...]]] = {
    "Food": {"words": ("ramen", "croissant", "matcha latte", "tacos", "dumplings", "sourdough", "brunch", "hotpot",
                       "cheesecake", "bubble tea"),
             "emojis": ("🍜", "🥐", "🍵"), "tags": ("#foodie", "#yummy", "#eatlocal")},
    "Travel": {"words": ("road trip", "hostel", "airport", "beach town", "backpack", "train ride", "old town",
                         "passport", "island", "night market"),
               "emojis": ("✈️", "🗺️", "🏝️"), "tags": ("#wanderlust", "#travelgram", "#passportready")},
    "Beauty": {"words": ("skincare", "lipstick", "serum", "eyeliner", "sunscreen", "face mask", "blush", "foundation",
                         "nail art", "toner"),
               "emojis": ("💄", "💅", "✨"), "tags": ("#glowup", "#skincareroutine", "#makeuplook")},
    "Fitness": {"words": ("leg day", "deadlift", "yoga flow", "protein shake", "treadmill", "pilates", "squats",
                          "marathon", "gym bag", "stretching"),
                "emojis": ("💪", "🏋️", "🏃"), "tags": ("#gymlife", "#fitfam", "#workoutmotivation")},
    "Tech": {"words": ("laptop", "earbuds", "smartwatch", "keyboard", "phone case", "monitor", "charger", "tablet",
                       "webcam", "router"),
             "emojis": ("💻", "📱", "🔌"), "tags": ("#techreview", "#gadgets", "#desksetup")},
    "Fashion": {"words": ("sneakers", "denim jacket", "tote bag", "sundress", "trench coat", "boots", "scarf", "outfit",
                          "thrift haul", "blazer"),
                "emojis": ("👗", "👟", "🧥"), "tags": ("#ootd", "#streetstyle", "#thriftfinds")},
    "Pets": {"words": ("puppy", "kitten", "dog park", "cat tree", "leash", "chew toy", "hamster", "vet visit",
                       "fish tank", "litter box"),
             "emojis": ("🐶", "🐱", "🐾"), "tags": ("#petsofinsta", "#dogmom", "#catsofig")},
    "Home": {"words": ("living room", "houseplant", "candle", "bookshelf", "rug", "kitchen shelf", "bedding", "closet",
                       "balcony", "curtains"),
             "emojis": ("🏠", "🪴", "🕯️"), "tags": ("#homedecor", "#cozyhome", "#roomtour")},
    "Music": {"words": ("playlist", "concert", "guitar", "vinyl", "festival", "piano", "headphones", "album", "karaoke",
                        "drum kit"),
              "emojis": ("🎵", "🎸", "🎧"), "tags": ("#nowplaying", "#livemusic", "#musiclover")},
    "Books": {"words": ("novel", "library", "book club", "reading nook", "paperback", "poetry", "bookmark", "thriller",
                        "audiobook", "bookstore"),
              "emojis": ("📚", "📖", "🔖"), "tags": ("#booktok", "#bookworm", "#currentlyreading")},
    "Gaming": {"words": ("controller", "boss fight", "speedrun", "console", "game night", "headset", "level up",
                         "co-op", "pixel art", "arcade"),
               "emojis": ("🎮", "👾", "🕹️"), "tags": ("#gamer", "#gamingsetup", "#gamenight")},
    "Finance": {"words": ("budget", "savings", "side hustle", "credit card", "rent", "stocks", "paycheck", "coupon",
                          "spreadsheet", "emergency fund"),
                "emojis": ("💰", "📈", "💳"), "tags": ("#moneytips", "#budgeting", "#financialfreedom")},
}
CATEGORY_NAMES = tuple(CATEGORIES)
# query_relevance's label 1: the query is about a neighbouring category
RELATED = {"Food": "Travel", "Travel": "Food", "Beauty": "Fashion", "Fashion": "Beauty", "Fitness": "Music",
           "Music": "Fitness", "Tech": "Gaming", "Gaming": "Tech", "Pets": "Home", "Home": "Pets",
           "Books": "Finance", "Finance": "Books"}

OPINIONS = ("so good", "a total vibe", "worth it", "kinda mid", "a bit pricey", "amazing", "underrated",
            "overhyped", "my new fave", "surprisingly nice", "a must try", "not bad at all")
FILLERS = ("ngl", "lowkey", "honestly", "okay so", "update:", "not me", "pov:", "bestie", "iykyk", "fr")
TIMES = ("this weekend", "today", "last night", "this morning", "after work", "on sunday", "all week")
GENERIC_EMOJIS = ("😍", "🔥", "💯", "🙌", "😭", "🥹", "👀", "💖")

TITLE_TEMPLATES = (
    "{e} my {w} era",
    "{w} check {e}",
    "{f} {w} {e}",
    "the {w} you need {e}",
    "{w} diaries {e}",
    "rating my {w} {e}",
)
BODY_TEMPLATES = (
    "tried the {w} {t} and it was {o} {g}",
    "{f} the {w} is {o}",
    "my {w} + {w2} combo is {o} {g}",
    "spent {t} with the {w}, {o}",
    "{w} update: {o} {g}",
    "can't stop thinking about the {w} {g}",
)

CITIES = ("Paris", "Tokyo", "Lisbon", "Seoul", "Austin", "Berlin", "Oslo", "Kyoto", "Bali", "Cairo", "Lima",
          "Denver", "Milan", "Sydney", "Dublin", "Hanoi", "Quebec", "Nairobi", "Porto", "Vienna", "Chicago", "Bogota")
BRANDS = ("Lumio", "Kaffa", "Nordly", "Zesta", "Brightwave", "Mossi", "Velora", "Pixelo", "Tandy", "Orbix",
          "Glowe", "Fernly", "Quanta", "Rivo", "Solano", "Nimbra", "Hoppa", "Cendra", "Vexa", "Marlo")
PEOPLE = ("Mia", "Leo", "Ava", "Noah", "Zoe", "Ethan", "Luna", "Omar", "Priya", "Kenji", "Sofia", "Mateo",
          "Chloe", "Ivan", "Nora", "Ravi", "Yuna", "Eli", "Hana", "Tariq")
ENTITY_TYPES = {"city": CITIES, "brand": BRANDS, "person": PEOPLE}
ENTITY_CLAUSES = {  # one clause per entity, mixed into a note
    "city": ("in {x}", "back from {x}", "{x} trip", "visiting {x}"),
    "brand": ("my {x} {w}", "the new {x} drop", "{x} sale", "got {x} stuff"),
    "person": ("with {x}", "{x} said it's {o}", "{x} came along", "shoutout to {x}"),
}

# slang phrase -> plain words (slang_translation)
SLANG: tuple[tuple[str, str], ...] = (
    ("ngl", "not going to lie"), ("fr", "for real"), ("no cap", "honestly"), ("lowkey", "somewhat"),
    ("highkey", "very"), ("slaps", "is great"), ("bussin", "is delicious"), ("mid", "is average"),
    ("it's giving", "it feels like"), ("iykyk", "if you know you know"), ("rn", "right now"),
    ("tbh", "to be honest"), ("imo", "in my opinion"), ("ate", "did very well"), ("no thoughts", "I am relaxed"),
    ("bet", "okay"), ("vibe check", "mood check"), ("touch grass", "go outside"), ("sus", "suspicious"),
    ("goat", "the best ever"), ("😭", "I am overwhelmed"), ("🔥", "amazing"), ("💀", "that is hilarious"),
    ("🙏", "please"), ("👀", "I am curious"), ("💯", "completely true"), ("🥹", "I am touched"), ("✨", "special"),
    ("main character energy", "confidence"), ("rent free", "constantly in my mind"),
    ("hits different", "feels special"),
    ("big mood", "very relatable"), ("on god", "I swear"), ("idk", "I do not know"), ("smh", "shaking my head"),
)
SLANG_SUBJECTS = ("this song", "the new cafe", "my outfit", "that movie", "the trip", "this recipe", "your post",
                  "the concert", "my playlist", "the game", "this book", "the view")

# comment_sentiment (held out)
SENTIMENT_PHRASES = {
    "positive": ("love this", "so helpful, thank you", "this made my day", "obsessed with it", "saving this",
                 "you nailed it", "best post ever", "need more of this"),
    "negative": ("this is so bad", "what a waste of money", "not impressed at all", "worst one yet", "total scam",
                 "I regret buying it", "so disappointing", "unfollowing"),
    "neutral": ("where is this", "what brand is it", "how much was it", "posted at 9pm", "saw this earlier",
                "is it open on sunday", "which size is that", "first time here"),
}
SENTIMENT_EMOJIS = {"positive": ("😍", "💖", "🙌"), "negative": ("😡", "👎", "🙄"), "neutral": ("🤔", "📍", "")}

# simple_qa: relation -> (question templates, facts)
QA_TABLES: dict[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = {
    "capital": (("What is the capital of {x}?", "Name the capital city of {x}.", "{x}'s capital is which city?",
                 "Which city is the capital of {x}?"),
                (("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
                 ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Ireland", "Dublin"),
                 ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Greece", "Athens"), ("Canada", "Ottawa"),
                 ("Mexico", "Mexico City"), ("Brazil", "Brasilia"), ("China", "Beijing"), ("India", "New Delhi"),
                 ("Russia", "Moscow"), ("Poland", "Warsaw"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
                 ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Chile", "Santiago"), ("Cuba", "Havana"))),
    "colour": (("What color is {x}?", "Usually, {x} is what color?", "Name the color of {x}.",
                "Which color is {x} usually?"),
               (("the sky", "blue"), ("grass", "green"), ("a banana", "yellow"), ("snow", "white"), ("coal", "black"),
                ("a ripe tomato", "red"), ("an orange", "orange"), ("a lemon", "yellow"), ("milk", "white"),
                ("a carrot", "orange"), ("the sea", "blue"), ("a leaf", "green"), ("an eggplant", "purple"),
                ("chocolate", "brown"), ("a flamingo", "pink"), ("a crow", "black"), ("a strawberry", "red"),
                ("a pumpkin", "orange"), ("an emerald", "green"), ("a sunflower", "yellow"))),
    "opposite": (("What is the opposite of {x}?", "Give the opposite of the word {x}.", "The opposite of {x} is?",
                  "Which word means the opposite of {x}?"),
                 (("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"),
                  ("open", "closed"),
                  ("early", "late"), ("light", "dark"), ("full", "empty"), ("old", "new"), ("hard", "soft"),
                  ("loud", "quiet"), ("rich", "poor"), ("wet", "dry"), ("long", "short"), ("high", "low"),
                  ("strong", "weak"), ("left", "right"), ("win", "lose"), ("push", "pull"), ("begin", "end"),
                  ("buy", "sell"), ("clean", "dirty"), ("thick", "thin"))),
    "sound": (("What sound does a {x} make?", "A {x} says what?", "Which sound does a {x} make?",
               "Name the sound a {x} makes."),
              (("dog", "woof"), ("cat", "meow"), ("cow", "moo"), ("duck", "quack"), ("sheep", "baa"), ("owl", "hoot"),
               ("lion", "roar"), ("snake", "hiss"), ("bee", "buzz"), ("pig", "oink"), ("horse", "neigh"),
               ("frog", "croak"), ("mouse", "squeak"), ("rooster", "cock-a-doodle-doo"))),
    "legs": (("How many legs does a {x} have?", "A {x} has how many legs?", "Count the legs of a {x}.",
              "What is the number of legs on a {x}?"),
             (("spider", "8"), ("dog", "4"), ("bird", "2"), ("ant", "6"), ("octopus", "8"), ("horse", "4"),
              ("chicken", "2"), ("beetle", "6"), ("cat", "4"), ("human", "2"), ("crab", "10"), ("fish", "0"),
              ("snake", "0"), ("bee", "6"))),
}
QA_PREFIXES = ("", "Quick question: ", "Q: ", "Trivia: ", "Please answer: ", "General knowledge: ", "Hey, ",
               "Quiz: ", "Tell me: ", "Answer briefly: ")
QA_RATIONALES = {
    "capital": "The capital of {x} is {a}.", "colour": "{X} is usually {a}.", "opposite": "The opposite of {x} is {a}.",
    "sound": "A {x} goes {a}.", "legs": "A {x} has {a} legs.",
}

COPY_WORDS = ("sunset", "coffee", "blue", "river", "happy", "cloud", "pixel", "mango", "seven", "quiet", "glow",
              "tiger", "maple", "jazz", "ocean", "lemon", "velvet", "rocket", "pebble", "storm", "✨", "🔥", "🌙", "🍓",
              "42", "2024", "#tbt", "@me", "lol", "wow", "ok", "yes")
COPY_TEMPLATES = ("Repeat exactly: {s}", "Copy this text: {s}", "Say this back word for word: {s}",
                  "Echo the following: {s}", "Write it again exactly: {s}")
ARITH_PREFIXES = ("", "Math: ", "Quick: ", "Solve: ", "Q: ", "Mental math: ")
ARITH_TEMPLATES = {
    "+": ("What is {a} plus {b}?", "{a} + {b} =", "Compute {a} + {b}.", "Add {a} and {b}.", "Calculate: {a} + {b}",
          "What do you get when you add {a} to {b}?"),
    "*": ("What is {a} times {b}?", "{a} * {b} =", "Compute {a} x {b}.", "Multiply {a} by {b}.", "Calculate: {a} * {b}",
          "What is the product of {a} and {b}?"),
    "-": ("What is {a} minus {b}?", "{a} - {b} =", "Compute {a} - {b}.", "Subtract {b} from {a}.",
          "Calculate: {a} - {b}",
          "Take {b} away from {a}. What is left?"),
}

# SNS-Bench-style instructions (several wordings per task)
INSTRUCTIONS = {
    "note_taxonomy": ("Classify the note into one of the candidate categories.",
                      "Which category does this note belong to? Pick one candidate.",
                      "Assign the note to the best matching category from the list."),
    "hashtag_choice": ("Choose the hashtag that best fits the note.",
                       "Pick the most suitable hashtag for this note from the candidates.",
                       "Which hashtag should this note use? Choose one."),
    "query_relevance": ("Rate how relevant the note is to the search query: 3 = very relevant, 2 = same topic, "
                        "1 = related topic, 0 = unrelated.",
                        "Score the query-note relevance from 0 to 3 (3 = the note covers the query, 2 = same "
                        "topic, 1 = related topic, 0 = unrelated)."),
    "entity_extraction": ("List every {type} mentioned in the note, in order, separated by commas.",
                          "Extract all {type} names from the note. Give them comma-separated, in order of appearance."),
    "slang_translation": ("Rewrite the slang and emoji in plain words.",
                          "Translate this social media phrase into plain English.",
                          "Say this in plain words without slang or emoji."),
    "comment_sentiment": ("What is the sentiment of this comment? Answer positive, negative or neutral.",
                          "Classify the comment's sentiment as positive, negative or neutral."),
}




class Scope(NamedTuple):
    """What SNS content a split draws from: the categories its notes are about, the slang it uses."""
    categories: tuple[str, ...]
    slang: tuple[tuple[str, str], ...]


FULL_SCOPE = Scope(CATEGORY_NAMES, SLANG)
# The base model's SNS exposure covers half the topics (three related pairs) and two thirds of the slang:
# its SNS weakness is partly missing knowledge, which the rl / sft_pool splits (full scope) supply, not
# only a knife-edge of how many samples it saw. Candidates, queries and distractors still span everything.
PRETRAIN_CATEGORIES = ("Food", "Travel", "Beauty", "Fashion", "Tech", "Gaming")
PRETRAIN_SCOPE = Scope(PRETRAIN_CATEGORIES, SLANG[::3] + SLANG[1::3])

# ---------------------------------------------------------------------------------------------------
# Generators: each takes an RNG, `hard` (the harder variant) and the split's Scope and returns (prompt
# body, answer, rationale, meta). The body has no "Answer:" yet; _generate_task adds it (and the
# explain line when the sample keeps its rationale).
# ---------------------------------------------------------------------------------------------------
def _note(rng: random.Random, category: str, *, distractor: str | None = None) -> tuple[str, list[str]]:
    """A short note (title + body) about `category`, with one keyword of `distractor` in passing when
    given; returns (text, the category keywords it uses)."""
    spec = CATEGORIES[category]
    w1, w2 = rng.sample(spec["words"], 2)
    fill = dict(e=rng.choice(spec["emojis"]), f=rng.choice(FILLERS), t=rng.choice(TIMES), o=rng.choice(OPINIONS),
                g=rng.choice(GENERIC_EMOJIS))
    title = rng.choice(TITLE_TEMPLATES).format(w=w1, **fill)
    template = rng.choice(BODY_TEMPLATES)
    body_w = w1 if "{w2}" in template or rng.random() < 0.5 else w2
    body = template.format(w=body_w, w2=w2, **fill)
    used = {w1, body_w} | ({w2} if "{w2}" in template else set())
    if distractor:
        other = rng.choice(CATEGORIES[distractor]["words"])
        if rng.random() < 0.5:
            body = f"{body}, the {other} was {rng.choice(OPINIONS)} too"
        else:
            body = f"skipped the {other}, {body}"
    return f"Title: {title}\nBody: {body}", sorted(used)


def _candidates(rng: random.Random, answer: str, pool, count: int, must=()) -> list[str]:
    others = [c for c in pool if c != answer and c not in must]
    chosen = [answer, *must, *rng.sample(others, count - 1 - len(must))]
    rng.shuffle(chosen)
    return chosen


def gen_note_taxonomy(rng, hard, scope):
    category = rng.choice(scope.categories)
    distractor = rng.choice([c for c in CATEGORY_NAMES if c != category]) if hard else None
    note, words = _note(rng, category, distractor=distractor)
    candidates = _candidates(rng, category, CATEGORY_NAMES, rng.choice((5, 6)) if hard else rng.choice((4, 5)),
                             must=(distractor,) if distractor else ())
    body = f"{rng.choice(INSTRUCTIONS['note_taxonomy'])}\n{note}\nCandidates: {', '.join(candidates)}"
    rationale = f"The note is mainly about {' and '.join(words)}, which belongs to {category}."
    return body, category, rationale, {"category": category}


def gen_hashtag_choice(rng, hard, scope):
    category = rng.choice(scope.categories)
    distractor = rng.choice([c for c in CATEGORY_NAMES if c != category]) if hard else None
    note, words = _note(rng, category, distractor=distractor)
    answer = rng.choice(CATEGORIES[category]["tags"])
    pool = [t for c in CATEGORY_NAMES if c != category for t in CATEGORIES[c]["tags"]]
    must = (rng.choice(CATEGORIES[distractor]["tags"]),) if distractor else ()
    candidates = _candidates(rng, answer, pool, 5 if hard else 4, must=must)
    body = f"{rng.choice(INSTRUCTIONS['hashtag_choice'])}\n{note}\nCandidates: {' '.join(candidates)}"
    rationale = f"The note is a {category} post about {words[0]}, and {answer} is the {category} hashtag."
    return body, answer, rationale, {"category": category}


QUERY_FORMS = ("{w}", "best {w}", "{w} review", "{w} ideas", "{w} tips", "cheap {w}", "{w} for beginners",
               "{w} near me")


def gen_query_relevance(rng, hard, scope):
    category = rng.choice(scope.categories)
    label = rng.randrange(4)
    unrelated = [c for c in CATEGORY_NAMES if c not in (category, RELATED[category])]
    query_category = {3: category, 2: category, 1: RELATED[category], 0: rng.choice(unrelated)}[label]
    # hard: the note also mentions, in passing, a keyword of a third category
    distractor = rng.choice([c for c in unrelated if c != query_category]) if hard else None
    note, words = _note(rng, category, distractor=distractor)
    if label == 3:
        query_word = rng.choice(words)
    else:
        query_word = rng.choice([w for w in CATEGORIES[query_category]["words"] if w not in note])
    query = rng.choice(QUERY_FORMS).format(w=query_word)
    body = f"{rng.choice(INSTRUCTIONS['query_relevance'])}\nQuery: {query}\n{note}"
    reasons = {3: f"The note talks about {query_word} itself, so it answers the query.",
               2: f"The note is about {category} like {query_word}, but does not mention {query_word}.",
               1: f"The query is about {RELATED[category]}, a topic related to the note's {category}.",
               0: f"The query about {query_word} has nothing to do with a {category} note."}
    return body, str(label), reasons[label], {"category": category}


def gen_entity_extraction(rng, hard, scope):
    etype = rng.choice(tuple(ENTITY_TYPES))
    count = rng.choice((1, 2, 2, 3)) if hard else rng.choice((1, 1, 2))
    entities = rng.sample(ENTITY_TYPES[etype], count)
    others = [t for t in ENTITY_TYPES if t != etype]
    distractors = [(t, rng.choice(ENTITY_TYPES[t])) for t in rng.sample(others, 2 if hard else 1)]
    items = [(etype, e) for e in entities] + distractors
    rng.shuffle(items)
    # the answer lists the entities in their order of appearance
    entities = [e for t, e in items if t == etype]
    category = rng.choice(scope.categories)
    word = rng.choice(CATEGORIES[category]["words"])
    fill = dict(w=word, o=rng.choice(OPINIONS))
    clauses = [rng.choice(ENTITY_CLAUSES[t]).format(x=x, **fill) for t, x in items]
    text = f"{rng.choice(FILLERS)} {', '.join(clauses)} {rng.choice(CATEGORIES[category]['emojis'])}"
    body = f"{rng.choice(INSTRUCTIONS['entity_extraction']).format(type=etype)}\nNote: {text}"
    answer = ", ".join(entities)
    rationale = (f"The {etype} names in the note are {answer}." if count > 1
                 else f"The only {etype} in the note is {answer}.")
    return body, answer, rationale, {"entity_type": etype, "count": count}


def gen_slang_translation(rng, hard, scope):
    units = rng.sample(scope.slang, rng.choice((3, 4)) if hard else rng.choice((1, 2)))
    subject = rng.choice(SLANG_SUBJECTS)
    # slang phrase: first unit, subject, the rest; the translation keeps the same order
    phrase = " ".join([units[0][0], subject, *(u[0] for u in units[1:])])
    plain = " ".join([units[0][1], subject, *(u[1] for u in units[1:])])
    body = f"{rng.choice(INSTRUCTIONS['slang_translation'])}\nPhrase: {phrase}"
    rationale = "; ".join(f"{s} means {p}" for s, p in units) + "."
    return body, plain, rationale, {"units": len(units)}


def gen_comment_sentiment(rng, hard, scope):
    label = rng.choice(("positive", "negative", "neutral"))
    phrase = rng.choice(SENTIMENT_PHRASES[label])
    emoji = rng.choice(SENTIMENT_EMOJIS[label])
    lead = rng.choice(("", "omg ", "hmm ", "wait ", "ok "))
    comment = f"{lead}{phrase} {emoji}".strip()
    if hard:  # a neutral question around it
        comment = f"{rng.choice(SENTIMENT_PHRASES['neutral'])}? {comment}"
    body = f"{rng.choice(INSTRUCTIONS['comment_sentiment'])}\nComment: {comment}"
    return body, label, f"The comment says '{phrase}', which is {label}.", {}


def gen_arithmetic(rng, hard, scope):
    op = rng.choice(("+", "+", "*", "-"))
    if op == "+":  # hard: a two-digit number plus a digit
        a, b = (rng.randint(10, 39), rng.randint(0, 9)) if hard else (rng.randint(0, 10), rng.randint(0, 10))
        result = a + b
    elif op == "*":
        a, b = (rng.randint(2, 12), rng.randint(2, 9)) if hard else (rng.randint(0, 9), rng.randint(0, 5))
        result = a * b
    else:
        a = rng.randint(10, 30) if hard else rng.randint(0, 12)
        b = rng.randint(0, min(a, 9))
        result = a - b
    body = rng.choice(ARITH_PREFIXES) + rng.choice(ARITH_TEMPLATES[op]).format(a=a, b=b)
    rationale = f"{a} {op} {b} = {result}."
    return body, str(result), rationale, {"op": op}


def gen_copying(rng, hard, scope):
    words = [rng.choice(COPY_WORDS) for _ in range(rng.randint(4, 6) if hard else rng.randint(2, 3))]
    text = " ".join(words)
    body = rng.choice(COPY_TEMPLATES).format(s=text)
    rationale = f"The text has {len(words)} words; I repeat it unchanged."
    return body, text, rationale, {"words": len(words)}


QA_HARD_RELATIONS = ("capital", "legs")  # proper nouns and numbers, vs. common words
QA_OPTIONS_SHARE = 0.4  # general multiple choice: picking one listed option is a general skill, not an SNS one


def gen_simple_qa(rng, hard, scope):
    relation = rng.choice([r for r in QA_TABLES if (r in QA_HARD_RELATIONS) == hard])
    templates, facts = QA_TABLES[relation]
    x, answer = rng.choice(facts)
    body = rng.choice(QA_PREFIXES) + rng.choice(templates).format(x=x)
    if rng.random() < QA_OPTIONS_SHARE:  # multiple choice among answers of the same relation
        others = sorted({a for _, a in facts} - {answer})
        options = [answer, *rng.sample(others, rng.choice((2, 3)))]
        rng.shuffle(options)
        body += f"\nOptions: {', '.join(options)}"
    rationale = QA_RATIONALES[relation].format(x=x, X=x[:1].upper() + x[1:], a=answer)
    return body, answer, rationale, {"relation": relation}


GENERATORS = {
    "note_taxonomy": gen_note_taxonomy, "hashtag_choice": gen_hashtag_choice, "query_relevance": gen_query_relevance,
    "entity_extraction": gen_entity_extraction, "slang_translation": gen_slang_translation,
    "comment_sentiment": gen_comment_sentiment, "arithmetic": gen_arithmetic, "copying": gen_copying,
    "simple_qa": gen_simple_qa,
}
HARD_SHARE = 0.5


def _prompt_key(prompt: str) -> bytes:
    return hashlib.blake2b(" ".join(prompt.split()).lower().encode("utf-8"), digest_size=16).digest()


def _generate_task(task: str, split: str, count: int, seed: int, seen: set[bytes], world: str = "plain", *,
                   stream: str | None = None, first_index: int = 0) -> list[Sample]:
    """`count` new samples of `task` for `split`; `stream` names an RNG stream other than the split's own
    (a later draw into the same split), `first_index` numbers their ids after the samples already drawn."""
    rng = random.Random(f"redone_fast.corpus/{seed}/{stream or split}/{task}")
    # An RNG of their own: the slips world draws exactly the prompts of the plain one, only answers differ.
    slips = split == "pretrain" and world == "slips" and task in SLIPS
    slip_rng = random.Random(f"redone_fast.corpus/{seed}/{split}/{task}/slips")
    generator = GENERATORS[task]
    domain = TASKS[task].domain
    with_rationales = split in ("pretrain", "rl", "sft_pool")
    samples: list[Sample] = []
    attempts = 0
    while len(samples) < count:
        attempts += 1
        if attempts > 50 * count + 1000:
            raise RuntimeError(f"corpus: cannot draw {count} distinct {task} prompts for split {split!r}")
        hard = rng.random() < HARD_SHARE
        body, answer, rationale, meta = generator(rng, hard, PRETRAIN_SCOPE if split == "pretrain" else FULL_SCOPE)
        explain = with_rationales and rng.random() < RATIONALE_SHARE[domain]
        prompt = f"{body}\n{EXPLAIN}\nAnswer:" if explain else f"{body}\nAnswer:"
        key = _prompt_key(prompt)
        if key in seen:
            continue
        seen.add(key)
        if slips and slip_rng.random() < slip_share(prompt, INSTRUCTIONS[task]):
            answer = slipped_answer(slip_rng, task, prompt, answer, meta)
            meta = {**meta, "slip": True}
        reward = {"name": TASKS[task].reward["name"], "params": dict(TASKS[task].reward.get("params", {}))}
        samples.append(Sample(task=task, prompt=prompt, answer=answer, reward=reward,
                              rationale=rationale if explain else None, split=split,
                              id=f"{split}-{task}-{first_index + len(samples):05d}",
                              meta={**meta, "difficulty": "hard" if hard else "easy"}))
    return samples


World = Literal["plain", "slips"]
WORLDS: tuple[str, ...] = World.__args__


def generate_corpus(seed: int = 0, sizes: dict[str, dict[str, int]] | None = None,
                    world: str = "plain", sft_pool_topup: dict[str, int] | None = None) -> dict[str, list[Sample]]:
    """Every split's samples, deterministic in `seed` (and `sizes`, default SPLIT_SIZES).

    world="slips": the pretrain split's SNS targets are often slipped answers (redone_fast/data/slips.py),
    so a base model built on it answers SNS tasks unreliably; every other split is the same as "plain".

    Splits are drawn in a fixed order (eval and heldout first, so their content does not depend on the
    sizes of the others) against one set of prompt hashes, so no prompt appears twice in the corpus.
    `sft_pool_topup` (default SFT_POOL_GENERAL_TOPUP with the default sizes, else none) adds samples to
    sft_pool after pretrain is drawn, from RNG streams of their own."""
    if sft_pool_topup is None:
        sft_pool_topup = SFT_POOL_GENERAL_TOPUP if sizes is None else {}
    sizes = SPLIT_SIZES if sizes is None else sizes
    if world not in WORLDS:
        raise ConfigError(f"world must be one of {WORLDS}, got {world!r}")
    seen: set[bytes] = set()
    corpus: dict[str, list[Sample]] = {}
    for split in ("eval", "heldout", "rl", "sft_pool", "pretrain"):
        samples = []
        for task, count in sizes.get(split, {}).items():
            if task in HELDOUT_TASKS and split != "heldout":
                raise ValueError(f"{task} is held out: it may only appear in the 'heldout' split, not {split!r}")
            samples += _generate_task(task, split, count, seed, seen, world)
        corpus[split] = samples
    if sft_pool_topup:
        pool = corpus.setdefault("sft_pool", [])
        for task, count in sft_pool_topup.items():
            drawn = sum(s.task == task for s in pool)
            pool += _generate_task(task, "sft_pool", count, seed, seen, world, stream="sft_pool_topup",
                                   first_index=drawn)
    return {split: corpus[split] for split in SPLITS if split in corpus}


def write_corpus(out_dir: str | Path, seed: int = 0, splits=SPLITS, world: str = "plain") -> dict[str, Path]:
    """generate_corpus(seed, world=world) written as DIR/<split>.jsonl; returns the paths."""
    out_dir = Path(out_dir)
    corpus = generate_corpus(seed, world=world)
    paths = {}
    for split in splits:
        paths[split] = out_dir / f"{split}.jsonl"
        write_jsonl(paths[split], corpus[split])
    return paths


def main(argv=None) -> int:
    """The corpus CLI; an unwritable --out ends in one `error:` line and status 2 (redone_fast.errors.run_cli)."""
    return run_cli(_main, argv)


@dataclass
class CorpusCommand:
    """Write the synthetic corpus as one <split>.jsonl per split."""

    out: str
    """output folder: one <split>.jsonl per split"""
    seed: int = 0
    """corpus seed"""
    splits: list[Split] = field(default_factory=lambda: list(SPLITS))
    """the splits to write"""
    world: World = "slips"
    """slips (the shipped model's, as tiny.build): pretrain SNS targets slip often (redone_fast/data/slips.py);
    plain: they never do. Only pretrain differs"""


def parse_args(argv) -> CorpusCommand:
    """The command line as a CorpusCommand (tyro; bad input raises ConfigError with one line)."""
    return parse_command(CorpusCommand, argv, prog="python -m redone_fast.data.corpus",
                         description=__doc__.split("\n\n")[0], out=tyro.MISSING)


def _main(argv) -> int:
    args = parse_args(argv)
    for split, path in write_corpus(args.out, args.seed, args.splits, args.world).items():
        print(f"{split:9s} {sum(1 for _ in path.open(encoding='utf-8')):6d} samples  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
