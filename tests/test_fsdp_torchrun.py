"""The SFT stage end to end on the FSDP2 loop, in separate processes as users run it: one process (a mesh
of one) and `torchrun --nproc_per_node=2` on gloo give the same losses; a run killed with SIGKILL between
checkpoints resumes (on 1 or 2 processes, whichever saved it) and continues with the uninterrupted run's
losses; SIGTERM saves and exits 0; the export loads in transformers with the trained model's logits."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from redone_fast.loop import Checkpointer, read_metrics
from redone_fast.loop.optim import OptimConfig, build_optimizer
from redone_fast.parallelize import ParallelConfig, build_model
from redone_fast.tiny import model_path

STEPS = 6
ARGS = ["--max-steps", str(STEPS), "--batch-size", "16", "--micro-batch-tokens", "512", "--max-length", "256",
        "--loop.checkpoint-every", "3", "--eval-every", "3", "--eval-max-samples", "24", "--loop.log-every", "1"]


def _command(nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "redone_fast.stages.sft"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "redone_fast.stages.sft"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def run_sft(run_dir, nproc: int, *extra: str, env=None, expect_ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(_command(nproc) + ["--run-dir", str(run_dir), *ARGS, *extra], env=env or _env(),
                          capture_output=True, text=True, timeout=600)
    if expect_ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def losses(run_dir) -> dict[int, float]:
    by_step = {}
    for row in read_metrics(run_dir):
        if "loss" in row:
            by_step[row["step"]] = row
    return {step: row["loss"] for step, row in sorted(by_step.items())}


def summary(run_dir) -> dict:
    return json.loads((run_dir / "sft_result.json").read_text())


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    one = tmp_path_factory.mktemp("one_process")
    two = tmp_path_factory.mktemp("two_processes")
    run_sft(one, 1)
    run_sft(two, 2)
    return one, two


def test_two_processes_give_the_losses_of_one(reference_runs):
    one, two = reference_runs
    ours, theirs = losses(one), losses(two)
    assert sorted(ours) == list(range(1, STEPS + 1)) == sorted(theirs)
    for step in ours:
        assert theirs[step] == pytest.approx(ours[step], rel=1e-5, abs=1e-6), step
    assert ours[STEPS] < ours[1]  # it trains
    rows = {r["step"]: r for r in read_metrics(two) if "eval_loss" in r}
    rows_one = {r["step"]: r for r in read_metrics(one) if "eval_loss" in r}
    assert sorted(rows) == [3, 6] == sorted(rows_one)
    for step in rows:
        assert rows[step]["eval_loss"] == pytest.approx(rows_one[step]["eval_loss"], rel=1e-5)
    assert summary(one)["world_size"] == 1 and summary(two)["world_size"] == 2
    # The metrics carry what the progress line shows.
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "eta_s", "skipped_steps"} <= set(read_metrics(two)[-1])


@pytest.mark.parametrize("crash_procs, resume_procs", [(2, 1), (1, 2)], ids=["saved-by-2-resumed-by-1",
                                                                          "saved-by-1-resumed-by-2"])
def test_sigkill_between_checkpoints_then_resume_continues_exactly(reference_runs, tmp_path, crash_procs,
                                                                   resume_procs):
    reference = losses(reference_runs[0])
    crashed = run_sft(tmp_path, crash_procs, env=_env(REDONE_FAST_CRASH_AFTER_STEP="5"), expect_ok=False)
    assert crashed.returncode != 0
    assert [p.name for p in Checkpointer(tmp_path / "checkpoints").complete()] == ["step_00000003"]
    assert max(losses(tmp_path)) == 5  # steps 4 and 5 ran after the checkpoint and were lost

    run_sft(tmp_path, resume_procs)
    assert summary(tmp_path)["resumed_from"] == 3
    assert summary(tmp_path)["world_size"] == resume_procs
    resumed = losses(tmp_path)
    assert sorted(resumed) == list(range(1, STEPS + 1))  # steps 4-5 logged once, by the resumed run
    for step in range(1, STEPS + 1):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step


@pytest.mark.parametrize("nproc", [1, 2])
def test_sigterm_saves_and_exits_zero_then_resumes(tmp_path, nproc):
    """SIGTERM to the process (torchrun forwards it to every rank): finish the step, save, exit 0.

    torchrun itself then exits non-zero (it re-raises the signal it got); its workers exit 0."""
    args = ["--max-steps", "40", "--loop.checkpoint-every", "1000"]
    proc = subprocess.Popen(_command(nproc) + ["--run-dir", str(tmp_path), *ARGS, *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not losses(tmp_path):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    if nproc == 1:
        assert proc.returncode == 0, err[-3000:]
    else:
        assert "got signal: 15" in err and "exitcode  : 1" not in err
    stopped = summary(tmp_path)
    assert stopped["world_size"] == nproc
    assert stopped["status"] == "stopped" and 1 <= stopped["step"] < 40
    assert "stopped by signal" in err
    assert [p.name for p in Checkpointer(tmp_path / "checkpoints").complete()] == [f"step_{stopped['step']:08d}"]
    run_sft(tmp_path, 1, *args)
    done = summary(tmp_path)
    assert done["status"] == "finished" and done["resumed_from"] == stopped["step"] and done["step"] == 40


def test_export_loads_in_transformers_with_the_trained_logits(reference_runs, dist_ctx):
    """The 2-process run's export equals its final checkpoint loaded on one process (2 -> 1 reload)."""
    two = reference_runs[1]
    exported = AutoModelForCausalLM.from_pretrained(str(two / "export"), local_files_only=True).eval()
    assert (two / "export" / "tokenizer.json").is_file()
    model = build_model(model_path(), dist_ctx.mesh, ParallelConfig(activation_checkpointing=False))
    optimizer = build_optimizer(model, OptimConfig())
    loaded = Checkpointer(two / "checkpoints").load_latest(model, optimizer)
    assert loaded.step == STEPS and loaded.trainer_state["world_size"] == 2
    ids = torch.randint(0, exported.config.vocab_size, (2, 23))
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, model.eval()(ids).logits, rtol=0, atol=0)
        base = AutoModelForCausalLM.from_pretrained(str(model_path()), local_files_only=True).eval()
        assert not torch.allclose(base(ids).logits, exported(ids).logits)  # trained weights, not the base
