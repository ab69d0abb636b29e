"""MetricsLogger (JSONL, TensorBoard, progress lines), read_metrics and format_duration; CPU only.

The wall clock is replaced by a fake one, so tokens/s, step time and ETA have exact expected values.
"""
from __future__ import annotations

import io
import json
import math

import pytest

import redone_fast.loop.metrics as metrics_module
from redone_fast.loop.metrics import METRICS_FILE, MetricsLogger, format_duration, read_metrics


class FakeClock:
    """Stands in for the `time` module inside metrics.py: perf_counter and time are set by the test."""

    def __init__(self, start: float = 100.0):
        self.now = start

    def perf_counter(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(metrics_module, "time", fake)
    return fake


def _logger(run_dir, stream=None, **kwargs):
    kwargs.setdefault("tensorboard", False)
    return MetricsLogger(run_dir, stream=stream if stream is not None else io.StringIO(), **kwargs)


# ---------------------------------------------------------------- format_duration

@pytest.mark.parametrize("seconds, text", [
    (0, "0:00:00"), (59.4, "0:00:59"), (59.6, "0:01:00"), (61, "0:01:01"), (3599, "0:59:59"),
    (3600, "1:00:00"), (3 * 3600 + 25 * 60 + 7, "3:25:07"), (100 * 3600 + 1, "100:00:01"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [-1, -0.5, math.inf, -math.inf, math.nan])
def test_format_duration_unknown(seconds):
    assert format_duration(seconds) == "?"


# ---------------------------------------------------------------- JSONL rows

def test_rows_hold_step_stage_time_and_figures(tmp_path, clock):
    logger = _logger(tmp_path / "run", stage="sft", total_steps=10)
    clock.now = 102.0
    row1 = logger.log(1, {"loss": 2.5, "lr": 1e-4}, tokens=1000)
    clock.now = 106.0
    row3 = logger.log(3, {"loss": 2.0, "lr": 2e-4}, tokens=4000)
    logger.close()

    # step 1: 2 s since construction, 1 step; ETA = 2 s/step * 9 steps left
    assert row1["tokens_per_s"] == pytest.approx(500.0)
    assert row1["step_s"] == pytest.approx(2.0)
    assert row1["eta_s"] == pytest.approx(18.0)
    # step 3: 4 s for 2 steps since the last log; overall 6 s for 3 steps, 7 left
    assert row3["tokens_per_s"] == pytest.approx(1000.0)
    assert row3["step_s"] == pytest.approx(2.0)
    assert row3["eta_s"] == pytest.approx(14.0)

    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 3]
    assert all(r["stage"] == "sft" for r in rows)
    assert rows[0]["time"] == pytest.approx(1_700_000_000.0 + 102.0)
    assert rows[1]["time"] == pytest.approx(1_700_000_000.0 + 106.0)
    assert rows[0]["loss"] == 2.5 and rows[0]["lr"] == 1e-4
    assert rows[1]["loss"] == 2.0 and rows[1]["lr"] == 2e-4
    assert rows[0]["tokens_per_s"] == pytest.approx(500.0)
    assert rows[1]["eta_s"] == pytest.approx(14.0)
    # the file is plain JSONL: one object per line, the keys in order step, stage, time, figures
    lines = (tmp_path / "run" / METRICS_FILE).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert list(json.loads(lines[0]))[:5] == ["step", "stage", "time", "loss", "lr"]


def test_row_without_tokens_or_total_has_no_rate_or_eta(tmp_path, clock):
    logger = _logger(tmp_path, total_steps=None)
    clock.now = 101.0
    row = logger.log(1, {"loss": 1.0})
    logger.close()
    assert "tokens_per_s" not in row
    assert "eta_s" not in row
    assert row["step_s"] == pytest.approx(1.0)
    assert read_metrics(tmp_path)[0]["loss"] == 1.0


def test_log_does_not_modify_the_callers_dict(tmp_path, clock):
    figures = {"loss": 1.0}
    logger = _logger(tmp_path, total_steps=5)
    clock.now = 101.0
    logger.log(1, figures, tokens=10)
    logger.close()
    assert figures == {"loss": 1.0}


def test_rows_are_appended_across_loggers(tmp_path, clock):
    first = _logger(tmp_path, stage="rl1", total_steps=2)
    clock.now = 101.0
    first.log(1, {"loss": 1.0})
    first.close()
    second = _logger(tmp_path, stage="sft", total_steps=2)
    clock.now = 102.0
    second.log(1, {"loss": 0.5})
    second.close()
    rows = read_metrics(tmp_path)
    assert [(r["stage"], r["step"], r["loss"]) for r in rows] == [("rl1", 1, 1.0), ("sft", 1, 0.5)]


def test_non_finite_values_round_trip(tmp_path, clock):
    logger = _logger(tmp_path, total_steps=3)
    clock.now = 101.0
    logger.log(1, {"loss": math.nan, "grad_norm": math.inf, "skipped": 1.0})
    logger.close()
    (row,) = read_metrics(tmp_path)
    assert math.isnan(row["loss"]) and row["grad_norm"] == math.inf and row["skipped"] == 1.0


# ---------------------------------------------------------------- resume

def _write_rows(path, rows, torn_tail: str | None = None):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if torn_tail is not None:
        text += torn_tail  # a kill in the middle of a write: no newline, not JSON
    path.write_text(text, encoding="utf-8")


def test_resume_drops_only_this_stages_later_rows(tmp_path, clock):
    rows = [{"step": s, "stage": "rl1", "loss": float(s)} for s in range(1, 6)]
    rows += [{"step": s, "stage": "sft", "loss": 10.0 + s} for s in range(1, 8)]
    rows += [{"step": 9, "stage": "rl1", "loss": 9.0}]  # another stage, after the resume step: kept
    _write_rows(tmp_path / METRICS_FILE, rows, torn_tail='{"step": 8, "stage": "sft", "lo')

    logger = _logger(tmp_path, stage="sft", total_steps=10)
    logger.resume_from(4)
    kept = read_metrics(tmp_path)
    assert [(r["stage"], r["step"]) for r in kept] == (
        [("rl1", s) for s in range(1, 6)] + [("sft", s) for s in range(1, 5)] + [("rl1", 9)])
    # the torn line is gone from the file itself, and every line is whole JSON
    text = (tmp_path / METRICS_FILE).read_text(encoding="utf-8")
    assert text.endswith("\n") and '"lo\n' not in text
    assert all(json.loads(line) for line in text.splitlines())
    assert not (tmp_path / (METRICS_FILE + ".tmp")).exists()

    # steps 5.. are logged again: every sft step appears exactly once; ETA counts from the resume point
    clock.now = 103.0
    row = logger.log(5, {"loss": 0.1}, tokens=300)
    clock.now = 104.0
    logger.log(6, {"loss": 0.2})
    logger.close()
    assert row["tokens_per_s"] == pytest.approx(100.0)  # 3 s since the logger started
    assert row["eta_s"] == pytest.approx(3.0 * 5)  # 3 s for the 1 step since the resume, 5 steps left
    sft_steps = [r["step"] for r in read_metrics(tmp_path) if r["stage"] == "sft"]
    assert sft_steps == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in read_metrics(tmp_path) if r["stage"] == "sft"][-2:] == [0.1, 0.2]


def test_resume_at_zero_drops_every_row_of_the_stage(tmp_path, clock):
    rows = [{"step": 1, "stage": "sft"}, {"step": 1, "stage": "rl1"}, {"step": 2, "stage": "sft"}]
    _write_rows(tmp_path / METRICS_FILE, rows)
    logger = _logger(tmp_path, stage="sft")
    logger.resume_from(0)
    logger.close()
    assert read_metrics(tmp_path) == [{"step": 1, "stage": "rl1"}]


def test_resume_without_a_file_is_harmless(tmp_path, clock):
    logger = _logger(tmp_path / "fresh", stage="sft", total_steps=4)
    logger.resume_from(2)
    clock.now = 104.0
    row = logger.log(3, {"loss": 1.0})
    logger.close()
    assert row["step_s"] == pytest.approx(4.0)  # one step since the resume point
    assert [r["step"] for r in read_metrics(tmp_path / "fresh")] == [3]


# ---------------------------------------------------------------- read_metrics

def test_read_metrics_skips_a_torn_line(tmp_path):
    rows = [{"step": 1, "stage": "sft", "loss": 1.0}, {"step": 2, "stage": "sft", "loss": 0.5}]
    _write_rows(tmp_path / METRICS_FILE, rows, torn_tail='{"step": 3, "stage": "s')
    assert read_metrics(tmp_path) == rows
    assert read_metrics(str(tmp_path)) == rows  # a str path works too


def test_read_metrics_skips_a_garbled_line_in_the_middle(tmp_path):
    # a kill mid-write, then a later run appending without a resume: the torn text and the next row
    # share a line; that line is skipped and the rows after it are still read
    text = ('{"step": 1, "stage": "sft"}\n' '{"step": 2, "st' '{"step": 2, "stage": "sft"}\n'
            '{"step": 3, "stage": "sft"}\n')
    (tmp_path / METRICS_FILE).write_text(text, encoding="utf-8")
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 3]


def test_read_metrics_of_a_folder_without_metrics(tmp_path):
    assert read_metrics(tmp_path) == []
    assert read_metrics(tmp_path / "missing") == []


# ---------------------------------------------------------------- progress lines

def test_non_terminal_stream_gets_one_line_per_logged_step(tmp_path, clock):
    stream = io.StringIO()
    logger = _logger(tmp_path, stream=stream, stage="sft", total_steps=20)
    for step in (1, 2, 5):
        clock.now += 2.0
        logger.log(step, {"loss": 1.0 / step, "lr": 1e-4 * step, "grad_norm": 0.3}, tokens=2048)
    logger.log(6, {"loss": math.nan, "lr": 6e-4, "skipped": 1.0})
    logger.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("[sft] step 1/20 ")
    assert "loss 1.0000" in lines[0] and "lr 1.00e-04" in lines[0] and "tok/s 1,024" in lines[0]
    assert "eta 0:00:38" in lines[0]  # 2 s per step, 19 steps left
    assert lines[1].startswith("[sft] step 2/20 ") and "loss 0.5000" in lines[1] and "lr 2.00e-04" in lines[1]
    assert lines[2].startswith("[sft] step 5/20 ") and "loss 0.2000" in lines[2] and "lr 5.00e-04" in lines[2]
    assert "SKIPPED" not in "".join(lines[:3])
    assert lines[3].startswith("[sft] step 6/20 ") and "loss nan" in lines[3] and "SKIPPED" in lines[3]


