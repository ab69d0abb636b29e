"""group_advantages against a per-group Python loop (what peer trainers do) and the vectorised torch
version, with a device copy of the same bytes as the bandwidth yardstick.

  test_group_advantages[impl-N...]   impl: fused (default backend), torch (vectorised scatter),
                                     python_loop (dict of lists per group, then torch per group),
                                     copy (torch copy of a buffer as large as the token output)

Sizes: N in {1k, 16k, 256k} samples in groups of 16 (ids shuffled), each sample's token range 1k-8k
tokens on CUDA; on CPU the ranges are 8-64 tokens and the Python loop stops at 16k samples, so the
module runs in about a minute. GB/s counts the bytes an ideal implementation moves: rewards and ids
read, ranges read, seq/keep/tok written (`extra_info["bytes"]`).
"""
from __future__ import annotations

import gc
import os
from collections import defaultdict

import pytest
import torch

from redone_fast.ops import group_advantages
from redone_fast.ops._backend import resolve_backend

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
GROUP_SIZE = 16
SIZES = [1_000, 16_000, 256_000]
RANGE_TOKENS = (1024, 8192) if CUDA else (8, 64)
PYTHON_LOOP_MAX_N = 256_000 if CUDA else 16_000


def _batch(num_samples: int):
    gen = torch.Generator().manual_seed(0)
    num_groups = max(1, num_samples // GROUP_SIZE)
    group_ids = (torch.arange(num_samples) % num_groups)[torch.randperm(num_samples, generator=gen)]
    rewards = torch.randint(0, 2, (num_samples,), generator=gen).float()
    lengths = torch.randint(RANGE_TOKENS[0], RANGE_TOKENS[1] + 1, (num_samples,), generator=gen)
    starts = lengths.cumsum(0) - lengths
    ranges = torch.stack([starts, starts + lengths], 1)
    num_tokens = int(lengths.sum())
    return (rewards.to(DEVICE), group_ids.to(DEVICE), num_groups, ranges.to(DEVICE), num_tokens)


def _python_loop(rewards, group_ids, ranges, num_tokens, eps=1e-6):
    """The peer-trainer pattern: bucket scores per group id in Python, mean/std per group in torch."""
    buckets = defaultdict(list)
    for i, g in enumerate(group_ids.tolist()):
        buckets[g].append(i)
    seq = torch.zeros_like(rewards)
    for members in buckets.values():
        index = torch.tensor(members, device=rewards.device)
        values = rewards[index]
        if len(members) > 1 and bool(values.max() > values.min()):
            seq[index] = (values - values.mean()) / (values.std() + eps)
    tok = torch.zeros(num_tokens, device=rewards.device)
    for i, (start, end) in enumerate(ranges.tolist()):
        tok[start:end] = seq[i]
    return seq, tok


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _timed_call(impl, rewards, group_ids, num_groups, ranges, num_tokens):
    """impl's call on this batch, then a device sync. The batch lives in its closure: dropping the function
    frees the batch's tensors (GBs at N=256k on CUDA)."""
    if impl == "fused":
        def run():
            group_advantages(rewards, group_ids, num_groups, token_ranges=ranges, num_tokens=num_tokens,
                             validate=False)
    elif impl == "torch":
        def run():
            group_advantages(rewards, group_ids, num_groups, token_ranges=ranges, num_tokens=num_tokens,
                             backend="torch", validate=False)
    elif impl == "python_loop":
        def run():
            _python_loop(rewards, group_ids, ranges, num_tokens)
    else:  # copy: read + write of the token output's size, the memory system's practical ceiling
        src = torch.empty(num_tokens, device=DEVICE)
        dst = torch.empty_like(src)

        def run():
            dst.copy_(src)

    def timed():
        run()
        _sync()
    return timed


@pytest.mark.parametrize("impl", ["fused", "torch", "python_loop", "copy"])
@pytest.mark.parametrize("num_samples", SIZES, ids=lambda n: f"N{n}")
def test_group_advantages(benchmark, impl, num_samples):
    if impl == "python_loop" and num_samples > PYTHON_LOOP_MAX_N:
        pytest.skip(f"python_loop at N={num_samples} takes minutes on CPU (limit {PYTHON_LOOP_MAX_N})")
    rewards, group_ids, num_groups, ranges, num_tokens = _batch(num_samples)
    ideal_bytes = num_samples * (4 + 8 + 16 + 4 + 1) + 4 * num_tokens
    benchmark.extra_info.update(impl=impl, N=num_samples, groups=num_groups, tokens=num_tokens,
                                bytes=ideal_bytes, device=str(DEVICE))
    if impl == "fused":
        backend = resolve_backend(None, DEVICE)
        benchmark.extra_info["backend"] = backend
    elif impl == "copy":
        benchmark.extra_info["bytes"] = 2 * 4 * num_tokens
    timed = _timed_call(impl, rewards, group_ids, num_groups, ranges, num_tokens)

    timed()  # warm-up: Triton compilation, allocator
    rounds = 3 if impl == "python_loop" else int(os.environ.get("REDONE_BENCH_ROUNDS", "10"))
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1 if CUDA else 0)
    median = benchmark.stats.stats.median
    benchmark.extra_info["GB/s"] = benchmark.extra_info["bytes"] / median / 1e9
    del timed, rewards, group_ids, ranges
    gc.collect()
