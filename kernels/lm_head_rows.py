"""Triton row kernels for the fused LM-head ops (installed as `redone_fast.kernels.lm_head_rows`).

One program per row of a logits chunk [n, V]; it walks the vocabulary in blocks of BLOCK_V with an
online softmax (running max, rescaled sum), so a row is read once for its statistics and once more
when its gradient is written in place. All arithmetic is fp32: every load is cast right away, which
also keeps the kernels correct under TRITON_INTERPRET=1, where uncast bf16 arithmetic is wrong.

Transformed logits (same as redone_fast/ops/_torch_rows.py, the torch twin of this file):
    s = softcap * tanh(z / softcap)   (when softcap > 0), then s * inv_temperature.
Each launcher has the signature and semantics of its torch twin.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from redone_fast.kernels.launch import device_guard


def working_bytes_per_logit(dtype: torch.dtype) -> int:
    # The kernels keep nothing of the chunk's shape besides the logits themselves (written in place).
    return torch.empty((), dtype=dtype).element_size()


# Vocabulary block and warps per row program. Initial choice, not yet measured on a GPU: a block
# of 4096 fp32 values is 16 KB of registers across 8 warps (16 values per thread). Under the
# interpreter the block is one numpy operation, so larger blocks only make tests faster.
_BLOCKS = ((1024, 1024, 4), (8192, 2048, 8), (None, 4096, 8))  # (max V, BLOCK_V, num_warps)


def _launch_config(vocab: int) -> tuple[int, int]:
    for max_vocab, block, warps in _BLOCKS:
        if max_vocab is None or vocab <= max_vocab:
            return min(block, triton.next_power_of_2(vocab)), warps
    raise AssertionError("unreachable")


@triton.jit
def _tanh(x):
    # tl.math.tanh is not in every Triton release. (1 - e) / (1 + e) with e = exp(-2|x|) cannot overflow
    # but cancels for small |x| (4e-4 relative error at |x| = 3e-5, as a softcap of 30 gives small
    # logits): there the odd Taylor series to x^11 is used instead (< 1e-9 relative below 0.25).
    a = tl.abs(x)
    e = tl.exp(-2.0 * a)
    t = (1.0 - e) / (1.0 + e)
    a2 = a * a
    series = a * (1.0 + a2 * (-1.0 / 3.0 + a2 * (2.0 / 15.0 + a2 * (-17.0 / 315.0 + a2 * (
        62.0 / 2835.0 + a2 * (-1382.0 / 155925.0))))))
    t = tl.where(a < 0.25, series, t)
    return tl.where(x < 0, -t, t)


@triton.jit
def _load_transformed(row_ptr, cols, mask, inv_temperature, softcap, HAS_SOFTCAP: tl.constexpr):
    z = tl.load(row_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_SOFTCAP:
        z = softcap * _tanh(z / softcap)
    return z * inv_temperature


@triton.jit
def _row_stats_kernel(
    logits_ptr, stride_row, target_ptr,
    lse_ptr, target_logit_ptr, sum_ptr, entropy_ptr,
    vocab, inv_temperature, softcap,
    HAS_SOFTCAP: tl.constexpr, NEED_SUM: tl.constexpr, NEED_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    target = tl.load(target_ptr + row)
    offsets = tl.arange(0, BLOCK_V)

    running_max = float("-inf")
    denom = 0.0  # sum of exp(s - running_max)
    shifted = 0.0  # sum of exp(s - running_max) * (s - running_max), for the entropy
    total = 0.0
    target_logit = 0.0
    for start in range(0, vocab, BLOCK_V):
        cols = start + offsets
        mask = cols < vocab
        s = _load_transformed(row_ptr, cols, mask, inv_temperature, softcap, HAS_SOFTCAP)
        s_or_zero = tl.where(mask, s, 0.0)
        new_max = tl.maximum(running_max, tl.max(tl.where(mask, s, float("-inf")), axis=0))
        rescale = tl.exp(running_max - new_max)
        e = tl.where(mask, tl.exp(s - new_max), 0.0)
        if NEED_ENTROPY:
            # sum e * (s - m) rebased from the old max to the new one: e_old * (s - m_new) = e_old * (s - m_old) + e_old * (m_old - m_new)
            # (before the first block denom is 0 and running_max -inf: use 0, not -inf * 0 = NaN)
            max_drop = tl.where(denom > 0.0, running_max - new_max, 0.0)
            shifted = rescale * (shifted + max_drop * denom) + tl.sum(e * (s_or_zero - new_max), axis=0)
        denom = denom * rescale + tl.sum(e, axis=0)
        if NEED_SUM:
            total += tl.sum(s_or_zero, axis=0)
        target_logit += tl.sum(tl.where(cols == target, s_or_zero, 0.0), axis=0)
        running_max = new_max

    lse = running_max + tl.log(denom)
    tl.store(lse_ptr + row, lse)
    tl.store(target_logit_ptr + row, target_logit)
    if NEED_SUM:
        tl.store(sum_ptr + row, total)
    if NEED_ENTROPY:
        # H = lse - E[s] = log(denom) - shifted / denom, both relative to the max: no cancellation of large logits
        tl.store(entropy_ptr + row, tl.log(denom) - shifted / denom)


@triton.jit
def _ce_grad_kernel(
    logits_ptr, stride_row, target_ptr, lse_ptr, scale_ptr,
    vocab, label_smoothing, z_loss, softcap,
    HAS_SOFTCAP: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    target = tl.load(target_ptr + row)
    lse = tl.load(lse_ptr + row)
    scale = tl.load(scale_ptr + row)
    prob_coef = 1.0 + 2.0 * z_loss * lse  # z-loss: d(z * lse^2)/ds = 2 z lse p
    offsets = tl.arange(0, BLOCK_V)
    for start in range(0, vocab, BLOCK_V):
        cols = start + offsets
        mask = cols < vocab
        s = _load_transformed(row_ptr, cols, mask, 1.0, softcap, HAS_SOFTCAP)
        grad = tl.exp(s - lse) * prob_coef - label_smoothing / vocab
        grad = tl.where(cols == target, grad - (1.0 - label_smoothing), grad)
        if HAS_SOFTCAP:
            capped = s / softcap
            grad = grad * (1.0 - capped * capped)
        tl.store(row_ptr + cols, (grad * scale).to(logits_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _logprob_grad_kernel(
    logits_ptr, stride_row, target_ptr, lse_ptr, entropy_ptr, grad_logp_ptr, grad_entropy_ptr,
    vocab, inv_temperature,
    HAS_GRAD_LOGP: tl.constexpr, HAS_GRAD_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    target = tl.load(target_ptr + row)
    lse = tl.load(lse_ptr + row)
    g_logp = 0.0
    if HAS_GRAD_LOGP:
        g_logp = tl.load(grad_logp_ptr + row)
    g_entropy = 0.0
    expected = 0.0
    if HAS_GRAD_ENTROPY:
        g_entropy = tl.load(grad_entropy_ptr + row)
        expected = lse - tl.load(entropy_ptr + row)  # E_p[s]
    offsets = tl.arange(0, BLOCK_V)
    for start in range(0, vocab, BLOCK_V):
        cols = start + offsets
        mask = cols < vocab
        s = _load_transformed(row_ptr, cols, mask, inv_temperature, 0.0, False)
        p = tl.exp(s - lse)
        # d logp_t/ds = [j == t] - p;  dH/ds = -p (s - E_p[s])
        grad = tl.where(cols == target, g_logp, 0.0) - g_logp * p - g_entropy * p * (s - expected)
        tl.store(row_ptr + cols, (grad * inv_temperature).to(logits_ptr.dtype.element_ty), mask=mask)


def _check_chunk(logits: torch.Tensor) -> None:
    if logits.stride(1) != 1:
        raise ValueError("logits chunk must be contiguous along the vocabulary")


def row_stats(logits, target, *, inv_temperature=1.0, softcap=0.0, need_sum=False, need_entropy=False):
    """(lse, target_logit, sum_logits or None, entropy or None), each [n] fp32, over transformed logits."""
    _check_chunk(logits)
    rows, vocab = logits.shape
    lse = torch.empty(rows, dtype=torch.float32, device=logits.device)
    target_logit = torch.empty_like(lse)
    sums = torch.empty_like(lse) if need_sum else None
    entropy = torch.empty_like(lse) if need_entropy else None
    if rows:
        block, warps = _launch_config(vocab)
        with device_guard(logits.device):
            _row_stats_kernel[(rows,)](
                logits, logits.stride(0), target,
                lse, target_logit, sums if need_sum else lse, entropy if need_entropy else lse,
                vocab, float(inv_temperature), float(softcap),
                HAS_SOFTCAP=softcap > 0.0, NEED_SUM=need_sum, NEED_ENTROPY=need_entropy,
                BLOCK_V=block, num_warps=warps,
            )
    return lse, target_logit, sums, entropy


def ce_grad_(logits, target, lse, row_scale, *, label_smoothing=0.0, z_loss=0.0, softcap=0.0):
    """Overwrite logits with row_scale * d(loss)/d(logits) for
    loss = lse - (1 - eps) * s_t - eps / V * sum(s) + z_loss * lse^2."""
    _check_chunk(logits)
    rows, vocab = logits.shape
    if rows:
        block, warps = _launch_config(vocab)
        with device_guard(logits.device):
            _ce_grad_kernel[(rows,)](
                logits, logits.stride(0), target, lse, row_scale.float().contiguous(),
                vocab, float(label_smoothing), float(z_loss), float(softcap),
                HAS_SOFTCAP=softcap > 0.0, BLOCK_V=block, num_warps=warps,
            )


def logprob_grad_(logits, target, lse, entropy, grad_logp, grad_entropy, *, inv_temperature=1.0):
    """Overwrite logits with the gradient of sum(grad_logp * logp + grad_entropy * entropy)."""
    _check_chunk(logits)
    rows, vocab = logits.shape
    if rows:
        block, warps = _launch_config(vocab)
        with device_guard(logits.device):
            _logprob_grad_kernel[(rows,)](
                logits, logits.stride(0), target, lse,
                entropy if entropy is not None else lse,
                grad_logp.float().contiguous() if grad_logp is not None else lse,
                grad_entropy.float().contiguous() if grad_entropy is not None else lse,
                vocab, float(inv_temperature),
                HAS_GRAD_LOGP=grad_logp is not None, HAS_GRAD_ENTROPY=grad_entropy is not None,
                BLOCK_V=block, num_warps=warps,
            )
