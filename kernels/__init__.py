"""Triton kernels, installed as `redone_fast.kernels` (never as a top-level `kernels` module).

They know nothing of models or stages: each works on plain tensors (a chunk of logits, per-row vectors).

Run from a checkout's root (`python -m redone_fast.train`, `make run`, `python -m pytest`), Python puts the
root first on sys.path, and this folder would shadow the PyPI package `kernels`, which transformers >= 5.25
depends on and imports from `transformers.modeling_utils` (`ImportError: cannot import name 'CUDAProperties'
from 'kernels'`). So when this file is imported under the top-level name it hands over:

- if a package of that name is found on the rest of sys.path, it loads it and leaves it in sys.modules,
  which is what the import then returns;
- if none is (transformers < 5.25 does not need it), it stays an empty module with no `__version__` and no
  `__file__`. transformers (5.17 to 5.25) probes the package with `find_spec` (which finds this folder) and
  then imports it; an exception here would break `import transformers`, whereas a module with neither
  attribute is what its probe reads as "a folder shadowing the name, not an install", so hub kernels stay
  off. `from kernels import x` is then an ImportError, `kernels.x` an AttributeError that says why.
"""
if __name__ == "kernels":
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _elsewhere = [p for p in sys.path if os.path.abspath(p or os.curdir) != _checkout]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _elsewhere)
    if _spec is not None and _spec.loader is not None:
        _real = importlib.util.module_from_spec(_spec)
        sys.modules["kernels"] = _real  # the import statement returns sys.modules["kernels"], not this module
        _spec.loader.exec_module(_real)
    else:
        _WHY = ("no package named 'kernels' is installed; this checkout's kernels/ folder is the subpackage "
                "redone_fast.kernels, not a top-level module")
        __file__ = None
        __path__ = []  # no submodules either: `import kernels.x` is a ModuleNotFoundError

        def __getattr__(name):
            raise AttributeError(f"module 'kernels' has no attribute {name!r}: {_WHY}")

        del importlib, os, sys, _checkout, _elsewhere, _spec
