"""`python -m redone_fast.train` end to end on the bundled tiny model, shortened: the run folder, the report,
a crash inside stage 3 resumed by the next run (stages 1 and 2 are not run again), the baselines' recipes,
and bad input (missing file, unknown task or reward, an empty failure bucket, stages out of order)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from redone_fast.pipeline.config import preset
from redone_fast.tiny import data_path

# Every stage and step shortened: a whole redone run takes about a minute on two cores.
SHORT = ["--rl-from-base.rollout-steps", "2", "--rl-from-base.prompts-per-step", "8",
         "--rl-from-base.samples-per-prompt", "4", "--rl-from-base.loop.checkpoint-every", "1",
         "--rl-after-sft.rollout-steps", "2", "--rl-after-sft.prompts-per-step", "8",
         "--rl-after-sft.samples-per-prompt", "4", "--rl-after-sft.loop.checkpoint-every", "1",
         "--sft.max-steps", "3", "--sft.eval-max-samples", "16",
         "--diagnosis.max-pool-per-task", "8", "--diagnosis.k", "2",
         "--hard.max-pool-per-task", "8", "--hard.k", "2",
         "--soft-labels.max-prompts", "8", "--soft-labels.k", "2",
         "--evaluation.max-samples-per-task", "12", "--evaluation.max-new-tokens", "24"]


def train(args: list[str], *, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "redone_fast.train", *args], capture_output=True, text=True,
                          env=env, timeout=900)


def metric_steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def crashed_then_resumed(tmp_path_factory):
    """A redone run SIGKILLed right after stage 3's first step, then the same command again."""
    run_dir = tmp_path_factory.mktemp("pipeline") / "run"
    first = train(["--run-dir", str(run_dir), *SHORT], env_extra={"REDONE_FAST_CRASH_AFTER_STEP": "stage3:1"})
    state_after_crash = json.loads((run_dir / "pipeline_state.json").read_text())
    stage_metrics = {key: (run_dir / key / "metrics.jsonl").read_text() for key in ("stage1", "stage2")}
    second = train(["--run-dir", str(run_dir), *SHORT])
    return run_dir, first, state_after_crash, stage_metrics, second


def test_crash_in_stage3_resumes_there(crashed_then_resumed):
    run_dir, first, state, stage_metrics, second = crashed_then_resumed
    assert first.returncode == -9, first.stderr[-2000:]  # SIGKILL: no clean exit
    assert "stage2" in state["done"] and "hard_subset" in state["done"] and "stage3" not in state["done"]
    assert second.returncode == 0, second.stderr[-3000:]
    assert "[pipeline] stage1 ..." not in second.stdout and "[pipeline] stage2 ..." not in second.stdout
    assert "[pipeline] stage3 ..." in second.stdout
    for key, text in stage_metrics.items():  # finished stages untouched by the second run
        assert (run_dir / key / "metrics.jsonl").read_text() == text
    result = json.loads((run_dir / "stage3" / "stage3_result.json").read_text())
    assert result["resumed_from"] == 1 and result["status"] == "finished" and result["step"] == 2
    assert metric_steps(run_dir / "stage3" / "metrics.jsonl") == [1, 2]  # each step logged once


