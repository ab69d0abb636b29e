"""linear_logprob_loss: a separable token loss of the log-probs (and entropies), its gradient formed in the
forward pass, against float64 autograd through the reference, on every backend, over several chunks."""
import pytest
import torch

from error_budget import assert_within_budget
from redone_fast.ops import linear_logprob_loss, linear_logprobs, linear_logprobs_ref
from test_linear_logprobs import make_inputs


def clipped_objective(advantages, entropy_coef):
    """A DAPO-like token loss: clipped ratio to a fixed old log-prob, plus an entropy term. Token t's value
    depends on token t's inputs only, as the op requires; `advantages` is float64 [T]."""
    old = None

    def token_loss(logp, entropy, start, end):
        nonlocal old
        adv = advantages[start:end].to(logp.dtype)
        base = (old if old is not None else torch.zeros_like(advantages))[start:end].to(logp.dtype)
        ratio = torch.exp(logp - base)
        loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.28))
        return loss + entropy_coef * entropy if entropy is not None else loss

    def set_old(value):
        nonlocal old
        old = value

    return token_loss, set_old


@pytest.mark.parametrize("with_entropy", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_float64_autograd_over_chunks(device_backend, with_entropy, dtype, temperature):
    device, backend = device_backend
    T, H, V = 53, 40, 1003
    hidden, weight, target = make_inputs(T, H, V, dtype, device)
    advantages = torch.randn(T, dtype=torch.float64, device=device)
    token_loss, set_old = clipped_objective(advantages, 0.05)
    with torch.no_grad():  # old log-probs a little off the current ones, so some tokens clip
        set_old(linear_logprobs_ref(hidden.double(), weight.double(), target, temperature=temperature)
                + 0.3 * torch.randn(T, dtype=torch.float64, device=device))
    upstream = 2.5  # the loop divides by a global denominator: the op's backward must scale exactly

    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, logp, entropy = linear_logprob_loss(h, w, target, token_loss, temperature=temperature,
                                              with_entropy=with_entropy, backend=backend, chunk_bytes=9 * V * 4)
    assert loss.dtype == torch.float32 and loss.shape == () and not logp.requires_grad
    assert (entropy is None) == (not with_entropy)
    ours = (loss, logp, *torch.autograd.grad(loss * upstream, (h, w)))

    results = {}
    for name, ref_dtype in (("truth", torch.float64), ("torch", dtype)):
        rh, rw = hidden.to(ref_dtype).requires_grad_(), weight.to(ref_dtype).requires_grad_()
        r_logp, r_entropy = linear_logprobs_ref(rh, rw, target, temperature=temperature, with_entropy=True)
        r_loss = token_loss(r_logp, r_entropy if with_entropy else None, 0, T).sum()
        results[name] = (r_loss, r_logp, *torch.autograd.grad(r_loss * upstream, (rh, rw)))
    for i, what in enumerate(("loss", "logp", "grad_hidden", "grad_weight")):
        assert_within_budget(what, ours[i].reshape(-1), results["torch"][i].reshape(-1).detach(),
                             results["truth"][i].reshape(-1).detach(), dtype)


def test_same_as_linear_logprobs_then_autograd():
    """The fused route and the recompute route (linear_logprobs, loss, backward) give the same numbers."""
    hidden, weight, target = make_inputs(70, 24, 500, torch.float32, "cpu")
    advantages = torch.randn(70, dtype=torch.float64)
    token_loss, _ = clipped_objective(advantages, 0.01)
    a_h, a_w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss_a, _, _ = linear_logprob_loss(a_h, a_w, target, token_loss, with_entropy=True, chunk_bytes=16 * 500 * 4)
    loss_a.backward()
    b_h, b_w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logp, entropy = linear_logprobs(b_h, b_w, target, with_entropy=True, chunk_bytes=16 * 500 * 4)
    loss_b = token_loss(logp, entropy, 0, 70).sum()
    loss_b.backward()
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(a_h.grad, b_h.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(a_w.grad, b_w.grad, rtol=1e-5, atol=1e-7)


def test_gradient_only_for_what_requires_it_and_none_under_no_grad():
    hidden, weight, target = make_inputs(10, 8, 50, torch.float32, "cpu")
    w = weight.clone().requires_grad_()
    loss, _, _ = linear_logprob_loss(hidden, w, target, lambda lp, ent, s, e: -lp)
    (grad_w,) = torch.autograd.grad(loss, (w,))
    assert grad_w.shape == w.shape and hidden.grad is None
    with torch.no_grad():
        loss, logp, _ = linear_logprob_loss(hidden, w, target, lambda lp, ent, s, e: -lp)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, -logp.sum())


def test_a_token_loss_of_the_wrong_shape_is_an_error():
    hidden, weight, target = make_inputs(6, 8, 20, torch.float32, "cpu")
    with pytest.raises(ValueError, match="one value per token"):
        linear_logprob_loss(hidden, weight.requires_grad_(), target, lambda lp, ent, s, e: lp.sum())
