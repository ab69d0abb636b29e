"""Task-balanced sampling with general data mixed in (RedOne 2.0 stage 1: "balanced sampling keeps
long-tail tasks visible", SNS and general data "randomly mixed"; docs/method.md, "The three stages").

Each draw first picks the pool: general with probability `general_ratio`, else SNS. Within a pool a
task is picked with temperature-scaled weights, p_task ~ n_task ** (1 / temperature): temperature 1
samples in proportion to task size, larger temperatures flatten towards uniform over tasks (the
multilingual-pretraining convention, e.g. XLM-R's alpha = 1 / temperature). Within a task, samples come
in a fresh shuffled order each pass (no repeats inside a pass).

Deterministic under a seed, and restorable: every random choice is a function of (seed, draw number)
or (seed, task, pass), so `state_dict()` is a few integers and `load_state_dict()` continues exactly
where the saved sampler stood, with no replay of earlier draws.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from redone_fast.data.schema import Sample


def _key(*parts) -> int:
    """A stable 64-bit integer from strings and ints (Python's hash() of a str changes per process)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class TaskBalancedSampler:
    def __init__(self, sns: Mapping[str, list[Sample]], general: Mapping[str, list[Sample]] | None = None, *,
                 general_ratio: float = 0.0, temperature: float = 2.0, seed: int = 0):
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0.0 <= general_ratio <= 1.0:
            raise ValueError(f"general_ratio must be in [0, 1], got {general_ratio}")
        general = dict(general or {})
        if general_ratio > 0 and not any(general.values()):
            raise ValueError("general_ratio > 0 but no general samples were given")
        if general_ratio < 1 and not any(sns.values()):
            raise ValueError("no SNS samples were given")
        self.pools = {"sns": {t: list(s) for t, s in sns.items() if s},
                      "general": {t: list(s) for t, s in general.items() if s}}
        self.general_ratio = general_ratio
        self.temperature = temperature
        self.seed = seed
        self._weights = {pool: self._task_weights(tasks) for pool, tasks in self.pools.items()}
        self._drawn = 0
        self._cursors: dict[str, int] = {}  # task -> samples taken from it so far (across passes)

    def _task_weights(self, tasks: Mapping[str, list[Sample]]) -> tuple[list[str], np.ndarray]:
        names = sorted(tasks)
        weights = np.array([len(tasks[name]) ** (1.0 / self.temperature) for name in names], dtype=np.float64)
        return names, weights / weights.sum() if len(weights) else weights

    def task_probabilities(self) -> dict[str, float]:
        """Each task's share of the draws (pool probability times task weight within the pool)."""
        shares = {}
        for pool, pool_share in (("sns", 1.0 - self.general_ratio), ("general", self.general_ratio)):
            names, weights = self._weights[pool]
            for name, weight in zip(names, weights):
                shares[name] = shares.get(name, 0.0) + pool_share * float(weight)
        return shares

    def _order(self, task: str, size: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, _key("order", task), epoch]).permutation(size)

    def next(self) -> Sample:
        rng = np.random.default_rng([self.seed, _key("draw"), self._drawn])
        pool = "general" if rng.random() < self.general_ratio else "sns"
        names, weights = self._weights[pool]
        task = names[int(rng.choice(len(names), p=weights))]
        samples = self.pools[pool][task]
        taken = self._cursors.get(task, 0)
        epoch, position = divmod(taken, len(samples))
        self._cursors[task] = taken + 1
        self._drawn += 1
        return samples[int(self._order(task, len(samples), epoch)[position])]

    def take(self, count: int) -> list[Sample]:
        return [self.next() for _ in range(count)]

    def state_dict(self) -> dict:
        return {"seed": self.seed, "drawn": self._drawn, "cursors": dict(self._cursors)}

    def load_state_dict(self, state: Mapping) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"sampler state was saved with seed {state['seed']}, this sampler has seed {self.seed}")
        self._drawn = int(state["drawn"])
        self._cursors = {task: int(n) for task, n in state["cursors"].items()}
