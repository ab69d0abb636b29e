"""Triton row kernels for the fused LM-head ops (installed as `redone_fast.kernels.lm_head_rows`).

One program per row of a logits chunk [n, V]; it walks the vocabulary in blocks of BLOCK_V with an
online softmax kept per lane (each lane's running max and rescaled sum, one exp per element, reduced
across lanes once per row rather than once per block), so a row is read once for its statistics and
once more when its gradient is written in place. Whole blocks are loaded unmasked and the remainder in
one masked tail block, so the loads vectorise whatever V is, provided the row stride is a multiple of 16
elements: the ops pad the chunk's rows to one (`ROW_ALIGN`), the model's vocabulary stays as it is.
The target's logit is one scalar load. All arithmetic is fp32: every load is cast right away, which
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

ROW_ALIGN = 16  # elements: a row stride the compiler can prove 16-divisible gives 16-byte vector loads


def working_bytes_per_logit(dtype: torch.dtype) -> int:
    # The kernels keep nothing of the chunk's shape besides the logits themselves (written in place).
    return torch.empty((), dtype=dtype).element_size()


# Vocabulary block and warps per row program: 2 to 8 values per thread and lane state (max, sum,
# shift, total) of the same shape. Chosen by the compile report (python -m redone_fast.kernels.aot_check),
# not yet timed on a GPU: with 8 warps, the 4096 block spilled on sm_80 (ce_grad bf16 with softcap) and so
# did the 2048 block (row_stats fp32 on unpadded rows); with 16 warps neither spills in any variant. Under
# the interpreter a block is one numpy operation, so larger blocks only make tests faster.
_BLOCKS = ((1024, 1024, 4), (8192, 2048, 16), (None, 4096, 16))  # (max V, BLOCK_V, num_warps)


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
def _transform(z, inv_temperature, softcap, HAS_SOFTCAP: tl.constexpr):
    z = z.to(tl.float32)
    if HAS_SOFTCAP:
        z = softcap * _tanh(z / softcap)
    return z * inv_temperature


@triton.jit
def _online_update(s, lane_max, lane_sum, lane_shift, NEED_ENTROPY: tl.constexpr):
    """One element per lane into the lane's online softmax: lane_sum = sum exp(s - lane_max) and
    lane_shift = sum exp(s - lane_max) * (s - lane_max). One exp per element, no cross-lane work:
    e = exp(-|s - m|) is the new element's weight when s <= m, and the old sum's rescale when s > m."""
    bigger = s > lane_max
    diff = s - lane_max  # +inf while the lane is empty (lane_max = -inf): then e = 0
    e = tl.exp(-tl.abs(diff))
    if NEED_ENTROPY:
        # s > m: the old shift rebased to the new max s, e * (shift + (m - s) * sum); else add e * (s - m).
        # The selects keep an empty lane's -inf out of every product (no 0 * inf = NaN, even unselected).
        finite_diff = tl.where(lane_sum > 0.0, diff, 0.0)
        lane_shift = tl.where(bigger, e * (lane_shift - finite_diff * lane_sum), lane_shift + e * finite_diff)
    lane_sum = tl.where(bigger, lane_sum * e + 1.0, lane_sum + e)
    return tl.maximum(lane_max, s), lane_sum, lane_shift


@triton.jit
def _row_stats_kernel(
    logits_ptr, stride_row, target_ptr,
    lse_ptr, target_logit_ptr, sum_ptr, entropy_ptr,
    vocab, inv_temperature, softcap,
    HAS_SOFTCAP: tl.constexpr, NEED_SUM: tl.constexpr, NEED_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    offsets = tl.arange(0, BLOCK_V)

    # Per-lane state, reduced across lanes once after the loop (not once per block).
    lane_max = tl.full([BLOCK_V], float("-inf"), tl.float32)
    lane_sum = tl.zeros([BLOCK_V], tl.float32)
    lane_shift = tl.zeros([BLOCK_V], tl.float32)
    lane_total = tl.zeros([BLOCK_V], tl.float32)
    # Whole blocks unmasked, so their loads vectorise whatever V is; then one masked tail block.
    full_end = (vocab // BLOCK_V) * BLOCK_V
    for start in range(0, full_end, BLOCK_V):
        s = _transform(tl.load(row_ptr + start + offsets), inv_temperature, softcap, HAS_SOFTCAP)
        lane_max, lane_sum, lane_shift = _online_update(s, lane_max, lane_sum, lane_shift, NEED_ENTROPY)
        if NEED_SUM:
            lane_total += s
    if full_end < vocab:
        cols = full_end + offsets
        mask = cols < vocab
        s = _transform(tl.load(row_ptr + cols, mask=mask, other=0.0), inv_temperature, softcap, HAS_SOFTCAP)
        new_max, new_sum, new_shift = _online_update(s, lane_max, lane_sum, lane_shift, NEED_ENTROPY)
        lane_max = tl.where(mask, new_max, lane_max)
        lane_sum = tl.where(mask, new_sum, lane_sum)
        lane_shift = tl.where(mask, new_shift, lane_shift)
        if NEED_SUM:
            lane_total += tl.where(mask, s, 0.0)

    row_max = tl.max(lane_max, axis=0)
    weight = tl.exp(lane_max - row_max)  # 0 for lanes that saw nothing
    denom = tl.sum(lane_sum * weight, axis=0)
    lse = row_max + tl.log(denom)
    tl.store(lse_ptr + row, lse)
    # The target's logit: one scalar load, 0 for a target outside [0, V) (an ignored row).
    target = tl.load(target_ptr + row)
    in_vocab = (target >= 0) & (target < vocab)
    target_logit = _transform(tl.load(row_ptr + target, mask=in_vocab, other=0.0), inv_temperature, softcap,
                              HAS_SOFTCAP)
    tl.store(target_logit_ptr + row, tl.where(in_vocab, target_logit, 0.0))
    if NEED_SUM:
        tl.store(sum_ptr + row, tl.sum(lane_total, axis=0))
    if NEED_ENTROPY:
        # sum e * (s - row_max) = sum_lanes weight * (shift + (lane_max - row_max) * lane_sum); then
        # H = lse - E[s] = log(denom) - shifted / denom, relative to the max: no cancellation of large logits
        drop = tl.where(lane_sum > 0.0, lane_max - row_max, 0.0)  # an empty lane: weight 0, no -inf
        rebased = weight * (lane_shift + drop * lane_sum)
        tl.store(entropy_ptr + row, tl.log(denom) - tl.sum(rebased, axis=0) / denom)


@triton.jit
def _ce_grad_block(row_ptr, cols, mask, target, lse, scale, prob_coef, vocab, label_smoothing, softcap,
                   HAS_SOFTCAP: tl.constexpr, MASKED: tl.constexpr):
    if MASKED:
        s = _transform(tl.load(row_ptr + cols, mask=mask, other=0.0), 1.0, softcap, HAS_SOFTCAP)
    else:
        s = _transform(tl.load(row_ptr + cols), 1.0, softcap, HAS_SOFTCAP)
    grad = tl.exp(s - lse) * prob_coef - label_smoothing / vocab
    grad = tl.where(cols == target, grad - (1.0 - label_smoothing), grad)
    if HAS_SOFTCAP:
        capped = s / softcap
        grad = grad * (1.0 - capped * capped)
    grad = (grad * scale).to(row_ptr.dtype.element_ty)
    if MASKED:
        tl.store(row_ptr + cols, grad, mask=mask)
    else:
        tl.store(row_ptr + cols, grad)


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
    full_end = (vocab // BLOCK_V) * BLOCK_V  # whole blocks unmasked (vectorised), then a masked tail
    for start in range(0, full_end, BLOCK_V):
        _ce_grad_block(row_ptr, start + offsets, None, target, lse, scale, prob_coef, vocab, label_smoothing,
                       softcap, HAS_SOFTCAP, False)
    if full_end < vocab:
        cols = full_end + offsets
        _ce_grad_block(row_ptr, cols, cols < vocab, target, lse, scale, prob_coef, vocab, label_smoothing,
                       softcap, HAS_SOFTCAP, True)


@triton.jit
def _logprob_grad_block(row_ptr, cols, mask, target, lse, g_logp, g_entropy, expected, inv_temperature,
                        MASKED: tl.constexpr):
    if MASKED:
        s = _transform(tl.load(row_ptr + cols, mask=mask, other=0.0), inv_temperature, 0.0, False)
    else:
        s = _transform(tl.load(row_ptr + cols), inv_temperature, 0.0, False)
    p = tl.exp(s - lse)
    # d logp_t/ds = [j == t] - p;  dH/ds = -p (s - E_p[s])
    grad = tl.where(cols == target, g_logp, 0.0) - g_logp * p - g_entropy * p * (s - expected)
    grad = (grad * inv_temperature).to(row_ptr.dtype.element_ty)
    if MASKED:
        tl.store(row_ptr + cols, grad, mask=mask)
    else:
        tl.store(row_ptr + cols, grad)


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
    full_end = (vocab // BLOCK_V) * BLOCK_V  # whole blocks unmasked (vectorised), then a masked tail
    for start in range(0, full_end, BLOCK_V):
        _logprob_grad_block(row_ptr, start + offsets, None, target, lse, g_logp, g_entropy, expected,
                            inv_temperature, False)
    if full_end < vocab:
        cols = full_end + offsets
        _logprob_grad_block(row_ptr, cols, cols < vocab, target, lse, g_logp, g_entropy, expected,
                            inv_temperature, True)


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
