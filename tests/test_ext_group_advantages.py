"""The C++ CPU group advantages, torch.ops.redone_fast_C.group_advantages, called directly, against a
plain per-group Python loop in float64 (csrc/README.md states the semantics)."""
import math

import pytest
import torch

from redone_fast._ext import has_extension

pytestmark = pytest.mark.skipif(not has_extension(), reason="the extension redone_fast._C is not built")

if has_extension():
    import redone_fast._C  # noqa: F401  (registers torch.ops.redone_fast_C)

    OP = torch.ops.redone_fast_C.group_advantages


def loop_reference(rewards, group_ids, num_groups, scale_by_std, eps, token_ranges=None, num_tokens=0):
    """One group at a time, members in sample order, float64: (seq, tok, mean, std, keep) as lists."""
    r, ids = rewards.double().tolist(), group_ids.tolist()
    members = [[] for _ in range(num_groups)]
    for i, g in enumerate(ids):
        members[g].append(i)
    seq, keep = [0.0] * len(r), [False] * len(r)
    mean, std = [0.0] * num_groups, [0.0] * num_groups
    for g, idx in enumerate(members):
        if not idx:
            continue
        values = [r[i] for i in idx]
        m = sum(values) / len(values)
        s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) >= 2 else 0.0
        kept = max(values) > min(values)
        mean[g], std[g] = m, s
        for i in idx:
            keep[i] = kept
            seq[i] = ((r[i] - m) / (s + eps) if scale_by_std else r[i] - m) if kept else 0.0
    tok = [0.0] * num_tokens
    if token_ranges is not None:
        for i, (start, end) in enumerate(token_ranges.tolist()):
            tok[start:end] = [seq[i]] * (end - start)
    return seq, tok, mean, std, keep


def packed_ranges(lengths, gaps):
    """[N, 2] disjoint [start, end) ranges, in sample order, with `gaps[i]` tokens before each."""
    ranges, position = [], 0
    for length, gap in zip(lengths, gaps):
        position += gap
        ranges.append([position, position + length])
        position += length
    return torch.tensor(ranges, dtype=torch.int64).reshape(-1, 2), position


def check(rewards, group_ids, num_groups, scale_by_std, eps=1e-6, token_ranges=None, num_tokens=0):
    seq, tok, mean, std, keep = OP(rewards, group_ids, num_groups, scale_by_std, eps, token_ranges, num_tokens)
    ref = loop_reference(rewards, group_ids, num_groups, scale_by_std, eps, token_ranges, num_tokens)
    n = rewards.shape[0]
    assert seq.shape == (n,) and seq.dtype == torch.float32
    assert mean.shape == std.shape == (num_groups,) and mean.dtype == std.dtype == torch.float32
    assert keep.shape == (n,) and keep.dtype == torch.bool
    assert keep.tolist() == ref[4]
    assert (seq[~keep] == 0).all(), "a dropped (all-equal) group must get exactly 0"
    for name, ours, truth in (("seq", seq, ref[0]), ("mean", mean, ref[2]), ("std", std, ref[3])):
        torch.testing.assert_close(ours.double(), torch.tensor(truth, dtype=torch.float64), rtol=1e-6, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")
    if token_ranges is None:
        assert tok.shape == (0,)
    else:
        assert tok.shape == (num_tokens,) and tok.dtype == torch.float32
        torch.testing.assert_close(tok.double(), torch.tensor(ref[1], dtype=torch.float64), rtol=1e-6, atol=1e-6)
        covered = torch.zeros(num_tokens, dtype=torch.bool)
        for start, end in token_ranges.tolist():
            covered[start:end] = True
        assert (tok[~covered] == 0).all()
    return seq, tok, mean, std, keep


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_mixed_groups(scale_by_std):
    # Groups of sizes 5, 1 (singleton), 4 (all equal), 3, 2 (all equal, binary), ids shuffled, and
    # groups 5..8 empty (num_groups larger than used).
    sizes = {0: 5, 1: 1, 2: 4, 3: 3, 4: 2}
    group_ids = torch.cat([torch.full((size,), g) for g, size in sizes.items()])
    rewards = torch.rand(group_ids.shape[0])
    rewards[group_ids == 2] = 0.75
    rewards[group_ids == 4] = 1.0
    order = torch.randperm(group_ids.shape[0])
    group_ids, rewards = group_ids[order], rewards[order]
    lengths = torch.randint(0, 9, (group_ids.shape[0],)).tolist()
    gaps = torch.randint(0, 4, (group_ids.shape[0],)).tolist()
    ranges, used = packed_ranges(lengths, gaps)
    seq, _, mean, std, keep = check(rewards, group_ids, 9, scale_by_std, token_ranges=ranges, num_tokens=used + 5)
    assert not keep[group_ids == 1].any() and not keep[group_ids == 2].any() and not keep[group_ids == 4].any()
    assert keep[group_ids == 0].all() and keep[group_ids == 3].all()
    assert (mean[5:] == 0).all() and (std[5:] == 0).all()
    assert std[1] == 0 and mean[2] == 0.75 and std[2] == 0


def test_without_token_ranges():
    group_ids = torch.tensor([1, 0, 1, 0, 2])
    check(torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5]), group_ids, 3, True)


