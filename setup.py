"""Build script.

`kernels/` (Triton) installs as the subpackage `redone_fast.kernels` through `package_dir`: a top-level
module named `kernels` belongs to another PyPI package and must never be importable from this one.

The C++/CUDA extension `redone_fast._C` (csrc/, see csrc/README.md) is built with torch's
cpp_extension: the C++ CPU sources always; with CUDA (csrc/cuda/*.cu and the CUDA bindings) when torch
is a CUDA build and nvcc is found. torch must be importable at build time, so install with
`pip install --no-build-isolation` (the Makefile does); without torch the package installs without the
extension and every op falls back to Triton or torch. Environment switches:

    REDONE_FAST_NO_EXTENSION=1   no extension at all (pure-Python install; an editable install leaves
                                 a redone_fast/_C*.so built earlier in place: delete it as well)
    REDONE_FAST_NO_CUDA=1        the CPU part only, even where torch has CUDA and nvcc exists
    TORCH_CUDA_ARCH_LIST         CUDA targets (default "8.0;9.0a": A100, H100/H200 with wgmma)
    MAX_JOBS                     parallel compile jobs (read by torch's cpp_extension / ninja)
"""
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CPU_SOURCES = ["csrc/bindings.cpp", "csrc/cpu/lm_head_rows.cpp", "csrc/cpu/group_advantages.cpp"]
CUDA_BINDINGS = "csrc/cuda/bindings_cuda.cpp"
DEFAULT_CUDA_ARCHS = "8.0;9.0a"


def _switch(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _note(message: str) -> None:
    print(f"redone_fast setup.py: {message}", file=sys.stderr)


def _put_pip_ninja_on_path() -> None:
    """torch's cpp_extension runs `ninja` from PATH; the PyPI package `ninja` (the Makefile installs it)
    puts its binary in the venv's bin folder, which is not on PATH when pip runs as .venv/bin/python."""
    try:
        import ninja
    except ImportError:
        return
    bin_dir = getattr(ninja, "BIN_DIR", None)
    path = os.environ.get("PATH", "")
    if bin_dir and os.path.isdir(bin_dir) and bin_dir not in path.split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + path


def _extension_kwargs() -> dict:
    """ext_modules and cmdclass for redone_fast._C, or {} when no extension is built."""
    if _switch("REDONE_FAST_NO_EXTENSION"):
        _note("REDONE_FAST_NO_EXTENSION is set: building no extension")
        return {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as exc:
        _note(f"torch is not importable ({exc}): building no extension "
              "(install torch first and use pip install --no-build-isolation)")
        return {}

    # -O3 for the vectoriser. -fno-trapping-math lets it turn the selects of the row kernels' exp into
    # blends (no result changes: only floating-point exception flags, which nothing reads);
    # -ffp-contract=fast lets it fuse multiply-adds where the target has FMA (ISO C++ mode turns that
    # off). No -ffast-math: NaN/inf semantics and the order of sums stay as written. OpenMP because
    # at::parallel_for is an inline `omp parallel` in torch's headers (torch's own libgomp is the one
    # loaded at run time).
    cxx_flags = ["-O3", "-ffp-contract=fast", "-fno-trapping-math"]
    link_flags = []
    if sys.platform.startswith("linux"):
        cxx_flags.append("-fopenmp")
        # The run path to torch's libraries lets `import redone_fast._C` work before `import torch`
        # (where torch was imported first, its already loaded libraries are used either way).
        link_flags += ["-fopenmp", f"-Wl,-rpath,{Path(torch.__file__).resolve().parent / 'lib'}"]

    nvcc = None
    if cpp_extension.CUDA_HOME is not None:
        candidate = Path(cpp_extension.CUDA_HOME) / "bin" / "nvcc"
        nvcc = str(candidate) if candidate.exists() else shutil.which("nvcc")
    cuda_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
    if (ROOT / CUDA_BINDINGS).exists():
        cuda_sources.append(CUDA_BINDINGS)
    if _switch("REDONE_FAST_NO_CUDA"):
        why_not_cuda = "REDONE_FAST_NO_CUDA is set"
    elif torch.version.cuda is None:
        why_not_cuda = f"torch {torch.__version__} is not a CUDA build"
    elif nvcc is None:
        why_not_cuda = "nvcc was not found (set CUDA_HOME)"
    elif not cuda_sources:
        why_not_cuda = "csrc/cuda has no sources"
    else:
        why_not_cuda = None

    if why_not_cuda is None:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        _note(f"building redone_fast._C with CUDA (nvcc {nvcc}, TORCH_CUDA_ARCH_LIST="
              f"{os.environ['TORCH_CUDA_ARCH_LIST']!r})")
        extension = cpp_extension.CUDAExtension(
            "redone_fast._C",
            CPU_SOURCES + cuda_sources,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=link_flags,
        )
    else:
        _note(f"building redone_fast._C for CPU only: {why_not_cuda}")
        extension = cpp_extension.CppExtension(
            "redone_fast._C", CPU_SOURCES, extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags
        )
    _put_pip_ninja_on_path()
    # Without ninja, setuptools compiles the sources one after the other (slower, same result).
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=cpp_extension.is_ninja_available())
    return {"ext_modules": [extension], "cmdclass": {"build_ext": build_ext}}


setup(
    packages=["redone_fast", "redone_fast.ops", "redone_fast.kernels", "redone_fast.data", "redone_fast.tiny",
              "redone_fast.loop", "redone_fast.stages", "redone_fast.rl", "redone_fast.rewards", "redone_fast.rollout",
              "redone_fast.pipeline"],
    # the bundled tiny model, tokenizer and corpus (redone_fast/tiny/README.md)
    package_data={"redone_fast.tiny": ["README.md", "assets/data/*.jsonl", "assets/model/*"]},
    package_dir={"redone_fast": "redone_fast", "redone_fast.kernels": "kernels"},
    **_extension_kwargs(),
)
