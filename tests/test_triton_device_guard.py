"""Every Triton launcher runs its kernel with the tensors' device current.

Triton launches on the current CUDA device, not the tensors' one. No GPU is needed to check the wiring:
tensors on cuda:1 are fake tensors (shapes and devices, no storage), torch.cuda.device is replaced by a
recorder of the current device, and each kernel by a stand-in that notes the device current at launch.
"""
import contextlib
import types

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from redone_fast.kernels import group_advantages as ga_kernels
from redone_fast.kernels import launch, lm_head_rows

CURRENT = {"device": torch.device("cuda", 0)}


@contextlib.contextmanager
def recording_cuda_device(device):
    saved = CURRENT["device"]
    CURRENT["device"] = torch.device(device)
    try:
        yield
    finally:
        CURRENT["device"] = saved


class StandInKernel:
    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        return lambda *args, **options: self.launches.append((CURRENT["device"], options))


@pytest.fixture
def stand_ins(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device", recording_cuda_device)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(
        multi_processor_count=132))
    kernels = {}
    for module, name in [(lm_head_rows, "_row_stats_kernel"), (lm_head_rows, "_ce_grad_kernel"),
                         (lm_head_rows, "_logprob_grad_kernel"), (ga_kernels, "_group_advantages_kernel")]:
        kernels[name] = StandInKernel()
        monkeypatch.setattr(module, name, kernels[name])
    return kernels


def test_device_guard_makes_the_tensor_device_current(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device", recording_cuda_device)
    with launch.device_guard(torch.device("cuda", 3)):
        assert CURRENT["device"] == torch.device("cuda", 3)
    assert CURRENT["device"] == torch.device("cuda", 0)
    with launch.device_guard(torch.device("cpu")):  # the interpreter: nothing to switch
        assert CURRENT["device"] == torch.device("cuda", 0)


def test_every_launcher_launches_on_its_tensors_device(stand_ins):
    device = torch.device("cuda", 1)
    with FakeTensorMode():
        logits = torch.empty(6, 333, device=device)
        target = torch.zeros(6, dtype=torch.int64, device=device)
        lse = torch.empty(6, device=device)
        lm_head_rows.row_stats(logits, target, need_sum=True, need_entropy=True)
        lm_head_rows.ce_grad_(logits, target, lse, torch.ones(6, device=device))
        lm_head_rows.logprob_grad_(logits, target, lse, lse, torch.ones(6, device=device), None)
        rewards = torch.empty(8, device=device)
        group_ids = torch.zeros(8, dtype=torch.int64, device=device)
        ranges = torch.zeros(8, 2, dtype=torch.int64, device=device)
        ga_kernels.group_advantages(rewards, group_ids, 2, True, 1e-6, ranges, 40)
    for name, kernel in stand_ins.items():
        assert [d for d, _ in kernel.launches] == [device], name
    assert CURRENT["device"] == torch.device("cuda", 0)  # restored after each launch
    # The persistent kernel's barrier needs every program resident: a cooperative launch guarantees it.
    (_, options), = stand_ins["_group_advantages_kernel"].launches
    assert options["launch_cooperative_grid"] is True
