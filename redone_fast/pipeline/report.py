"""The run report: what the pipeline did and how the scores moved, rewritten after every stage.

`write_report(run_dir, state)` reads the pipeline's state dict and the files the stages left in `run_dir`,
and writes three things (each atomically: temp file in the same folder, then `os.replace`):

- `report.json`: `{"recipe", "scores": {base|stage1|stage2|stage3: {"sns", "general", "tasks"}},
  "seconds": {step: float}, "stages": {key: {"kind", "title", "done", "skipped"}}}`. Scores are on 0-100
  and copied from `state["scores"]` (the evaluator's own averages, not recomputed here).
- `plots/` (matplotlib, Agg canvas, no display needed; a plot is written only when it has data):
  - `reward_per_step.png`: from each stage's `<dir>/metrics.jsonl`. Top: `reward` per step for every
    RL stage (with `reward/sns` and `reward/general` as thin dashed lines when logged). Bottom: `loss`
    per step for every SFT stage, `eval_loss` as dots.
  - `task_scores.png`: from `state["scores"][*]["tasks"]`, one bar group per task (SNS tasks first),
    one bar per evaluated stage.
  - `sns_vs_general.png`: from `state["scores"][*]["sns" | "general"]`, the two averages per stage.
- `report.md`: status line, headline (base vs the last evaluated stage), score table with the
  change against base, stages, seconds, the capability map (`diagnosis/capability_map.json`, when
  stage 2's diagnosis has written it), notes, and the plots above by relative link.
"""
from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path

__all__ = ["write_report"]

STAGE_KEYS = ("base", "stage1", "stage2", "stage3")
PLOTS_DIR = "plots"
REWARD_PLOT = "reward_per_step.png"
TASK_PLOT = "task_scores.png"
AVERAGES_PLOT = "sns_vs_general.png"
CAPABILITY_MAP = Path("diagnosis") / "capability_map.json"
METRICS_FILE = "metrics.jsonl"

# One colour per stage in every figure, so "stage1" reads the same in all three.
STAGE_COLORS = {"base": "#7f7f7f", "stage1": "#1f77b4", "stage2": "#ff7f0e", "stage3": "#2ca02c"}
DOMAIN_RANK = {"sns": 0, "general": 1}  # SNS tasks first, then general, then anything unlabelled
MISSING = "—"


