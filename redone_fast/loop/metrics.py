"""Metrics to the run folder (JSONL and TensorBoard) and progress to the terminal, from rank 0 only.

- `metrics.jsonl`: one JSON object per logged step (`step`, `stage`, `time` in seconds since the epoch,
  then the figures). On resume, lines for steps after the checkpoint are dropped first: those steps are
  run again and logged again, so every step appears once.
- `tensorboard/`: the same scalars through `torch.utils.tensorboard` when the `tensorboard` package is
  installed (it is a dependency; a trainer embedding the loop without it gets the JSONL only, with a
  warning).
- Progress: a tqdm bar (tokens/s, loss, lr, ETA) when stderr is a terminal; otherwise one line per logged
  step, which is what logs collected by a cluster scheduler should hold.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

__all__ = ["MetricsLogger", "read_metrics", "format_duration"]

METRICS_FILE = "metrics.jsonl"


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def read_metrics(run_dir) -> list[dict]:
    """Every line of a run folder's metrics.jsonl (skipping a torn last line left by a kill)."""
    path = Path(os.fspath(run_dir)) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class MetricsLogger:
    """Writes metrics for one stage of a run; a no-op on ranks other than 0 (`enabled=False`)."""

    def __init__(self, run_dir, *, stage: str = "train", total_steps: int | None = None, enabled: bool = True,
                 tensorboard: bool = True, stream=None):
        self.run_dir = Path(os.fspath(run_dir))
        self.stage = stage
        self.total_steps = total_steps
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self._bar = None
        self._writer = None
        self._last_time = time.perf_counter()
        self._last_step = None
        self._start_time = self._last_time
        self._start_step = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # tensorboard missing: JSONL only
                warnings.warn(f"TensorBoard logging is off ({e}); metrics go to {METRICS_FILE} only", stacklevel=2)
            else:
                self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard" / stage))
        if _is_terminal(self.stream) and total_steps:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total_steps, desc=stage, file=self.stream, dynamic_ncols=True)

    @property
    def path(self) -> Path:
        return self.run_dir / METRICS_FILE

    def resume_from(self, step: int) -> None:
        """Drop this stage's lines for steps after `step` (they will be logged again); move the bar there."""
        if not self.enabled:
            return
        if self.path.is_file():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if not _after(line, self.stage, step)]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            os.replace(tmp, self.path)
        if self._bar is not None:
            self._bar.n = step
            self._bar.refresh()
        self._last_step = self._start_step = step

    def log(self, step: int, metrics: dict, *, tokens: float | None = None) -> dict:
        """Record `metrics` for `step` (1-based: steps done); adds tokens/s and ETA from the wall clock."""
        now = time.perf_counter()
        if self._start_step is None:
            self._start_step = self._last_step = step - 1
        elapsed = now - self._last_time
        steps = step - self._last_step
        row = dict(metrics)
        if tokens is not None and elapsed > 0:
            row["tokens_per_s"] = tokens / elapsed
        if steps > 0 and elapsed > 0:
            row["step_s"] = elapsed / steps
        if self.total_steps:
            rate = (now - self._start_time) / max(1, step - self._start_step)
            row["eta_s"] = rate * (self.total_steps - step)
        self._last_time, self._last_step = now, step
        if not self.enabled:
            return row
        record = {"step": step, "stage": self.stage, "time": time.time(), **row}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
        if self._writer is not None:
            for name, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(name, value, step)
            self._writer.flush()
        self._progress(step, row)
        return row

    def _progress(self, step: int, row: dict) -> None:
        parts = []
        for name, fmt in (("loss", "{:.4f}"), ("eval_loss", "{:.4f}"), ("reward", "{:.3f}"), ("lr", "{:.2e}"),
                          ("tokens_per_s", "{:,.0f}")):
            if name in row and isinstance(row[name], (int, float)):
                parts.append(f"{name.replace('tokens_per_s', 'tok/s')} " + fmt.format(row[name]))
        if row.get("skipped"):
            parts.append("SKIPPED (non-finite gradients)")
        if self._bar is not None:
            self._bar.set_postfix_str(" ".join(parts), refresh=False)
            self._bar.update(step - self._bar.n)
            return
        total = f"/{self.total_steps}" if self.total_steps else ""
        eta = f" eta {format_duration(row['eta_s'])}" if "eta_s" in row else ""
        print(f"[{self.stage}] step {step}{total} " + " ".join(parts) + eta, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """A line for the person watching (rank 0), outside the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _after(line: str, stage: str, step: int) -> bool:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return True  # a torn line from a kill mid-write
    return row.get("stage") == stage and isinstance(row.get("step"), int) and row["step"] > step
