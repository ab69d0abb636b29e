"""Memory: forward+backward of a case whose naive fp32 logits are 1 GiB stays under the chunk budget plus
inputs and gradients. Measured as the process's peak resident memory (Linux VmHWM, reset through
/proc/self/clear_refs) in a child process, with the naive reference as a control that the measure sees
the logits at all."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

MIB = 1 << 20

CHILD = textwrap.dedent("""
    import json, sys, torch
    from redone_fast.ops import linear_cross_entropy, linear_cross_entropy_ref

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    torch.manual_seed(0)
    T, H, V = 2048, 64, 131072          # naive fp32 logits: T * V * 4 bytes = 1 GiB
    budget = 64 << 20
    hidden = (torch.randn(T, H)).requires_grad_()
    weight = (torch.randn(V, H) / 8).requires_grad_()
    target = torch.randint(0, V, (T,))
    target[::7] = -100
    small = torch.randn(8, H, requires_grad=True)   # warm up BLAS and autograd outside the measure
    linear_cross_entropy(small, weight[:1000], target[:8] % 1000, chunk_bytes=budget).backward()
    weight.grad = None
    out = {}
    for name in sys.argv[1:]:
        hidden.grad = weight.grad = None
        before = rss("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")   # reset the peak (VmHWM) to the current RSS
        if name == "naive":
            loss = linear_cross_entropy_ref(hidden, weight, target)
        elif name == "fused_mean":
            loss = linear_cross_entropy(hidden, weight, target, chunk_bytes=budget)
        else:  # per-token losses: the backward recomputes the logits chunk by chunk
            loss = linear_cross_entropy(hidden, weight, target, reduction="none", chunk_bytes=budget).sum()
        loss.backward()
        out[name] = rss("VmHWM") - before
    out["budget"] = budget
    out["grads"] = hidden.numel() * 4 + weight.numel() * 4
    print(json.dumps(out))
""")


def measure(*cases):
    # A fixed mmap threshold makes glibc return every large buffer to the OS when it is freed. With its
    # default dynamic threshold, freed chunk buffers of a few MiB are recycled through a fragmented heap
    # and resident memory overstates what is live (seen here: 163 MiB resident for 100 MiB live).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    proc = subprocess.run([sys.executable, "-c", CHILD, *cases], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from /proc (Linux only)")
def test_fused_peak_memory_stays_within_chunk_budget():
    peaks = measure("fused_mean", "fused_none", "naive")
    # The control: the naive path must show its 1 GiB of logits, or this measure proves nothing.
    assert peaks["naive"] > 1024 * MIB, peaks
    # Chunk budget + the gradients (counted twice: the fp32 accumulator / saved gradient and the copy
    # autograd hands back) + 32 MiB for allocator and library slack.
    limit = peaks["budget"] + 2 * peaks["grads"] + 32 * MIB
    for case in ("fused_mean", "fused_none"):
        assert peaks[case] < limit, f"{case}: peak {peaks[case] / MIB:.0f} MiB > {limit / MIB:.0f} MiB ({peaks})"


def test_chunk_rows_follow_the_byte_budget():
    from redone_fast.ops._chunking import plan_chunk_rows

    # 1 GiB of bf16 logits at Qwen3's vocabulary: 3533 rows, aligned down to a multiple of 64.
    assert plan_chunk_rows(16384, 151936, 2, 1 << 30) == 3520
    # The torch CPU path counts its fp32 temporaries: 256 MiB / (151936 * 16 bytes) = 110 rows -> 104.
    assert plan_chunk_rows(16384, 151936, 16, 256 << 20) == 104
    assert plan_chunk_rows(10, 151936, 2, 1 << 30) == 10  # never more rows than tokens
    assert plan_chunk_rows(100, 151936, 16, 1) == 1  # a budget below one row still makes progress


def test_default_chunk_budget_is_capped_by_the_weight(monkeypatch):
    """The default budget never exceeds the weight's size in fp32; an explicit budget (argument or
    environment) is taken as given."""
    import torch

    from redone_fast.ops._backend import CHUNK_BYTES_ENV, DEFAULT_CHUNK_BYTES, resolve_chunk_bytes

    monkeypatch.delenv(CHUNK_BYTES_ENV, raising=False)
    cpu = torch.device("cpu")
    small = torch.empty(32000, 256, device="meta")  # 31.25 MiB in fp32
    large = torch.empty(151936, 256, device="meta")
    assert resolve_chunk_bytes(None, cpu, small) == 32000 * 256 * 4
    assert resolve_chunk_bytes(None, cpu, large) == DEFAULT_CHUNK_BYTES["cpu"] == 64 << 20
    assert resolve_chunk_bytes(None, cpu) == 64 << 20
    assert resolve_chunk_bytes(1 << 30, cpu, small) == 1 << 30
    monkeypatch.setenv(CHUNK_BYTES_ENV, str(1 << 28))
    assert resolve_chunk_bytes(None, cpu, small) == 1 << 28