def write_report(run_dir: str | Path, state: dict) -> dict:
    """Writes <run_dir>/report.json, <run_dir>/report.md and PNG plots under <run_dir>/plots/.

    Returns the report.json content. Safe to call after every stage: each call rewrites the whole report.
    """
    run_dir = Path(os.fspath(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    report = report_content(state)
    metrics = {key: read_stage_metrics(run_dir / stage.get("dir", key))
               for key, stage in (state.get("stages") or {}).items() if not stage.get("skipped")}
    capability_map = read_capability_map(run_dir / CAPABILITY_MAP)
    domains = task_domains(state, capability_map)
    plots = write_plots(run_dir / PLOTS_DIR, state, report, metrics, domains)
    _write_atomic(run_dir / "report.json", json.dumps(report, indent=2) + "\n")
    _write_atomic(run_dir / "report.md", render_markdown(state, report, metrics, domains, capability_map, plots))
    return report


# ---------------------------------------------------------------------------------------------------
# Inputs


def report_content(state: dict) -> dict:
    """The report.json dict: the fixed schema, scores without the per-task sample counts."""
    scores = {key: {"sns": _number(entry.get("sns")), "general": _number(entry.get("general")),
                    "tasks": {name: _number(value) for name, value in (entry.get("tasks") or {}).items()}}
              for key, entry in _ordered_scores(state)}
    stages = {key: {"kind": stage.get("kind"), "title": stage.get("title", key), "done": bool(stage.get("done")),
                    "skipped": bool(stage.get("skipped", False))}
              for key, stage in (state.get("stages") or {}).items()}
    seconds = {name: float(value) for name, value in (state.get("seconds") or {}).items() if _is_number(value)}
    report = {"recipe": state.get("recipe"), "scores": scores, "seconds": seconds, "stages": stages}
    if state.get("sns_bench"):  # per stage, when the run was given --sns-bench (redone_fast.eval's layout)
        report["sns_bench"] = state["sns_bench"]
    return report


def read_stage_metrics(stage_dir: Path) -> list[dict]:
    """A stage's metrics.jsonl rows, one per step (the last wins), by step; [] when the file is missing.

    Parsed here rather than with `redone_fast.loop.metrics.read_metrics` because importing that package
    imports torch (seconds), and the report must stay cheap to import and run.
    """
    path = stage_dir / METRICS_FILE
    if not path.is_file():
        return []
    by_step = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line left by a crash mid-write
        if isinstance(row, dict) and _is_number(row.get("step")):
            by_step[row["step"]] = row  # a step logged twice (resume without trimming): keep the rerun
    return [by_step[step] for step in sorted(by_step)]


def read_capability_map(path: Path) -> dict | None:
    """Stage 2's capability map, or None when the diagnosis has not run (or left an unreadable file)."""
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return content if isinstance(content, dict) and isinstance(content.get("tasks"), dict) else None


def task_domains(state: dict, capability_map: dict | None) -> dict[str, str]:
    """task -> "sns" | "general": from the state, else from the capability map."""
    domains = {}
    if capability_map:
        domains.update({name: row.get("domain") for name, row in capability_map["tasks"].items()
                        if isinstance(row, dict) and row.get("domain")})
    domains.update(state.get("domains") or {})
    return domains


def sorted_tasks(names, domains: dict[str, str]) -> list[str]:
    return sorted(set(names), key=lambda name: (DOMAIN_RANK.get(domains.get(name), len(DOMAIN_RANK)), name))


def _ordered_scores(state: dict) -> list[tuple[str, dict]]:
    """Evaluated stages in pipeline order (base, stage1, ...), then any other key as given."""
    scores = state.get("scores") or {}
    known = [key for key in STAGE_KEYS if isinstance(scores.get(key), dict)]
    other = [key for key, entry in scores.items() if key not in STAGE_KEYS and isinstance(entry, dict)]
    return [(key, scores[key]) for key in known + other]


# ---------------------------------------------------------------------------------------------------
# Plots


def write_plots(plots_dir: Path, state: dict, report: dict, metrics: dict[str, list[dict]],
                domains: dict[str, str]) -> list[tuple[str, str]]:
    """Writes the plots that have data; returns [(file name, caption)] of those written.

    A plot with no data this time is deleted if an earlier call wrote it, so the folder always matches
    the report that links it.
    """
    stages = state.get("stages") or {}
    figures = [
        (REWARD_PLOT, "Reward (RL stages) and loss (SFT stages) per step",
         lambda: plot_training_curves(stages, metrics)),
        (TASK_PLOT, "Score per task and stage", lambda: plot_task_scores(report["scores"], domains)),
        (AVERAGES_PLOT, "SNS and general averages per stage", lambda: plot_averages(report["scores"])),
    ]
    written = []
    for name, caption, draw in figures:
        figure = draw()
        path = plots_dir / name
        if figure is None:
            path.unlink(missing_ok=True)
            continue
        plots_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, _png_bytes(figure))
        written.append((name, caption))
    return written


def plot_training_curves(stages: dict, metrics: dict[str, list[dict]]):
    """RL rewards on top, SFT losses below; None when no stage has logged either."""
    rl = {key: rows for key, rows in metrics.items()
          if stages[key].get("kind") == "rl" and _series(rows, "reward")[0]}
    sft = {key: rows for key, rows in metrics.items()
           if stages[key].get("kind") == "sft" and _series(rows, "loss")[0]}
    panels = [name for name, curves in (("rl", rl), ("sft", sft)) if curves]
    if not panels:
        return None
    figure = _new_figure(9.0, 3.6 * len(panels), rows=len(panels))
    axes = dict(zip(panels, figure.axes))
    if rl:
        ax = axes["rl"]
        for key, rows in rl.items():
            color = STAGE_COLORS.get(key)
            ax.plot(*_series(rows, "reward"), color=color, linewidth=1.8, label=f"{key} reward")
            for metric, style in (("reward/sns", "--"), ("reward/general", "-.")):
                steps, values = _series(rows, metric)
                if steps:
                    ax.plot(steps, values, color=color, linewidth=0.9, linestyle=style, label=f"{key} {metric}")
        ax.set(title="RL stages: mean reward per step", xlabel="step", ylabel="reward")
        ax.xaxis.get_major_locator().set_params(integer=True)  # steps are whole numbers
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    if sft:
        ax = axes["sft"]
        for key, rows in sft.items():
            color = STAGE_COLORS.get(key)
            ax.plot(*_series(rows, "loss"), color=color, linewidth=1.5, label=f"{key} loss")
            steps, values = _series(rows, "eval_loss")
            if steps:
                ax.plot(steps, values, "o", color=color, markersize=5, label=f"{key} eval_loss")
        ax.set(title="SFT stages: loss per step", xlabel="step", ylabel="loss")
        ax.xaxis.get_major_locator().set_params(integer=True)  # steps are whole numbers
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    return figure


def plot_task_scores(scores: dict[str, dict], domains: dict[str, str]):
    """Grouped bars: one group per task (SNS first), one bar per evaluated stage; None without task scores."""
    tasks = sorted_tasks((name for entry in scores.values() for name in entry["tasks"]), domains)
    if not tasks:
        return None
    stage_keys = list(scores)
    bar_width = 0.8 / len(stage_keys)
    # Wide enough that labels do not overlap, capped so a long task list still renders a sane image.
    figure = _new_figure(min(24.0, max(6.0, 1.5 + len(tasks) * (0.3 + 0.22 * len(stage_keys)))), 4.8)
    ax = figure.axes[0]
    for index, key in enumerate(stage_keys):
        offsets = [position - 0.4 + bar_width * (index + 0.5) for position in range(len(tasks))]
        heights = [_or_nan(scores[key]["tasks"].get(name)) for name in tasks]
        ax.bar(offsets, heights, width=bar_width, color=STAGE_COLORS.get(key), label=key)
    sns_count = sum(domains.get(name) == "sns" for name in tasks)
    if 0 < sns_count < len(tasks):  # separate the SNS group from the general one
        ax.axvline(sns_count - 0.5, color="black", linewidth=0.8, linestyle=":")
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([f"{name} ({domains.get(name, '?')})" for name in tasks], rotation=30, ha="right",
                       fontsize="small")
    ax.set(title="Score per task", ylabel="score (0-100)", ylim=(0, 100))
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return figure


def plot_averages(scores: dict[str, dict]):
    """SNS and general averages across the evaluated stages; None before any evaluation."""
    if not scores:
        return None
    stage_keys = list(scores)
    figure = _new_figure(max(5.0, 1.6 * len(stage_keys) + 2.0), 4.0)
    ax = figure.axes[0]
    for domain, color in (("sns", "#d62728"), ("general", "#9467bd")):
        values = [_or_nan(scores[key][domain]) for key in stage_keys]
        ax.plot(range(len(stage_keys)), values, "o-", color=color, linewidth=1.8, label=domain)
        for position, value in enumerate(values):
            if math.isfinite(value):
                ax.annotate(f"{value:.1f}", (position, value), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize="small", color=color)
    ax.set_xticks(range(len(stage_keys)))
    ax.set_xticklabels(stage_keys)
    ax.set(title="SNS vs general average", ylabel="score (0-100)", ylim=(0, 100))
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return figure


def _series(rows: list[dict], metric: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows that logged a finite `metric`."""
    points = [(row["step"], float(row[metric])) for row in rows
              if _is_number(row.get(metric)) and math.isfinite(row[metric])]
    return [step for step, _ in points], [value for _, value in points]


def _new_figure(width: float, height: float, rows: int = 1):
    # matplotlib is imported here, not at the top: it costs most of a second, and the pipeline
    # imports this module at start-up. `Figure` (not pyplot) keeps no global figure registry, so
    # nothing leaks between calls and no display backend is ever touched.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    figure.subplots(rows, 1, squeeze=False)
    return figure


def _png_bytes(figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    figure.clear()  # drop the artists now rather than whenever the figure is collected
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------
# Markdown


def render_markdown(state: dict, report: dict, metrics: dict[str, list[dict]], domains: dict[str, str],
                    capability_map: dict | None, plots: list[tuple[str, str]]) -> str:
    sections = [
        f"# Run report: {report['recipe']}\n\n{status_line(report['stages'], metrics)}\n\n{headline(report['scores'])}",
        scores_section(report["scores"], domains),
        stages_section(report["stages"], metrics),
        seconds_section(report["seconds"]),
        capability_map_section(capability_map, domains),
        headroom_section(state.get("headroom") or {}, domains),
        notes_section(state.get("notes") or []),
        plots_section(plots),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def stage_status(stage: dict, rows: list[dict]) -> str:
    if stage["skipped"]:
        return "skipped"
    if stage["done"]:
        return "done"
    if rows:
        return f"started (last step {rows[-1]['step']})"
    return "pending"


def status_line(stages: dict[str, dict], metrics: dict[str, list[dict]]) -> str:
    if not stages:
        return "**Status:** no stages."
    parts = [f"{key} {stage_status(stage, metrics.get(key, []))}" for key, stage in stages.items()]
    return "**Status:** " + " · ".join(parts)


def headline(scores: dict[str, dict]) -> str:
    """Base vs the last evaluated stage, e.g. "SNS 32.0 → 45.1 (+13.1), general 71.7 → 70.9 (−0.8)"."""
    if not scores:
        return "**Not evaluated yet.**"
    last = list(scores)[-1]
    if "base" not in scores or last == "base":
        entry = scores[last]
        return f"**SNS {_fmt(entry['sns'])}, general {_fmt(entry['general'])}** ({last})"
    parts = [f"{label} {_fmt(scores['base'][domain])} → {_fmt(scores[last][domain])} "
             f"({_delta(scores['base'][domain], scores[last][domain])})"
             for label, domain in (("SNS", "sns"), ("general", "general"))]
    return f"**{', '.join(parts)}** (base → {last})"


def scores_section(scores: dict[str, dict], domains: dict[str, str]) -> str:
    """Rows: the two averages, then every task; columns: each evaluated stage, then the change vs base."""
    if not scores:
        return ""
    stage_keys = list(scores)
    last = stage_keys[-1]
    with_delta = "base" in scores and last != "base"
    header = ["", "domain", *stage_keys] + [f"Δ {last} vs base"] * with_delta
    rows = [("**SNS average**", "sns", {key: scores[key]["sns"] for key in stage_keys}),
            ("**General average**", "general", {key: scores[key]["general"] for key in stage_keys})]
    tasks = sorted_tasks((name for entry in scores.values() for name in entry["tasks"]), domains)
    rows += [(name, domains.get(name, "?"), {key: scores[key]["tasks"].get(name) for key in stage_keys})
             for name in tasks]
    lines = [_table_row(header), _table_row(["---", "---"] + ["---:"] * (len(header) - 2))]
    for label, domain, values in rows:
        cells = [label, domain, *(_fmt(values[key]) for key in stage_keys)]
        if with_delta:
            cells.append(_delta(values["base"], values[last]))
        lines.append(_table_row(cells))
    return "## Scores (0-100)\n\n" + "\n".join(lines)


def stages_section(stages: dict[str, dict], metrics: dict[str, list[dict]]) -> str:
    if not stages:
        return ""
    lines = [_table_row(["stage", "title", "kind", "status", "logged steps"]), _table_row(["---"] * 4 + ["---:"])]
    for key, stage in stages.items():
        rows = metrics.get(key, [])
        lines.append(_table_row([key, stage["title"], stage["kind"] or MISSING, stage_status(stage, rows),
                                 str(len(rows)) if rows else MISSING]))
    return "## Stages\n\n" + "\n".join(lines)


def seconds_section(seconds: dict[str, float]) -> str:
    if not seconds:
        return ""
    lines = [_table_row(["step", "seconds", "h:mm:ss"]), _table_row(["---", "---:", "---:"])]
    lines += [_table_row([name, f"{value:.1f}", _hms(value)]) for name, value in seconds.items()]
    total = sum(seconds.values())
    lines.append(_table_row(["**total**", f"**{total:.1f}**", f"**{_hms(total)}**"]))
    return "## Time\n\n" + "\n".join(lines)


def capability_map_section(capability_map: dict | None, domains: dict[str, str]) -> str:
    if capability_map is None:
        return ""
    columns = [("score", lambda v: _fmt(v)), ("mean_pass_rate", lambda v: _fmt(v, 2)),
               ("pool_samples", _count), ("low_pass_samples", _count), ("weak", _yes_no),
               ("bucket_samples", _count), ("weight", lambda v: _fmt(v, 2))]
    lines = [_table_row(["task", "domain", "score", "mean pass rate", "pool", "low-pass", "weak", "bucket", "weight"]),
             _table_row(["---", "---"] + ["---:"] * len(columns))]
    tasks = capability_map["tasks"]
    for name in sorted_tasks(tasks, domains):
        row = tasks[name] if isinstance(tasks[name], dict) else {}
        lines.append(_table_row([name, domains.get(name, "?"), *(fmt(row.get(field)) for field, fmt in columns)]))
    extra = []
    if "bucket_size" in capability_map:
        extra.append(f"Failure bucket: {_count(capability_map['bucket_size'])} samples.")
    if capability_map.get("rule") is not None:
        extra.append(f"Rule: `{json.dumps(capability_map['rule'], sort_keys=True)}`")
    return "## Capability map (stage 2 diagnosis)\n\n" + "\n".join(lines) + "".join("\n\n" + line for line in extra)


def headroom_section(headroom: dict[str, dict], domains: dict[str, str]) -> str:
    """Per task and evaluated model: pass@1 / pass@k / signal share (redone_fast.pipeline.headroom)."""
    keys = [key for key in STAGE_KEYS if isinstance(headroom.get(key), dict)]
    keys += [key for key in headroom if key not in keys and isinstance(headroom[key], dict)]
    if not keys:
        return ""
    rows = [row for key in keys for row in headroom[key].values() if isinstance(row, dict)]
    k = next((row.get("k") for row in rows if row.get("k")), "k")
    lines = [_table_row(["task", "domain", *keys]), _table_row(["---", "---"] + ["---:"] * len(keys))]
    for name in sorted_tasks((t for key in keys for t in headroom[key]), domains):
        cells = []
        for key in keys:
            row = headroom[key].get(name)
            cells.append(MISSING if not isinstance(row, dict) else
                         f"{_fmt(row.get('pass_at_1'), 0)} / {_fmt(row.get('pass_at_k'), 0)} / "
                         f"{_fmt(row.get('signal'), 0)}")
        lines.append(_table_row([name, domains.get(name, "?"), *cells]))
    return (f"## Sampling headroom (temperature 1, k = {k})\n\nEach cell: pass@1 / pass@{k} / share of prompts whose "
            f"{k} answers differ in reward (the groups RL learns from), in %, on the eval split. pass@{k} far above "
            "pass@1 is what RL can raise; pass@k near 0 is a gap only SFT can fill.\n\n" + "\n".join(lines))


def notes_section(notes: list) -> str:
    if not notes:
        return ""
    return "## Notes\n\n" + "\n".join(f"- {note}" for note in notes)


def plots_section(plots: list[tuple[str, str]]) -> str:
    """Links to the plots written this time only (relative, so the run folder can be moved or copied)."""
    if not plots:
        return ""
    return "## Plots\n\n" + "\n\n".join(f"![{caption}]({PLOTS_DIR}/{name})" for name, caption in plots)


# ---------------------------------------------------------------------------------------------------
# Formatting and files


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value) -> float | None:
    return float(value) if _is_number(value) else None


def _or_nan(value) -> float:
    return float(value) if _is_number(value) else math.nan  # matplotlib leaves NaN bars/points out


def _fmt(value, decimals: int = 1) -> str:
    return f"{value:.{decimals}f}" if _is_number(value) and math.isfinite(value) else MISSING


def _delta(before, after) -> str:
    """Signed change with one decimal, "−" for a drop (the typographic minus reads better than "-")."""
    if not (_is_number(before) and _is_number(after)) or not math.isfinite(after - before):
        return MISSING
    change = round(after - before, 1)
    if change == 0:
        return "±0.0"
    return f"+{change:.1f}" if change > 0 else f"−{-change:.1f}"


def _count(value) -> str:
    return str(int(value)) if _is_number(value) and math.isfinite(value) else MISSING


def _yes_no(value) -> str:
    return MISSING if value is None else ("yes" if value else "no")


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _table_row(cells) -> str:
    # A "|" inside a cell (a task name, a title) would split the column.
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"


def _write_atomic(path: Path, content: str | bytes) -> None:
    """Write to a temp file beside `path`, then rename over it: a crash leaves the old file or the new one."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, 0o644)  # mkstemp makes it owner-only; the report is for whoever reads the run
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
