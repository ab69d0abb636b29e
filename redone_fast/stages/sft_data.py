"""The SFT stage's data: an epoch mix of task samples and general samples, cut into optimizer steps,
each packed into token-budget micro-batches and shared out over the ranks.

- Mix: every epoch holds every task sample once plus `round(n * r / (1 - r))` general samples, so
  general data is a share `r` of the epoch (the paper's stage 2: about 5.6%); the general samples are
  drawn without repeats from a per-epoch shuffle of the general pool (cycled if the pool is smaller).
  The mix is then shuffled. Every shuffle is a function of (seed, epoch) only.
- Steps: `batch_size` samples per optimizer step, or with `batch_tokens > 0`, consecutive samples until
  their tokens reach `batch_tokens`. The last step of an epoch may be smaller; the loss is normalised by
  its own token count, so it still has the scale of a full one.
- Micro-batches: each step's samples are packed (`redone_fast.data.packing.pack`, first-fit decreasing,
  the over-long policy of the data layer); rank r takes micro-batches r, r + W, ... and ranks with fewer
  run fillers without targets. Every rank computes the same packing, so no data is exchanged.
- Position: (epoch, step in epoch), saved in checkpoints; resuming recomputes the epoch's order.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from redone_fast.data.formatting import EncodedSample
from redone_fast.data.packing import PackedBatch, PackingStats, pack
from redone_fast.errors import ConfigError
from redone_fast.loop.step import rank_micro_batches

__all__ = ["EpochMix", "SFTBatches", "pack_for_rank"]


def _permutation(n: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator).tolist()


@dataclass
class EpochMix:
    """Which samples (task pool index, or general pool index) make up each epoch, in order."""

    num_task: int
    num_general: int
    general_ratio: float
    seed: int

    def __post_init__(self):
        if not 0.0 <= self.general_ratio < 1.0:
            raise ConfigError(f"general_ratio: must be in [0, 1), got {self.general_ratio}")
        if self.general_ratio > 0 and self.num_general == 0:
            raise ConfigError("general_ratio > 0 but the general pool is empty")
        if self.num_task == 0:  # the general share is a ratio of the task samples: no task, no samples
            raise ConfigError("no training samples (the task pool is empty)")

    @property
    def general_per_epoch(self) -> int:
        if self.general_ratio == 0:
            return 0
        return round(self.num_task * self.general_ratio / (1.0 - self.general_ratio))

    def order(self, epoch: int) -> list[tuple[str, int]]:
        """[("task", i) | ("general", j)] for one epoch."""
        general_order = (_permutation(self.num_general, self.seed * 1_000_003 + 2 * epoch + 1)
                         if self.num_general else [])
        chosen = [general_order[k % len(general_order)] for k in range(self.general_per_epoch)]
        mix = [("task", i) for i in range(self.num_task)] + [("general", j) for j in chosen]
        return [mix[k] for k in _permutation(len(mix), self.seed * 1_000_003 + 2 * epoch)]


def pack_for_rank(samples: list[EncodedSample], *, micro_batch_tokens: int, max_length: int, overlong: str,
                  rank: int, world_size: int) -> tuple[list[PackedBatch], PackingStats]:
    batches, stats = pack(samples, micro_batch_tokens, max_length=max_length, overlong=overlong)
    if not batches:
        raise ConfigError(f"every sample of a step was dropped as over-long (max_length={max_length}, "
                         f"overlong={overlong!r}): nothing to train on")
    return rank_micro_batches(batches, rank, world_size, PackedBatch.without_targets), stats


class SFTBatches:
    """The SFT stage's `StepSource`: this rank's micro-batches for each optimizer step, epoch after epoch."""

    def __init__(self, task_samples: list[EncodedSample], general_samples: list[EncodedSample], *, epochs: int,
                 general_ratio: float, batch_size: int, batch_tokens: int, micro_batch_tokens: int,
                 max_length: int, overlong: str, seed: int, rank: int = 0, world_size: int = 1):
        if epochs < 1 or batch_size < 1 or micro_batch_tokens < 2 or batch_tokens < 0:
            raise ConfigError(f"bad SFT batching: epochs={epochs}, batch_size={batch_size}, "
                             f"batch_tokens={batch_tokens}, micro_batch_tokens={micro_batch_tokens}")
        self.task_samples, self.general_samples = task_samples, general_samples
        self.mix = EpochMix(len(task_samples), len(general_samples), general_ratio, seed)
        self.epochs, self.batch_size, self.batch_tokens = epochs, batch_size, batch_tokens
        self.micro_batch_tokens, self.max_length, self.overlong = micro_batch_tokens, max_length, overlong
        self.rank, self.world_size = rank, world_size
        self.epoch, self.step_in_epoch = 0, 0
        self.last_step_tokens = 0
        self.packing = PackingStats()
        self._epoch_steps: dict[int, list[list[EncodedSample]]] = {}

    def _sample(self, ref: tuple[str, int]) -> EncodedSample:
        pool, index = ref
        return self.task_samples[index] if pool == "task" else self.general_samples[index]

    def steps_of_epoch(self, epoch: int) -> list[list[EncodedSample]]:
        if epoch not in self._epoch_steps:
            samples = [self._sample(ref) for ref in self.mix.order(epoch)]
            steps, current, tokens = [], [], 0
            for sample in samples:
                current.append(sample)
                tokens += min(len(sample), self.max_length)
                full = tokens >= self.batch_tokens if self.batch_tokens else len(current) == self.batch_size
                if full:
                    steps.append(current)
                    current, tokens = [], 0
            if current:
                steps.append(current)
            self._epoch_steps = {epoch: steps}  # keep one epoch: the orders are cheap to recompute
        return self._epoch_steps[epoch]

    @property
    def total_steps(self) -> int:
        return sum(len(self.steps_of_epoch(e)) for e in range(self.epochs))

    def next_step(self) -> list[PackedBatch]:
        if self.epoch >= self.epochs:  # already exhausted: do not run into an epoch beyond `epochs`
            raise StopIteration("the SFT data is exhausted (all epochs done)")
        steps = self.steps_of_epoch(self.epoch)
        if self.step_in_epoch >= len(steps):
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
            if self.epoch >= self.epochs:
                raise StopIteration("the SFT data is exhausted (all epochs done)")
            steps = self.steps_of_epoch(self.epoch)
        samples = steps[self.step_in_epoch]
        self.step_in_epoch += 1
        micro_batches, stats = pack_for_rank(samples, micro_batch_tokens=self.micro_batch_tokens,
                                             max_length=self.max_length, overlong=self.overlong,
                                             rank=self.rank, world_size=self.world_size)
        self.last_step_tokens = stats.tokens
        for name in ("samples", "packed", "truncated", "dropped", "tokens", "micro_batches"):
            setattr(self.packing, name, getattr(self.packing, name) + getattr(stats, name))
        self.packing.token_budget = stats.token_budget
        return micro_batches

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
