"""`python -m redone_fast.train`: the RedOne 2.0 pipeline (RL -> targeted SFT -> RL) in one command.

    python -m redone_fast.train                                  # bundled tiny model and data, CPU, minutes
    python -m redone_fast.train --recipe sft-then-rl             # the baselines, same data and settings
    python -m redone_fast.train --run-dir runs/a --stages stage1 # only stage 1 (and its evaluations)
    torchrun --nproc_per_node=8 -m redone_fast.train --preset qwen3-4b --model /models/Qwen3-4B \\
        --rl-files sns_rl.jsonl --sft-files sns_sft.jsonl --eval-files eval.jsonl --run-dir runs/qwen3-4b

Re-running with the same --run-dir resumes where it stopped, whichever stage that was. Every field of the
configuration is an option, nested with dots by the role of the stage it sets (--rl-from-base.optim.lr 1e-6,
--sft.epochs 3, --rl-after-sft.rollout-steps 100); `--config FILE` (JSON or YAML) sets fields over the
preset, flags over both. Each stage's model, tokenizer and data files are filled in by the pipeline. The
run folder holds report.md (read it first), report.json, plots/, the capability map, one Hugging Face
export per stage, checkpoints and metrics.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from redone_fast.config import parse_command
from redone_fast.errors import RedoneError, run_cli
from redone_fast.pipeline.config import PipelineConfig, Preset, Recipe, preset
from redone_fast.pipeline.run import STATE_FILE, PipelineError, run_pipeline

__all__ = ["PipelineCommand", "parse_args", "main"]


@dataclass
class PipelineCommand:
    cfg: Annotated[PipelineConfig, tyro.conf.arg(name="")]
    preset: Preset = "tiny"
    """starting settings: tiny (bundled model and data, CPU) or qwen3-4b (the paper's, GPU nodes; give --model
    and the data files)"""
    config: str | None = None
    """a JSON or YAML file of configuration fields, applied over the preset (flags win over it)"""
    recipe: Recipe = "redone"
    """redone: RL -> targeted SFT -> RL; sft-then-rl and sft-only: the paper's baselines"""
    run_dir: str | None = None
    """run folder; reused = resume (None: runs/<preset>-<recipe>)"""
    stages: list[str] = field(default_factory=list)
    """run only these stages' steps, e.g. stage1 or stage2 stage3 (empty: every stage of the recipe)"""
    allow_config_change: bool = False
    """resume a run folder even though the configuration differs from its first run"""


def parse_args(argv: list[str]) -> PipelineCommand:
    """The command line as a PipelineCommand (tyro; bad input raises ConfigError with one line)."""
    return parse_command(PipelineCommand, argv, prog="python -m redone_fast.train", description=__doc__,
                         presets={name: (lambda name=name: preset(name)) for name in Preset.__args__},
                         default_preset="tiny")


def main(argv=None) -> int:
    """The pipeline CLI; bad input ends in one `error:` line and status 2 (redone_fast.errors.run_cli)."""
    return run_cli(_main, argv)


def _main(argv) -> int:
    args = parse_args(argv)
    run_dir = args.run_dir or f"runs/{args.preset}-{args.recipe}"
    stages = [name for item in args.stages for name in item.split(",") if name]  # stage2,stage3 still works
    try:
        state = run_pipeline(args.cfg, run_dir, recipe=args.recipe, stages=stages or None,
                             allow_config_change=args.allow_config_change)
    except RedoneError as exc:
        if not (Path(run_dir) / STATE_FILE).is_file():
            raise
        raise PipelineError(f"{exc} (finished steps are kept in {run_dir}: fix the input and re-run the same "
                            "command to go on)") from exc  # the same line, plus where the finished work is
    print(f"[pipeline] {state['status']}: {run_dir}/report.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
