"""Test configuration.

Without CUDA, the Triton kernels run under the interpreter. Triton reads TRITON_INTERPRET when a
kernel is decorated, so it is set here, before any test module imports redone_fast.kernels.
(redone_fast._ext, imported below, loads the C++ extension and torch only, never triton.)
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from redone_fast._ext import has_cuda_kernels, has_extension  # noqa: E402  (after TRITON_INTERPRET)

# Ops run against each backend on each device where it can run here: the C++ CPU kernels ("cpp")
# wherever the extension is built, its CUDA kernels ("cuda") where it was built with them.
if torch.cuda.is_available():
    BACKEND_CASES = [("cuda", "triton"), ("cuda", "torch"), ("cpu", "torch")]
    if has_cuda_kernels():
        BACKEND_CASES.insert(1, ("cuda", "cuda"))
else:
    BACKEND_CASES = [("cpu", "torch"), ("cpu", "triton")]
if has_extension():
    BACKEND_CASES.append(("cpu", "cpp"))


@pytest.fixture(params=BACKEND_CASES, ids=[f"{d}-{b}" for d, b in BACKEND_CASES])
def device_backend(request):
    return request.param


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(1234)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a shared 2-core machine two OpenMP threads per process can be
    10-30x slower than one (measured: the bundled eval 1.2 s vs 44 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def dist_ctx():
    """A one-rank process group (gloo, in-memory store) for the FSDP2 loop's in-process tests."""
    from redone_fast.distributed import destroy_distributed, init_distributed
    ctx = init_distributed("cpu")
    yield ctx
    destroy_distributed()
