"""group_advantages against a direct float64 formulation and a plain per-group Python loop."""
import statistics

import pytest
import torch

from redone_fast.ops import group_advantages


def direct_float64(rewards, group_ids, num_groups, scale_by_std, eps):
    """Sort by group, then segment sums by cumulative differences, in float64: a formulation
    independent of the scatter code under test, and linear in N (a one-hot [N, G] would not be)."""
    r = rewards.double()
    order = torch.argsort(group_ids, stable=True)
    count = torch.bincount(group_ids, minlength=num_groups).double()
    ends = count.long().cumsum(0)
    starts = ends - count.long()

    def segment_sums(values):  # values sorted by group -> [G]
        prefix = torch.cat([torch.zeros(1, dtype=torch.float64), values.cumsum(0)])
        return prefix[ends] - prefix[starts]

    mean = segment_sums(r[order]) / count.clamp(min=1)
    dev = r - mean[group_ids]
    std = torch.where(count > 1, (segment_sums(dev[order].square()) / (count - 1).clamp(min=1)).sqrt(), 0.0)
    lengths = count.long()
    high = torch.segment_reduce(r[order], "max", lengths=lengths, unsafe=True)
    low = torch.segment_reduce(r[order], "min", lengths=lengths, unsafe=True)
    keep = (high > low)[group_ids]
    seq = dev / (std[group_ids] + eps) if scale_by_std else dev
    return torch.where(keep, seq, 0.0), mean, std, keep


def python_loop(rewards, group_ids, num_groups, scale_by_std, eps, token_ranges=None, num_tokens=None):
    """What peer trainers do: a loop over groups."""
    r, ids = rewards.tolist(), group_ids.tolist()
    seq, keep = [0.0] * len(r), [False] * len(r)
    for g in range(num_groups):
        members = [i for i, gi in enumerate(ids) if gi == g]
        values = [r[i] for i in members]
        if len(set(values)) < 2:
            continue
        mean = statistics.fmean(values)
        std = statistics.stdev(values)
        for i in members:
            seq[i] = (r[i] - mean) / (std + eps) if scale_by_std else r[i] - mean
            keep[i] = True
    tok = None
    if token_ranges is not None:
        tok = [0.0] * num_tokens
        for i, (start, end) in enumerate(token_ranges.tolist()):
            tok[start:end] = [seq[i]] * (end - start)
    return seq, keep, tok


def make_batch(num_samples, num_groups, *, levels=3, singletons=2, equal_groups=2, with_tokens=True, seed=0):
    """Shuffled, unequal groups (some empty, some singletons, some all-equal) and packed token ranges
    with gaps, listed in a shuffled order."""
    gen = torch.Generator().manual_seed(seed)
    group_ids = torch.randint(0, num_groups, (num_samples,), generator=gen)
    for k in range(min(singletons, num_samples)):
        group_ids[k] = num_groups - 1 - k  # likely singletons (groups near the end may also be empty)
    rewards = torch.randint(0, levels, (num_samples,), generator=gen).float() / (levels - 1) + 0.1
    for g in range(min(equal_groups, num_groups)):
        rewards[group_ids == g] = 0.7
    if not with_tokens:
        return rewards, group_ids, None, None
    lengths = torch.randint(0, 9, (num_samples,), generator=gen)
    gaps = torch.randint(0, 4, (num_samples,), generator=gen)
    starts = torch.cumsum(lengths + gaps, 0) - lengths
    ranges = torch.stack([starts, starts + lengths], 1)
    ranges = ranges[torch.randperm(num_samples, generator=gen)]  # sample i's range is anywhere
    num_tokens = int(ranges[:, 1].max()) + 3 if num_samples else 3
    return rewards, group_ids, ranges, num_tokens


@pytest.mark.parametrize("scale_by_std", [True, False])
@pytest.mark.parametrize("num_samples,num_groups", [(1, 1), (7, 3), (200, 40), (1000, 80)])
def test_matches_references(device_backend, num_samples, num_groups, scale_by_std):
    device, backend = device_backend
    rewards, group_ids, ranges, num_tokens = make_batch(num_samples, num_groups)
    out = group_advantages(rewards.to(device), group_ids.to(device), num_groups, scale_by_std=scale_by_std,
                           token_ranges=ranges.to(device), num_tokens=num_tokens, backend=backend)
    seq, mean, std, keep = direct_float64(rewards, group_ids, num_groups, scale_by_std, 1e-6)
    torch.testing.assert_close(out.seq.cpu().double(), seq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.mean.cpu().double(), mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.std.cpu().double(), std, rtol=1e-5, atol=1e-6)
    assert torch.equal(out.keep.cpu(), keep)

    loop_seq, loop_keep, loop_tok = python_loop(rewards, group_ids, num_groups, scale_by_std, 1e-6, ranges, num_tokens)
    torch.testing.assert_close(out.seq.cpu().double(), torch.tensor(loop_seq, dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)
    assert out.keep.cpu().tolist() == loop_keep
    torch.testing.assert_close(out.tok.cpu().double(), torch.tensor(loop_tok, dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)
    assert out.seq.dtype == out.tok.dtype == out.mean.dtype == out.std.dtype == torch.float32


def test_all_equal_and_singleton_groups_get_exactly_zero(device_backend):
    """0.1 * 3 / 3 != 0.1 in floating point: the rounding residue must not become (r - mean) / eps."""
    device, backend = device_backend
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.3, 0.9, 0.7], device=device)
    group_ids = torch.tensor([0, 0, 0, 1, 2, 2], device=device)
    out = group_advantages(rewards, group_ids, 3, backend=backend)
    assert out.seq.cpu().tolist()[:4] == [0.0, 0.0, 0.0, 0.0]
    assert out.keep.cpu().tolist() == [False, False, False, False, True, True]
    assert out.std.cpu().tolist()[1] == 0.0 and out.tok is None


