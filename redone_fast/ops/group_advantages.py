"""GRPO/DAPO group-relative advantages: `group_advantages(rewards, group_ids, num_groups)`.

Each prompt's G sampled answers form a group. An answer's advantage is its reward relative to its
group (DeepSeekMath's GRPO, arXiv 2402.03300, section 4.1.2):
    seq_i = (r_i - mean_g) / (std_g + eps)     (unbiased std), or r_i - mean_g with scale_by_std=False
(Dr. GRPO, arXiv 2503.20783, which drops the std to remove a difficulty bias). A group whose rewards
are all equal carries no signal: its members get exactly 0 and keep=False, which is DAPO's dynamic
sampling filter (arXiv 2503.14476, section 3.2). A group of one is such a group. With `token_ranges`,
every response token of a packed batch receives its sequence's advantage (`tok`, 0 elsewhere).

Groups need not be contiguous or of equal size. Full semantics: csrc/README.md. Backends: "triton"
(CUDA default: one launch, no host synchronisation), "cuda" / "cpp" (csrc), "torch" and "ref" (the
same vectorised torch code, computed in float64; the CPU fallback and the reference).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from redone_fast.ops._backend import resolve_backend


@dataclass(frozen=True)
class GroupAdvantages:
    seq: Tensor  # [N] fp32: each sequence's advantage
    tok: Tensor | None  # [num_tokens] fp32: the advantage of each token's sequence, 0 outside ranges
    mean: Tensor  # [G] fp32
    std: Tensor  # [G] fp32, unbiased; 0 for groups of fewer than two
    keep: Tensor  # [N] bool: False for every member of a group whose rewards are all equal


# ---------------------------------------------------------------------------------------------
# Reference (also the "torch" backend): vectorised scatter reductions in float64
# ---------------------------------------------------------------------------------------------
def group_advantages_ref(
    rewards: Tensor, group_ids: Tensor, num_groups: int, *, scale_by_std: bool = True, eps: float = 1e-6,
    token_ranges: Tensor | None = None, num_tokens: int | None = None,
) -> GroupAdvantages:
    r = rewards.double()
    zeros = torch.zeros(num_groups, dtype=torch.float64, device=r.device)
    count = zeros.index_add(0, group_ids, torch.ones_like(r))
    mean = zeros.index_add(0, group_ids, r) / count.clamp(min=1)
    deviation = r - mean[group_ids]
    sq = zeros.index_add(0, group_ids, deviation.square())
    std = torch.where(count > 1, (sq / (count - 1).clamp(min=1)).sqrt(), 0.0)
    low = torch.full_like(zeros, float("inf")).scatter_reduce(0, group_ids, r, "amin")
    high = torch.full_like(zeros, float("-inf")).scatter_reduce(0, group_ids, r, "amax")
    keep = high[group_ids] > low[group_ids]
    seq = deviation / (std[group_ids] + eps) if scale_by_std else deviation
    seq = torch.where(keep, seq, 0.0).float()
    tok = None
    if token_ranges is not None:
        tok = torch.zeros(num_tokens, dtype=torch.float32, device=r.device)
        starts, ends = token_ranges[:, 0], token_ranges[:, 1]
        lengths = ends - starts
        owner = torch.repeat_interleave(torch.arange(len(seq), device=r.device), lengths)  # [tokens in ranges]
        owner_start = torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)  # where its owner's run begins
        offset = torch.arange(len(owner), device=r.device) - owner_start
        tok[starts[owner] + offset] = seq[owner]
    return GroupAdvantages(seq, tok, mean.float(), std.float(), keep)


# ---------------------------------------------------------------------------------------------
# Validation: data checks read the tensors (a host sync), so on CUDA they run only when asked
# ---------------------------------------------------------------------------------------------
def _check_static(rewards, group_ids, num_groups, token_ranges, num_tokens):
    if rewards.dim() != 1 or not rewards.is_floating_point():
        raise ValueError(f"rewards must be a 1-D float tensor, got shape {tuple(rewards.shape)} {rewards.dtype}")
    if group_ids.shape != rewards.shape or group_ids.dtype != torch.int64:
        raise ValueError(
            f"group_ids must be int64 [N={rewards.shape[0]}], got {tuple(group_ids.shape)} {group_ids.dtype}"
        )
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    if group_ids.device != rewards.device:
        raise ValueError(f"group_ids is on {group_ids.device}, rewards on {rewards.device}")
    if (token_ranges is None) != (num_tokens is None):
        raise ValueError("token_ranges and num_tokens go together: give both or neither")
    if token_ranges is not None:
        if token_ranges.shape != (rewards.shape[0], 2) or token_ranges.dtype != torch.int64:
            raise ValueError(f"token_ranges must be int64 [N={rewards.shape[0]}, 2], "
                             f"got {tuple(token_ranges.shape)} {token_ranges.dtype}")
        if token_ranges.device != rewards.device:
            raise ValueError(f"token_ranges is on {token_ranges.device}, rewards on {rewards.device}")
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")


def validate_group_advantages_inputs(rewards, group_ids, num_groups, token_ranges, num_tokens) -> None:
    """Data checks: NaN or infinite rewards, group ids out of range, token ranges reversed, out of
    bounds or overlapping. Each error names the first offending index."""
    bad = ~torch.isfinite(rewards)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"rewards[{i}] = {rewards[i].item()} is not finite")
    bad = (group_ids < 0) | (group_ids >= num_groups)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"group_ids[{i}] = {int(group_ids[i])} is outside [0, num_groups={num_groups})")
    if token_ranges is None:
        return
    starts, ends = token_ranges[:, 0], token_ranges[:, 1]
    bad = (starts < 0) | (ends < starts) | (ends > num_tokens)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"token_ranges[{i}] = [{int(starts[i])}, {int(ends[i])}) is not a range within [0, num_tokens={num_tokens})"
        )
    nonempty = (ends > starts).nonzero()[:, 0]
    order = nonempty[torch.argsort(starts[nonempty], stable=True)]
    overlap = ends[order[:-1]] > starts[order[1:]]
    if overlap.any():
        k = int(overlap.nonzero()[0, 0])
        a, b = int(order[k]), int(order[k + 1])
        raise ValueError(
            f"token_ranges[{a}] = [{int(starts[a])}, {int(ends[a])}) "
            f"overlaps token_ranges[{b}] = [{int(starts[b])}, {int(ends[b])})"
        )


# ---------------------------------------------------------------------------------------------
# Custom op (torch.compile traces it; no gradient: advantages are constants of the policy loss)
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("redone_fast::group_advantages", mutates_args=())
def _group_advantages_op(
    rewards: Tensor, group_ids: Tensor, num_groups: int, scale_by_std: bool, eps: float,
    token_ranges: Tensor | None, num_tokens: int, backend: str, validate: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (seq, tok (empty without token_ranges), mean, std, keep)."""
    ranges = token_ranges.contiguous() if token_ranges is not None else None
    tokens = num_tokens if ranges is not None else None
    if validate:
        validate_group_advantages_inputs(rewards, group_ids, num_groups, ranges, tokens)
    rewards, group_ids = rewards.float().contiguous(), group_ids.contiguous()
    if backend in ("torch", "ref"):
        out = group_advantages_ref(rewards, group_ids, num_groups, scale_by_std=scale_by_std, eps=eps,
                                   token_ranges=ranges, num_tokens=tokens)
        tok = out.tok if out.tok is not None else rewards.new_empty(0)
        return out.seq, tok, out.mean, out.std, out.keep
    if backend == "triton":
        from redone_fast.kernels import group_advantages as triton_kernel

        seq, tok, mean, std, keep, state = triton_kernel.group_advantages(
            rewards, group_ids, num_groups, scale_by_std, eps, ranges, num_tokens
        )
        if validate and int(state[2]) != 0:
            raise RuntimeError("group_advantages: a grid barrier timed out (results are invalid)")
        if not validate:
            # No host sync on the hot path; still never train on the outputs of a timed-out barrier (a
            # bug, which the cooperative launch should rule out): a device-side assert fails the process.
            torch._assert_async(state[2] == 0, "group_advantages: a grid barrier timed out")
        return seq, tok, mean, std, keep
    seq, tok, mean, std, keep = torch.ops.redone_fast_C.group_advantages(
        rewards, group_ids, num_groups, scale_by_std, eps, ranges, num_tokens
    )
    return seq, tok, mean, std, keep


