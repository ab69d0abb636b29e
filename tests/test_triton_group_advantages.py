"""The Triton group-advantages kernel run as several programs, phase by phase.

Under TRITON_INTERPRET=1 programs run one after another, so a grid barrier can never be passed and the
launcher uses one program. Here each phase is its own launch of P programs (PHASE=0..3): the launch
boundary stands in for the barrier, the work is split exactly as P resident programs split it, and a
phase that read what another program writes in the same phase would read the NaN the buffers start as.
On a GPU the same kernel runs with real barriers (tests/test_group_advantages.py, `cuda-triton`).
"""
import os

import pytest
import torch

from test_group_advantages import direct_float64, make_batch, python_loop

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="simulates programs in the "
                                "Triton interpreter (on a GPU the real barrier runs in test_group_advantages)")


def run_phases(rewards, group_ids, num_groups, ranges, num_tokens, *, programs, block, token_block,
               scale_by_std=True, eps=1e-6):
    from redone_fast.kernels import group_advantages as k

    n, groups = rewards.shape[0], max(num_groups, 1)
    nan = float("nan")
    seq = torch.full((n,), nan)
    tok = torch.full((num_tokens,), nan)
    mean, std = torch.full((num_groups,), nan), torch.full((num_groups,), nan)
    keep = torch.zeros(n, dtype=torch.bool)
    count = torch.full((groups,), -7, dtype=torch.int32)
    sums = torch.full((2, groups), nan, dtype=torch.float64)
    extrema = torch.full((2, groups), nan)
    state = torch.zeros(3, dtype=torch.int32)
    for phase in range(4):
        k._group_advantages_kernel[(programs,)](
            rewards, group_ids, ranges, seq, tok, mean, std, keep, count, sums[0], sums[1], extrema[0],
            extrema[1], state, n, num_groups, num_tokens, eps, programs,
            SCALE_BY_STD=scale_by_std, HAS_TOKENS=True, BLOCK=block, TOKEN_BLOCK=token_block,
            MAX_SPINS=1, PHASE=phase)
    return seq, tok, mean, std, keep


@pytest.mark.parametrize("programs", [2, 3, 7])
@pytest.mark.parametrize("scale_by_std", [True, False])
def test_phases_over_several_programs_match_float64(programs, scale_by_std):
    rewards, group_ids, ranges, num_tokens = make_batch(150, 23, seed=programs)
    # Blocks of 16 samples: each program owns several blocks, and sample i's block owner differs from
    # the program that broadcasts its tokens (i mod programs).
    seq, tok, mean, std, keep = run_phases(rewards, group_ids, 23, ranges, num_tokens, programs=programs,
                                           block=16, token_block=8, scale_by_std=scale_by_std)
    ref_seq, ref_mean, ref_std, ref_keep = direct_float64(rewards, group_ids, 23, scale_by_std, 1e-6)
    present = torch.bincount(group_ids, minlength=23) > 0
    torch.testing.assert_close(seq.double(), ref_seq, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(mean.double()[present], ref_mean[present], rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(std.double()[present], ref_std[present], rtol=1e-6, atol=1e-7)
    assert torch.equal(keep, ref_keep)
    _, _, ref_tok = python_loop(rewards, group_ids, 23, scale_by_std, 1e-6, ranges, num_tokens)
    torch.testing.assert_close(tok.double(), torch.tensor(ref_tok, dtype=torch.float64), rtol=2e-6, atol=2e-6)


def test_accumulates_in_float64_as_the_cuda_kernel():
    """A large group of large, close rewards: an fp32 running sum (about 4e6 here, spacing 0.25) moves the
    mean by ulps; fp64 sums give the fp32-rounded float64 mean and std. The advantage is then formed in
    fp32 from those, as csrc/cuda/group_advantages.cu does."""
    from redone_fast.ops import group_advantages

    gen = torch.Generator().manual_seed(5)
    rewards = 1000.0 + torch.rand(4096, generator=gen)
    group_ids = torch.zeros(4096, dtype=torch.int64)
    out = group_advantages(rewards, group_ids, 1, backend="triton")
    ref_seq, ref_mean, ref_std, _ = direct_float64(rewards, group_ids, 1, True, 1e-6)
    assert out.mean.item() == ref_mean.float().item()
    torch.testing.assert_close(out.std.double(), ref_std, rtol=1e-6, atol=0)
    fp32_formula = (rewards - ref_mean.float()) / (ref_std.float() + 1e-6)
    torch.testing.assert_close(out.seq, fp32_formula, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("validate", [True, False])
def test_a_timed_out_barrier_is_never_silent(monkeypatch, validate):
    """The kernel's error flag (barrier state[2]) fails the call: a clean error when validating, a
    device-side assert (no host sync) otherwise."""
    from redone_fast.kernels import group_advantages as k
    from redone_fast.ops import group_advantages

    real = k.group_advantages

    def timed_out(*args):
        *outputs, state = real(*args)
        state[2] = 1
        return (*outputs, state)

    monkeypatch.setattr(k, "group_advantages", timed_out)
    rewards, group_ids = torch.tensor([1.0, 0.0, 0.5]), torch.tensor([0, 0, 1])
    with pytest.raises(RuntimeError, match="barrier timed out"):
        group_advantages(rewards, group_ids, 2, backend="triton", validate=validate)
    monkeypatch.setattr(k, "group_advantages", real)
    group_advantages(rewards, group_ids, 2, backend="triton", validate=validate)  # a clean flag passes
