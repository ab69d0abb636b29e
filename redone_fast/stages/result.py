"""What every stage does when its loop returns: export when finished, write `<stage>_result.json` (the other
end of `start_stage`, setup.py)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from redone_fast.loop.export import export_hf

__all__ = ["finish_stage"]


def finish_stage(run_dir: Path, stage: str, ctx, outcome, *, model, tokenizer, export: bool, total_steps: int,
                 started: float, **extra) -> dict:
    """The stage's summary (common fields + `extra`), with the HF export path when it finished and exported."""
    summary = {"stage": stage, "status": outcome.status, "step": outcome.step, "total_steps": total_steps,
               "resumed_from": outcome.resumed_from, "skipped_steps": outcome.skipped_steps,
               "world_size": ctx.world_size, "seconds": time.perf_counter() - started, **extra}
    if outcome.status == "finished" and export:
        summary["export"] = str(export_hf(model, run_dir / "export", tokenizer=tokenizer))  # every rank calls it
    if ctx.is_main:
        (run_dir / f"{stage}_result.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary
