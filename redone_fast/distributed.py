"""Process group and device mesh: one process is a mesh of one, `torchrun` gives many (docs/design.md, "Parallelism").

`init_distributed()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); without
it, a single process gets a one-rank group on an in-memory store, so the loop runs the same FSDP2 code
either way. Backends: "cuda:nccl,cpu:gloo" on GPUs (NCCL for the model, gloo for the few host-side
flags), "gloo" on CPU.

Losing a rank. A job whose rank dies must stop within seconds, not sit in a collective until its timeout,
so that the scheduler (or the user) re-runs it and it resumes from the last checkpoint. Three layers:

1. torchrun's own failure handling: when a worker exits non-zero or is killed, its agent sends SIGTERM,
   then after 30 s SIGKILL, to the node's other workers and exits non-zero (`--max-restarts 0`, the
   default; with restarts the agent restarts the group instead and the loop resumes on its own).
2. A rank that dies (even by SIGKILL) has its sockets closed by its kernel: a peer blocked in, or entering,
   a gloo collective with it fails at once ("Connection reset by peer") and exits. Measured: on one node
   and on two simulated nodes, the surviving rank of a 2-rank SFT run is gone 0.9 s after its peer was
   SIGKILLed mid-step (tests/test_distributed_faults.py; 2 CPU cores).
3. A peer that is gone without closing its sockets (its node lost power or network, the process is
   frozen: SIGSTOP, a hung driver) is noticed by a heartbeat watchdog: each rank's daemon thread bumps a
   counter in the rendezvous store every `peer_timeout_s / 10` s and watches its ring neighbour (rank + 1);
   a neighbour silent for `peer_timeout_s` (default 30 s, `REDONE_FAST_PEER_TIMEOUT_S`; 0 turns it off),
   or a store unreachable that long, makes the rank print which rank it lost, dump its threads' stacks,
   and exit with status 75 (`PEER_LOST_EXIT_CODE`, "temporary failure: re-run"); its own exit closes its
   sockets, so the rest of the job follows through layer 2. The heartbeat is independent of how long a
   collective legitimately waits (an RL rollout gather waits for the slowest rank's generation, rank 0
   alone writes the manifest and the export), which is why the collective timeout is not made that short.
   Ranks that tear down cleanly (`destroy_distributed`) say so first, so a rank finishing earlier than its
   neighbour is not taken for a lost one.

The collective timeout itself (`timeout_s`, default 600 s as NCCL's, `REDONE_FAST_DIST_TIMEOUT_S`; gloo's
own default is 30 min) remains the last resort for a rank that is alive but stuck, e.g. in a mismatched
collective.
"""
from __future__ import annotations

import atexit
import faulthandler
import os
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from redone_fast.errors import ConfigError

__all__ = ["DistContext", "init_distributed", "destroy_distributed", "all_reduce_sum", "all_reduce_max",
           "all_gather_objects", "any_rank", "TIMEOUT_ENV", "PEER_TIMEOUT_ENV", "PEER_LOST_EXIT_CODE"]

TIMEOUT_ENV = "REDONE_FAST_DIST_TIMEOUT_S"
PEER_TIMEOUT_ENV = "REDONE_FAST_PEER_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_PEER_TIMEOUT_S = 30.0
PEER_LOST_EXIT_CODE = 75  # EX_TEMPFAIL: the job can be re-run and resumes from its last checkpoint


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mesh: DeviceMesh
    launched: bool  # True under torchrun (the group was not made up for a single process)
    created_group: bool  # this call created the process group (it is destroyed at exit)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _default_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _seconds(value: float | None, env: str, default: float) -> float:
    if value is None:
        raw = os.environ.get(env, "").strip()
        try:
            value = float(raw) if raw else default
        except ValueError:
            raise ConfigError(f"{env}: expected a number of seconds, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{env}: expected seconds >= 0, got {value}")
    return float(value)


def init_distributed(device: str | torch.device | None = None, *, timeout_s: float | None = None,
                     peer_timeout_s: float | None = None) -> DistContext:
    """Join (or, for one process, create) the default process group and a 1-D data-parallel mesh.

    `timeout_s`: how long a collective may wait (None: `REDONE_FAST_DIST_TIMEOUT_S`, else 600 s).
    `peer_timeout_s`: how long a silent neighbour rank is tolerated before this rank exits with status
    75 (None: `REDONE_FAST_PEER_TIMEOUT_S`, else 30 s; 0: no watchdog); only with several ranks and a
    group this call creates. See the module docstring.
    """
    global _WATCHDOG
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(device) if device is not None else _default_device(local_rank)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "cuda:nccl,cpu:gloo" if device.type == "cuda" else "gloo"
    created = not dist.is_initialized()
    if created:
        collective_s = _seconds(timeout_s, TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
        if collective_s == 0:
            raise ConfigError(f"{TIMEOUT_ENV} (timeout_s): a collective timeout must be > 0 s")
        timeout = timedelta(seconds=collective_s)
        peer_timeout = _seconds(peer_timeout_s, PEER_TIMEOUT_ENV, DEFAULT_PEER_TIMEOUT_S)
        if launched:
            dist.init_process_group(backend, timeout=timeout)
        else:  # a mesh of one: no rendezvous, no port
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        # A process that exits with a live gloo group can abort ("terminate called without an active
        # exception", seen under torchrun): the group this call created is destroyed at exit.
        atexit.register(destroy_distributed)
        if launched and dist.get_world_size() > 1 and peer_timeout > 0 and "MASTER_ADDR" in os.environ:
            _WATCHDOG = _PeerWatchdog(dist.get_rank(), dist.get_world_size(), peer_timeout)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),), mesh_dim_names=("dp",))
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                       device=device, mesh=mesh, launched=launched, created_group=created)


