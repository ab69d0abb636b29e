"""Triton group-relative advantages in one launch (installed as `redone_fast.kernels.group_advantages`).

Semantics: csrc/README.md (`group_advantages`). Groups are arbitrary (not contiguous, not equal-sized),
so per-group statistics need a reduction over all samples before any advantage can be written. One
launch does it as a persistent kernel: `num_programs` programs (at most one per SM, launched as a
cooperative grid so the driver guarantees they are all resident at once) run phases separated by a
grid-wide barrier built on atomics:

  0. zero the per-group workspace and the token output
  1. per-group count, sum (fp64), min and max (atomics)
  2. per-group sum of squared deviations from the mean (fp64; two-pass variance: no cancellation)
  3. per-group mean and std; per-sample advantage and keep mask; then each sample's token range, with
     the advantage recomputed from the group statistics (final since barrier 2) rather than read back
     from `seq`, which another program may still be writing: no cross-program dependency, no barrier.

Accumulation matches the CUDA kernel (csrc/cuda/group_advantages.cu): integer counts, fp64 sums and
squared deviations, the mean and std rounded to fp32 once, the advantage in fp32.

Cross-program data only ever moves through atomics and volatile (L1-bypassing) loads. The barrier
state (arrived, generation, error flag) is a fresh zeroed int32 buffer per launch (a memset, which a CUDA
graph captures too), so a barrier that timed out can never leave a half-counted state to the next
launch. A barrier that waits too long (a bug: the cooperative launch rules out non-resident programs)
sets the error flag and gives up instead of hanging the GPU; the op raises on it (validate=True) or
fails a device-side assert (validate=False: no host sync).

`num_programs` is a runtime argument (not specialised): a new batch shape does not compile a new kernel.
Under TRITON_INTERPRET=1 programs run one after another, so a barrier could never be passed: the
launcher then uses a single program, which skips the barrier.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from redone_fast.kernels.launch import device_guard

BLOCK = 1024  # samples / groups per vector step
TOKEN_BLOCK = 1024  # tokens per vector store
NUM_WARPS = 4
ALL_PHASES = tl.constexpr(-1)  # the kernel's PHASE for a real launch
MAX_SPINS = 1 << 24  # a barrier waiting longer than this (seconds on a GPU) is a bug: flag it, don't hang


@triton.jit
def _grid_barrier(state_ptr, num_programs, MAX_SPINS: tl.constexpr):
    """Sense-by-generation barrier: state = [arrived, generation, error]. The last program to arrive
    resets `arrived` and advances the generation; the others wait for the generation to change."""
    if num_programs > 1:
        tl.debug_barrier()  # every thread of this program has issued its writes
        generation = tl.atomic_add(state_ptr + 1, 0)
        arrived = tl.atomic_add(state_ptr, 1)
        if arrived == num_programs - 1:
            tl.atomic_xchg(state_ptr, 0)
            tl.atomic_add(state_ptr + 1, 1)
        else:
            spins = 0
            while (tl.atomic_add(state_ptr + 1, 0) == generation) & (spins < MAX_SPINS):
                spins += 1
            if spins >= MAX_SPINS:
                tl.atomic_xchg(state_ptr + 2, 1)
        tl.debug_barrier()


@triton.jit
def _group_mean_std(count_ptr, sum_ptr, sq_ptr, g, mask):
    """Mean and unbiased std of groups g (fp64 sums divided in fp64, then rounded to fp32 once)."""
    count = tl.load(count_ptr + g, mask=mask, other=0, volatile=True)
    total = tl.load(sum_ptr + g, mask=mask, other=0.0, volatile=True)
    mean = (total / tl.maximum(count, 1).to(tl.float64)).to(tl.float32)
    sq = tl.load(sq_ptr + g, mask=mask, other=0.0, volatile=True)
    std = tl.sqrt(sq / tl.maximum(count - 1, 1).to(tl.float64)).to(tl.float32)
    return count, mean, tl.where(count > 1, std, 0.0)


@triton.jit
def _sample_advantage(rewards_ptr, group_ids_ptr, count_ptr, sum_ptr, sq_ptr, min_ptr, max_ptr, i, mask, eps,
                      SCALE_BY_STD: tl.constexpr):
    """(advantage, keep) of samples i (a block or a scalar), from the final group statistics. An
    all-equal group gets exactly 0, never a rounding residue of its mean divided by eps."""
    r = tl.load(rewards_ptr + i, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(group_ids_ptr + i, mask=mask, other=0)
    count, mean, std = _group_mean_std(count_ptr, sum_ptr, sq_ptr, g, mask)
    keep = tl.load(max_ptr + g, mask=mask, other=0.0, volatile=True) > tl.load(
        min_ptr + g, mask=mask, other=0.0, volatile=True)
    advantage = r - mean
    if SCALE_BY_STD:
        advantage = advantage / (std + eps)
    return tl.where(keep, advantage, 0.0), keep


@triton.jit(do_not_specialize=["num_programs"])
def _group_advantages_kernel(
    rewards_ptr, group_ids_ptr, ranges_ptr,
    seq_ptr, tok_ptr, mean_ptr, std_ptr, keep_ptr,
    count_ptr, sum_ptr, sq_ptr, min_ptr, max_ptr, state_ptr,
    num_samples, num_groups, num_tokens, eps, num_programs,
    SCALE_BY_STD: tl.constexpr, HAS_TOKENS: tl.constexpr,
    BLOCK: tl.constexpr, TOKEN_BLOCK: tl.constexpr, MAX_SPINS: tl.constexpr, PHASE: tl.constexpr,
):
    """PHASE = ALL_PHASES runs the whole computation (the launcher); PHASE = 0..3 runs that phase alone,
    so tests can stand in launch boundaries for the barriers and simulate many programs under the
    sequential interpreter."""
    pid = tl.program_id(0)
    lanes = tl.arange(0, BLOCK)
    token_lanes = tl.arange(0, TOKEN_BLOCK)

    # Phase 0: zero the workspace and the token output.
    if (PHASE == ALL_PHASES) or (PHASE == 0):
        for group_start in range(pid * BLOCK, num_groups, num_programs * BLOCK):
            g = group_start + lanes
            mask = g < num_groups
            tl.store(count_ptr + g, tl.zeros([BLOCK], dtype=tl.int32), mask=mask)
            tl.store(sum_ptr + g, tl.zeros([BLOCK], dtype=tl.float64), mask=mask)
            tl.store(sq_ptr + g, tl.zeros([BLOCK], dtype=tl.float64), mask=mask)
            tl.store(min_ptr + g, tl.full([BLOCK], float("inf"), tl.float32), mask=mask)
            tl.store(max_ptr + g, tl.full([BLOCK], float("-inf"), tl.float32), mask=mask)
        if HAS_TOKENS:
            for fill_start in range(pid * TOKEN_BLOCK, num_tokens, num_programs * TOKEN_BLOCK):
                t = fill_start + token_lanes
                tl.store(tok_ptr + t, tl.zeros([TOKEN_BLOCK], dtype=tl.float32), mask=t < num_tokens)
    if PHASE == ALL_PHASES:
        _grid_barrier(state_ptr, num_programs, MAX_SPINS)

    # Phase 1: count, sum, min, max per group.
    if (PHASE == ALL_PHASES) or (PHASE == 1):
        for sample_start in range(pid * BLOCK, num_samples, num_programs * BLOCK):
            i = sample_start + lanes
            mask = i < num_samples
            r = tl.load(rewards_ptr + i, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(group_ids_ptr + i, mask=mask, other=0)
            tl.atomic_add(count_ptr + g, tl.full([BLOCK], 1, tl.int32), mask=mask)
            tl.atomic_add(sum_ptr + g, r.to(tl.float64), mask=mask)
            tl.atomic_min(min_ptr + g, r, mask=mask)
            tl.atomic_max(max_ptr + g, r, mask=mask)
    if PHASE == ALL_PHASES:
        _grid_barrier(state_ptr, num_programs, MAX_SPINS)

    # Phase 2: squared deviations from the group mean (the fp64 mean, as the CUDA kernel).
    if (PHASE == ALL_PHASES) or (PHASE == 2):
        for sample_start in range(pid * BLOCK, num_samples, num_programs * BLOCK):
            i = sample_start + lanes
            mask = i < num_samples
            r = tl.load(rewards_ptr + i, mask=mask, other=0.0).to(tl.float64)
            g = tl.load(group_ids_ptr + i, mask=mask, other=0)
            count = tl.load(count_ptr + g, mask=mask, other=1, volatile=True)
            mean = tl.load(sum_ptr + g, mask=mask, other=0.0, volatile=True) / tl.maximum(count, 1).to(tl.float64)
            tl.atomic_add(sq_ptr + g, (r - mean) * (r - mean), mask=mask)
    if PHASE == ALL_PHASES:
        _grid_barrier(state_ptr, num_programs, MAX_SPINS)

    if (PHASE == ALL_PHASES) or (PHASE == 3):
        # Phase 3a: per-group mean and std.
        for group_start in range(pid * BLOCK, num_groups, num_programs * BLOCK):
            g = group_start + lanes
            mask = g < num_groups
            count, mean, std = _group_mean_std(count_ptr, sum_ptr, sq_ptr, g, mask)
            tl.store(mean_ptr + g, mean, mask=mask)
            tl.store(std_ptr + g, std, mask=mask)

        # Phase 3b: per-sample advantage and keep mask.
        for sample_start in range(pid * BLOCK, num_samples, num_programs * BLOCK):
            i = sample_start + lanes
            mask = i < num_samples
            advantage, keep = _sample_advantage(rewards_ptr, group_ids_ptr, count_ptr, sum_ptr, sq_ptr, min_ptr,
                                                max_ptr, i, mask, eps, SCALE_BY_STD)
            tl.store(seq_ptr + i, advantage, mask=mask)
            tl.store(keep_ptr + i, keep, mask=mask)

        # Phase 3c: each sample's token range carries its advantage, recomputed (see the module docstring).
        if HAS_TOKENS:
            for sample in range(pid, num_samples, num_programs):
                advantage, keep = _sample_advantage(rewards_ptr, group_ids_ptr, count_ptr, sum_ptr, sq_ptr,
                                                    min_ptr, max_ptr, sample, sample < num_samples, eps,
                                                    SCALE_BY_STD)
                begin = tl.maximum(tl.load(ranges_ptr + 2 * sample), 0)
                end = tl.minimum(tl.load(ranges_ptr + 2 * sample + 1), num_tokens)
                for range_start in range(begin, end, TOKEN_BLOCK):
                    t = range_start + token_lanes
                    tl.store(tok_ptr + t, tl.zeros([TOKEN_BLOCK], dtype=tl.float32) + advantage, mask=t < end)


def num_programs(device: torch.device, num_samples: int, num_groups: int, num_tokens: int) -> int:
    """At most one program per SM (every program must be resident for the grid barrier), and no more
    than the work asks for, since a barrier over fewer programs is cheaper."""
    if device.type != "cuda":  # the interpreter runs programs sequentially: a barrier needs one program
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    work = max(triton.cdiv(max(num_samples, num_groups), BLOCK), triton.cdiv(num_tokens, 64 * TOKEN_BLOCK), 1)
    return min(sms, work)


def group_advantages(rewards, group_ids, num_groups, scale_by_std, eps, token_ranges, num_tokens):
    """-> (seq [N], tok [num_tokens] or [0], mean [G], std [G], keep [N] bool, barrier state [3]).

    rewards [N] fp32 and group_ids [N] int64, contiguous; token_ranges [N, 2] int64 or None. The
    state's third entry is non-zero when a grid barrier timed out (the outputs are then invalid)."""
    device = rewards.device
    num_samples = rewards.shape[0]
    has_tokens = token_ranges is not None
    tokens = num_tokens if has_tokens else 0
    groups = max(num_groups, 1)
    seq = torch.empty(num_samples, dtype=torch.float32, device=device)
    keep = torch.empty(num_samples, dtype=torch.bool, device=device)
    mean = torch.empty(num_groups, dtype=torch.float32, device=device)
    std = torch.empty(num_groups, dtype=torch.float32, device=device)
    tok = torch.empty(tokens, dtype=torch.float32, device=device)
    count = torch.empty(groups, dtype=torch.int32, device=device)
    sums, squares = torch.empty(2, groups, dtype=torch.float64, device=device).unbind(0)
    minimum, maximum = torch.empty(2, groups, dtype=torch.float32, device=device).unbind(0)
    state = torch.zeros(3, dtype=torch.int32, device=device)
    programs = num_programs(device, num_samples, num_groups, tokens)
    # The cooperative launch makes the driver refuse a grid that cannot be co-resident instead of letting
    # the barrier spin; the interpreter has no such option.
    launch_options = {"launch_cooperative_grid": True} if device.type == "cuda" else {}
    with device_guard(device):
        _group_advantages_kernel[(programs,)](
            rewards, group_ids, token_ranges if has_tokens else group_ids,
            seq, tok, mean, std, keep, count, sums, squares, minimum, maximum, state,
            num_samples, num_groups, tokens, float(eps), programs,
            SCALE_BY_STD=scale_by_std, HAS_TOKENS=has_tokens,
            BLOCK=BLOCK, TOKEN_BLOCK=TOKEN_BLOCK, MAX_SPINS=MAX_SPINS, PHASE=ALL_PHASES,
            num_warps=NUM_WARPS, **launch_options,
        )
    return seq, tok, mean, std, keep, state
