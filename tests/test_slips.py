"""The "slips" world: pretrain SNS targets that express the right answer unreliably (issue 14).

Pins: only the pretrain split changes, and only answers (the prompts are the plain world's, drawn by
the same RNG); every slip scores below full credit under its task's reward; slips come at about the
shares of SLIP_SHARE by instruction wording; a slipped target with a rationale keeps the right
rationale; the world is deterministic in the seed.
"""
import pytest

from redone_fast.data.corpus import INSTRUCTIONS, SNS_TASKS, generate_corpus
from redone_fast.data.slips import SLIP_SHARE, slip_share
from redone_fast.rewards import compute_reward

SIZES = {"pretrain": {**{task: 400 for task in SNS_TASKS}, "arithmetic": 50}, "eval": {"note_taxonomy": 20}}


@pytest.fixture(scope="module")
def worlds():
    return generate_corpus(3, SIZES, world="plain"), generate_corpus(3, SIZES, world="slips")


def test_only_pretrain_answers_change(worlds):
    plain, slips = worlds
    assert [s.to_json() for s in plain["eval"]] == [s.to_json() for s in slips["eval"]]
    assert [s.prompt for s in plain["pretrain"]] == [s.prompt for s in slips["pretrain"]]
    changed = [(p, s) for p, s in zip(plain["pretrain"], slips["pretrain"]) if p.answer != s.answer]
    assert changed and all(s.task in SNS_TASKS and s.meta.get("slip") for _, s in changed)
    assert all(p.rationale == s.rationale for p, s in zip(plain["pretrain"], slips["pretrain"]))
    assert not any(s.meta.get("slip") for s in slips["pretrain"] if s.task == "arithmetic")


def test_every_slip_scores_below_full_credit(worlds):
    plain, slips = worlds
    for right, slipped in zip(plain["pretrain"], slips["pretrain"]):
        if slipped.meta.get("slip"):
            reward = compute_reward(slipped.reward, slipped.answer, right.answer)
            assert reward < 1.0, (slipped.task, slipped.answer, right.answer, reward)
            assert compute_reward(right.reward, right.answer, right.answer) == 1.0


@pytest.mark.parametrize("task", SNS_TASKS)
def test_slip_shares_follow_the_instruction_wording(worlds, task):
    _, slips = worlds
    by_share = {share: [s for s in slips["pretrain"] if s.task == task
                        and slip_share(s.prompt, INSTRUCTIONS[task]) == share] for share in SLIP_SHARE}
    for share, samples in by_share.items():
        assert len(samples) >= 60, (task, share, len(samples))
        rate = sum(bool(s.meta.get("slip")) for s in samples) / len(samples)
        assert abs(rate - share) < 0.12, (task, share, rate)


def test_slips_are_deterministic_and_seeded():
    again = generate_corpus(3, SIZES, world="slips")["pretrain"]
    other = generate_corpus(4, SIZES, world="slips")["pretrain"]
    first = generate_corpus(3, SIZES, world="slips")["pretrain"]
    assert [s.to_json() for s in again] == [s.to_json() for s in first]
    assert [s.answer for s in other] != [s.answer for s in first]


def test_unknown_world_is_refused():
    with pytest.raises(ValueError, match="world must be one of"):
        generate_corpus(0, SIZES, world="noisy")
