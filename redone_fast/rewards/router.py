"""Scoring completions: route each sample to its reward, in process or in a pool of worker processes.

`score_sample(sample, completion)` looks up `sample.reward` ({"name", "params"}) in REWARD_FUNCTIONS
and calls `fn(completion, sample.answer, **params)`. It never raises for a bad reward: a reward that
raises, returns a non-number, NaN or a value outside [0, 1] scores 0 and the outcome records why.

`RewardPool(workers=N, timeout_s=T)` scores many (sample, completion) pairs. workers=0 scores them one
after the other in this process (no timeout: a reward that hangs, hangs the caller). workers=N>0 runs N
long-lived worker processes, each scoring one pair at a time, so that:

- a reward running past its time limit is stopped: its worker is killed (SIGKILL) and replaced, the
  pair scores 0 with `timed_out=True`; the limit is `timeout_s`, and for code_exec at least the
  sample's own `timeout_s` plus CODE_EXEC_GRACE_S (the sandbox has its own limit; the pool's is a
  backstop);
- a reward that kills its process (segfault, os._exit, the kernel's OOM killer) costs that one pair:
  it scores 0 with the exit code in the error, and the worker is replaced;
- nothing else is lost or re-run: one job per worker means the parent always knows which pair a dead
  or stuck worker held. (concurrent.futures' ProcessPoolExecutor cannot kill one task: a broken
  executor fails every pending future, which is why the pool manages its workers itself.)

Workers start with the "forkserver" method where the platform has it (a clean server process,
preloaded with this module, forks each worker: cheap restarts), else "spawn"; never plain "fork",
which copies a parent that may hold CUDA contexts or threads (torch, vLLM). Workers are daemonic (they
die with the parent); a reward must therefore start any children with subprocess, not multiprocessing.
Custom rewards (`rewards={name: fn}`) must be module-level functions so they can be pickled by name.
Per-task counts of calls, errors, timeouts and crashes: `pool.stats()`. Not thread-safe: one caller.
"""
from __future__ import annotations

import importlib
import math
import multiprocessing
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import wait

from redone_fast.data.reward_spec import REWARD_PARAMS
from redone_fast.rewards.format_checks import json_format, keywords, length, regex
from redone_fast.rewards.match import exact_match, set_f1
from redone_fast.rewards.overlap import bleu, chrf, rouge

RewardFn = Callable[..., float]


def _code_exec(prediction: str, reference: str, *, expected_output: str, stdin: str = "",
               timeout_s: float = 5.0) -> float:
    """Sandboxed execution (redone_fast.rewards.code_exec, imported on first use)."""
    module = importlib.import_module("redone_fast.rewards.code_exec")
    return module.code_exec(prediction, reference, expected_output=expected_output, stdin=stdin,
                            timeout_s=timeout_s)


# Every reward a sample may name (redone_fast.data.reward_spec.REWARD_PARAMS), name -> function.
REWARD_FUNCTIONS: dict[str, RewardFn] = {
    "exact_match": exact_match,
    "set_f1": set_f1,
    "bleu": bleu,
    "chrf": chrf,
    "rouge": rouge,
    "regex": regex,
    "json_format": json_format,
    "length": length,
    "keywords": keywords,
    "code_exec": _code_exec,
}
assert set(REWARD_FUNCTIONS) == set(REWARD_PARAMS), "every reward in REWARD_PARAMS needs a function"

CODE_EXEC_GRACE_S = 2.0  # the pool's limit for code_exec: the sample's timeout_s plus this
_MAX_ERROR_CHARS = 500
_STARTUP_TIMEOUT_S = 120.0  # a worker that is not ready by then is a broken environment
_MAX_STARTUP_FAILURES = 3  # workers dying before they are ready, in a row: give up, raise
_CRASHED = "worker crashed"  # how a crash outcome's error starts


@dataclass(frozen=True)
class RewardOutcome:
    score: float  # in [0, 1]; 0 whenever error is set
    error: str | None = None  # why the reward failed, None when it worked
    seconds: float = 0.0  # time the reward took (for a timeout: until it was stopped)
    timed_out: bool = False


@dataclass
class RewardStats:
    """Per-task counts. `errors` counts every failed outcome, timeouts and crashes included."""
    calls: int = 0
    errors: int = 0
    timeouts: int = 0
    crashes: int = 0
    seconds: float = 0.0


def _spec(reward) -> tuple[str, dict]:
    if isinstance(reward, str):
        return reward, {}
    return reward["name"], dict(reward.get("params") or {})


def compute_reward(reward, prediction: str, reference: str, *, rewards: Mapping[str, RewardFn] | None = None) -> float:
    """The reward's value for one completion; raises when the reward fails or misbehaves.

    reward: a name or {"name": ..., "params": {...}}. rewards: extra or replacement functions by name.
    """
    name, params = _spec(reward)
    function = (rewards or {}).get(name) or REWARD_FUNCTIONS.get(name)
    if function is None:
        raise KeyError(f"unknown reward {name!r} (known: {', '.join(sorted(REWARD_FUNCTIONS))})")
    value = function(prediction, reference, **params)
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, (int, float)):
        raise TypeError(f"reward {name!r} returned {type(value).__name__}, not a number")
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"reward {name!r} returned {value!r}, outside [0, 1]")
    return value


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + "..."


def score_completion(reward, reference: str, completion: str, *,
                     rewards: Mapping[str, RewardFn] | None = None) -> RewardOutcome:
    """compute_reward that never raises (an Exception becomes score 0 with the error recorded)."""
    start = time.perf_counter()
    try:
        value = compute_reward(reward, completion, reference, rewards=rewards)
    except Exception as exc:  # any failure of any reward: recorded, the run goes on
        return RewardOutcome(0.0, _describe(exc), time.perf_counter() - start)
    return RewardOutcome(value, None, time.perf_counter() - start)


def score_sample(sample, completion: str, *, rewards: Mapping[str, RewardFn] | None = None) -> RewardOutcome:
    """Score one completion of a Sample with the sample's own reward (see score_completion)."""
    return score_completion(sample.reward, sample.answer, completion, rewards=rewards)


# ---------------------------------------------------------------------------------------------------
# The pool


