"""`python -m redone_fast.train`: the RedOne 2.0 pipeline (RL -> targeted SFT -> RL) in one command.

    python -m redone_fast.train                                  # bundled tiny model and data, CPU, minutes
    python -m redone_fast.train --recipe sft-then-rl             # the baselines, same data and settings
    python -m redone_fast.train --run-dir runs/a --stages stage1 # only stage 1 (and its evaluations)
    torchrun --nproc_per_node=8 -m redone_fast.train --preset qwen3-4b --model /models/Qwen3-4B \\
        --rl-files sns_rl.jsonl --sft-files sns_sft.jsonl --eval-files eval.jsonl --run-dir runs/qwen3-4b

Re-running with the same --run-dir resumes where it stopped, whichever stage that was. Every field of the
configuration is an option (nested with dots: --stage1.optim.lr 1e-6); each stage's model, tokenizer and
data files are filled in by the pipeline. The run folder holds report.md (read it first), report.json,
plots/, the capability map, one Hugging Face export per stage, checkpoints and metrics.
"""
from __future__ import annotations

import argparse
import sys

from redone_fast.config import add_config_arguments, apply_config_arguments
from redone_fast.errors import RedoneError, run_cli

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from redone_fast.pipeline.config import PRESETS, RECIPES, PipelineConfig, preset
    parser = argparse.ArgumentParser(prog="python -m redone_fast.train", description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=PRESETS,
                        help="starting settings: tiny (bundled model and data, CPU) or qwen3-4b (the paper's, GPU "
                             "nodes; give --model and the data files) (default: tiny)")
    parser.add_argument("--recipe", default="redone", choices=RECIPES,
                        help="redone: RL -> targeted SFT -> RL; sft-then-rl and sft-only: the paper's baselines "
                             "(default: redone)")
    parser.add_argument("--run-dir", default=None,
                        help="run folder; reused = resume (default: runs/<preset>-<recipe>)")
    parser.add_argument("--stages", type=lambda text: [s for s in text.split(",") if s], default=None,
                        metavar="A,B", help="run only these stages' steps, e.g. stage1 or stage2,stage3 "
                                            "(default: every stage of the recipe)")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume a run folder even though the configuration differs from its first run")
    add_config_arguments(parser, PipelineConfig, defaults=preset("tiny"))
    return parser


def main(argv=None) -> int:
    """The pipeline CLI; bad input ends in one `error:` line and status 2 (redone_fast.errors.run_cli)."""
    return run_cli(_main, argv)


def _main(argv) -> int:
    from pathlib import Path

    from redone_fast.pipeline.config import preset
    from redone_fast.pipeline.run import STATE_FILE, PipelineError, run_pipeline

    args = build_parser().parse_args(argv)
    cfg = apply_config_arguments(preset(args.preset), args)
    run_dir = args.run_dir or f"runs/{args.preset}-{args.recipe}"
    try:
        state = run_pipeline(cfg, run_dir, recipe=args.recipe, stages=args.stages,
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
