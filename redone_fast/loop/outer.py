"""`train`: the outer loop every stage runs: resume, steps, logging, evaluation, checkpoints, stop signals.

It knows nothing of which stage runs it (docs/design.md, "The outer loop"): a stage hands it a `Trainer` (model,
optimizer, schedule, objective), a `StepSource` (this rank's micro-batches for each step, and a JSON data
position), and a run folder. Re-running with the same folder resumes from the newest good checkpoint:
model, optimizer, schedule, RNG states, data position and skipped-step count are restored, and the
remaining steps give the same losses as an uninterrupted run (tests/test_fsdp_torchrun.py kills a run
with SIGKILL to check it; tests/test_distributed_faults.py kills one rank of two, and resumes an RL run
with several updates per rollout). A checkpoint that cannot be used (see `loop/checkpoint.py`) is skipped
for the previous one; when none is usable, `CheckpointError` is raised before any step runs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch

from redone_fast.distributed import DistContext, any_rank
from redone_fast.loop.checkpoint import Checkpointer
from redone_fast.loop.metrics import MetricsLogger
from redone_fast.loop.signals import StopRequest, maybe_crash_for_test
from redone_fast.loop.step import Objective, train_step

__all__ = ["LoopConfig", "LoopSettings", "Trainer", "StepSource", "TrainOutcome", "train"]


@dataclass
class LoopConfig:
    """How long to train and how often to log, evaluate and checkpoint (0 = never, except at the end: the
    last step is always logged, evaluated and checkpointed)."""

    total_steps: int
    log_every: int = 1
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    grad_clip: float = 1.0


@dataclass
class LoopSettings:
    """The loop settings a stage's config nests as `loop` (`--loop.log-every 10`); the stage derives the rest
    of its `LoopConfig`: total steps (from epochs or rollouts), evaluation, clipping (`optim.grad_clip`)."""

    log_every: int = 1
    """log every N optimizer steps (logging is a step's only host synchronisation)"""
    checkpoint_every: int = 100
    """checkpoint every N of the stage's steps (SFT: optimizer steps; RL: rollout steps), and at the end"""
    keep_checkpoints: int = 2
    """complete checkpoints kept"""


@dataclass
class Trainer:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    objective: Objective
    ctx: DistContext


class StepSource(Protocol):
    def next_step(self) -> list:
        """This rank's micro-batches for the next optimizer step (the same count on every rank)."""

    def state_dict(self) -> dict:
        """The data position after the last step returned (JSON)."""

    def load_state_dict(self, state: dict) -> None: ...

    # Optional: `last_step_tokens`, every token of the last global batch (for tokens/s in the logs),
    # `pop_metrics() -> dict[str, float]`, figures of its own (an RL source's rewards and phase times)
    # added to the next logged row, and `at_resume_point() -> bool` (the same on every rank): whether
    # `state_dict()` now resumes exactly (absent: always). A stop request is honoured at the next step
    # where it is, e.g. after the last update of an RL rollout, whose remaining mini-batches a checkpoint
    # does not hold; the save, and so the exit, wait for those steps.


@dataclass
class TrainOutcome:
    status: str  # "finished" or "stopped" (a signal: checkpoint saved)
    step: int
    resumed_from: int | None = None
    skipped_steps: int = 0
    history: list[dict] = field(default_factory=list)  # logged rows of this process (rank 0)


def _rank_state(device: torch.device) -> dict:
    state = {"cpu_rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rank_state(state: dict, device: torch.device) -> None:
    if "cpu_rng" in state:
        torch.set_rng_state(state["cpu_rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)


def _at_resume_point(data) -> bool:
    at_resume_point = getattr(data, "at_resume_point", None)
    return True if at_resume_point is None else bool(at_resume_point())


def train(trainer: Trainer, data: StepSource, cfg: LoopConfig, *, run_dir, stage: str = "train",
          checkpoint_dir=None, evaluate: Callable[[], dict] | None = None, extra_state: dict | None = None,
          logger: MetricsLogger | None = None) -> TrainOutcome:
    """Run (or resume) `cfg.total_steps` optimizer steps; see the module docstring."""
    ctx = trainer.ctx
    run_dir = Path(run_dir)
    checkpointer = Checkpointer(checkpoint_dir or run_dir / "checkpoints", keep=cfg.keep_checkpoints)
    own_logger = logger is None
    logger = logger or MetricsLogger(run_dir, stage=stage, total_steps=cfg.total_steps, enabled=ctx.is_main)
    outcome = TrainOutcome(status="finished", step=0)
    skipped_total = torch.zeros((), device=ctx.device)

    loaded = checkpointer.load_latest(trainer.model, trainer.optimizer, required=("scheduler", "data"))
    for error in checkpointer.rejected:
        logger.message(f"warning: {error}")
    if loaded is not None:
        state = loaded.trainer_state
        trainer.scheduler.load_state_dict(state["scheduler"])
        data.load_state_dict(state["data"])
        _restore_rank_state(loaded.rank_state, ctx.device)
        skipped_total += state.get("skipped_steps", 0)
        outcome.step = outcome.resumed_from = loaded.step
        logger.message(f"[{stage}] resumed from {loaded.path} (step {loaded.step}/{cfg.total_steps})")

    logger.resume_from(outcome.step)  # rows of steps that will run again (even from step 0) are dropped

    def save(step: int) -> None:
        trainer_state = {"stage": stage, "scheduler": trainer.scheduler.state_dict(), "data": data.state_dict(),
                         "skipped_steps": int(skipped_total.item()), **(extra_state or {})}
        path = checkpointer.save(step, trainer.model, trainer.optimizer, trainer_state=trainer_state,
                                 rank_state=_rank_state(ctx.device))
        logger.message(f"[{stage}] checkpoint {path}")

    try:
        with StopRequest() as stop:
            last_saved = outcome.step
            tokens_since_log = 0
            deferred = False  # a stop request waits for the data source's next exact resume point
            while outcome.step < cfg.total_steps:
                micro_batches = data.next_step()
                tokens_since_log += getattr(data, "last_step_tokens", 0)
                update_started = time.perf_counter()
                result = train_step(trainer.model, trainer.optimizer, trainer.scheduler, micro_batches,
                                    trainer.objective, grad_clip=cfg.grad_clip, world_size=ctx.world_size,
                                    device=ctx.device)
                outcome.step += 1
                step = outcome.step
                skipped_total += result.skipped
                eval_now = evaluate is not None and (step == cfg.total_steps
                                                     or (cfg.eval_every and step % cfg.eval_every == 0))
                if step % cfg.log_every == 0 or step == cfg.total_steps or eval_now:
                    row = result.as_floats()  # synchronises: update_s below includes the device work
                    summarize = getattr(trainer.objective, "summarize", None)  # means from metric sums
                    if summarize is not None:
                        row.update(summarize(row))
                    row["update_s"] = time.perf_counter() - update_started
                    row["skipped_steps"] = float(skipped_total.item())
                    pop_metrics = getattr(data, "pop_metrics", None)
                    if pop_metrics is not None:
                        row.update(pop_metrics())
                    if eval_now:
                        row.update(evaluate())
                    # tokens/s counts every token of the global batches (prompts too) when the source knows it
                    outcome.history.append(logger.log(step, row, tokens=tokens_since_log or None) | {"step": step})
                    tokens_since_log = 0
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.total_steps:
                    save(step)
                    last_saved = step
                maybe_crash_for_test(step, stage)
                if any_rank(stop.requested) and step < cfg.total_steps:
                    if not _at_resume_point(data):
                        if not deferred:
                            logger.message(f"[{stage}] stop requested by signal {stop.signal} after step {step}: "
                                           "continuing to the next step the data can resume from exactly")
                        deferred = True
                        continue
                    if last_saved != step:
                        save(step)
                    logger.message(f"[{stage}] stopped by signal {stop.signal} after step {step}; "
                                   "re-run with the same run folder to resume")
                    outcome.status = "stopped"
                    break
    finally:
        if own_logger:
            logger.close()
    outcome.skipped_steps = int(skipped_total.item())
    return outcome