def test_large_batch(device_backend):
    """N = 100,000 in groups of 16 (ids shuffled), rewards in {0, 1}."""
    device, backend = device_backend
    num_samples, group_size = 100_000, 16
    gen = torch.Generator().manual_seed(3)
    group_ids = torch.arange(num_samples)[torch.randperm(num_samples, generator=gen)] // group_size
    rewards = torch.randint(0, 2, (num_samples,), generator=gen).float()
    num_groups = num_samples // group_size
    with_tokens = backend != "triton" or device != "cpu"  # the interpreter walks 100k ranges one by one
    ranges = num_tokens = None
    if with_tokens:
        starts = torch.arange(num_samples) * 5
        ranges = torch.stack([starts, starts + 3], 1)
        num_tokens = num_samples * 5
    out = group_advantages(rewards.to(device), group_ids.to(device), num_groups, backend=backend,
                           token_ranges=None if ranges is None else ranges.to(device), num_tokens=num_tokens)
    seq, mean, std, keep = direct_float64(rewards, group_ids, num_groups, True, 1e-6)
    torch.testing.assert_close(out.seq.cpu().double(), seq, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.keep.cpu(), keep)
    if with_tokens:
        tok = out.tok.cpu().view(num_samples, 5)
        assert torch.equal(tok[:, :3], out.seq.cpu()[:, None].expand(-1, 3))
        assert torch.equal(tok[:, 3:], torch.zeros(num_samples, 2))


@pytest.mark.parametrize("case,match", [
    (dict(rewards=torch.tensor([1.0, float("nan")])), r"rewards\[1\] = nan is not finite"),
    (dict(group_ids=torch.tensor([0, 2])), r"group_ids\[1\] = 2 is outside \[0, num_groups=2\)"),
    (dict(group_ids=torch.tensor([-1, 0])), r"group_ids\[0\] = -1"),
    (dict(token_ranges=torch.tensor([[0, 3], [2, 5]])),
     r"token_ranges\[0\] = \[0, 3\) overlaps token_ranges\[1\] = \[2, 5\)"),
    (dict(token_ranges=torch.tensor([[4, 6], [0, 5]])),
     r"token_ranges\[1\] = \[0, 5\) overlaps token_ranges\[0\] = \[4, 6\)"),
    (dict(token_ranges=torch.tensor([[0, 3], [5, 11]])),
     r"token_ranges\[1\] = \[5, 11\) is not a range within \[0, num_tokens=10\)"),
    (dict(token_ranges=torch.tensor([[3, 1], [5, 6]])), r"token_ranges\[0\] = \[3, 1\)"),
    (dict(token_ranges=torch.tensor([[0, 3]])), r"token_ranges must be int64 \[N=2, 2\]"),
    (dict(num_tokens=None), "token_ranges and num_tokens go together"),
    (dict(group_ids=torch.tensor([0, 1], dtype=torch.int32)), "group_ids must be int64"),
    (dict(rewards=torch.tensor([[1.0, 2.0]])), "rewards must be a 1-D float tensor"),
])
def test_bad_input_raises(device_backend, case, match):
    device, backend = device_backend
    args = dict(rewards=torch.tensor([1.0, 0.0]), group_ids=torch.tensor([0, 1]),
                token_ranges=torch.tensor([[0, 3], [5, 6]]), num_tokens=10)
    args.update(case)
    args = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(ValueError, match=match):
        group_advantages(args["rewards"], args["group_ids"], 2, token_ranges=args["token_ranges"],
                         num_tokens=args["num_tokens"], backend=backend, validate=True)


def test_empty_ranges_do_not_count_as_overlap():
    rewards, group_ids = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0, 0, 0])
    ranges = torch.tensor([[2, 2], [0, 4], [4, 6]])  # an empty range inside another is no overlap
    out = group_advantages(rewards, group_ids, 1, token_ranges=ranges, num_tokens=6)
    assert out.tok[:4].unique().tolist() == [out.seq[1].item()]


def test_fullgraph_compile(device_backend):
    device, backend = device_backend
    rewards, group_ids, ranges, num_tokens = make_batch(64, 8)
    rewards, group_ids, ranges = rewards.to(device), group_ids.to(device), ranges.to(device)

    def advantages(r, g, t):
        return group_advantages(r, g, 8, token_ranges=t, num_tokens=num_tokens, backend=backend).tok

    torch._dynamo.reset()
    compiled = torch.compile(advantages, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(rewards, group_ids, ranges), advantages(rewards, group_ids, ranges))
