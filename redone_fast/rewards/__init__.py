"""Rewards for RL (docs/method.md, "Rewards"): one function per sample, chosen by its task type; no reward model.

Every reward is `fn(prediction, reference, **params) -> float in [0, 1]`, named in a sample's
`reward` spec (redone_fast.data.reward_spec.REWARD_PARAMS lists the names and their parameters):

    exact_match, set_f1                     redone_fast.rewards.match
    bleu, chrf (chrF++), rouge              redone_fast.rewards.overlap
    regex, json_format, length, keywords    redone_fast.rewards.format_checks
    code_exec                               redone_fast.rewards.code_exec (sandboxed; imported on use)

Answers are post-processed first (redone_fast.rewards.normalize: modelled on SNS-Bench's cut at the first
line break, but case-insensitive and reading the answer after the last "Answer:"). The overlap rewards
pick their tokenizer per sample from the text (`tokenize="auto"`: Chinese as jieba words for ROUGE and
sacrebleu's "zh" for BLEU, ASCII exactly as rouge-score and sacrebleu's 13a; see
redone_fast.rewards.overlap); set_f1's default "," also splits at "，", "、" and "；". The router
(redone_fast.rewards.router) scores a sample's completion with its reward and never raises
(`score_sample`), and RewardPool scores batches in worker processes with a per-reward timeout.
redone_fast.rewards.sns_bench computes the benchmark's own per-file scores (0-100), exactly as its official
evaluators do.
"""
from redone_fast.rewards.format_checks import json_format, keywords, length, regex
from redone_fast.rewards.match import exact_match, set_f1
from redone_fast.rewards.normalize import answer_text, canonical, normalize_answer
from redone_fast.rewards.overlap import bleu, chrf, rouge
from redone_fast.rewards.router import (
    REWARD_FUNCTIONS,
    RewardOutcome,
    RewardPool,
    RewardStats,
    compute_reward,
    score_completion,
    score_sample,
)

__all__ = [
    "REWARD_FUNCTIONS", "RewardOutcome", "RewardPool", "RewardStats", "answer_text", "bleu", "canonical", "chrf",
    "compute_reward", "exact_match", "json_format", "keywords", "length", "normalize_answer", "regex", "rouge",
    "score_completion", "score_sample", "set_f1",
]
