"""Benchmark configuration.

* TRITON_INTERPRET must not be set here: tests set it (CPU-only machines run the Triton kernels under
  the interpreter), and on a CUDA machine an inherited TRITON_INTERPRET=1 would time numpy emulation
  of the kernels instead of the kernels. Triton reads it when a kernel is decorated, so it is removed
  before anything imports redone_fast.kernels (or liger_kernel). On CPU the ops' default backend is
  "torch" and Triton is not involved at all.
* pytest's `python_files` only matches test_*.py, so `pytest benchmarks` (the Makefile's `make bench`)
  would collect nothing: bench_*.py files are collected here. A file named on the command line is
  collected by pytest itself and skipped here (otherwise it would run twice).
* The device and library versions are added to pytest-benchmark's machine_info (in the JSON), from
  the process that ran the benchmarks; benchmarks/record.py reads them from there.
"""
from __future__ import annotations

import os
import warnings

import pytest

_REMOVED_TRITON_INTERPRET = os.environ.pop("TRITON_INTERPRET", None)


def pytest_configure(config):
    if _REMOVED_TRITON_INTERPRET not in (None, "", "0"):
        warnings.warn(
            f"benchmarks: removed TRITON_INTERPRET={_REMOVED_TRITON_INTERPRET!r} from the environment "
            "(interpreted kernels are not worth timing)",
            stacklevel=1,
        )


def pytest_collect_file(file_path, parent):
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def device_info() -> dict:
    import torch

    from redone_fast.info import cpu_model

    info = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_num_threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "removed_TRITON_INTERPRET": _REMOVED_TRITON_INTERPRET,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # not installed, or broken
        info["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device_type="cuda",
            device_name=torch.cuda.get_device_name(0),
            device_capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            device_memory_bytes=props.total_memory,
            device_count=torch.cuda.device_count(),
        )
    else:
        info.update(
            device_type="cpu",
            device_name=(f"{info['cpu_model']} ({info['cpu_usable']} usable cores, "
                         f"torch threads {info['torch_num_threads']})"),
        )
    return info


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["redone_bench"] = device_info()
