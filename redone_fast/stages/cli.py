"""The command line every stage shares: `--run-dir`, `--preset`, `--config FILE`, and one option per field of
the stage's config (tyro; see redone_fast.config)."""
from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Generic, Literal, TypeVar

import tyro

from redone_fast.config import parse_command
from redone_fast.errors import run_cli

__all__ = ["StageCommand", "StagePreset", "parse_stage_args", "stage_main"]

Config = TypeVar("Config")
StagePreset = Literal["tiny", "paper"]


@dataclass
class StageCommand(Generic[Config]):
    run_dir: str
    """run folder (checkpoints, metrics, export); reused = resume"""
    cfg: Annotated[Config, tyro.conf.arg(name="")]
    preset: StagePreset = "tiny"
    """starting settings: tiny (the bundled model and data, CPU) or paper (the paper's; give --model and files)"""
    config: str | None = None
    """a JSON or YAML file of configuration fields, applied over the preset (flags win over it)"""


def parse_stage_args(config_cls, presets: Mapping[str, Callable], argv, *, prog: str, description: str):
    """The command line as a `StageCommand[config_cls]` (bad input raises ConfigError with one line)."""
    return parse_command(StageCommand[config_cls], argv, prog=prog, description=description, presets=presets,
                         default_preset="tiny", run_dir=tyro.MISSING)


def stage_main(config_cls, presets: Mapping[str, Callable], run: Callable, argv=None, *, prog: str,
               description: str) -> int:
    """Parse, run the stage in the run folder, print its summary as one JSON line; the group is torn down.

    Bad input ends in one `error:` line and status 2 (redone_fast.errors.run_cli; `--debug` shows the
    traceback)."""
    def stage(argv) -> int:
        args = parse_stage_args(config_cls, presets, argv, prog=prog, description=description)
        summary = run(args.cfg, args.run_dir)
        print(json.dumps(summary), file=sys.stdout, flush=True)
        return 0
    return run_cli(stage, argv)
