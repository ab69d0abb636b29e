"""Distributed faults on CPU (gloo), in separate processes as users run them:

- `torchrun --nproc_per_node=2`: SIGKILL one rank mid-step; the other exits within 60 s (measured: under
  a second, through the closed sockets), torchrun exits non-zero, and a rerun resumes from the last
  checkpoint with the uninterrupted run's losses;
- a rank frozen with SIGSTOP (its sockets stay open: a node that lost power looks like this) is noticed
  by the peer watchdog of `redone_fast.distributed`, and the other rank exits with status 75;
- two nodes simulated on one machine (two torchrun agents, `--nnodes=2`, c10d rendezvous on 127.0.0.1)
  give the losses of one process, and losing the second node's rank stops the first too;
- the RL stage with several updates per rollout resumes exactly, after a SIGKILL between checkpoints and
  after a SIGTERM inside a rollout (the stop waits for the rollout's last update).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from redone_fast.distributed import PEER_LOST_EXIT_CODE
from redone_fast.loop import Checkpointer, LoopSettings, read_metrics
from small_rl import SMALL_FLAGS, small_rl_config

STEPS = 6
# A constant learning rate: a run cut short and the reference then share their schedule whatever their length.
ARGS = ["--batch-size", "16", "--micro-batch-tokens", "512", "--max-length", "256", "--loop.checkpoint-every", "3",
        "--loop.log-every", "1", "--no-export", "--optim.schedule", "constant", "--optim.warmup-ratio", "0"]
SURVIVOR_DEADLINE_S = 60


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT", "REDONE_FAST_CRASH_AFTER_STEP")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*launcher: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "redone_fast.stages.sft"]


def _standalone(nproc: int) -> list[str]:
    return _torchrun("--standalone", f"--nproc_per_node={nproc}")


def _node(node_rank: int, port: int, run_id: str) -> list[str]:
    return _torchrun("--nnodes=2", f"--node_rank={node_rank}", "--nproc_per_node=1", "--rdzv_backend=c10d",
                     f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id={run_id}", "--max_restarts=0")


def _losses(run_dir) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in read_metrics(run_dir) if "loss" in row}


def _summary(run_dir) -> dict:
    return json.loads((Path(run_dir) / "sft_result.json").read_text())


def _run_one_process(run_dir, steps: int) -> None:
    proc = subprocess.run([sys.executable, "-m", "redone_fast.stages.sft", "--run-dir", str(run_dir), *ARGS,
                           "--max-steps", str(steps)], env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, float]:
    run_dir = tmp_path_factory.mktemp("one_process")
    _run_one_process(run_dir, STEPS)
    return _losses(run_dir)


def _workers(launcher_pids: list[int]) -> dict[int, int]:
    """{rank: pid} of the training processes started by these torchrun agents (read from /proc)."""
    found = {}
    for parent in launcher_pids:
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            try:
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            env = dict(item.split(b"=", 1) for item in environ if b"=" in item)
            if b"RANK" in env:
                found[int(env[b"RANK"])] = child
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; its launcher has not reaped it yet


def _start_and_wait_for_steps(commands: list[list[str]], run_dir, *, min_step: int, env=None):
    procs = [subprocess.Popen(cmd, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in commands]
    deadline = time.time() + 300
    while time.time() < deadline:
        if max(_losses(run_dir), default=0) >= min_step and len(_workers([p.pid for p in procs])) == 2:
            return procs
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.05)
    for p in procs:
        p.kill()
    outputs = [p.communicate()[1][-3000:] for p in procs]
    raise AssertionError(f"the run did not reach step {min_step}: {outputs}")


def _kill_rank_and_time_the_survivor(procs, run_dir, sig: int, victim_rank: int = 1) -> tuple[float, list[str]]:
    workers = _workers([p.pid for p in procs])
    survivor = workers[1 - victim_rank]
    killed_at = time.time()
    os.kill(workers[victim_rank], sig)
    while _alive(survivor) and time.time() - killed_at < SURVIVOR_DEADLINE_S + 30:
        time.sleep(0.05)
    survivor_s = time.time() - killed_at
    if sig == signal.SIGSTOP:  # let the launcher reap the frozen one
        os.kill(workers[victim_rank], signal.SIGKILL)
    errors = []
    for p in procs:
        try:
            errors.append(p.communicate(timeout=120)[1])
        except subprocess.TimeoutExpired:
            p.kill()
            errors.append(p.communicate()[1])
    return survivor_s, errors


def test_sigkill_of_one_rank_stops_the_other_then_a_rerun_resumes(reference, tmp_path):
    procs = _start_and_wait_for_steps([_standalone(2) + ["--run-dir", str(tmp_path), *ARGS, "--max-steps", "400"]],
                                      tmp_path, min_step=4)
    survivor_s, errors = _kill_rank_and_time_the_survivor(procs, tmp_path, signal.SIGKILL)
    assert survivor_s < SURVIVOR_DEADLINE_S, errors[0][-3000:]
    assert procs[0].returncode != 0
    saved = [p.name for p in Checkpointer(tmp_path / "checkpoints").complete()]
    assert saved, errors[0][-3000:]
    resumed_from = int(saved[0].split("_")[1])

    _run_one_process(tmp_path, STEPS if resumed_from < STEPS else resumed_from + 3)
    assert _summary(tmp_path)["resumed_from"] == resumed_from
    losses = _losses(tmp_path)
    for step in range(1, STEPS + 1):
        assert losses[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step


def test_a_frozen_rank_is_noticed_by_the_watchdog(tmp_path):
    """SIGSTOP keeps the frozen rank's sockets open: only the heartbeat notices it (status 75)."""
    env = _env(REDONE_FAST_PEER_TIMEOUT_S="4")
    procs = _start_and_wait_for_steps([_standalone(2) + ["--run-dir", str(tmp_path), *ARGS, "--max-steps", "400"]],
                                      tmp_path, min_step=2, env=env)
    survivor_s, errors = _kill_rank_and_time_the_survivor(procs, tmp_path, signal.SIGSTOP)
    assert survivor_s < 4 + 20, errors[0][-3000:]
    assert "[rank 0] peer lost: rank 1 has sent no heartbeat" in errors[0], errors[0][-3000:]
    assert f"exitcode  : {PEER_LOST_EXIT_CODE}" in errors[0], errors[0][-3000:]


