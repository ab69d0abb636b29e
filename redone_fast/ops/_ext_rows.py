"""Row work on a chunk of logits in the extension redone_fast._C: the "cpp" (CPU) and "cuda" backends.

Same four functions, signatures and results as _torch_rows.py and kernels/lm_head_rows.py; each calls
the operator `torch.ops.redone_fast_C.<name>` (csrc/README.md), whose dispatcher picks the CPU or CUDA
implementation from the tensors' device. This module imports without the extension; calling it
without the extension raises.
"""
from __future__ import annotations

import torch

from redone_fast._ext import NAMESPACE, extension_error


def working_bytes_per_logit(dtype: torch.dtype) -> int:
    # Like the Triton kernels: nothing of the chunk's shape besides the logits themselves (written in place).
    return torch.empty((), dtype=dtype).element_size()


def _ops():
    error = extension_error()
    if error is not None:
        raise RuntimeError(f"the extension redone_fast._C is not available: {error}")
    return getattr(torch.ops, NAMESPACE)


def _row_vector(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float()


def row_stats(logits, target, *, inv_temperature=1.0, softcap=0.0, need_sum=False, need_entropy=False):
    """(lse, target_logit, sum_logits or None, entropy or None), each [n] fp32, over transformed logits."""
    lse, target_logit, sums, entropy = _ops().row_stats(
        logits, target, float(inv_temperature), float(softcap), bool(need_sum), bool(need_entropy)
    )
    return lse, target_logit, sums if need_sum else None, entropy if need_entropy else None


def ce_grad_(logits, target, lse, row_scale, *, label_smoothing=0.0, z_loss=0.0, softcap=0.0):
    """Overwrite logits with row_scale * d(loss)/d(logits) for
    loss = lse - (1 - eps) * s_t - eps / V * sum(s) + z_loss * lse^2."""
    _ops().ce_grad_(logits, target, _row_vector(lse), _row_vector(row_scale),
                    float(label_smoothing), float(z_loss), float(softcap))


def ce_stats_grad_(logits, target, row_scale, *, label_smoothing=0.0, z_loss=0.0, softcap=0.0, need_sum=False):
    """`row_stats` and then `ce_grad_` with its lse, one row at a time, so each row is read from memory once
    -> (lse, target_logit, sum_logits or None). The CPU kernel; on CUDA the two operators one after the other."""
    if logits.device.type != "cpu":
        lse, target_logit, sums, _ = row_stats(logits, target, softcap=softcap, need_sum=need_sum)
        ce_grad_(logits, target, lse, row_scale, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
        return lse, target_logit, sums
    lse, target_logit, sums = _ops().ce_stats_grad_(logits, target, _row_vector(row_scale), float(label_smoothing),
                                                    float(z_loss), float(softcap), bool(need_sum))
    return lse, target_logit, sums if need_sum else None


def logprob_grad_(logits, target, lse, entropy, grad_logp, grad_entropy, *, inv_temperature=1.0):
    """Overwrite logits with the gradient of sum(grad_logp * logp + grad_entropy * entropy)."""
    _ops().logprob_grad_(logits, target, _row_vector(lse), _row_vector(entropy), _row_vector(grad_logp),
                         _row_vector(grad_entropy), float(inv_temperature))
