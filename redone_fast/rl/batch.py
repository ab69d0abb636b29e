"""Rollouts into packed RL micro-batches: prompt + response per sequence, the loss on response tokens.

A sequence of prompt P (p tokens) and response R (r tokens) is packed as P + R with position ids from 0;
position t predicts token t + 1, so the r response tokens are the labels at positions p - 1 ... p + r - 2
(the prompt is never a target, the last position has none). Each label position carries its sequence's
advantage and |o_i| = r (for the sequence-mean aggregations), and, when given, the rollout engine's
log-prob of that label. Sequences are packed whole, first-fit decreasing, into micro-batches of at most
`token_budget` tokens.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from redone_fast.data.packing import IGNORE_INDEX
from redone_fast.rl.loss import RLMicroBatch

__all__ = ["pack_rollouts"]


def pack_rollouts(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], advantages: Sequence[float],
                  token_budget: int, *, indices: Sequence[int] | None = None,
                  rollout_logprobs: Sequence[Sequence[float]] | None = None) -> list[RLMicroBatch]:
    """Micro-batches of the (prompt, response) pairs with their advantages; `indices` name them (default 0..N-1).

    `rollout_logprobs[k]`, when given, holds one log-prob per token of `responses[k]` (the engine's)."""
    if not (len(prompts) == len(responses) == len(advantages)):
        raise ValueError(f"prompts, responses and advantages differ in length: {len(prompts)}, {len(responses)}, "
                         f"{len(advantages)}")
    if rollout_logprobs is not None:
        bad = [k for k, (r, lp) in enumerate(zip(responses, rollout_logprobs)) if len(r) != len(lp)]
        if len(rollout_logprobs) != len(responses) or bad:
            raise ValueError(f"rollout_logprobs must give one value per response token (responses {bad[:5]} differ)")
    indices = list(range(len(prompts))) if indices is None else list(indices)
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    too_long = [i for i, n in zip(indices, lengths) if n > token_budget]
    if too_long:
        raise ValueError(f"rollouts {too_long[:5]} are longer than the micro-batch budget ({token_budget} tokens): "
                         "raise the budget to at least max prompt + max response tokens")
    order = sorted(range(len(prompts)), key=lambda k: -lengths[k])  # stable: ties keep rollout order
    bins: list[list[int]] = []
    room: list[int] = []
    for k in order:
        for b, free in enumerate(room):
            if lengths[k] <= free:
                bins[b].append(k)
                room[b] -= lengths[k]
                break
        else:
            bins.append([k])
            room.append(token_budget - lengths[k])
    engine_logprobs = rollout_logprobs if rollout_logprobs is not None else [None] * len(prompts)
    return [_collate([(prompts[k], responses[k], float(advantages[k]), engine_logprobs[k]) for k in contents],
                     tuple(indices[k] for k in contents), with_rollout=rollout_logprobs is not None)
            for contents in bins]


def _collate(items, rollout_indices, *, with_rollout: bool) -> RLMicroBatch:
    input_ids, position_ids, labels, adv, lengths, bounds, engine = [], [], [], [], [], [0], []
    for prompt, response, advantage, response_logprobs in items:
        tokens = list(prompt) + list(response)
        p, r = len(prompt), len(response)
        input_ids += tokens
        position_ids += range(len(tokens))
        seq_labels = [IGNORE_INDEX] * len(tokens)
        for t in range(p - 1, p + r - 1):
            seq_labels[t] = tokens[t + 1]
        labels += seq_labels
        adv += [advantage if label != IGNORE_INDEX else 0.0 for label in seq_labels]
        lengths += [float(max(r, 1)) if label != IGNORE_INDEX else 1.0 for label in seq_labels]
        if with_rollout:  # the log-prob of response token k sits where it is the label: position p - 1 + k
            engine += [0.0] * (p - 1) + [float(v) for v in response_logprobs] + [0.0] * (len(tokens) - p - r + 1)
        bounds.append(len(input_ids))
    n = len(input_ids)
    return RLMicroBatch(
        input_ids=torch.tensor(input_ids, dtype=torch.int64),
        position_ids=torch.tensor(position_ids, dtype=torch.int64),
        cu_seqlens=torch.tensor(bounds, dtype=torch.int32),
        labels=torch.tensor(labels, dtype=torch.int64),
        advantages=torch.tensor(adv, dtype=torch.float32),
        response_lengths=torch.tensor(lengths, dtype=torch.float32),
        old_logprobs=torch.zeros(n, dtype=torch.float32),
        rollout_logprobs=torch.tensor(engine, dtype=torch.float32) if with_rollout else None,
        num_sequences=len(items),
        max_seqlen=max(b - a for a, b in zip(bounds, bounds[1:])),
        rollout_indices=rollout_indices,
    )
