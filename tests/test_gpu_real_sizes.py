"""GPU-only checks at real sizes: each GPU backend against float64 at a Qwen3 LM head, and the persistent
group-advantages kernel at 16k sequences and 64M tokens. They need a CUDA GPU (none is in CI);
`benchmarks/gpu_check.sh` runs them on one, and on CPU they report skipped with this reason.
"""
import pytest
import torch

from error_budget import assert_within_budget
from redone_fast._ext import has_cuda_kernels
from redone_fast.ops import (
    group_advantages,
    linear_cross_entropy,
    linear_cross_entropy_ref,
    linear_logprobs,
    linear_logprobs_ref,
)
from test_group_advantages import direct_float64

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs these on one)")

GPU_BACKENDS = ["triton"] + (["cuda"] if has_cuda_kernels() else [])
T, H, V = 2048, 2560, 151936  # Qwen3-4B's LM head, a 2k-token chunk of a packed micro-batch


def head_inputs(dtype, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    hidden = torch.randn(T, H, device="cuda", generator=gen, dtype=torch.float64)
    weight = torch.randn(V, H, device="cuda", generator=gen, dtype=torch.float64) * (2.0 / H**0.5)
    target = torch.randint(0, V, (T,), device="cuda", generator=gen)
    target[::10] = -100
    return hidden.to(dtype), weight.to(dtype), target


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cross_entropy_at_a_real_lm_head(backend, dtype):
    hidden, weight, target = head_inputs(dtype, 0)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = linear_cross_entropy(h, w, target, backend=backend)
    ours = (loss, *torch.autograd.grad(loss, (h, w)))
    results = {}
    for name, ref_dtype in (("truth", torch.float64), ("torch", dtype)):
        rh, rw = hidden.to(ref_dtype).requires_grad_(), weight.to(ref_dtype).requires_grad_()
        ref = linear_cross_entropy_ref(rh, rw, target)
        results[name] = (ref, *torch.autograd.grad(ref, (rh, rw)))
        del rh, rw, ref
        torch.cuda.empty_cache()
    for i, what in enumerate(("loss", "grad_hidden", "grad_weight")):
        assert_within_budget(what, ours[i], results["torch"][i], results["truth"][i], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_logprobs_at_a_real_lm_head(backend, dtype):
    hidden, weight, target = head_inputs(dtype, 1)
    target = target.clamp(min=0)
    logp, entropy = linear_logprobs(hidden, weight, target, with_entropy=True, temperature=0.9, backend=backend)
    ref_logp, ref_entropy = linear_logprobs_ref(hidden.double(), weight.double(), target, temperature=0.9,
                                                with_entropy=True)
    # fp32 chunks on either input dtype: within fp32 rounding of float64 on the same (rounded) inputs
    torch.testing.assert_close(logp.double(), ref_logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy.double(), ref_entropy, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_persistent_group_advantages_at_16k_sequences_and_64m_tokens(backend):
    num_samples, group_size, tokens_each = 16384, 16, 4096  # 64 Mi tokens in all
    gen = torch.Generator().manual_seed(11)
    group_ids = torch.arange(num_samples)[torch.randperm(num_samples, generator=gen)] // group_size
    rewards = torch.rand(num_samples, generator=gen).round(decimals=1)
    num_groups = num_samples // group_size
    starts = torch.arange(num_samples) * tokens_each
    ranges = torch.stack([starts, starts + tokens_each - 7], 1)  # 7 untouched tokens after each range
    num_tokens = num_samples * tokens_each
    out = group_advantages(rewards.cuda(), group_ids.cuda(), num_groups, backend=backend,
                           token_ranges=ranges.cuda(), num_tokens=num_tokens)
    seq, mean, std, keep = direct_float64(rewards, group_ids, num_groups, True, 1e-6)
    torch.testing.assert_close(out.seq.cpu().double(), seq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.mean.cpu().double(), mean, rtol=1e-6, atol=1e-7)
    assert torch.equal(out.keep.cpu(), keep)
    tok = out.tok.view(num_samples, tokens_each)
    assert torch.equal(tok[:, :tokens_each - 7], out.seq[:, None].expand(-1, tokens_each - 7))
    assert not tok[:, tokens_each - 7:].any()