def _worker_main(conn, rewards: Mapping[str, RewardFn] | None) -> None:
    """A worker: announce readiness, then score (index, reward, reference, completion) jobs until told
    to stop (None) or until the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    conn.send("ready")
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        index, reward, reference, completion = job
        conn.send((index, score_completion(reward, reference, completion, rewards=rewards)))


def _default_start_method() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class _Worker:
    def __init__(self, context, rewards):
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child_conn, rewards), daemon=True,
                                       name="redone-reward-worker")
        self.process.start()
        child_conn.close()
        self.started = time.monotonic()
        self.ready = False
        self.job: int | None = None  # index of the pair being scored
        self.dispatched = 0.0
        self.deadline = math.inf

    def stop(self, *, kill: bool) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.process.join(timeout=None if kill else 2.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class RewardPool:
    """Scores (sample, completion) pairs, in N worker processes (workers=0: in this process).

    timeout_s: wall-clock limit per reward call in the workers (ignored when workers=0).
    rewards: extra or replacement reward functions by name (module-level functions: they are
    pickled by name into the workers). start_method: "forkserver" (default where available) or
    "spawn"; "fork" is refused. Use as a context manager, or call close().
    """

    def __init__(self, workers: int = 0, timeout_s: float = 30.0, *, rewards: Mapping[str, RewardFn] | None = None,
                 start_method: str | None = None):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        start_method = start_method or _default_start_method()
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(f"start_method must be 'forkserver' or 'spawn', got {start_method!r}")
        self.workers = workers
        self.timeout_s = float(timeout_s)
        self.rewards = dict(rewards or {})
        self._start_method = start_method
        self._context = None
        self._pool: list[_Worker] = []
        self._stats: dict[str, RewardStats] = {}
        self._closed = False

    # -- public ---------------------------------------------------------------------------------

    def score_many(self, samples: Sequence, completions: Sequence[str]) -> list[RewardOutcome]:
        """One outcome per (samples[i], completions[i]), in order."""
        if len(samples) != len(completions):
            raise ValueError(f"{len(samples)} samples but {len(completions)} completions")
        if self._closed:
            raise RuntimeError("the reward pool is closed")
        jobs = [(sample.reward, sample.answer, completion) for sample, completion in zip(samples, completions)]
        if self.workers == 0:
            outcomes = [score_completion(*job, rewards=self.rewards) for job in jobs]
        else:
            try:
                outcomes = self._score_in_workers(jobs)
            except BaseException:  # interrupted: busy workers would answer for jobs of this call later
                for worker in list(self._pool):
                    if worker.job is not None or not worker.ready:
                        self._replace(worker, kill=True)
                raise
        for sample, outcome in zip(samples, outcomes):
            self._count(sample.task, outcome)
        return outcomes

    def score(self, sample, completion: str) -> RewardOutcome:
        """One pair (through the workers when there are any)."""
        return self.score_many([sample], [completion])[0]

    def stats(self) -> dict[str, RewardStats]:
        """Counts per task since the pool was made (copies)."""
        return {task: replace(stats) for task, stats in self._stats.items()}

    def error_counts(self) -> dict[str, int]:
        """Failed outcomes per task (timeouts and crashes included); tasks without failures omitted."""
        return {task: stats.errors for task, stats in self._stats.items() if stats.errors}

    def close(self) -> None:
        for worker in self._pool:
            worker.stop(kill=False)
        self._pool = []
        self._closed = True

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------

    def _count(self, task: str, outcome: RewardOutcome) -> None:
        stats = self._stats.setdefault(task, RewardStats())
        stats.calls += 1
        stats.seconds += outcome.seconds
        if outcome.error is not None:
            stats.errors += 1
            stats.timeouts += outcome.timed_out
            stats.crashes += outcome.error.startswith(_CRASHED)

    def _limit(self, reward) -> float:
        name, params = _spec(reward)
        if name == "code_exec":
            return max(self.timeout_s, float(params.get("timeout_s", 5.0)) + CODE_EXEC_GRACE_S)
        return self.timeout_s

    def _new_worker(self) -> _Worker:
        if self._context is None:
            self._context = multiprocessing.get_context(self._start_method)
            if self._start_method == "forkserver":
                # Takes effect when the forkserver starts (it may already run for someone else: fine).
                self._context.set_forkserver_preload([__name__])
        return _Worker(self._context, self.rewards)

    def _replace(self, worker: _Worker, *, kill: bool) -> None:
        worker.stop(kill=kill)
        self._pool[self._pool.index(worker)] = self._new_worker()

    def _score_in_workers(self, jobs: list[tuple]) -> list[RewardOutcome]:
        while len(self._pool) < self.workers:
            self._pool.append(self._new_worker())
        outcomes: list[RewardOutcome | None] = [None] * len(jobs)
        pending = deque(range(len(jobs)))
        startup_failures = 0
        while pending or any(worker.job is not None for worker in self._pool):
            now = time.monotonic()
            for worker in self._pool:  # hand out jobs
                if worker.ready and worker.job is None and pending:
                    index = pending.popleft()
                    try:
                        worker.conn.send((index, *jobs[index]))
                    except OSError:  # died while idle: the job was not started, give it to another
                        pending.appendleft(index)
                        self._replace(worker, kill=True)
                        continue
                    worker.job, worker.dispatched = index, now
                    worker.deadline = now + self._limit(jobs[index][0])
            deadlines = [worker.deadline for worker in self._pool if worker.job is not None]
            deadlines += [worker.started + _STARTUP_TIMEOUT_S for worker in self._pool if not worker.ready]
            timeout = max(0.0, min(deadlines) - now) if deadlines else None
            ready = set(wait([w.conn for w in self._pool] + [w.process.sentinel for w in self._pool], timeout))
            for worker in list(self._pool):
                if worker.conn in ready:
                    try:
                        message = worker.conn.recv()
                    except (EOFError, OSError):
                        message = None  # the worker died: handled below with its sentinel
                    if message == "ready":
                        worker.ready, startup_failures = True, 0
                        continue
                    if message is not None:
                        index, outcome = message
                        outcomes[index], worker.job, worker.deadline = outcome, None, math.inf
                        continue
                if worker.process.sentinel in ready or (worker.conn in ready and not worker.process.is_alive()):
                    worker.process.join()
                    if not worker.ready:
                        startup_failures += 1
                        if startup_failures >= _MAX_STARTUP_FAILURES:
                            raise RuntimeError(f"reward workers keep dying before they are ready (exit code "
                                               f"{worker.process.exitcode}); is redone_fast importable there?")
                    if worker.job is not None:
                        outcomes[worker.job] = RewardOutcome(
                            0.0, f"{_CRASHED} (exit code {worker.process.exitcode}) while scoring",
                            time.monotonic() - worker.dispatched)
                    self._replace(worker, kill=True)
            now = time.monotonic()
            for worker in list(self._pool):  # stop what ran out of time
                if worker.job is not None and now >= worker.deadline:
                    outcomes[worker.job] = RewardOutcome(
                        0.0, f"timed out after {worker.deadline - worker.dispatched:g} s", now - worker.dispatched,
                        timed_out=True)
                    self._replace(worker, kill=True)
                elif not worker.ready and now >= worker.started + _STARTUP_TIMEOUT_S:
                    raise RuntimeError(f"a reward worker did not start within {_STARTUP_TIMEOUT_S:g} s")
        return outcomes  # type: ignore[return-value]
