"""AdamW and the learning-rate schedules of the paper's stages (docs/method.md, "Hyperparameters").

- RL (stages 1 and 3): `schedule="constant"` after `warmup_steps` linear warmup (10 steps, lr 5e-6).
- SFT (stage 2): `schedule="cosine"` after a warmup of `warmup_ratio` of the steps (0.1), decaying to
  `min_lr_ratio * lr` (0 by default) at the last step.

Weight decay skips 1-D parameters (norm scales, biases), the Hugging Face Trainer convention; the paper
gives only the decay (0.1). AdamW is torch's fused implementation on CUDA and CPU: it also takes the
`found_inf` flag the loop uses to skip a step with non-finite gradients without a host synchronisation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch.optim.lr_scheduler import LambdaLR

from redone_fast.errors import ConfigError

__all__ = ["OptimConfig", "build_optimizer", "build_scheduler", "lr_factor", "SCHEDULES"]

Schedule = Literal["constant", "cosine"]
SCHEDULES: tuple[str, ...] = Schedule.__args__


@dataclass
class OptimConfig:
    """AdamW, clipping and the learning-rate schedule."""

    lr: float = 5e-6
    """peak learning rate"""
    weight_decay: float = 0.1
    """AdamW weight decay (not on 1-D parameters)"""
    beta1: float = 0.9
    """AdamW beta1"""
    beta2: float = 0.999
    """AdamW beta2"""
    eps: float = 1e-8
    """AdamW epsilon"""
    grad_clip: float = 1.0
    """max global gradient norm; 0 disables clipping (the norm is still logged)"""
    schedule: Schedule = "constant"
    """constant (RL) or cosine (SFT)"""
    warmup_steps: int = 0
    """linear warmup from lr/warmup to lr; when 0, warmup_ratio of the steps is used"""
    warmup_ratio: float = 0.0
    """share of the steps for linear warmup, when warmup_steps is 0"""
    min_lr_ratio: float = 0.0
    """cosine ends at min_lr_ratio * lr"""
    fused: bool = True
    """torch's fused AdamW (CUDA and CPU); False: the foreach implementation"""

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule: must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.lr <= 0 or self.warmup_steps < 0 or not 0 <= self.warmup_ratio < 1 or self.grad_clip < 0 \
                or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optimizer settings out of range: lr={self.lr}, warmup_steps={self.warmup_steps}, "
                             f"warmup_ratio={self.warmup_ratio}, grad_clip={self.grad_clip}, "
                             f"min_lr_ratio={self.min_lr_ratio}")


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             eps=cfg.eps, fused=cfg.fused or None, foreach=None if cfg.fused else True)


def warmup_steps(cfg: OptimConfig, total_steps: int) -> int:
    # ceil, less a hair: 0.07 * 100 is 7.000000000000001 in floating point, which must give 7, not 8
    return cfg.warmup_steps or int(math.ceil(cfg.warmup_ratio * total_steps - 1e-9))


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier of cfg.lr for optimizer step `step` (0-based): linear warmup, then constant or cosine."""
    warmup = warmup_steps(cfg, total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup - 1)
    progress = min(1.0, (step - warmup) / decay_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: lr_factor(step, cfg, total_steps))
