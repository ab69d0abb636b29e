"""Fused LM head + token cross-entropy: `linear_cross_entropy(hidden, weight, target)`.

Per token, over logits z = hidden @ weight.T (optionally soft-capped: s = cap * tanh(z / cap)):
    loss_t = (1 - eps) * (lse - s_t) + eps * (lse - mean_j s_j) + z_loss * lse^2,   lse = logsumexp(s)
which is torch's cross_entropy with label_smoothing=eps plus the z-loss of PaLM (arXiv 2204.02311).
Ignored tokens have loss 0 and no gradient; "mean" divides by the number of non-ignored tokens
(0 when every token is ignored, never NaN).

Two custom ops carry the two gradient strategies:
  * reduced ("sum"/"mean"): the output is a scalar, so the gradient of the inputs can be computed in
    the forward pass, chunk by chunk, while each logits chunk is at hand (three GEMMs in all), and the
    backward only multiplies by the scalar upstream gradient. Correct because the output is a scalar.
  * per token ("none"): the upstream gradient differs per token and is unknown in the forward, so the
    forward keeps only lse [T] and the backward recomputes each logits chunk and applies the per-token
    upstream gradient to it (four GEMMs). Reusing a forward-computed gradient here would silently scale
    every token's gradient by the first token's upstream gradient, a bug fused-linear implementations
    elsewhere once had (history: docs/notes.md, "Per-token gradients in fused linear cross-entropy").
"""
from __future__ import annotations

import torch
from torch import Tensor

from redone_fast.ops._backend import chunk_row_align, chunk_rows, resolve_backend, resolve_chunk_bytes, row_ops
from redone_fast.ops._checks import check_lm_head_args, check_target_range
from redone_fast.ops._chunking import HeadGradients, LMHead, backward_through_head, logit_chunks, or_empty

REDUCTIONS = ("none", "sum", "mean")