@_group_advantages_op.register_fake
def _(rewards, group_ids, num_groups, scale_by_std, eps, token_ranges, num_tokens, backend, validate):
    n = rewards.shape[0]
    f32 = dict(dtype=torch.float32, device=rewards.device)
    tok = rewards.new_empty(num_tokens if token_ranges is not None else 0, dtype=torch.float32)
    return (rewards.new_empty(n, **f32), tok, rewards.new_empty(num_groups, **f32),
            rewards.new_empty(num_groups, **f32), rewards.new_empty(n, dtype=torch.bool))


def group_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    num_groups: int,
    *,
    scale_by_std: bool = True,
    eps: float = 1e-6,
    token_ranges: Tensor | None = None,
    num_tokens: int | None = None,
    backend: str | None = None,
    validate: bool | None = None,
) -> GroupAdvantages:
    """Group-relative advantages of `rewards` [N] (float) under `group_ids` [N] (int64 in [0, num_groups)).

    token_ranges [N, 2] int64 ([start, end) of the tokens that carry sequence i's advantage; disjoint,
    within [0, num_tokens)) with num_tokens gives `tok` [num_tokens]. `validate` checks the data (NaN
    rewards, ids out of range, bad or overlapping ranges) at the cost of a host synchronisation:
    default on for CPU tensors, off for CUDA.
    """
    _check_static(rewards, group_ids, num_groups, token_ranges, num_tokens)
    backend = resolve_backend(backend, rewards.device)
    if validate is None:
        validate = rewards.device.type == "cpu"
    seq, tok, mean, std, keep = torch.ops.redone_fast.group_advantages(
        rewards, group_ids, int(num_groups), bool(scale_by_std), float(eps), token_ranges,
        int(num_tokens) if num_tokens is not None else 0, backend, bool(validate),
    )
    return GroupAdvantages(seq, tok if token_ranges is not None else None, mean, std, keep)
