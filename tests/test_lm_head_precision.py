"""bf16 / fp16 inputs through the fused LM head: fp32 logits chunks and fp32 gradient accumulation.

The reference is float64 on the same (already rounded) low-precision inputs: what is measured is the
op's own rounding, not the inputs'. Per issue 15's acceptance: log-probs within 1e-5 relative (T=64, H=64,
V=4099), where a bf16 logits chunk is off by ~5e-4 (and the entropy by ~2e-2). Gradients come back in the
input dtype, so they may differ from float64 by one final rounding of that dtype and no more: several
chunks are used, so a per-chunk low-precision product would add one rounding per chunk.
"""
import pytest
import torch

from redone_fast.ops import linear_cross_entropy, linear_cross_entropy_ref, linear_logprobs, linear_logprobs_ref

LOW = [torch.bfloat16, torch.float16]
T, H, V = 64, 64, 4099
# At least 4 chunks on every backend: 16 rows where a logit costs 4 bytes (triton, whose rows are padded
# to 4112, and cpp), 4 rows where the torch row path counts 16.
CHUNK_BYTES = 16 * 4112 * 4


def inputs(dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, H, generator=gen, dtype=torch.float64)
    weight = torch.randn(V, H, generator=gen, dtype=torch.float64) * (2.0 / H**0.5)
    target = torch.randint(0, V, (T,), generator=gen)
    return hidden.to(dtype).to(device), weight.to(dtype).to(device), target.to(device)