# ---------------------------------------------------------------------------------------------
# Reference: materialises the full [T, V] logits. Ground truth for tests (run it in float64).
# ---------------------------------------------------------------------------------------------
def linear_cross_entropy_ref(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Tensor:
    logits = hidden @ weight.t()  # [T, V]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    valid = target != ignore_index
    safe_target = torch.where(valid, target, 0)
    lse = torch.logsumexp(logits, dim=-1)
    nll = lse - logits.gather(1, safe_target[:, None])[:, 0]
    smooth = lse - logits.mean(dim=-1)
    loss = (1.0 - label_smoothing) * nll + label_smoothing * smooth + z_loss * lse.square()
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum().clamp(min=1)


# ---------------------------------------------------------------------------------------------
# Chunked forward (shared by both custom ops)
# ---------------------------------------------------------------------------------------------
def _losses_from_stats(lse, target_logit, sum_logits, valid, vocab, label_smoothing, z_loss):
    """Per-token losses [n] from a chunk's row statistics; 0 at ignored tokens."""
    loss = lse - (1.0 - label_smoothing) * target_logit + z_loss * lse.square()
    if sum_logits is not None:
        loss = loss - (label_smoothing / vocab) * sum_logits
    return torch.where(valid, loss, torch.zeros_like(loss))


def _token_losses(rows, logits, target, valid, vocab, label_smoothing, z_loss, softcap):
    """Row statistics of one logits chunk -> (loss [n], lse [n]); loss is 0 at ignored tokens."""
    lse, target_logit, sum_logits, _ = rows.row_stats(
        logits, target, softcap=softcap, need_sum=label_smoothing > 0.0
    )
    return _losses_from_stats(lse, target_logit, sum_logits, valid, vocab, label_smoothing, z_loss), lse


def _token_losses_and_grad_(rows, logits, target, valid, row_scale, vocab, label_smoothing, z_loss, softcap):
    """`_token_losses`, then the chunk overwritten with row_scale * d loss / d logits -> loss [n].
    Row modules with `ce_stats_grad_` (the C++ CPU kernels) do both in one pass over each row."""
    options = dict(label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
    fused = getattr(rows, "ce_stats_grad_", None)
    if fused is not None:
        lse, target_logit, sum_logits = fused(logits, target, row_scale, need_sum=label_smoothing > 0.0, **options)
        return _losses_from_stats(lse, target_logit, sum_logits, valid, vocab, label_smoothing, z_loss)
    loss, lse = _token_losses(rows, logits, target, valid, vocab, label_smoothing, z_loss, softcap)
    rows.ce_grad_(logits, target, lse, row_scale, **options)
    return loss


# ---------------------------------------------------------------------------------------------
# Custom op 1: reduced loss, gradient computed in the forward pass
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("redone_fast::linear_cross_entropy_reduced", mutates_args=())
def _reduced_op(
    hidden: Tensor, weight: Tensor, target: Tensor, ignore_index: int, label_smoothing: float,
    z_loss: float, softcap: float, mean: bool, grad_hidden: bool, grad_weight: bool,
    backend: str, chunk_bytes: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """-> (loss [] fp32, d loss / d hidden or empty, d loss / d weight or empty)."""
    vocab = weight.shape[0]
    check_target_range(target, vocab, ignore_index)
    hidden, weight = hidden.contiguous(), weight.contiguous()
    rows = row_ops(backend)
    valid = target != ignore_index  # [T]
    n_valid = valid.sum()
    # Gradient of the reduced loss w.r.t. each token's loss: 1 (sum) or 1 / n_valid (mean); 0 if ignored.
    row_scale = valid.float() / n_valid.clamp(min=1) if mean else valid.float()
    head = LMHead(hidden, weight, chunk_row_align(backend))
    grads = HeadGradients(head, grad_hidden, grad_weight)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start, end, logits in logit_chunks(head, chunk_rows(backend, hidden, weight, chunk_bytes)):
        chunk_target, chunk_valid = target[start:end], valid[start:end]
        if grad_hidden or grad_weight:
            total += _token_losses_and_grad_(rows, logits, chunk_target, chunk_valid, row_scale[start:end], vocab,
                                             label_smoothing, z_loss, softcap).sum()
            grads.add_chunk(start, end, logits)
        else:
            total += _token_losses(rows, logits, chunk_target, chunk_valid, vocab, label_smoothing, z_loss,
                                   softcap)[0].sum()
    if mean:
        total = total / n_valid.clamp(min=1)
    grad_h, grad_w = grads.result()
    return total, or_empty(grad_h, hidden), or_empty(grad_w, weight)


@_reduced_op.register_fake
def _(hidden, weight, target, ignore_index, label_smoothing, z_loss, softcap, mean, grad_hidden, grad_weight, backend,
      chunk_bytes):
    loss = hidden.new_empty((), dtype=torch.float32)
    return (loss, torch.empty_like(hidden) if grad_hidden else hidden.new_empty(0),
            torch.empty_like(weight) if grad_weight else weight.new_empty(0))


def _reduced_setup(ctx, inputs, output):
    _, grad_h, grad_w = output
    ctx.mark_non_differentiable(grad_h, grad_w)
    ctx.set_materialize_grads(False)  # else autograd zero-fills [T, H] and [V, H] gradients for them
    ctx.grad_hidden, ctx.grad_weight = inputs[8], inputs[9]
    ctx.save_for_backward(grad_h, grad_w)


def _reduced_backward(ctx, grad_loss, _grad_h, _grad_w):
    grad_h, grad_w = ctx.saved_tensors
    if grad_loss is None:
        return (None,) * 12
    # The output is a scalar, so scaling the forward-computed gradient is exact. In place: these tensors
    # exist only for this backward, and a copy would be another [V, H]. (Reusing the graph then fails on
    # the saved tensors' version counter instead of silently scaling twice.)
    return (grad_h.mul_(grad_loss) if ctx.grad_hidden else None, grad_w.mul_(grad_loss) if ctx.grad_weight else None,
            None, None, None, None, None, None, None, None, None, None)


_reduced_op.register_autograd(_reduced_backward, setup_context=_reduced_setup)


# ---------------------------------------------------------------------------------------------
# Custom op 2: per-token losses, gradient recomputed in backward with per-token upstream gradients
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("redone_fast::linear_cross_entropy_tokens", mutates_args=())
def _tokens_op(
    hidden: Tensor, weight: Tensor, target: Tensor, ignore_index: int, label_smoothing: float,
    z_loss: float, softcap: float, backend: str, chunk_bytes: int,
) -> tuple[Tensor, Tensor]:
    """-> (loss [T] fp32, lse [T] fp32, saved for the backward)."""
    vocab = weight.shape[0]
    check_target_range(target, vocab, ignore_index)
    hidden, weight = hidden.contiguous(), weight.contiguous()
    rows = row_ops(backend)
    valid = target != ignore_index
    losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    lses = torch.empty_like(losses)
    head = LMHead(hidden, weight, chunk_row_align(backend))
    for start, end, logits in logit_chunks(head, chunk_rows(backend, hidden, weight, chunk_bytes)):
        losses[start:end], lses[start:end] = _token_losses(
            rows, logits, target[start:end], valid[start:end], vocab, label_smoothing, z_loss, softcap
        )
    return losses, lses


@_tokens_op.register_fake
def _(hidden, weight, target, ignore_index, label_smoothing, z_loss, softcap, backend, chunk_bytes):
    losses = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
    return losses, torch.empty_like(losses)


def _tokens_setup(ctx, inputs, output):
    hidden, weight, target, ignore_index, label_smoothing, z_loss, softcap, backend, chunk_bytes = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(hidden, weight, target, output[1])
    ctx.options = (ignore_index, label_smoothing, z_loss, softcap, backend, chunk_bytes)


def _tokens_backward(ctx, grad_losses, _grad_lse):
    hidden, weight, target, lses = ctx.saved_tensors
    need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if grad_losses is None or not (need_h or need_w):
        return (None,) * 9
    grad_h, grad_w = torch.ops.redone_fast.linear_cross_entropy_tokens_backward(
        grad_losses, hidden, weight, target, lses, *ctx.options, need_h, need_w
    )
    return (grad_h if need_h else None, grad_w if need_w else None) + (None,) * 7


@torch.library.custom_op("redone_fast::linear_cross_entropy_tokens_backward", mutates_args=())
def _tokens_backward_op(
    grad_losses: Tensor, hidden: Tensor, weight: Tensor, target: Tensor, lses: Tensor, ignore_index: int,
    label_smoothing: float, z_loss: float, softcap: float, backend: str, chunk_bytes: int,
    need_hidden: bool, need_weight: bool,
) -> tuple[Tensor, Tensor]:
    """Recompute each logits chunk and apply the per-token upstream gradients -> (grad_h, grad_w),
    each empty when not needed. An opaque op of its own so that compiled backwards never trace kernels."""
    hidden, weight = hidden.contiguous(), weight.contiguous()
    rows = row_ops(backend)
    row_scale = torch.where(target != ignore_index, grad_losses.float(), 0.0)  # [T] upstream per token

    def logits_to_grad_(start, end, logits):
        rows.ce_grad_(logits, target[start:end], lses[start:end], row_scale[start:end],
                      label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)

    grad_h, grad_w = backward_through_head(
        hidden, weight, chunk_rows(backend, hidden, weight, chunk_bytes), logits_to_grad_, need_hidden, need_weight,
        chunk_row_align(backend),
    )
    return or_empty(grad_h, hidden), or_empty(grad_w, weight)


@_tokens_backward_op.register_fake
def _(grad_losses, hidden, weight, target, lses, ignore_index, label_smoothing, z_loss, softcap, backend,
      chunk_bytes, need_hidden, need_weight):
    return (torch.empty_like(hidden) if need_hidden else hidden.new_empty(0),
            torch.empty_like(weight) if need_weight else weight.new_empty(0))


_tokens_op.register_autograd(_tokens_backward, setup_context=_tokens_setup)


# ---------------------------------------------------------------------------------------------
# Public function
# ---------------------------------------------------------------------------------------------
def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    backend: str | None = None,
    chunk_bytes: int | None = None,
) -> Tensor:
    """Cross-entropy of `target` under logits `hidden @ weight.T`, without materialising the logits.

    hidden [T, H], weight [V, H] (same float dtype: fp32, bf16 or fp16), target [T] int64.
    Returns an fp32 scalar, or [T] for reduction="none" (0 at ignored tokens). Differentiable in
    hidden and weight. `chunk_bytes` bounds the chunk-sized temporaries of the logits (default
    1 GiB on CUDA, 64 MiB on CPU, at most the weight's fp32 size; env REDONE_FAST_CHUNK_BYTES).
    `backend`: see ops/_backend.py.
    """
    check_lm_head_args(hidden, weight, target)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if z_loss < 0.0:
        raise ValueError(f"z_loss must be >= 0, got {z_loss}")
    if softcap is not None and softcap <= 0.0:
        raise ValueError(f"softcap must be positive or None, got {softcap}")
    backend = resolve_backend(backend, hidden.device)
    if backend == "ref":
        return linear_cross_entropy_ref(
            hidden, weight, target, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
        )
    chunk_bytes = resolve_chunk_bytes(chunk_bytes, hidden.device, weight)
    cap = float(softcap) if softcap is not None else 0.0
    if reduction == "none":
        losses, _ = torch.ops.redone_fast.linear_cross_entropy_tokens(
            hidden, weight, target, ignore_index, float(label_smoothing), float(z_loss), cap, backend, chunk_bytes
        )
        return losses
    grad_enabled = torch.is_grad_enabled()
    loss, _, _ = torch.ops.redone_fast.linear_cross_entropy_reduced(
        hidden, weight, target, ignore_index, float(label_smoothing), float(z_loss), cap, reduction == "mean",
        grad_enabled and hidden.requires_grad, grad_enabled and weight.requires_grad, backend, chunk_bytes,
    )
    return loss
