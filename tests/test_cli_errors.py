"""Bad input to every CLI: one `error:` line naming the file:line, field or path, status 2, no traceback.

Each case runs the real command in a subprocess (the README's table of bad inputs lists the same cases).
SIGTERM outside the loop and `--debug` are checked in-process through redone_fast.errors.run_cli.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from redone_fast.errors import ConfigError, describe_os_error, run_cli
from redone_fast.tiny import ASSETS

GOOD = json.loads((ASSETS / "data" / "sft_pool.jsonl").read_text(encoding="utf-8").splitlines()[0])


def _write_inputs(folder: Path) -> None:
    (folder / "latin1.jsonl").write_bytes((json.dumps({**GOOD, "prompt": "caf\u00e9"}, ensure_ascii=False)
                                           + "\n").encode("latin-1"))
    (folder / "utf16.jsonl").write_text(json.dumps(GOOD) + "\n", encoding="utf-16")
    (folder / "nested.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    bad_regex = {"name": "regex", "params": {"pattern": "("}}
    (folder / "bad_regex.jsonl").write_text(json.dumps({**GOOD, "reward": bad_regex}))
    (folder / "reward_name_list.jsonl").write_text(json.dumps({**GOOD, "reward": {"name": ["exact_match"]}}))
    (folder / "reward_list.jsonl").write_text(json.dumps({**GOOD, "reward": ["exact_match"]}))
    code = {"name": "code_exec", "params": {"expected_output": "1", "timeout_s": 1e9}}
    (folder / "long_timeout.jsonl").write_text(json.dumps({**GOOD, "reward": code}))
    (folder / "a_file").write_text("not a folder\n")
    (folder / "bad_choice.yaml").write_text("overlong: cut\n")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "REDONE_DEBUG"}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


SFT = ["redone_fast.stages.sft", "--max-steps", "1", "--no-export"]
CASES = {  # name: (arguments, what the one line must say)
    "not-utf8": (SFT + ["--run-dir", "r", "--train-files", "latin1.jsonl"], "latin1.jsonl:1: not UTF-8 (byte 0xe9"),
    "utf16": (SFT + ["--run-dir", "r", "--train-files", "utf16.jsonl"], "utf16.jsonl: the file is UTF-16"),
    "deep-nesting": (SFT + ["--run-dir", "r", "--train-files", "nested.jsonl"],
                     "nested.jsonl:1: JSON nested too deeply"),
    "bad-regex": (SFT + ["--run-dir", "r", "--train-files", "bad_regex.jsonl"], "bad_regex.jsonl:1: reward 'regex'"),
    "unhashable-reward": (SFT + ["--run-dir", "r", "--train-files", "reward_name_list.jsonl"],
                          "reward_name_list.jsonl:1: reward name must be a string"),
    "reward-a-list": (SFT + ["--run-dir", "r", "--train-files", "reward_list.jsonl"],
                      "reward_list.jsonl:1: reward must be a name or an object"),
    "code-exec-timeout": (SFT + ["--run-dir", "r", "--train-files", "long_timeout.jsonl"],
                          "long_timeout.jsonl:1: reward 'code_exec' parameter 'timeout_s'"),
    "run-dir-is-a-file": (SFT + ["--run-dir", "a_file"], "exists and is not a folder: a_file"),
    "bad-dtype": (SFT + ["--run-dir", "r", "--parallel.param-dtype", "float7"],
                  "invalid choice 'float7' for argument '--parallel.param-dtype'"),
    "bad-choice-file": (SFT + ["--run-dir", "r", "--config", "bad_choice.yaml"],
                        "--config bad_choice.yaml: overlong: must be one of truncate, drop; got 'cut'"),
    "bad-lr": (SFT + ["--run-dir", "r", "--optim.lr", "-1"], "optimizer settings out of range: lr=-1.0"),
    "rl-paper-without-model": (["redone_fast.stages.rl", "--run-dir", "r", "--preset", "paper"],
                               "model: no model folder given (--model DIR)"),
    "sft-paper-without-files": (["redone_fast.stages.sft", "--run-dir", "r", "--preset", "paper", "--model",
                                 str(ASSETS / "model")], "train_files: no data files given"),
    "rl-missing-model": (["redone_fast.stages.rl", "--run-dir", "r", "--model", "nope"],
                         "model folder nope: does not exist"),
    "train-bad-data": (["redone_fast.train", "--run-dir", "r", "--rl-files", "utf16.jsonl"],
                       "utf16.jsonl: the file is UTF-16"),
    "eval-bad-data": (["redone_fast.eval", "--model", str(ASSETS / "model"), "--eval-files", "nested.jsonl"],
                      "nested.jsonl:1: JSON nested too deeply"),
    "corpus-out-is-a-file": (["redone_fast.data.corpus", "--out", "a_file/sub"], "a_file/sub"),
    "build-bad-value": (["redone_fast.tiny.build", "--out", "m", "--train.lr", "abc"],
                        "Error parsing --train.lr: could not convert string to float: 'abc'"),
}
# The same bad files through the pipeline, each in the role of one of its three inputs, and bad settings of
# its later stages: all fail before the first step runs (no run folder is even made).
TRAIN = ["redone_fast.train", "--run-dir", "r"]
BAD_FILES = {"not-utf8": ("latin1.jsonl", "latin1.jsonl:1: not UTF-8 (byte 0xe9"),
             "utf16": ("utf16.jsonl", "utf16.jsonl: the file is UTF-16"),
             "deep-nesting": ("nested.jsonl", "nested.jsonl:1: JSON nested too deeply"),
             "bad-regex": ("bad_regex.jsonl", "bad_regex.jsonl:1: reward 'regex'"),
             "unhashable-reward": ("reward_name_list.jsonl", "reward_name_list.jsonl:1: reward name must be a string")}
for index, (name, (file, expected)) in enumerate(BAD_FILES.items()):  # each file once, each role in turn
    role = ("rl", "sft", "eval")[index % 3]
    CASES[f"train-{role}-files-{name}"] = (TRAIN + [f"--{role}-files", file], expected)
CASES.update({
    "train-sft-dtype": (TRAIN + ["--sft.parallel.param-dtype", "float7"],
                        "invalid choice 'float7' for argument '--sft.parallel.param-dtype'"),
    "train-rl-after-sft-choice": (TRAIN + ["--rl-after-sft.filter-metric", "nope"],
                                  "invalid choice 'nope' for argument '--rl-after-sft.filter-metric'"),
    "train-rl-after-sft-range": (TRAIN + ["--rl-after-sft.loop.checkpoint-every", "0"],
                                 "rl_after_sft: loop.checkpoint_every: must be >= 1, got 0"),
    "train-rl-from-base-clip": (TRAIN + ["--rl-from-base.eps-low", "2"],
                                "rl_from_base: clip range out of bounds: eps_low=2.0"),
    "train-missing-model": (TRAIN + ["--model", "nope"], "model folder nope: does not exist"),
    "train-run-dir-is-a-file": (["redone_fast.train", "--run-dir", "a_file"], "exists and is not a folder: a_file"),
})


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_clear_line(name, tmp_path):
    args, expected = CASES[name]
    _write_inputs(tmp_path)
    proc = _run(args, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and expected in lines[0], proc.stderr[-2000:]
    if args[0] == "redone_fast.train" and "a_file" not in args:
        assert not (tmp_path / "r").exists()  # failed before anything was written


def test_full_disk_is_named(tmp_path):
    """ENOSPC while writing the metrics (here: a link to /dev/full) is one line naming it."""
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").symlink_to("/dev/full")
    proc = _run(SFT + ["--run-dir", "r"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no space left on device"), proc.stderr[-2000:]


@pytest.mark.skipif(shutil.which("bwrap") is None and not os.environ.get("REDONE_REQUIRE_BWRAP"),
                    reason="bubblewrap not installed (it makes a read-only folder even for root)")
def test_read_only_run_folder_is_named(tmp_path):
    """A run folder on a read-only mount (bubblewrap's --ro-bind: chmod does not stop root, CI's user)."""
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "keep.txt").write_text("kept")
    env = {k: v for k, v in os.environ.items() if k != "REDONE_DEBUG"}
    proc = subprocess.run(["bwrap", "--dev-bind", "/", "/", "--ro-bind", str(run_dir), str(run_dir),
                           sys.executable, "-m", *SFT, "--run-dir", "r"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: read-only file system: r/"), proc.stderr[-2000:]
    assert sorted(p.name for p in run_dir.iterdir()) == ["keep.txt"]


def test_describe_os_error_names_path_and_cause():
    assert describe_os_error(OSError(errno.ENOSPC, "x", "runs/a/m.jsonl")).startswith(
        "no space left on device: runs/a/m.jsonl (")
    assert describe_os_error(OSError(errno.EROFS, "x", "runs/a")) == "read-only file system: runs/a"
    assert describe_os_error(OSError(errno.EACCES, "x", "a", None, "b")) == "permission denied: a -> b"


def test_sigterm_outside_the_loop_exits_0_with_a_line(capsys):
    def loading(argv):  # SIGTERM while "loading the model": no handler of the loop is installed yet
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the command")

    before = signal.getsignal(signal.SIGTERM)
    assert run_cli(loading, []) == 0
    assert "stopped by SIGTERM" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back


def test_debug_shows_the_traceback(capsys):
    def bad(argv):
        raise ConfigError("lr: must be positive")

    assert run_cli(bad, []) == 2
    assert capsys.readouterr().err == "error: lr: must be positive\n"
    with pytest.raises(ConfigError):
        run_cli(bad, ["--debug"])


def test_a_callers_process_group_is_left_alone(dist_ctx):
    """run_cli tears down only a group its command created: an embedding trainer's group survives."""
    import torch.distributed as dist

    def bad(argv):
        raise ConfigError("lr: must be positive")

    assert run_cli(bad, []) == 2
    assert dist.is_initialized() and dist.get_world_size() == dist_ctx.world_size


