"""Launch helpers shared by the Triton kernels of this package.

Triton launches on the *current* CUDA device, not on the device of the tensors it is given: a tensor on
cuda:1 launched while cuda:0 is current runs on the wrong GPU (an illegal address, or silent reads of
another device's memory through peer access). Every launcher therefore runs inside `device_guard`.
"""
from __future__ import annotations

import contextlib

import torch


def device_guard(device: torch.device):
    """A context that makes `device` the current CUDA device (nothing to do for CPU tensors, which only
    reach Triton under TRITON_INTERPRET=1)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()
