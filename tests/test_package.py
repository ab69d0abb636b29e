"""Packaging: kernels/ installs as redone_fast.kernels only; the package imports without Triton."""
import os
import subprocess
import sys
from pathlib import Path


def run_python(code, cwd):
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


ROOT = Path(__file__).resolve().parents[1]


def test_no_top_level_kernels_module(tmp_path):
    # From a neutral folder, so the repository root is not on sys.path. A `kernels` found there is the
    # PyPI package of that name (transformers >= 5.25 depends on it), never this checkout's folder.
    out = run_python("import importlib.util as u; s = u.find_spec('kernels'); print(s and s.origin); "
                     "import redone_fast.kernels.lm_head_rows as k; print(k.__name__)", tmp_path)
    assert out.returncode == 0, out.stderr
    found, name = out.stdout.split()
    assert name == "redone_fast.kernels.lm_head_rows"
    assert found == "None" or Path(found).resolve().parent != ROOT / "kernels", found


def test_checkout_root_does_not_shadow_the_pypi_kernels_package(tmp_path):
    """From the checkout's root (as `python -m redone_fast.train` runs) `import kernels` gives the package of
    that name found elsewhere on sys.path, as transformers' `from kernels import ...` needs."""
    other = tmp_path / "site" / "kernels"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("from .hub import CUDAProperties\n")
    (other / "hub.py").write_text("CUDAProperties = 'the other package'\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", "from kernels import CUDAProperties; import kernels; "
                          "print(CUDAProperties); print(kernels.__file__)"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["the other package", str(other / "__init__.py")]


def test_checkout_root_without_a_kernels_package_gives_module_not_found():
    # -S: no site-packages, so no PyPI `kernels` either; the checkout's folder must not stand in for it.
    out = subprocess.run([sys.executable, "-S", "-c", "import kernels"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1
    assert "ModuleNotFoundError: No module named 'kernels'" in out.stderr


def test_transformers_model_code_imports_from_the_checkout_root():
    out = subprocess.run([sys.executable, "-c", "import transformers.modeling_utils; "
                          "import redone_fast.kernels.group_advantages as g; print(g.__name__)"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["redone_fast.kernels.group_advantages"]


def test_ops_import_and_run_without_triton(tmp_path):
    code = (
        "import sys; sys.modules['triton'] = None\n"  # any import of triton now fails
        "import torch\n"
        "from redone_fast.ops import linear_cross_entropy\n"
        "h, w = torch.randn(4, 8), torch.randn(16, 8)\n"
        "print(float(linear_cross_entropy(h, w, torch.randint(0, 16, (4,)))) > 0)\n"
    )
    out = run_python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_ops_run_without_the_extension(tmp_path):
    """No redone_fast._C: every op falls back to its torch path on CPU, and info says why."""
    code = (
        "import sys; sys.modules['redone_fast._C'] = None\n"  # the extension now fails to import
        "import torch\n"
        "from redone_fast._ext import has_extension\n"
        "from redone_fast.ops import group_advantages, linear_logprobs\n"
        "from redone_fast.ops._backend import default_backend\n"
        "assert not has_extension()\n"
        "print(default_backend(torch.device('cpu')))\n"
        "adv = group_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), 1)\n"
        "print(adv.keep.tolist())\n"
        "h, w = torch.randn(4, 8), torch.randn(16, 8)\n"
        "print(linear_logprobs(h, w, torch.randint(0, 16, (4,))).shape[0])\n"
    )
    out = run_python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["torch", "[True,", "True]", "4"]


def test_setup_lists_every_subpackage():
    """setup.py names packages explicitly: a subpackage missing there is dropped by a non-editable install."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    setup_text = (root / "setup.py").read_text()
    found = {"redone_fast." + ".".join(p.parent.relative_to(root / "redone_fast").parts)
             for p in (root / "redone_fast").rglob("__init__.py") if p.parent != root / "redone_fast"}
    missing = sorted(name for name in found if f'"{name}"' not in setup_text)
    assert not missing, f"setup.py packages= lacks {missing}"
