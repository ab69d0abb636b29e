"""Soft labels for stage 2's general data (RedOne 2.0, arXiv 2511.07070, section 3.2): the stage-1 model
writes k answers (default 8) per general prompt, a judge picks the best, and that answer is the target.
Training on the model's own best answers instead of the references keeps stage 2 close to the model's
distribution, which is how the paper limits forgetting of general skills.

Judges (`SoftLabelConfig.judge`), each `judge(sample, candidates) -> list[float]` (higher is better):
- `reward` (default): the sample's own reward against its reference, the same function RL uses;
- `model:<folder>`: a local causal LM's mean log-probability of each candidate given the prompt (a judge
  model without a reference; any callable with the same signature can be passed to `soft_label`).

Ties go to the earliest candidate; empty answers are never picked. With the reward judge, a winner scoring under
`min_judge_reward` is not
trusted: the sample keeps its reference target (counted as `fallback`), since every candidate was wrong.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

from redone_fast.data.schema import Sample
from redone_fast.errors import ConfigError
from redone_fast.pipeline.config import SoftLabelConfig
from redone_fast.pipeline.scoring import generate_answers
from redone_fast.rewards.router import score_sample

__all__ = ["Judge", "reward_judge", "LikelihoodJudge", "make_judge", "SoftLabel", "pick", "soft_label"]

Judge = Callable[[Sample, Sequence[str]], list[float]]


def reward_judge(sample: Sample, candidates: Sequence[str]) -> list[float]:
    """Each candidate's reward against the sample's reference (a failing reward scores 0)."""
    return [score_sample(sample, text).score for text in candidates]


class LikelihoodJudge:
    """A local model as judge: mean log-prob per token of each candidate after the prompt."""

    def __init__(self, folder: str, device=None):
        from redone_fast.model import load_model, load_tokenizer
        self.model = load_model(folder, device=device).eval()
        self.tokenizer = load_tokenizer(folder)

    def __call__(self, sample: Sample, candidates: Sequence[str]) -> list[float]:
        import torch

        from redone_fast.data.formatting import encode_prompt
        prompt = encode_prompt(self.tokenizer, sample)
        scores = []
        with torch.no_grad():
            for text in candidates:
                answer = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
                ids = torch.tensor([prompt + answer], device=self.model.device)
                logits = self.model(input_ids=ids, use_cache=False).logits[0, len(prompt) - 1:-1].float()  # [A, V]
                logprobs = torch.log_softmax(logits, dim=-1).gather(1, ids[0, len(prompt):, None])
                scores.append(float(logprobs.mean()))
        return scores


def make_judge(spec: str, device=None) -> Judge:
    if spec == "reward":
        return reward_judge
    if spec.startswith("model:") and spec[len("model:"):]:
        return LikelihoodJudge(spec[len("model:"):], device=device)
    raise ConfigError(f"soft_labels.judge: expected 'reward' or 'model:<folder>', got {spec!r}")


@dataclass
class SoftLabel:
    sample: Sample  # the labelled sample (its answer is the target)
    candidates: list[str]
    scores: list[float]
    winner: int  # index into candidates, -1 when the reference was kept
    fallback: bool

    def to_json(self) -> dict:
        return {"id": self.sample.id, "task": self.sample.task, "winner": self.winner, "fallback": self.fallback,
                "target": self.sample.answer, "candidates": self.candidates, "scores": self.scores}


def pick(sample: Sample, candidates: list[str], scores: list[float], *, min_reward: float | None) -> SoftLabel:
    """The judge's winner as the sample's target (no rationale: the answer is the model's whole text)."""
    if len(scores) != len(candidates) or not candidates:
        raise ValueError(f"judge returned {len(scores)} scores for {len(candidates)} candidates")
    eligible = [i for i, text in enumerate(candidates) if text.strip()]  # an empty answer is never a target
    if not eligible:
        return SoftLabel(sample, candidates, scores, -1, True)
    winner = max(eligible, key=lambda i: (scores[i], -i))
    if min_reward is not None and scores[winner] < min_reward:
        return SoftLabel(sample, candidates, scores, -1, True)
    labelled = replace(sample, answer=candidates[winner].strip(), rationale=None,
                       meta={**sample.meta, "reference": sample.answer, "soft_label": True})
    return SoftLabel(labelled, candidates, scores, winner, False)


def soft_label(engine, samples: list[Sample], cfg: SoftLabelConfig, *, judge: Judge | None = None,
               max_new_tokens: int = 48, seed: int = 0, ctx=None) -> list[SoftLabel]:
    """Label every general sample with the judge's pick among `cfg.k` answers of `engine`'s model."""
    samples = samples[:cfg.max_prompts] if cfg.max_prompts else list(samples)
    judge = judge or make_judge(cfg.judge)
    answers = generate_answers(engine, samples, n=cfg.k, temperature=cfg.temperature, max_new_tokens=max_new_tokens,
                               seed=seed, ctx=ctx)
    min_reward = cfg.min_judge_reward if judge is reward_judge and cfg.min_judge_reward > 0 else None
    return [pick(sample, candidates, judge(sample, candidates), min_reward=min_reward)
            for sample, candidates in zip(samples, answers)]
