"""The run report (redone_fast/pipeline/report.py): report.json schema and numbers, plots, markdown."""
import copy
import json
import re

import pytest
from matplotlib.image import imread

from redone_fast.pipeline import report as run_report
from redone_fast.pipeline.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_PLOTS = {"reward_per_step.png", "task_scores.png", "sns_vs_general.png"}
DOMAINS = {"note_taxonomy": "sns", "query_correction": "sns", "arithmetic": "general", "translation": "general"}


def _scores(sns, general, tasks):
    return {"sns": sns, "general": general, "tasks": tasks, "counts": {name: 100 for name in tasks}}


def _state():
    return {
        "recipe": "redone",
        "stages": {
            "stage1": {"kind": "rl", "dir": "stage1", "done": True, "title": "Exploratory Learning (DAPO)"},
            "stage2": {"kind": "sft", "dir": "stage2", "done": True, "title": "Targeted Fine-Tuning", "skipped": False},
            "stage3": {"kind": "rl", "dir": "stage3", "done": True, "title": "Refinement Learning (DAPO)"},
        },
        "scores": {  # deliberately given out of pipeline order: the report orders them
            "stage1": _scores(40.0, 71.0, {"note_taxonomy": 55.0, "query_correction": 25.0, "arithmetic": 73.0,
                                           "translation": 69.0}),
            "base": _scores(32.0, 71.7, {"note_taxonomy": 47.0, "query_correction": 17.0, "arithmetic": 74.0,
                                         "translation": 69.4}),
            "stage2": _scores(43.5, 70.2, {"note_taxonomy": 58.0, "query_correction": 29.0, "arithmetic": 72.0,
                                           "translation": 68.4}),
            "stage3": _scores(45.1, 70.9, {"note_taxonomy": 60.2, "query_correction": 30.0, "arithmetic": 72.5,
                                           "translation": 69.3}),
        },
        "seconds": {"eval_base": 1.6, "stage1": 180.2, "diagnosis": 20.0, "soft_labels": 15.0, "stage2": 60.0,
                    "stage3": 170.0},
        "domains": dict(DOMAINS),
        "notes": ["stage 3 used 2 rollouts per prompt"],
    }


def _write_jsonl(path, rows, torn_tail=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row) + "\n" for row in rows)
    path.write_text(text + (torn_tail or ""), encoding="utf-8")


def _rl_rows(stage, rewards):
    return [{"step": step, "stage": stage, "loss": 0.03, "reward": r, "reward/sns": r - 0.1, "reward/general": r + 0.1,
             "rollout": 2.0, "accuracy": 0.2} for step, r in enumerate(rewards, start=1)]


def _make_run(run_dir):
    _write_jsonl(run_dir / "stage1" / "metrics.jsonl", _rl_rows("stage1", [0.30, 0.35, 0.41]))
    sft = [{"step": step, "stage": "stage2", "loss": 2.0 - 0.2 * step, "lr": 1e-5} for step in range(1, 6)]
    sft[1]["eval_loss"], sft[4]["eval_loss"] = 1.7, 1.1
    _write_jsonl(run_dir / "stage2" / "metrics.jsonl", sft)
    # A crash mid-write leaves a torn last line: it must be skipped, not raised on.
    _write_jsonl(run_dir / "stage3" / "metrics.jsonl", _rl_rows("stage3", [0.5, 0.55]),
                 torn_tail='{"step": 3, "stage": "stage3", "rew')
    capability_map = {
        "tasks": {
            "arithmetic": {"domain": "general", "score": 73.0, "mean_pass_rate": 0.72, "pool_samples": 200,
                           "low_pass_samples": 20, "weak": False, "bucket_samples": 40, "weight": 1.0},
            "note_taxonomy": {"domain": "sns", "score": 55.0, "mean_pass_rate": 0.41, "pool_samples": 400,
                              "low_pass_samples": 150, "weak": True, "bucket_samples": 300, "weight": 1.5},
        },
        "bucket_size": 340, "rule": {"pass_rate_below": 0.5}}
    (run_dir / "diagnosis").mkdir()
    (run_dir / "diagnosis" / "capability_map.json").write_text(json.dumps(capability_map), encoding="utf-8")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    _make_run(run_dir)
    state = _state()
    returned = write_report(run_dir, state)
    return run_dir, state, returned


def _linked_plots(markdown):
    return re.findall(r"!\[[^\]]*\]\((plots/[^)]+)\)", markdown)


