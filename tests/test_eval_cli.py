"""`python -m redone_fast.eval`: the bundled tiny model scored end to end (JSON schema, known SNS score), input
errors (exit 2, one line naming the path, no traceback), and SNS-Bench with the benchmark's metrics when the
data is present (../shared/sns-bench or REDONE_SNS_BENCH; never copied into the repository)."""
import json
import math

import pytest

from redone_fast.data.sns_bench import ENV_VAR, SNS_BENCH_FILES, default_root
from redone_fast.eval import main
from redone_fast.tiny import data_path, model_path

TINY_SNS, TINY_GENERAL = 37.5, 97.7  # greedy, bundled eval split (tests/test_pipeline_scoring.py has per task)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_bundled_eval_writes_the_json_schema_and_a_table(tmp_path, capsys):
    out = tmp_path / "scores" / "tiny.json"
    code = main(["--model", str(model_path()), "--out", str(out), "--max-new-tokens", "40", "--batch-prompts", "200",
                 "--device", "cpu"])
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result) >= {"model", "bundled", "sns_bench", "seconds"}
    assert result["model"] == str(model_path()) and result["sns_bench"] is None and result["seconds"] > 0
    bundled = result["bundled"]
    assert set(bundled) == {"sns", "general", "tasks", "counts", "too_long"}
    assert bundled["sns"] == pytest.approx(TINY_SNS, abs=0.5)
    assert bundled["general"] == pytest.approx(TINY_GENERAL, abs=0.5)
    assert sum(bundled["counts"].values()) == 800 and len(bundled["tasks"]) == 8 and bundled["too_long"] == 0
    assert result["config"]["max_new_tokens"] == 40
    printed = capsys.readouterr().out
    assert "note_taxonomy" in printed and "SNS (macro mean) 37.5" in printed


def test_missing_model_folder_exits_2_naming_the_path(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    assert main(["--model", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err


def test_malformed_eval_file_exits_2_naming_file_and_line(tmp_path, capsys):
    good = data_path("eval").read_text(encoding="utf-8").splitlines()[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good + "\n" + '{"task": "copying", "prompt": "x"}\n', encoding="utf-8")  # line 2: no answer
    assert main(["--model", str(model_path()), "--eval-files", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2" in err and "answer" in err and "Traceback" not in err


def test_a_missing_sns_bench_folder_exits_2(tmp_path, capsys):
    assert main(["--model", str(model_path()), "--sns-bench", str(tmp_path / "nothing-here")]) == 2
    assert str(tmp_path / "nothing-here") in capsys.readouterr().err


def test_sns_bench_scores_every_file_with_its_own_metric(tmp_path, capsys):
    root = default_root()
    if not root.is_dir():
        pytest.skip(f"SNS-Bench data not found at {root}: set {ENV_VAR} to the benchmark's data/ folder "
                    "(github.com/HC-Guo/SNS-Bench) to run this test")
    out = tmp_path / "bench.json"
    code = main(["--model", str(model_path()), "--sns-bench", str(root), "--sns-bench-limit", "3",
                 "--max-samples-per-task", "5", "--out", str(out), "--device", "cpu"])
    assert code == 0
    result = json.loads(out.read_text())
    assert sum(result["bundled"]["counts"].values()) == 8 * 5
    bench = result["sns_bench"]
    assert list(bench["files"]) == list(SNS_BENCH_FILES)
    for stem, row in bench["files"].items():
        assert set(row) == {"score", "metric", "items", "too_long", "stand_in"}
        assert 0.0 <= row["score"] <= 100.0 and row["items"] == 3 and 0 <= row["too_long"] <= 3, stem
        assert row["metric"]
        assert (row["stand_in"] is not None) == (stem == "Note-QueryGen")
    assert bench["mean"] == pytest.approx(sum(r["score"] for r in bench["files"].values()) / 12)
    assert bench["too_long"] == sum(r["too_long"] for r in bench["files"].values())
    # The tiny model has 512 positions: some SNS-Bench notes do not fit (Note-Taxonomy-multiple's first three).
    assert bench["too_long"] > 0 and bench["files"]["Note-Taxonomy-multiple"]["too_long"] == 3
    assert not math.isnan(bench["mean"])
    printed = capsys.readouterr().out
    assert "Note-QueryGen" in printed and "do not fit" in printed and "stand-in" in printed
