"""What every training stage (SFT, RL) does before its loop: `start_stage`, in this order,

    check the settings: a model and data files given, values in range (ConfigError before anything is
    built or written)
    join the process group (or make one of one process)                    -> redone_fast.distributed
    load the tokenizer (`cfg.tokenizer`, else the model folder)
    the stage's data, and from it the number of optimizer steps             -> the stage's `prepare`
    write <run-dir>/<stage>_config.json (rank 0: the resolved settings)
    build the sharded model, its optimizer and learning-rate schedule      -> parallelize, loop.optim

The order is part of what a run is (the data is prepared with the tokenizer and the rank, the model is built after
the config file is written; the golden-loss test pins the SFT losses it gives). `finish_stage` (result.py) is
the other end: export and `<stage>_result.json`.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from redone_fast.config import to_dict
from redone_fast.distributed import DistContext, init_distributed
from redone_fast.errors import ConfigError
from redone_fast.loop.optim import build_optimizer, build_scheduler
from redone_fast.model import load_tokenizer
from redone_fast.parallelize import build_model

__all__ = ["StageSetup", "start_stage"]


@dataclass
class StageSetup:
    """What `start_stage` built, for the stage to wire into its objective, step source and loop."""

    ctx: DistContext
    tokenizer: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    run_dir: Path
    started: float  # time.perf_counter() when the stage started (its summary's `seconds`)
    total_steps: int  # optimizer steps of the whole stage (the schedule's length)
    data: Any  # what the stage's `prepare` gave with the step count


def start_stage(cfg, run_dir, stage: str, *, check_config: Callable[[Any], None],
                prepare: Callable[[Any, DistContext, Any], tuple[Any, int]]) -> StageSetup:
    """Set a stage up in `run_dir` (see the module docstring for the order). `cfg` has the fields every stage
    config has (model, tokenizer, optim, parallel); `check_config(cfg)` raises ConfigError on bad values;
    `prepare(cfg, ctx, tokenizer)` returns the stage's data and its number of optimizer steps."""
    run_dir = Path(run_dir)
    started = time.perf_counter()
    if not cfg.model:  # the library defaults are neutral: the paper preset, say, names no model
        raise ConfigError("model: no model folder given (--model DIR)")
    if not cfg.train_files:
        raise ConfigError("train_files: no data files given (--train-files FILE ...)")
    check_config(cfg)
    ctx = init_distributed()
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    data, total_steps = prepare(cfg, ctx, tokenizer)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / f"{stage}_config.json").write_text(json.dumps(to_dict(cfg), indent=1), encoding="utf-8")

    model = build_model(cfg.model, ctx.mesh, cfg.parallel, device=ctx.device)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    return StageSetup(ctx=ctx, tokenizer=tokenizer, model=model, optimizer=optimizer, scheduler=scheduler,
                      run_dir=run_dir, started=started, total_steps=total_steps, data=data)