def _assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC), path
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def test_report_json_schema_and_numbers(full_run):
    run_dir, state, returned = full_run
    on_disk = json.loads((run_dir / "report.json").read_text())
    assert on_disk == returned
    assert set(on_disk) == {"recipe", "scores", "seconds", "stages"}
    assert on_disk["recipe"] == "redone"
    assert list(on_disk["scores"]) == ["base", "stage1", "stage2", "stage3"]  # pipeline order, not the state's
    for key, entry in on_disk["scores"].items():
        assert set(entry) == {"sns", "general", "tasks"}  # "counts" dropped
        assert entry["sns"] == state["scores"][key]["sns"]
        assert entry["general"] == state["scores"][key]["general"]
        assert entry["tasks"] == state["scores"][key]["tasks"]
    assert on_disk["seconds"] == state["seconds"]
    assert on_disk["stages"]["stage2"] == {"kind": "sft", "title": "Targeted Fine-Tuning", "done": True,
                                           "skipped": False}
    assert on_disk["stages"]["stage1"]["skipped"] is False  # default when the state leaves it out


def test_plots_are_valid_pngs(full_run):
    run_dir, _, _ = full_run
    assert {path.name for path in (run_dir / "plots").iterdir()} == ALL_PLOTS  # and no temp files left
    for name in ALL_PLOTS:
        _assert_png(run_dir / "plots" / name)


def test_torn_metrics_line_is_skipped(full_run):
    run_dir, _, _ = full_run
    rows = run_report.read_stage_metrics(run_dir / "stage3")
    assert [row["step"] for row in rows] == [1, 2]
    assert run_report.read_stage_metrics(run_dir / "no_such_stage") == []


def test_training_curves_figure_content(full_run):
    run_dir, state, _ = full_run
    metrics = {key: run_report.read_stage_metrics(run_dir / key) for key in state["stages"]}
    figure = run_report.plot_training_curves(state["stages"], metrics)
    rl_axes, sft_axes = figure.axes
    labels = [line.get_label() for line in rl_axes.get_lines()]
    assert labels == ["stage1 reward", "stage1 reward/sns", "stage1 reward/general",
                      "stage3 reward", "stage3 reward/sns", "stage3 reward/general"]
    stage1_reward = rl_axes.get_lines()[0]
    assert list(stage1_reward.get_xdata()) == [1, 2, 3]
    assert list(stage1_reward.get_ydata()) == pytest.approx([0.30, 0.35, 0.41])
    assert rl_axes.get_lines()[1].get_linestyle() == "--"  # the per-domain rewards are the dashed ones
    sft_lines = {line.get_label(): line for line in sft_axes.get_lines()}
    assert set(sft_lines) == {"stage2 loss", "stage2 eval_loss"}
    assert list(sft_lines["stage2 eval_loss"].get_xdata()) == [2, 5]  # only the rows that logged it


def test_task_scores_sns_first(full_run):
    _, state, returned = full_run
    figure = run_report.plot_task_scores(returned["scores"], state["domains"])
    ax = figure.axes[0]
    assert [label.get_text() for label in ax.get_xticklabels()] == [
        "note_taxonomy (sns)", "query_correction (sns)", "arithmetic (general)", "translation (general)"]
    assert len(ax.patches) == 4 * 4  # one bar per task and evaluated stage
    assert [patch.get_height() for patch in ax.containers[0]] == [47.0, 17.0, 74.0, 69.4]  # base bars


def test_markdown_tables_and_links(full_run):
    run_dir, _, _ = full_run
    markdown = (run_dir / "report.md").read_text(encoding="utf-8")
    assert markdown.startswith("# Run report: redone\n")
    assert "**Status:** stage1 done · stage2 done · stage3 done" in markdown
    assert "SNS 32.0 → 45.1 (+13.1), general 71.7 → 70.9 (−0.8)" in markdown
    assert "|  | domain | base | stage1 | stage2 | stage3 | Δ stage3 vs base |" in markdown
    assert "| **SNS average** | sns | 32.0 | 40.0 | 43.5 | 45.1 | +13.1 |" in markdown
    assert "| **General average** | general | 71.7 | 71.0 | 70.2 | 70.9 | −0.8 |" in markdown
    assert "| query_correction | sns | 17.0 | 25.0 | 29.0 | 30.0 | +13.0 |" in markdown
    assert "| translation | general | 69.4 | 69.0 | 68.4 | 69.3 | −0.1 |" in markdown
    # SNS tasks come before general ones in the table
    assert markdown.index("| query_correction |") < markdown.index("| arithmetic |")
    assert "| stage1 | 180.2 | 0:03:00 |" in markdown
    assert "| **total** | **446.8** | **0:07:27** |" in markdown
    assert "| note_taxonomy | sns | 55.0 | 0.41 | 400 | 150 | yes | 300 | 1.50 |" in markdown
    assert "Failure bucket: 340 samples." in markdown
    assert "- stage 3 used 2 rollouts per prompt" in markdown
    linked = _linked_plots(markdown)
    assert {link.removeprefix("plots/") for link in linked} == ALL_PLOTS
    assert all((run_dir / link).is_file() for link in linked)


