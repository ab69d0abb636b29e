"""Process group and device mesh: one process is a mesh of one, `torchrun` gives many (DESIGN section 4).

`init_distributed()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); without
it, a single process gets a one-rank group on an in-memory store, so the loop runs the same FSDP2 code
either way. Backends: "cuda:nccl,cpu:gloo" on GPUs (NCCL for the model, gloo for the few host-side
flags), "gloo" on CPU.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

__all__ = ["DistContext", "init_distributed", "destroy_distributed", "all_reduce_sum", "all_reduce_max", "all_gather_objects",
           "any_rank"]


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


def init_distributed(device: str | torch.device | None = None, *, timeout_s: float = 1800) -> DistContext:
    """Join (or, for one process, create) the default process group and a 1-D data-parallel mesh."""
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(device) if device is not None else _default_device(local_rank)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "cuda:nccl,cpu:gloo" if device.type == "cuda" else "gloo"
    created = not dist.is_initialized()
    if created:
        timeout = timedelta(seconds=timeout_s)
        if launched:
            dist.init_process_group(backend, timeout=timeout)
        else:  # a mesh of one: no rendezvous, no port
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        # A process that exits with a live gloo group can abort ("terminate called without an active
        # exception", seen under torchrun): the group this call created is destroyed at exit.
        atexit.register(destroy_distributed)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),), mesh_dim_names=("dp",))
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                       device=device, mesh=mesh, launched=launched, created_group=created)


def destroy_distributed(*, barrier_timeout_s: float = 60.0) -> None:
    """Tear the process group down, after a barrier: a rank that destroys its gloo group while a peer is
    still using it can abort the peer ("terminate called without an active exception": 5 of 12 runs of
    the README example under torchrun on CPU without it, 0 of 12 with it). A peer that is already gone
    only costs the timeout."""
    global _CPU_GROUP
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