def within_one_rounding(ours, truth, dtype):
    """|ours - truth| <= half a unit in the last place of `dtype` at each element: the final cast to the
    input dtype, and nothing before it. Below the smallest normal (fp16 gradients of a mean loss get there)
    the unit is the subnormal spacing; a floor far below both covers elements near zero."""
    info = torch.finfo(dtype)
    err = (ours.double() - truth).abs()
    half_unit = torch.clamp(truth.abs(), min=info.smallest_normal) * (info.eps / 2)
    bound = half_unit * (1 + 1e-3) + 1e-6 * truth.abs().max()
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"{dtype} gradient off by {worst:.2f}x one final rounding"


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("seed", [0, 1])
def test_logprobs_and_entropy_within_fp32_rounding_of_float64(device_backend, dtype, seed):
    device, backend = device_backend
    hidden, weight, target = inputs(dtype, device, seed)
    logp, entropy = linear_logprobs(hidden, weight, target, with_entropy=True, temperature=0.9,
                                    backend=backend, chunk_bytes=CHUNK_BYTES)
    ref_logp, ref_entropy = linear_logprobs_ref(hidden.double(), weight.double(), target, temperature=0.9,
                                                with_entropy=True)
    torch.testing.assert_close(logp.double(), ref_logp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(entropy.double(), ref_entropy, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", LOW)
def test_token_losses_within_fp32_rounding_of_float64(device_backend, dtype):
    device, backend = device_backend
    hidden, weight, target = inputs(dtype, device, 2)
    target[::7] = -100
    losses = linear_cross_entropy(hidden, weight, target, reduction="none", label_smoothing=0.1,
                                  backend=backend, chunk_bytes=CHUNK_BYTES)
    ref = linear_cross_entropy_ref(hidden.double(), weight.double(), target, reduction="none",
                                   label_smoothing=0.1)
    torch.testing.assert_close(losses.double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("op", ["logprobs", "cross_entropy_mean", "cross_entropy_tokens"])
def test_gradients_are_one_rounding_from_float64(device_backend, dtype, op):
    device, backend = device_backend
    hidden, weight, target = inputs(dtype, device, 3)
    upstream = torch.randn(T, dtype=torch.float64, generator=torch.Generator().manual_seed(4)).to(device)

    def objective(h, w, fused):
        if op == "logprobs":
            kwargs = {"backend": backend, "chunk_bytes": CHUNK_BYTES} if fused else {}
            f = linear_logprobs if fused else linear_logprobs_ref
            logp, entropy = f(h, w, target, with_entropy=True, **kwargs)
            return (logp.double() * upstream).sum() + (entropy.double() * upstream.flip(0)).sum()
        kwargs = {"backend": backend, "chunk_bytes": CHUNK_BYTES} if fused else {}
        f = linear_cross_entropy if fused else linear_cross_entropy_ref
        if op == "cross_entropy_mean":
            return f(h, w, target, **kwargs).double()
        return (f(h, w, target, reduction="none", **kwargs).double() * upstream).sum()

    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    grad_h, grad_w = torch.autograd.grad(objective(h, w, True), (h, w))
    assert grad_h.dtype == grad_w.dtype == dtype
    rh, rw = hidden.double().requires_grad_(), weight.double().requires_grad_()
    truth_h, truth_w = torch.autograd.grad(objective(rh, rw, False), (rh, rw))
    within_one_rounding(grad_w, truth_w, dtype)
    within_one_rounding(grad_h, truth_h, dtype)


def test_the_cuda_route_wiring_with_fp32_output_gemms_stood_in_on_cpu(monkeypatch):
    """The CUDA route (`torch.mm` / `torch.addmm` with out_dtype=float32 on bf16 operands) cannot run on a
    CPU build, which has no such kernel. Stand-ins with the same contract (bf16 operands, product formed
    in fp32, fp32 result) check the route's wiring: fp32 chunks on padded rows, the bf16 operand of the
    backward GEMMs, the fp32 accumulator written in place."""
    from error_budget import assert_within_budget
    from redone_fast.ops import _chunking

    real_mm, calls = torch.mm, []

    def mm(a, b, *, out_dtype=None, out=None):
        if out_dtype is None:
            return real_mm(a, b) if out is None else real_mm(a, b, out=out)
        assert a.dtype == b.dtype == torch.bfloat16 and out_dtype == torch.float32
        calls.append("mm")
        product = real_mm(a.float(), b.float())
        return product if out is None else out.copy_(product)

    def addmm(acc, a, b, *, out_dtype=None, out=None):
        assert out_dtype == torch.float32 and a.dtype == b.dtype == torch.bfloat16
        assert out is acc and acc.dtype == torch.float32  # the fp32 accumulator, written in place
        calls.append("addmm")
        return acc.add_(real_mm(a.float(), b.float()))

    monkeypatch.setattr(_chunking, "fp32_output_gemms", lambda device, dtype: True)
    monkeypatch.setattr("redone_fast.ops._backend.fp32_output_gemms", lambda device, dtype: True)
    monkeypatch.setattr(torch, "mm", mm)
    monkeypatch.setattr(torch, "addmm", addmm)
    hidden, weight, target = inputs(torch.bfloat16, "cpu", 5)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logp, entropy = linear_logprobs(h, w, target, with_entropy=True, backend="torch", chunk_bytes=CHUNK_BYTES)
    upstream = torch.randn(T, generator=torch.Generator().manual_seed(6))
    ours = torch.autograd.grad((logp * upstream).sum() + entropy.sum(), (h, w))
    monkeypatch.undo()
    chunks = calls.count("addmm")  # one weight-gradient product per chunk
    assert chunks >= 4 and calls.count("mm") == 2 * chunks  # each chunk's logits: forward, backward
    ref_logp, ref_entropy = linear_logprobs_ref(hidden.double(), weight.double(), target, with_entropy=True)
    torch.testing.assert_close(logp.double(), ref_logp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(entropy.double(), ref_entropy, rtol=1e-5, atol=1e-6)
    results = {}
    for name, dtype in (("truth", torch.float64), ("torch", torch.bfloat16)):
        rh, rw = hidden.to(dtype).requires_grad_(), weight.to(dtype).requires_grad_()
        r_logp, r_entropy = linear_logprobs_ref(rh, rw, target, with_entropy=True)
        objective = (r_logp.double() * upstream.double()).sum() + r_entropy.double().sum()
        results[name] = torch.autograd.grad(objective, (rh, rw))
    for i, what in enumerate(("grad_hidden", "grad_weight")):
        assert_within_budget(what, ours[i], results["torch"][i], results["truth"][i], torch.bfloat16)
