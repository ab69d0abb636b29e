"""Fused LM head + a per-token loss of the log-probabilities, its gradient formed in the forward pass:
`linear_logprob_loss(hidden, weight, target, token_loss)`.

    loss = sum_t token_loss(logp, entropy)_t,   logp_t, H_t as in `linear_logprobs` (temperature tau)

`linear_logprobs` cannot know, in its forward, the gradient that will reach each token's log-prob, so its
backward recomputes every logits chunk: four GEMMs over [T, V] in all. An RL objective (DAPO's clipped
ratio, a KL term, an entropy bonus) is a sum over tokens of a function of that token's log-prob and
entropy alone, so its per-token gradient *is* known as soon as the chunk's log-probs are: this op
evaluates `token_loss` on each chunk inside the forward, takes its gradient with autograd on the [n]
vectors, turns the chunk into d loss / d logits in place and accumulates both input gradients. Three GEMMs,
as `linear_cross_entropy` does for a reduced loss, and for the same reason the result is exact: the output
is a scalar, so the backward only scales the forward's gradients by the upstream scalar. This is
Liger-Kernel's "fused linear" policy-loss idea, applied here to any separable token loss.

Contract of `token_loss(logp, entropy, start, end) -> [n]`: `logp` and `entropy` are fp32 [n] of tokens
`start:end` (entropy None unless `with_entropy`); the value for token t must depend on the inputs of token t
only (and on constants): it is called once per chunk, and a loss that mixes tokens across chunks would get a
wrong gradient. Returns (loss [] fp32, logp [T] fp32, entropy [T] fp32 or None), the last two detached.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from redone_fast.ops._backend import chunk_row_align, chunk_rows, resolve_backend, resolve_chunk_bytes, row_ops
from redone_fast.ops._checks import check_lm_head_args, check_target_range
from redone_fast.ops._chunking import HeadGradients, LMHead, logit_chunks
from redone_fast.ops.linear_logprobs import linear_logprobs_ref

TokenLoss = Callable[[Tensor, Tensor | None, int, int], Tensor]


def _token_losses(token_loss: TokenLoss, logp: Tensor, entropy: Tensor | None, start: int, end: int) -> Tensor:
    loss = token_loss(logp, entropy, start, end)
    if loss.shape != logp.shape:
        raise ValueError(f"token_loss must return one value per token, shape {tuple(logp.shape)}; "
                         f"got {tuple(loss.shape)}")
    return loss


def _chunk_loss_and_grads(token_loss: TokenLoss, logp: Tensor, entropy: Tensor | None, start: int, end: int,
                          need_grad: bool = True):
    """(sum of the chunk's token losses, d / d logp, d / d entropy or None), all without a graph; without
    `need_grad` only the loss (the gradients None)."""
    if not need_grad:
        return _token_losses(token_loss, logp, entropy, start, end).sum().detach(), None, None
    with torch.enable_grad():
        logp = logp.detach().requires_grad_(True)
        entropy = entropy.detach().requires_grad_(True) if entropy is not None else None
        total = _token_losses(token_loss, logp, entropy, start, end).sum()
        inputs = (logp,) if entropy is None else (logp, entropy)
        grads = torch.autograd.grad(total, inputs, allow_unused=True) if total.requires_grad else (None,) * len(inputs)
    grad_logp = grads[0] if grads[0] is not None else torch.zeros_like(logp)
    grad_entropy = grads[1] if entropy is not None and grads[1] is not None else None
    return total.detach(), grad_logp.detach(), None if grad_entropy is None else grad_entropy.detach()


class _LogprobLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, target, token_loss, temperature, with_entropy, backend, chunk_bytes, need_h,
                need_w):
        check_target_range(target, weight.shape[0], None)
        hidden_c, weight_c = hidden.contiguous(), weight.contiguous()
        rows = row_ops(backend)
        num_tokens = hidden.shape[0]
        logp = torch.empty(num_tokens, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty_like(logp) if with_entropy else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        head = LMHead(hidden_c, weight_c, chunk_row_align(backend))
        grads = HeadGradients(head, need_h, need_w)
        inv_temperature = 1.0 / temperature
        for start, end, logits in logit_chunks(head, chunk_rows(backend, hidden_c, weight_c, chunk_bytes)):
            chunk_target = target[start:end]
            lse, target_logit, _, chunk_entropy = rows.row_stats(logits, chunk_target, inv_temperature=inv_temperature,
                                                                 need_entropy=with_entropy)
            logp[start:end] = target_logit - lse
            if with_entropy:
                entropy[start:end] = chunk_entropy
            loss, grad_logp, grad_entropy = _chunk_loss_and_grads(
                token_loss, logp[start:end], entropy[start:end] if with_entropy else None, start, end, need_h or need_w)
            total += loss
            if need_h or need_w:
                rows.logprob_grad_(logits, chunk_target, lse, chunk_entropy if grad_entropy is not None else None,
                                   grad_logp, grad_entropy, inv_temperature=inv_temperature)
                grads.add_chunk(start, end, logits)
        grad_h, grad_w = grads.result()
        ctx.save_for_backward(*(g for g in (grad_h, grad_w) if g is not None))
        ctx.has = (grad_h is not None, grad_w is not None)
        ctx.mark_non_differentiable(logp, *(() if entropy is None else (entropy,)))
        return total, logp, entropy

    @staticmethod
    def backward(ctx, grad_total, _grad_logp, _grad_entropy):
        saved = list(ctx.saved_tensors)
        grad_h = saved.pop(0) if ctx.has[0] else None
        grad_w = saved.pop(0) if ctx.has[1] else None
        # The output is a scalar: scaling the forward's gradients is exact. In place, as in linear_cross_entropy.
        if grad_h is not None:
            grad_h = grad_h.mul_(grad_total.to(grad_h.dtype))
        if grad_w is not None:
            grad_w = grad_w.mul_(grad_total.to(grad_w.dtype))
        return grad_h, grad_w, None, None, None, None, None, None, None, None


def linear_logprob_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    token_loss: TokenLoss,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    backend: str | None = None,
    chunk_bytes: int | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """sum_t token_loss(logp, entropy)_t under logits `hidden @ weight.T / temperature` (module docstring).

    hidden [T, H], weight [V, H] (same float dtype), target [T] int64 in [0, V). Returns (loss [] fp32,
    differentiable in hidden and weight; logp [T] and entropy [T] (None without `with_entropy`), fp32,
    detached). `backend`, `chunk_bytes`: as in `linear_cross_entropy`.
    """
    check_lm_head_args(hidden, weight, target)
    if not temperature > 0.0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    backend = resolve_backend(backend, hidden.device)
    if backend == "ref":
        out = linear_logprobs_ref(hidden, weight, target, temperature=temperature, with_entropy=with_entropy)
        logp, entropy = out if with_entropy else (out, None)
        loss = token_loss(logp, entropy, 0, hidden.shape[0]).sum()
        return loss, logp.detach(), None if entropy is None else entropy.detach()
    chunk_bytes = resolve_chunk_bytes(chunk_bytes, hidden.device, weight)
    grad_enabled = torch.is_grad_enabled()
    return _LogprobLoss.apply(hidden, weight, target, token_loss, float(temperature), bool(with_entropy), backend,
                              chunk_bytes, grad_enabled and hidden.requires_grad, grad_enabled and weight.requires_grad)
