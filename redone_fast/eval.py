"""Score an exported model: `python -m redone_fast.eval --model DIR [--sns-bench DIR] [--out FILE]`.

The model is any exported Hugging Face folder (config.json + safetensors + tokenizer: what every stage
exports). Two evaluations:

- bundled: the eval split(s) (default: the bundled `redone_fast.tiny.data_path("eval")`), greedy, each
  sample scored with its own reward, per task x 100 and macro means per domain
  (`redone_fast.pipeline.scoring.evaluate_samples`; its docstring says how).
- SNS-Bench (`--sns-bench DIR`, a folder holding the benchmark's twelve JSON files; the data is read
  there, never copied): greedy answers scored per file with the benchmark's own metric
  (`redone_fast.rewards.sns_bench.evaluate`), and the mean over the files. Note-QueryGen's embedding
  similarity is replaced by a stand-in (no embedding model offline): its `stand_in` says so, and that
  file's score is not comparable to published numbers.

Prompts longer than the model's context (prompt + --max-new-tokens > max_position_embeddings; the bundled
tiny model has 512 positions and many SNS-Bench notes are longer) are not generated: the item gets an empty
prediction, which the benchmark's metric scores as wrong, and it is counted in `too_long`.

Output (`--out FILE`, and a table on stdout):
    {"model": str, "bundled": ModelScores.to_json(),
     "sns_bench": {"files": {stem: {"score", "metric", "items", "too_long", "stand_in"}}, "mean": float,
                   "too_long": int, "limit": int} | null,
     "headroom": {task: TaskHeadroom.to_json()} | null   (--headroom-k K; redone_fast.pipeline.headroom),
     "config": EvalConfig as a dict, "seconds": float}

Errors in the inputs (a missing or broken model folder, a malformed JSONL line, a missing SNS-Bench folder)
print one line naming the path and exit with code 2. Under `torchrun`, ranks share the generation and
rank 0 prints and writes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import tyro

from redone_fast.config import parse_command
from redone_fast.data.schema import DataError
from redone_fast.errors import ConfigError, run_cli
from redone_fast.pipeline.scoring import (
    EvalConfig,
    context_length,
    evaluate_samples,
    first_per_task,
    open_engine,
    score_sns_bench_samples,
    task_domain,
)

__all__ = ["format_report", "EvalCommand", "parse_args", "main"]


# ---------------------------------------------------------------------------------------------------
# Report


def _number(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def format_report(result: dict, *, context: int | None = None, max_new_tokens: int | None = None) -> str:
    """The readable table printed on stdout (from the output JSON)."""
    lines = [f"model: {result['model']}"]
    bundled = result["bundled"]
    if bundled is not None:
        width = max([len("task")] + [len(t) for t in bundled["tasks"]])
        total = sum(bundled["counts"].values())
        lines += ["", f"bundled eval ({total} samples, greedy, each sample's own reward, x100)",
                  f"  {'task':<{width}}  {'domain':<7}  {'n':>5}  {'score':>6}"]
        for task, score in bundled["tasks"].items():
            lines.append(f"  {task:<{width}}  {task_domain(task):<7}  {bundled['counts'][task]:>5}  {score:>6.1f}")
        lines.append(f"  SNS (macro mean) {_number(bundled['sns'])}    "
                     f"general (macro mean) {_number(bundled['general'])}    too long: {bundled['too_long']}")
    bench = result.get("sns_bench")
    if bench is not None:
        width = max(len("file"), *(len(stem) for stem in bench["files"]))
        limit = bench.get("limit") or 0
        lines += ["", "SNS-Bench (greedy, the benchmark's own metric per file, 0-100"
                  + (f", first {limit} items per file" if limit else "") + ")",
                  f"  {'file':<{width}}  {'items':>5}  {'too long':>8}  {'score':>6}"]
        for stem, row in bench["files"].items():
            mark = "  (stand-in metric)" if row["stand_in"] else ""
            lines.append(f"  {stem:<{width}}  {row['items']:>5}  {row['too_long']:>8}  {row['score']:>6.1f}{mark}")
        lines.append(f"  mean over {len(bench['files'])} files: {bench['mean']:.1f}")
        if bench["too_long"]:
            budget = f"{context} positions" if context else "the model's context"
            extra = f" with {max_new_tokens} new tokens" if max_new_tokens else ""
            lines.append(f"  note: {bench['too_long']} prompts do not fit in {budget}{extra}: not generated, "
                         "scored as empty predictions (0 for that item)")
        for stem, row in bench["files"].items():
            if row["stand_in"]:
                lines.append(f"  note: {row['stand_in']}")
    lines += ["", f"{result['seconds']:.1f} s"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Command line


def _default_eval_files() -> list[str]:
    from redone_fast.tiny import data_path
    return [str(data_path("eval"))]


@dataclasses.dataclass
class EvalCommand:
    """Score an exported model (HF folder) on the bundled eval split and, optionally, SNS-Bench."""

    model: str
    """exported model folder (config.json + safetensors + tokenizer)"""
    cfg: Annotated[EvalConfig, tyro.conf.arg(name="")]
    eval_files: list[str] | None = None
    """eval JSONL files (None: the bundled eval split)"""
    sns_bench: str | None = None
    """an SNS-Bench data folder (the benchmark's twelve JSON files); None: not scored"""
    sns_bench_limit: int = 0
    """only the first N items of each SNS-Bench file (0: all)"""
    out: str | None = None
    """write the results as JSON here"""
    device: str | None = None
    """cpu, cuda, cuda:1, ... (None: CUDA when available)"""


def parse_args(argv: list[str]) -> EvalCommand:
    """The command line as an EvalCommand (tyro; bad input raises ConfigError with one line)."""
    return parse_command(EvalCommand, argv, prog="python -m redone_fast.eval", description=EvalCommand.__doc__,
                         model=tyro.MISSING, cfg=EvalConfig())


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """The eval CLI; bad input ends in one `error:` line and status 2 (redone_fast.errors.run_cli)."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    from redone_fast.data.schema import load_jsonl
    from redone_fast.model import ModelFolderError, check_model_folder

    args = parse_args(argv)
    cfg = args.cfg
    if args.sns_bench_limit < 0:
        raise ConfigError(f"--sns-bench-limit: expected >= 0, got {args.sns_bench_limit}")
    started = time.perf_counter()

    # Inputs first, all of them, before a model is loaded.
    try:
        check_model_folder(args.model, tokenizer=True)
        eval_files = args.eval_files or _default_eval_files()
        samples = [sample for path in eval_files for sample in load_jsonl(path)]
        bench_samples = None
        if args.sns_bench is not None:
            from redone_fast.data.sns_bench import load_sns_bench
            bench_samples = {task: first_per_task(items, args.sns_bench_limit)
                             for task, items in load_sns_bench(args.sns_bench).items()}
    except (ModelFolderError, DataError) as exc:
        return _error(str(exc))

    ctx = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: ranks share the generation
        from redone_fast.distributed import init_distributed
        ctx = init_distributed(args.device)
    is_main = ctx is None or ctx.is_main
    try:
        engine = open_engine(args.model, cfg, device=ctx.device if ctx is not None else args.device)
    except (ModelFolderError, ImportError) as exc:
        return _error(str(exc))
    try:
        bundled = evaluate_samples(engine, samples, cfg, ctx=ctx)
        bench = None
        if bench_samples is not None:
            bench = score_sns_bench_samples(engine, bench_samples, cfg, ctx=ctx)
            bench["limit"] = args.sns_bench_limit
        headroom = None
        if cfg.headroom_k:
            from redone_fast.pipeline.headroom import measure_headroom
            headroom = measure_headroom(engine, first_per_task(samples, cfg.max_samples_per_task), k=cfg.headroom_k,
                                        max_new_tokens=cfg.max_new_tokens,
                                        max_samples_per_task=cfg.headroom_samples_per_task, ctx=ctx,
                                        reward_workers=cfg.reward_workers)
        context = context_length(engine)
    finally:
        engine.close()

    result = {"model": str(args.model), "bundled": bundled.to_json(), "sns_bench": bench,
              "headroom": None if headroom is None else {t: row.to_json() for t, row in headroom.items()},
              "config": dataclasses.asdict(cfg), "seconds": time.perf_counter() - started}
    if is_main:
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        print(format_report(result, context=context, max_new_tokens=cfg.max_new_tokens))
        if headroom is not None:
            from redone_fast.pipeline.headroom import headroom_table
            print(f"\nsampling headroom (temperature 1, k={cfg.headroom_k}):\n{headroom_table(headroom)}")
        if args.out:
            print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