def test_skipped_stage_is_reported(tmp_path):
    state = _state()
    state["stages"]["stage2"].update(skipped=True, done=True)
    del state["scores"]["stage2"]
    state["notes"] = ["stage 2 skipped: the failure bucket was empty"]
    _write_jsonl(tmp_path / "stage1" / "metrics.jsonl", _rl_rows("stage1", [0.3, 0.4]))
    # A leftover stage2 log must not be plotted for a skipped stage.
    _write_jsonl(tmp_path / "stage2" / "metrics.jsonl", [{"step": 1, "stage": "stage2", "loss": 1.0}])
    state["stages"]["stage3"]["done"] = False
    _write_jsonl(tmp_path / "stage3" / "metrics.jsonl", _rl_rows("stage3", [0.5, 0.5, 0.6, 0.6]))
    del state["scores"]["stage3"]

    returned = write_report(tmp_path, state)
    assert returned["stages"]["stage2"]["skipped"] is True
    assert list(returned["scores"]) == ["base", "stage1"]
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "**Status:** stage1 done · stage2 skipped · stage3 started (last step 4)" in markdown
    assert "| stage2 | Targeted Fine-Tuning | sft | skipped | — |" in markdown
    assert "- stage 2 skipped: the failure bucket was empty" in markdown
    assert "SNS 32.0 → 40.0 (+8.0), general 71.7 → 71.0 (−0.7)** (base → stage1)" in markdown
    metrics = {key: run_report.read_stage_metrics(tmp_path / key) for key in ("stage1", "stage3")}
    figure = run_report.plot_training_curves(state["stages"], metrics)
    assert len(figure.axes) == 1  # RL panel only: no SFT curve from the skipped stage


def test_base_only_without_metrics(tmp_path):
    state = _state()
    state["scores"] = {"base": state["scores"]["base"]}
    state["seconds"] = {"eval_base": 1.6}
    state.pop("notes")
    for stage in state["stages"].values():
        stage["done"] = False

    returned = write_report(tmp_path, state)
    assert list(returned["scores"]) == ["base"]
    assert json.loads((tmp_path / "report.json").read_text()) == returned
    assert not (tmp_path / "plots" / "reward_per_step.png").exists()
    _assert_png(tmp_path / "plots" / "sns_vs_general.png")
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "**Status:** stage1 pending · stage2 pending · stage3 pending" in markdown
    assert "**SNS 32.0, general 71.7** (base)" in markdown
    assert "| **SNS average** | sns | 32.0 |\n" in markdown  # no Δ column with nothing to compare
    assert "Δ" not in markdown
    assert "reward_per_step.png" not in markdown
    assert "Capability map" not in markdown and "## Notes" not in markdown


def test_nothing_evaluated_yet(tmp_path):
    returned = write_report(tmp_path, {"recipe": "sft-only", "stages": {}, "scores": {}, "seconds": {}})
    assert returned == {"recipe": "sft-only", "scores": {}, "seconds": {}, "stages": {}}
    assert "Not evaluated yet" in (tmp_path / "report.md").read_text(encoding="utf-8")
    assert not (tmp_path / "plots").exists()


def test_rewrite_is_clean_and_deterministic(tmp_path):
    _make_run(tmp_path)
    state = _state()
    write_report(tmp_path, state)
    first = {path.relative_to(tmp_path): path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    write_report(tmp_path, copy.deepcopy(state))
    second = {path.relative_to(tmp_path): path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    assert first == second  # same files (no temp files left behind), byte for byte

    # Later, with less to show (the metrics gone): the stale reward plot goes and is no longer linked.
    for stage in ("stage1", "stage2", "stage3"):
        (tmp_path / stage / "metrics.jsonl").unlink()
    write_report(tmp_path, state)
    assert not (tmp_path / "plots" / "reward_per_step.png").exists()
    assert "reward_per_step.png" not in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_failed_write_keeps_previous_report(tmp_path, monkeypatch):
    state = _state()
    state["scores"] = {"base": state["scores"]["base"]}
    write_report(tmp_path, state)
    before = (tmp_path / "report.md").read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(run_report.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_report(tmp_path, _state())
    assert (tmp_path / "report.md").read_bytes() == before
    assert not [path for path in tmp_path.rglob("*.tmp")]


def test_headroom_table_per_stage(tmp_path):
    state = _state()

    def row(p1, pk, sig):
        return {"k": 8, "pass_at_1": p1, "pass_at_k": pk, "signal": sig, "greedy": 0, "entropy": 0}

    state["headroom"] = {"stage1": {"note_taxonomy": row(60.0, 80.0, 30.0)},
                         "base": {"note_taxonomy": row(30.4, 90.0, 75.0), "arithmetic": row(99.0, 100.0, 2.0)}}
    write_report(tmp_path, state)
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## Sampling headroom (temperature 1, k = 8)" in markdown
    assert "| task | domain | base | stage1 |" in markdown
    assert "| note_taxonomy | sns | 30 / 90 / 75 | 60 / 80 / 30 |" in markdown
    assert "| arithmetic | general | 99 / 100 / 2 | — |" in markdown
    del state["headroom"]
    write_report(tmp_path, state)
    assert "Sampling headroom" not in (tmp_path / "report.md").read_text(encoding="utf-8")