def test_run_folder_and_report(crashed_then_resumed):
    run_dir = crashed_then_resumed[0]
    state = json.loads((run_dir / "pipeline_state.json").read_text())
    assert state["status"] == "finished"
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["scores"]) == {"base", "stage1", "stage2", "stage3"}
    for scores in report["scores"].values():
        assert set(scores) == {"sns", "general", "tasks"}
        assert 0 <= scores["sns"] <= 100 and 0 <= scores["general"] <= 100
        assert set(scores["tasks"]) == {"note_taxonomy", "hashtag_choice", "query_relevance", "entity_extraction",
                                        "slang_translation", "arithmetic", "copying", "simple_qa"}
    assert report["scores"]["base"]["tasks"]["simple_qa"] > 50  # the tiny base model answers most of these
    assert {"stage1", "stage2", "stage3", "diagnosis", "soft_labels", "eval:base"} <= set(report["seconds"])
    for key in ("stage1", "stage2", "stage3"):  # one HF export per stage, loadable
        export = run_dir / key / "export"
        assert (export / "model.safetensors").is_file() and (export / "config.json").is_file()
        assert json.loads((run_dir / key / f"{key}_config.json").read_text())["model"] == (
            str(run_dir / "stage1" / "export") if key == "stage2" else
            str(run_dir / "stage2" / "export") if key == "stage3" else state["outputs"]["eval:base"]["model"])
    cmap = json.loads((run_dir / "diagnosis" / "capability_map.json").read_text())
    assert cmap["bucket_size"] == len((run_dir / "diagnosis" / "failure_bucket.jsonl").read_text().splitlines()) > 0
    assert all(row["domain"] == "sns" for row in cmap["tasks"].values() if row["pool_samples"])
    soft = (run_dir / "soft_labels" / "general.jsonl").read_text().splitlines()
    assert len(soft) == 8
    stage2_cfg = json.loads((run_dir / "stage2" / "stage2_config.json").read_text())
    assert stage2_cfg["general_files"] == [str(run_dir / "soft_labels" / "general.jsonl")]
    assert stage2_cfg["general_ratio"] == pytest.approx(preset("tiny").sft.general_ratio) == pytest.approx(0.35)
    markdown = (run_dir / "report.md").read_text()
    assert "| **SNS average** |" in markdown and "Capability map" in markdown
    for name in ("reward_per_step", "task_scores", "sns_vs_general"):
        assert (run_dir / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{name}.png" in markdown
    # the resolved config and the stage-3 data: hard SNS prompts only, rationale share raised
    assert json.loads((run_dir / "pipeline_config.json").read_text())["rl_after_sft"]["rollout_steps"] == 2
    hard = [json.loads(line) for line in (run_dir / "stage3" / "data" / "sns.jsonl").read_text().splitlines()]
    assert hard
    by_task = {}
    for record in hard:
        by_task.setdefault(record["task"], []).append("rationale" in record)
    # raised per task; a task whose hard prompts carry no rationale at all stays as it is
    assert all(sum(flags) / len(flags) >= 0.57 for flags in by_task.values() if any(flags)), by_task


def test_completed_run_is_not_run_again(crashed_then_resumed):
    run_dir = crashed_then_resumed[0]
    before = (run_dir / "pipeline_state.json").read_text()
    again = train(["--run-dir", str(run_dir), *SHORT])
    assert again.returncode == 0, again.stderr[-2000:]
    assert "[pipeline] " in again.stdout and " ..." not in again.stdout  # no step ran
    assert json.loads(before)["done"] == json.loads((run_dir / "pipeline_state.json").read_text())["done"]


def test_changed_config_is_refused(crashed_then_resumed):
    run_dir = crashed_then_resumed[0]
    changed = train(["--run-dir", str(run_dir), *SHORT, "--rl-from-base.optim.lr", "0.1"])
    assert changed.returncode == 2
    assert "rl_from_base.optim.lr" in changed.stderr and "--allow-config-change" in changed.stderr


@pytest.mark.parametrize("recipe, stages", [("sft-only", ["stage1"]), ("sft-then-rl", ["stage1", "stage2"])])
def test_baseline_recipes(tmp_path, recipe, stages):
    result = train(["--recipe", recipe, "--run-dir", str(tmp_path / recipe), *SHORT])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / recipe / "report.json").read_text())
    assert list(report["scores"]) == ["base", *stages]
    assert [report["stages"][k]["kind"] for k in stages] == (["sft"] if recipe == "sft-only" else ["sft", "rl"])
    sft_cfg = json.loads((tmp_path / recipe / "stage1" / "stage1_config.json").read_text())
    assert sft_cfg["train_files"] == [str(tmp_path / recipe / "stage1" / "data" / "sns.jsonl")]  # the whole pool
    assert sft_cfg["general_files"] == [str(tmp_path / recipe / "stage1" / "data" / "general.jsonl")]
    if recipe == "sft-then-rl":
        rl_cfg = json.loads((tmp_path / recipe / "stage2" / "stage2_config.json").read_text())
        assert rl_cfg["model"] == str(tmp_path / recipe / "stage1" / "export")
        # RL after SFT runs under stage 3's settings, as redone's stage 3 does (the tiny preset's rates differ)
        assert rl_cfg["optim"]["lr"] == preset("tiny").rl_after_sft.optim.lr != preset("tiny").rl_from_base.optim.lr
        assert rl_cfg["rollout_steps"] == 2


