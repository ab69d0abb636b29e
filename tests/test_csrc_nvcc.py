"""Compile-check the CUDA sources of the extension with nvcc alone (no GPU, no CUDA build of torch).

csrc/cuda/*.cu include no torch header (csrc/README.md), so `nvcc -c` checks them for the CUDA
targets the extension is built for: sm_90a (H100/H200) and sm_80 (A100). Skips only when nvcc is not
on the PATH; CI machines have it. The CUDA bindings (bindings_cuda.cpp) need a CUDA build of torch
and are built and tested on GPU machines.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

CUDA_DIR = Path(__file__).resolve().parents[1] / "csrc" / "cuda"
CU_FILES = sorted(CUDA_DIR.glob("*.cu"))
ARCHS = {"sm_90a": "arch=compute_90a,code=sm_90a", "sm_80": "arch=compute_80,code=sm_80"}
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on the PATH (CUDA toolkit not installed)")

# An #include of a torch / ATen / c10 / pybind / Python header, in either bracket style.
TORCH_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"](torch|ATen|c10|caffe2|pybind11|Python)[/.>"]', re.MULTILINE)


def test_cuda_sources_exist():
    # Guards the parametrisation below against a moved directory silently testing nothing.
    assert {"group_advantages.cu", "lm_head_rows.cu"} <= {p.name for p in CU_FILES}
    assert (CUDA_DIR / "launchers.h").is_file()


@pytest.mark.parametrize("path", [*CU_FILES, CUDA_DIR / "launchers.h"], ids=lambda p: p.name)
def test_no_torch_headers(path: Path):
    found = TORCH_INCLUDE.findall(path.read_text())
    assert not found, (f"{path.name} includes {found} headers: "
                       "csrc/cuda/*.cu and launchers.h must compile with nvcc alone")


@needs_nvcc
@pytest.mark.parametrize("arch", list(ARCHS), ids=list(ARCHS))
@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_nvcc_compiles(source: Path, arch: str, tmp_path: Path):
    command = [
        NVCC, "-c", str(source), "-o", str(tmp_path / f"{source.stem}.{arch}.o"),
        "-std=c++17", "-O3", "-gencode", ARCHS[arch], "-I", str(CUDA_DIR),
    ]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    print(f"{source.name} [{arch}]: nvcc {elapsed:.1f} s")
    assert result.returncode == 0, (
        f"nvcc failed on {source.name} for {arch} (exit {result.returncode}):\n"
        f"$ {' '.join(command)}\n{result.stderr}{result.stdout}"
    )
    assert (tmp_path / f"{source.stem}.{arch}.o").stat().st_size > 0


@needs_nvcc
def test_launchers_header_is_plain_c(tmp_path: Path):
    # launchers.h is the C ABI between the kernels and the bindings: it must parse as C, not only C++.
    probe = tmp_path / "probe.c"
    probe.write_text('#include "launchers.h"\nint main(void) { return (int)RF_FLOAT32; }\n')
    command = [NVCC, "-c", str(probe), "-o", str(tmp_path / "probe.o"), "-I", str(CUDA_DIR)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"launchers.h is not plain C:\n$ {' '.join(command)}\n{result.stderr}{result.stdout}"
