"""The Triton row kernels on the chunk layout the ops give them: rows padded to a 16-element stride.

The kernels load whole vocabulary blocks unmasked and the remainder in one masked tail, and keep the
online softmax per lane. Checked against float64 on padded views whose padding is NaN (a kernel that read
or wrote past V would show it), at V with no tail, only a tail, and both; the entropy in a row whose
maximum moves across lanes and blocks; and the ops' padding itself.
"""
import os

import pytest
import torch

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                                reason="the Triton kernels need a GPU or TRITON_INTERPRET=1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# 333: tail only (block 512); 2048: two whole blocks, no tail; 4099: two blocks and a 3-wide tail.
VOCABS = [333, 2048, 4099]


def padded_chunk(rows, vocab, gen, scale=3.0):
    stride = -(-vocab // 16) * 16 + 16  # always some padding, even for V = 2048
    buffer = torch.full((rows, stride), float("nan"), device=DEVICE)
    logits = buffer[:, :vocab]
    logits.copy_(torch.randn(rows, vocab, generator=gen).mul_(scale))
    return buffer, logits


def float64_stats(logits, target, inv_temperature):
    s = logits.double() * inv_temperature
    log_probs = torch.log_softmax(s, dim=1)
    in_vocab = (target >= 0) & (target < s.shape[1])
    picked = s.gather(1, torch.where(in_vocab, target, 0)[:, None])[:, 0]
    return (torch.logsumexp(s, dim=1), torch.where(in_vocab, picked, 0.0), s.sum(dim=1),
            -(log_probs.exp() * log_probs).sum(dim=1))


@pytest.mark.parametrize("vocab", VOCABS)
def test_row_stats_on_padded_rows_match_float64(vocab):
    from redone_fast.kernels import lm_head_rows

    gen = torch.Generator().manual_seed(vocab)
    buffer, logits = padded_chunk(6, vocab, gen)
    logits[1, vocab - 1] = 40.0  # the row max in the tail (or the last block)
    logits[2, 0] = 40.0  # ... in the first lane of the first block
    target = torch.tensor([0, vocab - 1, 5, -100, vocab, vocab // 2], device=DEVICE)
    lse, target_logit, sums, entropy = lm_head_rows.row_stats(logits, target, inv_temperature=1 / 0.7,
                                                               need_sum=True, need_entropy=True)
    ref = float64_stats(logits, target, 1 / 0.7)
    for name, ours, truth in zip(("lse", "target_logit", "sum", "entropy"), (lse, target_logit, sums, entropy), ref):
        torch.testing.assert_close(ours.double(), truth, rtol=1e-5, atol=2e-5, msg=name)
    assert torch.isnan(buffer[:, vocab:]).all()


@pytest.mark.parametrize("vocab", VOCABS)
def test_grad_kernels_write_only_the_row_on_padded_rows(vocab):
    from redone_fast.kernels import lm_head_rows

    gen = torch.Generator().manual_seed(vocab + 1)
    buffer, logits = padded_chunk(4, vocab, gen)
    target = torch.tensor([3, -100, vocab - 1, 0], device=DEVICE)
    s = logits.double()
    p = torch.softmax(s, dim=1)
    lse = torch.logsumexp(s, dim=1)
    onehot = torch.zeros_like(s)
    keep = target >= 0
    onehot[keep.nonzero()[:, 0], target[keep]] = 1.0
    scale = torch.tensor([1.0, 0.0, 0.5, 2.0], device=DEVICE)
    expected_ce = (p - onehot) * scale.double()[:, None]
    lm_head_rows.ce_grad_(logits, target, lse.float(), scale)
    torch.testing.assert_close(logits.double(), expected_ce, rtol=1e-5, atol=1e-6)
    assert torch.isnan(buffer[:, vocab:]).all()

    buffer, logits = padded_chunk(4, vocab, gen)
    s = logits.double()
    log_probs = torch.log_softmax(s, dim=1)
    p = log_probs.exp()
    entropy = -(p * log_probs).sum(dim=1)
    g_logp, g_entropy = torch.randn(4, generator=gen).to(DEVICE), torch.randn(4, generator=gen).to(DEVICE)
    onehot = torch.zeros_like(s)
    target = torch.tensor([3, 1, vocab - 1, 0], device=DEVICE)
    onehot[torch.arange(4), target] = 1.0
    expected_lp = (g_logp.double()[:, None] * (onehot - p)
                   - g_entropy.double()[:, None] * p * (s - (torch.logsumexp(s, 1) - entropy)[:, None]))
    lm_head_rows.logprob_grad_(logits, target, torch.logsumexp(s, 1).float(), entropy.float(), g_logp, g_entropy)
    torch.testing.assert_close(logits.double(), expected_lp, rtol=1e-5, atol=1e-6)
    assert torch.isnan(buffer[:, vocab:]).all()


def test_ops_hand_the_triton_kernels_16_aligned_rows(monkeypatch):
    from redone_fast.kernels import lm_head_rows
    from redone_fast.ops import linear_cross_entropy, linear_logprobs

    strides = []
    for name in ("row_stats", "ce_grad_", "logprob_grad_"):
        real = getattr(lm_head_rows, name)

        def spy(logits, *args, _real=real, **kwargs):
            strides.append((logits.shape[1], logits.stride(0)))
            return _real(logits, *args, **kwargs)

        monkeypatch.setattr(lm_head_rows, name, spy)
    hidden = torch.randn(20, 8, device=DEVICE, requires_grad=True)
    weight = torch.randn(4099, 8, device=DEVICE, requires_grad=True)
    target = torch.randint(0, 4099, (20,), device=DEVICE)
    linear_logprobs(hidden, weight, target, with_entropy=True, backend="triton")[0].sum().backward()
    linear_cross_entropy(hidden, weight, target, backend="triton").backward()
    assert len(strides) >= 4
    assert all(vocab == 4099 and stride == 4112 for vocab, stride in strides), strides
