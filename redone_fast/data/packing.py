"""Packing: encoded samples into token-budget micro-batches with no padding (docs/design.md, "Model and packing").

A micro-batch concatenates whole samples up to `token_budget` tokens: `input_ids [T]`,
`position_ids [T]` restarting at 0 per sample, `cu_seqlens [B + 1]` (int32, the samples' boundaries,
as flash-attn's varlen kernels take them), and `labels [T]`, shifted within each sample: position t
predicts token t + 1 of the same sample, so the last token of every sample has no target (-100), and
only target tokens (the answer; formatting.py) are labels. `loss_mask = labels != -100` is also the
mask of tokens that carry an RL advantage.

Bins are filled first-fit-decreasing (longest samples first, each into the first micro-batch with room),
which fills budgets to within a few percent on short-sample data. Samples longer than `max_length`
(default: the budget) follow `overlong`: "truncate" keeps the first max_length tokens (the sample is
dropped instead when nothing of its target survives), "drop" drops them. Both are counted in
PackingStats.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from redone_fast.data.formatting import EncodedSample
from redone_fast.errors import ConfigError

IGNORE_INDEX = -100  # labels with this value carry no loss (torch's convention); the one definition
OverlongPolicy = Literal["truncate", "drop"]  # what packing does with a sample over max_length
OVERLONG_POLICIES: tuple[str, ...] = OverlongPolicy.__args__


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [T] int64
    position_ids: torch.Tensor  # [T] int64, 0 at each sample's first token
    cu_seqlens: torch.Tensor  # [B + 1] int32
    labels: torch.Tensor  # [T] int64, IGNORE_INDEX where there is no target
    sample_indices: list[int]  # index (into the encoded list) of each packed sample, in order
    max_seqlen: int = 0  # the longest sample, known on the host (flash-attn varlen needs it: no sync)

    @property
    def loss_mask(self) -> torch.Tensor:  # [T] bool
        return self.labels != IGNORE_INDEX

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_samples(self) -> int:
        return len(self.sample_indices)

    def without_targets(self) -> "PackedBatch":
        """The same tokens with every label ignored: a filler micro-batch with zero loss and zero gradient
        (ranks with fewer micro-batches than others run these, since FSDP2's forwards are collectives)."""
        return PackedBatch(self.input_ids, self.position_ids, self.cu_seqlens,
                           torch.full_like(self.labels, IGNORE_INDEX), [], self.max_seqlen)

    def to(self, device) -> "PackedBatch":
        return PackedBatch(self.input_ids.to(device), self.position_ids.to(device), self.cu_seqlens.to(device),
                           self.labels.to(device), self.sample_indices, self.max_seqlen)


@dataclass
class PackingStats:
    samples: int = 0
    packed: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens: int = 0
    micro_batches: int = 0
    token_budget: int = 0
    dropped_indices: list[int] = field(default_factory=list)

    @property
    def fill(self) -> float:
        """Share of the micro-batches' token budget holding tokens."""
        capacity = self.micro_batches * self.token_budget
        return self.tokens / capacity if capacity else 0.0


def shifted_labels(sample: EncodedSample) -> list[int]:
    """labels[t] = input_ids[t + 1] where token t + 1 is a target, else IGNORE_INDEX (and at the end)."""
    ids, mask = sample.input_ids, sample.loss_mask
    return [ids[t + 1] if mask[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)] + [IGNORE_INDEX]


def _fit(sample: EncodedSample, max_length: int, overlong: str) -> EncodedSample | None:
    if len(sample) <= max_length:
        return sample
    if overlong == "drop":
        return None
    cut = EncodedSample(sample.input_ids[:max_length], sample.loss_mask[:max_length], sample.prompt_length,
                        truncated=True)
    # A target token needs a previous position to be predicted from: at least one after position 0.
    return cut if any(cut.loss_mask[1:]) else None


def pack(samples: list[EncodedSample], token_budget: int, *, max_length: int | None = None,
         overlong: str = "truncate") -> tuple[list[PackedBatch], PackingStats]:
    """Micro-batches of at most `token_budget` tokens (first-fit decreasing), and what happened."""
    if token_budget < 2:
        raise ValueError(f"token_budget must be at least 2, got {token_budget}")
    if overlong not in OVERLONG_POLICIES:
        raise ConfigError(f"overlong must be one of {OVERLONG_POLICIES}, got {overlong!r}")
    max_length = min(max_length or token_budget, token_budget)
    stats = PackingStats(samples=len(samples), token_budget=token_budget)
    kept: list[tuple[int, EncodedSample]] = []
    for index, sample in enumerate(samples):
        fitted = _fit(sample, max_length, overlong)
        if fitted is None:
            stats.dropped += 1
            stats.dropped_indices.append(index)
            continue
        stats.truncated += fitted.truncated  # cut here, or earlier by encode_sample's max_length
        kept.append((index, fitted))

    bins: list[list[tuple[int, EncodedSample]]] = []
    room: list[int] = []
    for index, sample in sorted(kept, key=lambda item: -len(item[1])):  # stable: ties keep input order
        for b, free in enumerate(room):
            if len(sample) <= free:
                bins[b].append((index, sample))
                room[b] -= len(sample)
                break
        else:
            bins.append([(index, sample)])
            room.append(token_budget - len(sample))

    batches = [_collate(contents) for contents in bins]
    stats.packed = len(kept)
    stats.micro_batches = len(batches)
    stats.tokens = sum(batch.num_tokens for batch in batches)
    return batches, stats


def _collate(contents: list[tuple[int, EncodedSample]]) -> PackedBatch:
    input_ids, position_ids, labels, boundaries = [], [], [], [0]
    for _, sample in contents:
        input_ids += sample.input_ids
        position_ids += range(len(sample))
        labels += shifted_labels(sample)
        boundaries.append(len(input_ids))
    return PackedBatch(
        input_ids=torch.tensor(input_ids, dtype=torch.int64),
        position_ids=torch.tensor(position_ids, dtype=torch.int64),
        cu_seqlens=torch.tensor(boundaries, dtype=torch.int32),
        labels=torch.tensor(labels, dtype=torch.int64),
        sample_indices=[index for index, _ in contents],
        max_seqlen=max(len(sample) for _, sample in contents),
    )
