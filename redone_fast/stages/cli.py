"""The command line every stage shares: `--run-dir`, `--preset`, and one option per config field."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from redone_fast.config import add_config_arguments, apply_config_arguments
from redone_fast.errors import run_cli

__all__ = ["stage_parser", "stage_main"]


def stage_parser(prog: str, description: str, config_cls, preset: Callable, presets: tuple[str, ...],
                 default_preset: str = "tiny") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="run folder (checkpoints, metrics, export); reused = resume")
    parser.add_argument("--preset", default=default_preset, choices=presets,
                        help=f"starting settings (default: {default_preset})")
    add_config_arguments(parser, config_cls, defaults=preset(default_preset))  # defaults shown: that preset's
    return parser


def stage_main(parser: argparse.ArgumentParser, preset: Callable, run: Callable, argv=None) -> int:
    """Parse, run the stage in the run folder, print its summary as one JSON line; the group is torn down.

    Bad input ends in one `error:` line and status 2 (redone_fast.errors.run_cli; `--debug` shows the
    traceback)."""
    def stage(argv) -> int:
        args = parser.parse_args(argv)
        cfg = apply_config_arguments(preset(args.preset), args)
        summary = run(cfg, args.run_dir)
        print(json.dumps(summary), file=sys.stdout, flush=True)
        return 0
    return run_cli(stage, argv)
