"""Triton kernels, installed as `redone_fast.kernels` (never as a top-level `kernels` module).

They know nothing of models or stages: each works on plain tensors (a chunk of logits, per-row vectors).

Run from a checkout's root (`python -m redone_fast.train`, `make run`), Python puts the root first on
sys.path, and this folder would shadow the PyPI package `kernels`, which transformers >= 5.25 depends on and
imports from `transformers.modeling_utils` (`ImportError: cannot import name 'CUDAProperties' from
'kernels'`). So when this file is imported under the top-level name it hands over: it loads the package of
that name from the rest of sys.path and leaves it in sys.modules, which is what the import then returns.
"""
if __name__ == "kernels":
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _elsewhere = [p for p in sys.path if os.path.abspath(p or os.curdir) != _checkout]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _elsewhere)
    if _spec is None or _spec.loader is None:
        raise ModuleNotFoundError("No module named 'kernels' (this checkout's kernels/ folder is the "
                                  "subpackage redone_fast.kernels, not a top-level module)", name="kernels")
    _real = importlib.util.module_from_spec(_spec)
    sys.modules["kernels"] = _real  # the import statement returns sys.modules["kernels"], not this module
    _spec.loader.exec_module(_real)
