"""Fused LM head + per-token log-probabilities (and entropy): `linear_logprobs(hidden, weight, target)`.

For packed sequences (tokens of many sequences concatenated into [T, H]); RL needs these for the
policy (with gradient), the old policy and the reference (without). Under temperature tau,
    s = (hidden @ weight.T) / tau,   logp_t = s_t - logsumexp(s),   H_t = -sum_j p_j log p_j.

The forward keeps only lse (and entropy) per token; under torch.no_grad() nothing is saved at all.
The backward recomputes each logits chunk and applies both per-token upstream gradients (of logp
and of entropy): in an RL loss they differ per token (advantages, clipping masks), so a gradient
computed in the forward pass would be wrong for them. When the loss is known up front as a function of
each token's own log-prob (the RL objective), `ops.linear_logprob_loss` forms its gradient in the forward
and saves the recompute.
"""
from __future__ import annotations

import torch
from torch import Tensor

from redone_fast.ops._backend import chunk_row_align, chunk_rows, resolve_backend, resolve_chunk_bytes, row_ops
from redone_fast.ops._checks import check_lm_head_args, check_target_range
from redone_fast.ops._chunking import LMHead, backward_through_head, logit_chunks, or_empty


def linear_logprobs_ref(
    hidden: Tensor, weight: Tensor, target: Tensor, *, temperature: float = 1.0, with_entropy: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Reference: materialises the full [T, V] logits. Ground truth for tests (run it in float64)."""
    logits = hidden @ weight.t()  # [T, V]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    log_probs = torch.log_softmax(logits, dim=-1)
    logp = log_probs.gather(1, target[:, None])[:, 0]
    if not with_entropy:
        return logp
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    return logp, entropy


@torch.library.custom_op("redone_fast::linear_logprobs", mutates_args=())
def _logprobs_op(
    hidden: Tensor, weight: Tensor, target: Tensor, temperature: float, with_entropy: bool,
    backend: str, chunk_bytes: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """-> (logp [T] fp32, entropy [T] fp32 or empty, lse [T] fp32 saved for the backward)."""
    check_target_range(target, weight.shape[0], None)
    hidden, weight = hidden.contiguous(), weight.contiguous()
    rows = row_ops(backend)
    num_tokens = hidden.shape[0]
    logp = torch.empty(num_tokens, dtype=torch.float32, device=hidden.device)
    lses = torch.empty_like(logp)
    entropy = torch.empty_like(logp) if with_entropy else logp.new_empty(0)
    head = LMHead(hidden, weight, chunk_row_align(backend))
    for start, end, logits in logit_chunks(head, chunk_rows(backend, hidden, weight, chunk_bytes)):
        lse, target_logit, _, chunk_entropy = rows.row_stats(
            logits, target[start:end], inv_temperature=1.0 / temperature, need_entropy=with_entropy
        )
        logp[start:end] = target_logit - lse
        lses[start:end] = lse
        if with_entropy:
            entropy[start:end] = chunk_entropy
    return logp, entropy, lses


@_logprobs_op.register_fake
def _(hidden, weight, target, temperature, with_entropy, backend, chunk_bytes):
    logp = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
    return logp, torch.empty_like(logp) if with_entropy else logp.new_empty(0), torch.empty_like(logp)


def _setup(ctx, inputs, output):
    hidden, weight, target, temperature, with_entropy, backend, chunk_bytes = inputs
    _, entropy, lses = output
    ctx.mark_non_differentiable(lses)
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not a zero-filled [T]
    ctx.save_for_backward(hidden, weight, target, lses, entropy)
    ctx.options = (temperature, with_entropy, backend, chunk_bytes)


def _backward(ctx, grad_logp, grad_entropy, _grad_lse):
    hidden, weight, target, lses, entropy = ctx.saved_tensors
    temperature, with_entropy, backend, chunk_bytes = ctx.options
    need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not with_entropy:
        grad_entropy = None
    if (grad_logp is None and grad_entropy is None) or not (need_h or need_w):
        return (None,) * 7
    grad_h, grad_w = torch.ops.redone_fast.linear_logprobs_backward(
        grad_logp, grad_entropy, hidden, weight, target, lses, entropy, temperature, backend, chunk_bytes,
        need_h, need_w,
    )
    return (grad_h if need_h else None, grad_w if need_w else None) + (None,) * 5


@torch.library.custom_op("redone_fast::linear_logprobs_backward", mutates_args=())
def _backward_op(
    grad_logp: Tensor | None, grad_entropy: Tensor | None, hidden: Tensor, weight: Tensor, target: Tensor,
    lses: Tensor, entropy: Tensor, temperature: float, backend: str, chunk_bytes: int,
    need_hidden: bool, need_weight: bool,
) -> tuple[Tensor, Tensor]:
    """Recompute each logits chunk and apply both per-token upstream gradients -> (grad_h, grad_w),
    each empty when not needed. An opaque op of its own so that compiled backwards never trace kernels."""
    hidden, weight = hidden.contiguous(), weight.contiguous()
    rows = row_ops(backend)

    def logits_to_grad_(start, end, logits):
        rows.logprob_grad_(
            logits, target[start:end], lses[start:end],
            entropy[start:end] if grad_entropy is not None else None,
            grad_logp[start:end] if grad_logp is not None else None,
            grad_entropy[start:end] if grad_entropy is not None else None,
            inv_temperature=1.0 / temperature,
        )

    grad_h, grad_w = backward_through_head(
        hidden, weight, chunk_rows(backend, hidden, weight, chunk_bytes), logits_to_grad_, need_hidden, need_weight,
        chunk_row_align(backend),
    )
    return or_empty(grad_h, hidden), or_empty(grad_w, weight)


@_backward_op.register_fake
def _(grad_logp, grad_entropy, hidden, weight, target, lses, entropy, temperature, backend, chunk_bytes,
      need_hidden, need_weight):
    return (torch.empty_like(hidden) if need_hidden else hidden.new_empty(0),
            torch.empty_like(weight) if need_weight else weight.new_empty(0))


_logprobs_op.register_autograd(_backward, setup_context=_setup)


def linear_logprobs(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    backend: str | None = None,
    chunk_bytes: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Log-probability [T] fp32 of each `target` token under logits `hidden @ weight.T / temperature`,
    and with `with_entropy=True` also the entropy [T] of each token's distribution.

    hidden [T, H], weight [V, H] (same float dtype: fp32, bf16 or fp16), target [T] int64 in [0, V).
    Differentiable in hidden and weight through both outputs. `chunk_bytes`, `backend`: as in
    `linear_cross_entropy`.
    """
    check_lm_head_args(hidden, weight, target)
    if not temperature > 0.0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    backend = resolve_backend(backend, hidden.device)
    if backend == "ref":
        return linear_logprobs_ref(hidden, weight, target, temperature=temperature, with_entropy=with_entropy)
    chunk_bytes = resolve_chunk_bytes(chunk_bytes, hidden.device, weight)
    logp, entropy, _ = torch.ops.redone_fast.linear_logprobs(
        hidden, weight, target, float(temperature), bool(with_entropy), backend, chunk_bytes
    )
    return (logp, entropy) if with_entropy else logp