def test_single_sample():
    seq, tok, mean, std, keep = check(torch.tensor([0.3]), torch.tensor([0]), 1, True,
                                      token_ranges=torch.tensor([[2, 5]]), num_tokens=6)
    assert seq.tolist() == [0.0] and keep.tolist() == [False] and tok.abs().sum() == 0
    assert mean.item() == pytest.approx(0.3) and std.item() == 0


def test_binary_rewards_dapo_groups():
    # 16 answers per prompt, 0/1 rewards: some prompts all right or all wrong (dropped).
    group_ids = torch.arange(64).repeat_interleave(16)
    rewards = (torch.rand(64, 1) < torch.rand(64, 1)).float().expand(64, 16).clone()
    rewards[::3] = (torch.rand(rewards[::3].shape) < 0.5).float()
    check(rewards.reshape(-1), group_ids, 64, True)


def test_two_pass_std_with_a_large_offset():
    # Rewards 1e4 + O(1): a one-pass E[r^2] - E[r]^2 in fp32 would lose every digit.
    group_ids = torch.arange(50).repeat_interleave(8)
    rewards = 1e4 + torch.randn(400)
    check(rewards, group_ids, 50, True)


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_hundred_thousand_samples(scale_by_std):
    n = 100_000
    sizes = torch.randint(1, 33, (n,))
    sizes = sizes[: int((sizes.cumsum(0) <= n).sum())]
    sizes = torch.cat([sizes, torch.tensor([n - int(sizes.sum())])]) if sizes.sum() < n else sizes
    group_ids = torch.repeat_interleave(torch.arange(len(sizes)), sizes)[torch.randperm(n)]
    rewards = torch.rand(n).round(decimals=1)  # coarse rewards: some groups come out all equal
    lengths = torch.randint(0, 20, (n,)).tolist()
    gaps = torch.randint(0, 3, (n,)).tolist()
    ranges, used = packed_ranges(lengths, gaps)
    _, _, _, _, keep = check(rewards, group_ids, len(sizes) + 7, scale_by_std, eps=1e-4, token_ranges=ranges,
                             num_tokens=used)
    assert keep.any() and not keep.all()


def test_results_do_not_depend_on_the_thread_count():
    n = 50_000
    group_ids = torch.randint(0, 3000, (n,))
    rewards = torch.randn(n)
    ranges, used = packed_ranges([3] * n, [1] * n)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = OP(rewards, group_ids, 3000, True, 1e-6, ranges, used)
        torch.set_num_threads(max(2, threads))
        many = OP(rewards, group_ids, 3000, True, 1e-6, ranges, used)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


def test_bad_input_is_reported_not_written_out_of_bounds():
    rewards, ranges = torch.rand(3), torch.tensor([[0, 2], [2, 4], [4, 6]])
    with pytest.raises(RuntimeError, match=r"group_ids\[1\] = 7 is outside \[0, 3\)"):
        OP(rewards, torch.tensor([0, 7, 1]), 3, True, 1e-6, None, 0)
    with pytest.raises(RuntimeError, match=r"token_ranges\[2\]"):
        OP(rewards, torch.tensor([0, 1, 1]), 3, True, 1e-6, ranges, 5)
    with pytest.raises(RuntimeError, match="rewards must be float32"):
        OP(rewards.double(), torch.tensor([0, 1, 1]), 3, True, 1e-6, None, 0)
    with pytest.raises(RuntimeError, match=r"token_ranges must have shape \[N, 2\]"):
        OP(rewards, torch.tensor([0, 1, 1]), 3, True, 1e-6, ranges[:2], 6)


def test_meta_shapes_and_opcheck():
    meta = torch.device("meta")
    seq, tok, mean, std, keep = OP(torch.empty(10, device=meta), torch.empty(10, dtype=torch.long, device=meta), 4,
                                   True, 1e-6, torch.empty(10, 2, dtype=torch.long, device=meta), 77)
    assert [tuple(t.shape) for t in (seq, tok, mean, std, keep)] == [(10,), (77,), (4,), (4,), (10,)]
    assert keep.dtype == torch.bool and all(t.device == meta for t in (seq, tok, mean, std, keep))
    assert OP(torch.empty(10, device=meta), torch.empty(10, dtype=torch.long, device=meta), 4, True, 1e-6, None,
              0)[1].shape == (0,)
    group_ids = torch.tensor([0, 0, 1, 1, 2, 3])
    ranges, used = packed_ranges([2, 1, 3, 0, 2, 2], [0, 1, 0, 2, 0, 1])
    for args in ((torch.rand(6), group_ids, 5, True, 1e-6, ranges, used),
                 (torch.rand(6), group_ids, 5, False, 0.0, None, 0)):
        torch.library.opcheck(OP.default, args)