def test_empty_failure_bucket_skips_stage2(tmp_path):
    run_dir = tmp_path / "run"
    args = ["--run-dir", str(run_dir), *SHORT, "--rl-from-base.rollout-steps", "1",
            "--rl-after-sft.rollout-steps", "1",
            "--diagnosis.low-pass-below", "0", "--diagnosis.weak-task-below", "0"]
    result = train(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stage2 skipped: the failure bucket is empty" in result.stdout
    report = json.loads((run_dir / "report.json").read_text())
    assert report["stages"]["stage2"]["skipped"] and "stage2" not in report["scores"]
    assert "stage3" in report["scores"]
    stage3_cfg = json.loads((run_dir / "stage3" / "stage3_config.json").read_text())
    assert stage3_cfg["model"] == str(run_dir / "stage1" / "export")  # from the stage-1 model
    assert "skipped" in (run_dir / "report.md").read_text()


def write_lines(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def good_records(n: int = 3) -> list[dict]:
    return [json.loads(line) for line in data_path("eval").read_text().splitlines()[:n]]


def test_missing_data_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    result = train(["--run-dir", str(tmp_path / "run"), "--rl-files", str(missing)])
    assert result.returncode == 2 and f"{missing}: no such data file" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "stage1").exists()  # nothing trained


def test_unknown_task_and_reward_name_the_line(tmp_path):
    records = good_records()
    records[1]["task"] = "no_such_task"
    bad = write_lines(tmp_path / "bad_task.jsonl", records)
    result = train(["--run-dir", str(tmp_path / "a"), "--eval-files", str(bad)])
    assert result.returncode == 2 and f"{bad}:2" in result.stderr and "no_such_task" in result.stderr
    records = good_records()
    records[2]["reward"] = {"name": "no_such_reward"}
    bad = write_lines(tmp_path / "bad_reward.jsonl", records)
    result = train(["--run-dir", str(tmp_path / "b"), "--sft-files", str(bad)])
    assert result.returncode == 2 and f"{bad}:3" in result.stderr and "no_such_reward" in result.stderr


def test_missing_model_and_stages_out_of_order(tmp_path):
    result = train(["--run-dir", str(tmp_path / "a"), "--model", str(tmp_path / "no_model")])
    assert result.returncode == 2 and str(tmp_path / "no_model") in result.stderr
    result = train(["--run-dir", str(tmp_path / "b"), "--stages", "stage3"])
    assert result.returncode == 2 and "earlier steps are not done" in result.stderr
    result = train(["--run-dir", str(tmp_path / "c"), "--stages", "stage9"])
    assert result.returncode == 2 and "stage9 not in recipe 'redone'" in result.stderr


def test_help_documents_every_field():
    result = train(["--help"])
    assert result.returncode == 0
    for option in ("--rl-from-base.optim.lr", "--sft.general-ratio", "--rl-after-sft.eps-high",
                   "--diagnosis.rare-floor", "--soft-labels.judge", "--config", "--hard.rationale-share",
                   "--evaluation.max-new-tokens", "--recipe", "--preset", "--stages", "--run-dir", "--sns-bench"):
        assert option in result.stdout, option
    assert "sft-then-rl" in result.stdout and "qwen3-4b" in result.stdout


def test_pipeline_under_torchrun_two_processes(tmp_path):
    """Two gloo ranks: training sharded by FSDP2, generation split over the ranks and gathered; rank 0
    writes the files. Greedy eval scores do not depend on the number of ranks."""
    run_dir = tmp_path / "run"
    args = ["--run-dir", str(run_dir), *SHORT, "--rl-from-base.rollout-steps", "1", "--rl-after-sft.rollout-steps", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "redone_fast.train", *args], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert list(report["scores"]) == ["base", "stage1", "stage2", "stage3"]
    assert json.loads((run_dir / "stage3" / "stage3_result.json").read_text())["world_size"] == 2
    single = subprocess.run([sys.executable, "-m", "redone_fast.train", "--run-dir", str(tmp_path / "one"), *SHORT,
                             "--stages", "stage1", "--rl-from-base.rollout-steps", "1"],
                            capture_output=True, text=True, env=env, timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]
    base_one = json.loads((tmp_path / "one" / "report.json").read_text())["scores"]["base"]
    assert base_one["tasks"] == pytest.approx(report["scores"]["base"]["tasks"])
    assert base_one["sns"] == pytest.approx(report["scores"]["base"]["sns"])