class _PeerWatchdog:
    """Heartbeats through the rendezvous store; exits the process when the ring neighbour falls silent.

    Its own TCPStore connection (the group's may be busy in a blocking wait); keys are scoped by torchrun's
    restart count and by group incarnation, so a restarted or re-initialised group never reads stale ones.
    """

    _incarnation = 0

    def __init__(self, rank: int, world_size: int, timeout_s: float):
        _PeerWatchdog._incarnation += 1
        self.rank, self.peer, self.timeout_s = rank, (rank + 1) % world_size, timeout_s
        self.interval = min(5.0, max(0.05, timeout_s / 10))
        prefix = (f"redone_fast/peers/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
                  f"{self._incarnation}/")
        client = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                               timeout=timedelta(seconds=max(1.0, timeout_s)), wait_for_workers=False)
        self.store = dist.PrefixStore(prefix, client)
        self.store.add(f"beat/{rank}", 1)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redone-peer-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seen, changed, contact = None, time.monotonic(), time.monotonic()
        while not self._stopped.wait(self.interval):
            now = time.monotonic()
            try:
                self.store.add(f"beat/{self.rank}", 1)
                if self.store.check([f"done/{self.peer}"]):
                    return  # the neighbour tore down cleanly: nothing left to watch
                beat = self.store.add(f"beat/{self.peer}", 0)  # adding 0 reads without blocking
            except Exception as error:  # the store's host (torchrun's agent on node 0) is gone or frozen
                if now - contact > self.timeout_s:
                    self._lost(f"the rendezvous store at {os.environ.get('MASTER_ADDR')}:"
                               f"{os.environ.get('MASTER_PORT')} has not answered for {now - contact:.0f} s "
                               f"({type(error).__name__}: {str(error)[:200]})")
                continue
            contact = now
            if beat != seen:
                seen, changed = beat, now
            elif now - changed > self.timeout_s:
                self._lost(f"rank {self.peer} has sent no heartbeat for {now - changed:.0f} s (killed, frozen, or "
                           "its node unreachable)")

    def _lost(self, what: str) -> None:
        if self._stopped.is_set():
            return
        print(f"[rank {self.rank}] peer lost: {what}; exiting with status {PEER_LOST_EXIT_CODE} so that the "
              f"launcher stops the job (re-run the same command to resume from the last checkpoint; "
              f"{PEER_TIMEOUT_ENV} sets the delay, 0 turns this off). This rank's threads:",
              file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(PEER_LOST_EXIT_CODE)

    def stop(self) -> None:
        """Tell the watcher of this rank that it is leaving on purpose, and stop watching."""
        self._stopped.set()
        try:
            self.store.set(f"done/{self.rank}", "1")
        except Exception:  # the store is gone: the neighbour will notice that instead
            pass
        self._thread.join(timeout=1.0)


_WATCHDOG: _PeerWatchdog | None = None


def destroy_distributed(*, barrier_timeout_s: float = 60.0) -> None:
    """Tear the process group down, after a barrier: a rank that destroys its gloo group while a peer is
    still using it can abort the peer ("terminate called without an active exception": 5 of 12 runs of
    the README example under torchrun on CPU without it, 0 of 12 with it). A peer that is already gone
    only costs the timeout. The peer watchdog is stopped first (see the module docstring)."""
    global _CPU_GROUP, _WATCHDOG
    if _WATCHDOG is not None:
        _WATCHDOG.stop()
        _WATCHDOG = None
    if dist.is_initialized():
        if dist.get_world_size() > 1:
            try:
                dist.monitored_barrier(timeout=timedelta(seconds=barrier_timeout_s))
            except Exception:  # not gloo, or a peer gone: tear down regardless
                pass
        dist.destroy_process_group()
    _CPU_GROUP = None


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (a no-op without a group or with one rank); returns the tensor."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """In-place maximum over ranks (a no-op without a group or with one rank); returns the tensor."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_gather_objects(obj) -> list:
    """Every rank's `obj` (picklable), in rank order; [obj] without a group. Host-side, through gloo."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj, group=_cpu_group())
    return gathered


def any_rank(flag: bool) -> bool:
    """True when `flag` is True on any rank (a host-side vote: a stop request seen by one rank stops all)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    vote = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=_cpu_group())
    return bool(vote.item())


_CPU_GROUP = None


def _cpu_group():
    """The default group when it has gloo; else (NCCL only) a gloo group for host tensors, made once."""
    global _CPU_GROUP
    if _CPU_GROUP is None:
        backend = str(dist.get_backend())
        _CPU_GROUP = dist.group.WORLD if "gloo" in backend else dist.new_group(backend="gloo")
    return _CPU_GROUP
