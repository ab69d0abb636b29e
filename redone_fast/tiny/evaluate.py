"""Greedy evaluation of the tiny model on the bundled eval split: the numbers in README.md here, and the
band the tests check. Scoring is local and simple (exact match after SNS-Bench-style normalisation; set
F1 for lists), enough to tell a working base model from a broken one; the pipeline scores with
redone_fast.rewards.
"""
from __future__ import annotations

from collections import defaultdict

import torch

from redone_fast.data.formatting import encode_prompt
from redone_fast.data.schema import Sample


def normalize(text: str, *, single: bool = False) -> str:
    """SNS-Bench-style: first line, without a leading "Answer:"; single answers also stop at . or ,"""
    text = text.strip()
    if text.lower().startswith("answer:"):
        text = text[len("answer:"):].strip()
    text = text.split("\n", 1)[0].strip()
    if single:
        for stop in (",", "."):
            text = text.split(stop, 1)[0]
    return text.strip().lower()


def exact_match(prediction: str, reference: str, *, single: bool = False) -> float:
    return float(normalize(prediction, single=single) == normalize(reference, single=single))


def set_f1(prediction: str, reference: str, separator: str = ",") -> float:
    predicted = {p.strip().lower() for p in normalize(prediction).split(separator) if p.strip()}
    expected = {r.strip().lower() for r in normalize(reference).split(separator) if r.strip()}
    if not predicted or not expected:
        return float(predicted == expected)
    overlap = len(predicted & expected)
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(expected)
    return 2 * precision * recall / (precision + recall)


@torch.no_grad()
def greedy_answers(model, tokenizer, samples: list[Sample], *, batch_size: int = 64,
                   max_new_tokens: int = 40) -> list[str]:
    """Greedy completions (decoded, special tokens dropped), in the order of `samples`."""
    prompts = [encode_prompt(tokenizer, s) for s in samples]
    order = sorted(range(len(samples)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    answers: list[str] = [""] * len(samples)
    pad = tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):  # left padding: every prompt ends where generation starts
            ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]):] = 1
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=pad, use_cache=True)
        for row, i in enumerate(batch):
            answers[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True)
    model.train(was_training)
    return answers


def score(sample: Sample, prediction: str) -> dict[str, float]:
    """exact match for every task; set F1 as well for list answers (entity extraction)."""
    single = bool(sample.reward.get("params", {}).get("single", False))
    scores = {"exact_match": exact_match(prediction, sample.answer, single=single)}
    if sample.reward["name"] == "set_f1":
        scores["set_f1"] = set_f1(prediction, sample.answer)
    return scores


def evaluate(model, tokenizer, samples: list[Sample], **generate_kwargs) -> dict[str, dict[str, float]]:
    """task -> {"n": count, "exact_match": mean, ("set_f1": mean), "single_line": share of one-line answers}."""
    predictions = greedy_answers(model, tokenizer, samples, **generate_kwargs)
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for sample, prediction in zip(samples, predictions):
        row = totals[sample.task]
        row["n"] += 1
        row["single_line"] += float("\n" not in prediction.strip())
        for name, value in score(sample, prediction).items():
            row[name] += value
    return {task: {k: (v if k == "n" else v / row["n"]) for k, v in row.items()}
            for task, row in sorted(totals.items())}