def test_progress_line_without_total(tmp_path, clock):
    stream = io.StringIO()
    logger = _logger(tmp_path, stream=stream, stage="rl1", total_steps=None)
    clock.now = 101.0
    logger.log(7, {"reward": 0.25, "lr": 5e-6})
    logger.close()
    (line,) = stream.getvalue().splitlines()
    assert line.startswith("[rl1] step 7 ") and "/" not in line.split()[2]
    assert "reward 0.250" in line and "lr 5.00e-06" in line and "eta" not in line


def test_message_goes_to_the_stream(tmp_path, clock):
    stream = io.StringIO()
    logger = _logger(tmp_path, stream=stream)
    logger.message("resumed from somewhere")
    logger.close()
    assert stream.getvalue() == "resumed from somewhere\n"


# ---------------------------------------------------------------- disabled (ranks other than 0)

def test_disabled_logger_writes_nothing(tmp_path, clock):
    run_dir = tmp_path / "run"
    stream = io.StringIO()
    logger = MetricsLogger(run_dir, stage="sft", total_steps=5, enabled=False, tensorboard=True, stream=stream)
    logger.resume_from(0)
    clock.now = 101.0
    row = logger.log(1, {"loss": 1.0}, tokens=10)
    logger.message("hello")
    logger.close()
    assert row["loss"] == 1.0 and row["tokens_per_s"] == pytest.approx(10.0)  # still computed for the caller
    assert not run_dir.exists()
    assert stream.getvalue() == ""
    assert read_metrics(run_dir) == []


def test_disabled_logger_leaves_an_existing_file_alone(tmp_path, clock):
    rows = [{"step": s, "stage": "sft"} for s in (1, 2, 3)]
    _write_rows(tmp_path / METRICS_FILE, rows)
    before = (tmp_path / METRICS_FILE).read_bytes()
    logger = _logger(tmp_path, stage="sft", enabled=False)
    logger.resume_from(1)
    logger.log(2, {"loss": 1.0})
    logger.close()
    assert (tmp_path / METRICS_FILE).read_bytes() == before


# ---------------------------------------------------------------- TensorBoard

def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def test_tensorboard_scalars_read_back(tmp_path, clock):
    pytest.importorskip("tensorboard")
    logger = MetricsLogger(tmp_path, stage="sft", total_steps=4, tensorboard=True, stream=io.StringIO())
    for step, loss in ((1, 2.0), (2, 1.5), (4, 0.75)):
        clock.now += 1.0
        logger.log(step, {"loss": loss, "lr": 1e-3 * step, "note": "text", "flag": True}, tokens=100)
    logger.close()

    log_dir = tmp_path / "tensorboard" / "sft"
    assert log_dir.is_dir()
    assert any(p.name.startswith("events.out.tfevents") for p in log_dir.iterdir())
    scalars = _scalars(log_dir)
    assert [step for step, _ in scalars["loss"]] == [1, 2, 4]
    assert [value for _, value in scalars["loss"]] == pytest.approx([2.0, 1.5, 0.75])
    assert [value for _, value in scalars["lr"]] == pytest.approx([1e-3, 2e-3, 4e-3])
    assert [value for _, value in scalars["tokens_per_s"]] == pytest.approx([100.0, 100.0, 100.0])
    assert [step for step, _ in scalars["eta_s"]] == [1, 2, 4]
    assert scalars["eta_s"][-1][1] == pytest.approx(0.0)
    # strings and booleans are not scalars
    assert "note" not in scalars and "flag" not in scalars
    # the JSONL still has everything, strings included
    assert [r["note"] for r in read_metrics(tmp_path)] == ["text"] * 3


def test_tensorboard_stages_get_their_own_folders(tmp_path, clock):
    pytest.importorskip("tensorboard")
    for stage, loss in (("rl1", 3.0), ("sft", 1.0)):
        logger = MetricsLogger(tmp_path, stage=stage, total_steps=1, tensorboard=True, stream=io.StringIO())
        clock.now += 1.0
        logger.log(1, {"loss": loss})
        logger.close()
    assert _scalars(tmp_path / "tensorboard" / "rl1")["loss"] == [(1, pytest.approx(3.0))]
    assert _scalars(tmp_path / "tensorboard" / "sft")["loss"] == [(1, pytest.approx(1.0))]


def test_tensorboard_off_writes_no_event_files(tmp_path, clock):
    logger = _logger(tmp_path, stage="sft", tensorboard=False)
    clock.now += 1.0
    logger.log(1, {"loss": 1.0})
    logger.close()
    assert not (tmp_path / "tensorboard").exists()
    assert len(read_metrics(tmp_path)) == 1
