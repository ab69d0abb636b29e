"""linear_logprobs (and entropy) against float64 references, on every backend that runs here."""
import pytest
import torch

from error_budget import assert_within_budget, max_err
from redone_fast.ops import linear_logprobs, linear_logprobs_ref


def make_inputs(T, H, V, dtype, device, logit_std=2.0):
    hidden = torch.randn(T, H, dtype=torch.float64)
    weight = torch.randn(V, H, dtype=torch.float64) * (logit_std / H**0.5)
    target = torch.randint(0, V, (T,))
    return hidden.to(device, dtype), weight.to(device, dtype), target.to(device)


def check_against_reference(device, backend, *, T, H, V, dtype=torch.float32, temperature=1.0,
                            grad_logp=True, grad_entropy=True, chunk_bytes=None):
    """logp, entropy and both input gradients (random upstream on each output that gets one)."""
    hidden, weight, target = make_inputs(T, H, V, dtype, device)
    up_logp = torch.randn(T, dtype=torch.float64, device=device)
    up_entropy = torch.randn(T, dtype=torch.float64, device=device)

    def objective(logp, entropy):
        total = 0.0
        if grad_logp:
            total = total + (logp * up_logp.to(logp.dtype)).sum()
        if grad_entropy:
            total = total + (entropy * up_entropy.to(entropy.dtype)).sum()
        return total

    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logp, entropy = linear_logprobs(h, w, target, temperature=temperature, with_entropy=True,
                                    backend=backend, chunk_bytes=chunk_bytes)
    assert logp.dtype == entropy.dtype == torch.float32
    ours = (logp, entropy, *torch.autograd.grad(objective(logp, entropy), (h, w)))

    results = {}
    for name, ref_dtype in (("truth", torch.float64), ("torch", dtype)):
        rh, rw = hidden.to(ref_dtype).requires_grad_(), weight.to(ref_dtype).requires_grad_()
        r_logp, r_entropy = linear_logprobs_ref(rh, rw, target, temperature=temperature, with_entropy=True)
        results[name] = (r_logp, r_entropy, *torch.autograd.grad(objective(r_logp, r_entropy), (rh, rw)))
    for i, what in enumerate(("logp", "entropy", "grad_hidden", "grad_weight")):
        assert_within_budget(what, ours[i], results["torch"][i], results["truth"][i], dtype)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
@pytest.mark.parametrize("grads", ["logp", "entropy", "both"])
def test_matches_float64_reference(device_backend, temperature, grads):
    device, backend = device_backend
    check_against_reference(device, backend, T=41, H=40, V=1003, temperature=temperature,
                            grad_logp=grads != "entropy", grad_entropy=grads != "logp", chunk_bytes=200_000)


@pytest.mark.parametrize("T,H,V", [(1, 8, 17), (9, 37, 611), (130, 33, 4097)])
def test_odd_shapes(device_backend, T, H, V):
    device, backend = device_backend
    check_against_reference(device, backend, T=T, H=H, V=V, temperature=0.9, chunk_bytes=1_000_000)


def test_qwen3_vocabulary(device_backend):
    device, backend = device_backend
    check_against_reference(device, backend, T=3, H=16, V=151936, temperature=0.8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_within_budget_of_torch(device_backend, dtype):
    device, backend = device_backend
    check_against_reference(device, backend, T=33, H=48, V=2003, dtype=dtype, temperature=0.9, chunk_bytes=150_000)


def test_without_entropy_returns_logp_only(device_backend):
    device, backend = device_backend
    hidden, weight, target = make_inputs(12, 16, 100, torch.float32, device)
    logp = linear_logprobs(hidden, weight, target, backend=backend)
    assert isinstance(logp, torch.Tensor) and logp.shape == (12,)
    assert max_err(logp, linear_logprobs_ref(hidden.double(), weight.double(), target)) < 1e-5


def test_no_grad_path_records_nothing(device_backend):
    """Old-policy / reference log-probs: under no_grad nothing is kept for a backward pass."""
    device, backend = device_backend
    hidden, weight, target = make_inputs(20, 16, 300, torch.float32, device)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.no_grad():
        logp, entropy = linear_logprobs(h, w, target, with_entropy=True, backend=backend)
    assert logp.grad_fn is None and not logp.requires_grad and not entropy.requires_grad
    with_grad = linear_logprobs(h, w, target, backend=backend)
    assert with_grad.grad_fn is not None
    assert max_err(logp, with_grad) == 0.0


def test_probabilities_of_all_targets_sum_to_one(device_backend):
    """A packed-sequence sanity check: exp(logp) over every vocabulary entry of a token sums to 1."""
    device, backend = device_backend
    V = 37
    hidden, weight, _ = make_inputs(1, 8, V, torch.float32, device)
    logp = linear_logprobs(hidden.expand(V, 8), weight, torch.arange(V, device=device), temperature=0.5,
                           backend=backend)
    assert abs(logp.double().exp().sum().item() - 1.0) < 1e-5
