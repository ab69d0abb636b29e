"""Error budgets against float64 references (docs/design.md, "Testing without a GPU").

A fused result may differ from the float64 truth by at most a small multiple of what torch itself
gets wrong computing the same thing naively in the same dtype. The floor (one unit of the dtype's
precision at the truth's scale) only matters when torch happens to be exact.
"""
import torch

BUDGET_FACTOR = 4.0


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_within_budget(name: str, ours: torch.Tensor, same_dtype_torch: torch.Tensor, truth: torch.Tensor,
                         dtype: torch.dtype):
    assert ours.shape == truth.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(truth.shape)}"
    assert torch.isfinite(ours).all(), f"{name}: non-finite values"
    if truth.numel() == 0:
        return
    ours_err = max_err(ours, truth)
    torch_err = max_err(same_dtype_torch, truth)
    floor = torch.finfo(dtype).eps * truth.abs().max().item()
    budget = BUDGET_FACTOR * max(torch_err, floor)
    assert ours_err <= budget, f"{name}: error {ours_err:.3e} > budget {budget:.3e} (torch {dtype}: {torch_err:.3e})"