def test_two_nodes_on_one_machine_give_the_losses_of_one_process(reference, tmp_path):
    port = _free_port()
    commands = [_node(rank, port, "two-nodes") + ["--run-dir", str(tmp_path), *ARGS, "--max-steps", str(STEPS)]
                for rank in (0, 1)]
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in commands]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-3000:] for e in errors]
    assert _summary(tmp_path)["world_size"] == 2
    losses = _losses(tmp_path)
    assert sorted(losses) == list(range(1, STEPS + 1))
    for step in losses:
        assert losses[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step


def test_losing_the_second_node_stops_the_first(tmp_path):
    port = _free_port()
    commands = [_node(rank, port, "node-lost") + ["--run-dir", str(tmp_path), *ARGS, "--max-steps", "400"]
                for rank in (0, 1)]
    procs = _start_and_wait_for_steps(commands, tmp_path, min_step=2)
    survivor_s, errors = _kill_rank_and_time_the_survivor(procs, tmp_path, signal.SIGKILL)
    assert survivor_s < SURVIVOR_DEADLINE_S, errors[0][-3000:]
    assert procs[0].returncode != 0 and procs[1].returncode != 0


# --- the RL stage, several updates per rollout -------------------------------------------------------------

UPDATES, ROLLOUTS = 2, 3


def _rl_config(run_checkpoint_every: int = 1):
    return small_rl_config(tasks=["hashtag_choice"], prompts_per_step=8, rollout_steps=ROLLOUTS,
                           updates_per_rollout=UPDATES, loop=LoopSettings(checkpoint_every=run_checkpoint_every),
                           export=False)


def _rl_losses(run_dir) -> dict[int, tuple[float, float]]:
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in read_metrics(run_dir) if "loss" in r}


@pytest.fixture(scope="module")
def rl_reference(tmp_path_factory, dist_ctx, one_torch_thread):  # one thread, as the subprocess runs
    from redone_fast.stages.rl import run_rl
    run_dir = tmp_path_factory.mktemp("rl_reference")
    assert run_rl(_rl_config(), run_dir)["step"] == UPDATES * ROLLOUTS
    return _rl_losses(run_dir)


def _assert_same_losses(run_dir, reference) -> None:
    losses = _rl_losses(run_dir)
    assert sorted(losses) == list(range(1, UPDATES * ROLLOUTS + 1))
    for step, (loss, grad_norm) in reference.items():
        assert losses[step][0] == pytest.approx(loss, rel=1e-5, abs=1e-7), step
        assert losses[step][1] == pytest.approx(grad_norm, rel=1e-5, abs=1e-7), step


def test_rl_resumes_exactly_after_sigkill_inside_a_rollout(rl_reference, tmp_path):
    crash_step = UPDATES + 1  # the first update of the second rollout; the checkpoint is after the first
    proc = subprocess.run([sys.executable, "-m", "redone_fast.stages.rl", "--run-dir", str(tmp_path),
                           *SMALL_FLAGS, "--tasks", "hashtag_choice", "--prompts-per-step", "8",
                           "--rollout-steps", str(ROLLOUTS), "--updates-per-rollout", str(UPDATES),
                           "--loop.checkpoint-every", "1", "--no-export"],
                          env=_env(REDONE_FAST_CRASH_AFTER_STEP=str(crash_step)),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert [p.name for p in Checkpointer(tmp_path / "checkpoints").complete()] == [f"step_{UPDATES:08d}"]
    from redone_fast.stages.rl import run_rl
    summary = run_rl(_rl_config(), tmp_path)
    assert summary["resumed_from"] == UPDATES and summary["step"] == UPDATES * ROLLOUTS
    _assert_same_losses(tmp_path, rl_reference)


def test_rl_sigterm_inside_a_rollout_stops_after_its_last_update(rl_reference, tmp_path, monkeypatch):
    """SIGTERM after the first update of the second rollout: the loop finishes that rollout, saves and
    stops; the resumed run gives the uninterrupted run's losses."""
    import importlib

    from redone_fast.stages.rl import run_rl
    loop_outer = importlib.import_module("redone_fast.loop.outer")  # the module: the package exports `train`

    def sigterm_after(step: int, stage=None) -> None:
        if step == UPDATES + 1:
            os.kill(os.getpid(), signal.SIGTERM)  # the loop's StopRequest handler records it

    monkeypatch.setattr(loop_outer, "maybe_crash_for_test", sigterm_after)
    stopped = run_rl(_rl_config(run_checkpoint_every=100), tmp_path)
    assert stopped["status"] == "stopped" and stopped["step"] == 2 * UPDATES  # the rollout's end, not step 3
    assert [p.name for p in Checkpointer(tmp_path / "checkpoints").complete()] == [f"step_{2 * UPDATES:08d}"]
    monkeypatch.undo()
    resumed = run_rl(_rl_config(run_checkpoint_every=100), tmp_path)
    assert resumed["status"] == "finished" and resumed["resumed_from"] == 2 * UPDATES
    _assert_same_losses(tmp_path, rl_reference)