def test_bugs_keep_their_traceback():
    def buggy(argv):
        raise KeyError("a bug, not an input")

    with pytest.raises(KeyError):
        run_cli(buggy, [])


def test_a_resumed_pipeline_given_a_bad_setting_keeps_its_config(tmp_path):
    """A bad flag on a re-run fails before the run folder's config.json is rewritten, so the corrected
    command resumes (rather than being refused as a changed configuration)."""
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"marker": 1}')
    proc = _run(["redone_fast.train", "--run-dir", "r", "--rl-after-sft.loop.checkpoint-every", "0"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert (run_dir / "config.json").read_text() == '{"marker": 1}'


SIGTERM_DELAYS_S = (2.5, 4.5, 7.0)  # imports / model and data loading / the training loop, on 2 cores


@pytest.mark.parametrize("delay_s", SIGTERM_DELAYS_S)
def test_sigterm_at_any_phase_exits_cleanly_and_the_rerun_finishes(tmp_path, delay_s):
    """SIGTERM wherever the command is: exit 0 with a line (or, before Python has set up the handler, the
    default death by the signal), never a traceback; the same command re-run then finishes."""
    args = ["redone_fast.stages.sft", "--run-dir", "r", "--max-steps", "6", "--loop.checkpoint-every", "2"]
    env = {k: v for k, v in os.environ.items() if k != "REDONE_DEBUG"} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(delay_s)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, -signal.SIGTERM), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    if proc.returncode == 0 and not (tmp_path / "r" / "sft_result.json").is_file():
        assert "stopped by" in err, err[-3000:]
    done = _run(args, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "r" / "sft_result.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 6
