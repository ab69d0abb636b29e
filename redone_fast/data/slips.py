"""Slipped answers: a base model that knows an SNS task but answers it unreliably (issue 14).

RedOne 2.0 starts with RL because an instruction-tuned base already holds much of what an SNS task
needs and expresses it unreliably: the right category in the wrong form, a hashtag of the right topic
that is not among the candidates, a grade in words, every name instead of the asked type, a half
translation. Sampling then finds the right answer some of the time (pass@k far above pass@1), which is
what group-relative RL can sharpen. The tiny world can build that in: in its "slips" variant the
pretraining targets of the SNS tasks are a slip like these some of the time, more often under the
instruction wordings the base saw less (`SLIP_SHARE`). A target with a rationale keeps the right
rationale and slips only in the final answer, so the base also learns to drift between the two.

This is a design choice of a demonstration world, stated as such in redone_fast/tiny/README.md: it
contains the mechanism the paper describes; it is not evidence that the paper's recipe works. Only the
pretrain split slips (the base model's upbringing); rl, sft_pool, eval and heldout keep right answers,
and every slip scores below full credit under the task's reward.
"""
from __future__ import annotations

import random

# P(slip) by instruction wording: the task's first wording, then any other one.
SLIP_SHARE = (0.2, 0.7)
GRADE_WORDS = {"3": "very relevant", "2": "same topic", "1": "related topic", "0": "unrelated"}


def _line(prompt: str, head: str) -> str:
    for line in prompt.splitlines():
        if line.startswith(head):
            return line[len(head):].strip()
    raise ValueError(f"slips: no {head!r} line in the prompt")


def slip_share(prompt: str, instructions: tuple[str, ...]) -> float:
    """How often a sample under this prompt's instruction wording slips (SLIP_SHARE)."""
    first_line = prompt.splitlines()[0]
    first_wording = instructions[0].split("{")[0]  # entity_extraction's wordings hold a {type} field
    return SLIP_SHARE[0] if first_line.startswith(first_wording) else SLIP_SHARE[1]


def _taxonomy(rng: random.Random, prompt: str, answer: str, meta: dict) -> str:
    return rng.choice((f"{answer} posts", f"#{answer.lower()}", f"about {answer.lower()}", f"{answer} content"))


def _hashtag(rng: random.Random, prompt: str, answer: str, meta: dict) -> str:
    from redone_fast.data.corpus import CATEGORIES

    candidates = set(_line(prompt, "Candidates:").split())
    off_list = [tag for tag in CATEGORIES[meta["category"]]["tags"] if tag not in candidates]
    return rng.choice(off_list) if off_list else answer.lstrip("#")


def _relevance(rng: random.Random, prompt: str, answer: str, meta: dict) -> str:
    return GRADE_WORDS[answer]


def _entities(rng: random.Random, prompt: str, answer: str, meta: dict) -> str:
    from redone_fast.data.corpus import ENTITY_TYPES

    note = _line(prompt, "Note:")
    names = {name for pool in ENTITY_TYPES.values() for name in pool}
    found = sorted((note.find(name), name) for name in names if name in note)
    return ", ".join(name for _, name in found)  # every name, of every type, in order


def _slang(rng: random.Random, prompt: str, answer: str, meta: dict) -> str:
    from redone_fast.data.corpus import SLANG

    phrase = _line(prompt, "Phrase:")
    units = [(slang, plain) for slang, plain in SLANG if slang in phrase and plain in answer]
    if not units:
        return phrase  # nothing translated at all
    slang, plain = rng.choice(units)
    return answer.replace(plain, slang, 1)  # one unit left untranslated


SLIPS = {"note_taxonomy": _taxonomy, "hashtag_choice": _hashtag, "query_relevance": _relevance,
         "entity_extraction": _entities, "slang_translation": _slang}


def slipped_answer(rng: random.Random, task: str, prompt: str, answer: str, meta: dict) -> str:
    """The task's habitual slip of `answer` for this prompt (never the right answer itself)."""
    slipped = SLIPS[task](rng, prompt, answer, meta)
    if slipped == answer:
        raise AssertionError(f"slips: {task} slip of {answer!r} is the answer itself")
    return slipped
