"""The training loop every stage runs on (docs/design.md, "The loop"): FSDP2 model, named steps, checkpoints.

    from redone_fast.loop import forward_backward, train_step, train
"""
from redone_fast.loop.checkpoint import Checkpointer, CheckpointError
from redone_fast.loop.metrics import MetricsLogger, read_metrics
from redone_fast.loop.optim import OptimConfig, build_optimizer, build_scheduler
from redone_fast.loop.outer import LoopConfig, LoopSettings, StepSource, Trainer, TrainOutcome, train
from redone_fast.loop.step import (
    Objective,
    StepResult,
    TokenCrossEntropy,
    evaluate_loss,
    forward_backward,
    rank_micro_batches,
    train_step,
)

__all__ = [
    "Checkpointer", "CheckpointError", "MetricsLogger", "read_metrics", "OptimConfig", "build_optimizer",
    "build_scheduler", "Objective", "StepResult", "TokenCrossEntropy", "evaluate_loss", "forward_backward",
    "rank_micro_batches", "train_step", "LoopConfig", "LoopSettings", "StepSource", "Trainer", "TrainOutcome", "train",
]
