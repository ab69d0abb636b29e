"""The DAPO objective against a direct float64 implementation (full logits, one sequence at a time), for
every aggregation and clip setting, on random packed rollouts spread over several micro-batches; overlong
shaping against the paper's formula; packing of rollouts."""
import math
import zlib

import pytest
import torch

from redone_fast.rl.batch import pack_rollouts
from redone_fast.rl.loss import IGNORE_INDEX, DAPOObjective
from redone_fast.rl.shaping import overlong_penalty

H, V = 24, 97


def _random_ids(generator, min_len, max_len):
    """Random token ids, of a random length in [min_len, max_len) (drawn first, from the same generator)."""
    length = int(torch.randint(min_len, max_len, (1,), generator=generator))
    return torch.randint(0, V, (length,), generator=generator).tolist()


def _rollouts(generator, count=7):
    prompts = [_random_ids(generator, 2, 9) for _ in range(count)]
    responses = [_random_ids(generator, 1, 12) for _ in range(count)]
    advantages = (torch.randn(count, generator=generator) * 1.5).tolist()
    advantages[0] = 0.0  # a sequence from a group with no signal
    return prompts, responses, advantages


def _direct_loss(hidden_of, weight, prompts, responses, advantages, old_of, ref_of, objective, absolute=False):
    """float64, per sequence: l_t from the formula, aggregated as the docstring says (of |l_t| if absolute)."""
    w = weight.double()
    per_seq, total_tokens = [], 0
    for i, (p, r) in enumerate(zip(prompts, responses)):
        h = hidden_of[i].double()  # [len(p) + len(r), H]
        logits = (h @ w.T) / objective.temperature
        logp_all = torch.log_softmax(logits, dim=-1)
        terms = []
        for j, token in enumerate(r):
            position = len(p) - 1 + j
            logp = logp_all[position, token]
            ratio = torch.exp(logp - old_of[i][j])
            a = advantages[i]
            term = -torch.minimum(ratio * a, ratio.clamp(1 - objective.eps_low, 1 + objective.eps_high) * a)
            if objective.dual_clip is not None and a < 0:
                term = torch.minimum(term, torch.tensor(-a * objective.dual_clip, dtype=torch.float64))
            if objective.kl_coef:
                delta = ref_of[i][j] - logp
                term = term + objective.kl_coef * (torch.exp(delta) - delta - 1)
            terms.append(term.abs() if absolute else term)
        per_seq.append(torch.stack(terms))
        total_tokens += len(r)
    if objective.aggregation == "token-mean":
        return torch.cat(per_seq).sum() / total_tokens
    if objective.aggregation == "seq-mean-token-mean":
        return torch.stack([s.mean() for s in per_seq]).mean()
    return torch.stack([s.sum() for s in per_seq]).mean()


def _assert_loss_close(ours, direct, magnitude):
    """fp32 against float64. Positive and negative advantages cancel, so the loss can be far smaller than its
    terms. fp32 rounding is relative to the terms, so the tolerance is too: `magnitude` is the same
    aggregation of |term|. A fixed tolerance on the result failed about 1 draw in 300 (loss 0.008 from terms
    of size 5, off by 4e-7)."""
    ours, direct = float(ours.detach()), float(direct.detach())
    assert abs(ours - direct) <= 1e-5 * float(magnitude) + 1e-7, (ours, direct, float(magnitude))


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
@pytest.mark.parametrize("dual_clip, kl_coef, temperature", [(None, 0.0, 1.0), (3.0, 0.0, 1.0), (None, 0.05, 0.7),
                                                            (2.0, 0.1, 1.3)],
                         ids=["clip", "dual-clip", "kl-temp", "dual-kl-temp"])
def test_dapo_loss_and_gradients_match_float64(aggregation, dual_clip, kl_coef, temperature):
    # crc32, not hash(): str hashes change from process to process, and a failing draw must reproduce
    generator = torch.Generator().manual_seed(zlib.crc32(repr((aggregation, dual_clip, kl_coef)).encode()))
    prompts, responses, advantages = _rollouts(generator)
    objective = DAPOObjective(eps_low=0.2, eps_high=0.28, dual_clip=dual_clip, aggregation=aggregation,
                              kl_coef=kl_coef, temperature=temperature)
    batches = pack_rollouts(prompts, responses, advantages, token_budget=24)
    assert len(batches) >= 2

    weight = (torch.randn(V, H, generator=generator) * 0.3).requires_grad_()
    hidden_of = [(torch.randn(len(p) + len(r), H, generator=generator)).requires_grad_()
                 for p, r in zip(prompts, responses)]
    # Old log-probs near the current ones, so that some ratios fall outside the clip range on both sides.
    with torch.no_grad():
        current = []
        for i, (p, r) in enumerate(zip(prompts, responses)):
            logp_all = torch.log_softmax((hidden_of[i] @ weight.T) / temperature, dim=-1)
            current.append(torch.stack([logp_all[len(p) - 1 + j, t] for j, t in enumerate(r)]))
    old_of = [c + torch.randn(c.shape, generator=generator) * 0.4 for c in current]
    ref_of = [c + torch.randn(c.shape, generator=generator) * 0.3 for c in current]

    total, denominator = 0.0, 0.0
    for batch in batches:
        hidden = torch.cat([hidden_of[k] for k in batch.rollout_indices])
        old = torch.zeros(batch.num_tokens)
        ref = torch.zeros(batch.num_tokens)
        start = 0
        for k in batch.rollout_indices:
            p = len(prompts[k])
            for j in range(len(responses[k])):
                old[start + p - 1 + j] = old_of[k][j]
                ref[start + p - 1 + j] = ref_of[k][j]
            start += p + len(responses[k])
        batch.old_logprobs, batch.ref_logprobs = old, ref
        loss, metrics = objective.loss(hidden, weight, batch)
        total = total + loss
        denominator += float(objective.denominator(batch))
    ours = total / denominator
    ours.backward()
    our_grads = [weight.grad.clone()] + [h.grad.clone() for h in hidden_of]
    for t in [weight, *hidden_of]:
        t.grad = None

    old64, ref64 = [o.double() for o in old_of], [r.double() for r in ref_of]
    direct = _direct_loss(hidden_of, weight, prompts, responses, advantages, old64, ref64, objective)
    direct.backward()
    with torch.no_grad():
        magnitude = _direct_loss(hidden_of, weight, prompts, responses, advantages, old64, ref64, objective,
                                 absolute=True)
    _assert_loss_close(ours, direct, magnitude)
    for ours_g, t in zip(our_grads, [weight, *hidden_of]):
        torch.testing.assert_close(ours_g.double(), t.grad.double(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean"])
def test_on_policy_batches_without_old_logprobs_match_float64(aggregation):
    """old_logprobs=None (one update per rollout): the loss and gradients equal the float64 formula with the
    old log-probs set to the current ones, i.e. what the skipped recompute would have given."""
    generator = torch.Generator().manual_seed(11 + len(aggregation))
    prompts, responses, advantages = _rollouts(generator)
    objective = DAPOObjective(eps_low=0.2, eps_high=0.28, aggregation=aggregation, temperature=0.9)
    batches = pack_rollouts(prompts, responses, advantages, token_budget=24)
    weight = (torch.randn(V, H, generator=generator) * 0.3).requires_grad_()
    hidden_of = [(torch.randn(len(p) + len(r), H, generator=generator)).requires_grad_()
                 for p, r in zip(prompts, responses)]
    with torch.no_grad():
        current = []
        for i, (p, r) in enumerate(zip(prompts, responses)):
            logp_all = torch.log_softmax((hidden_of[i].double() @ weight.double().T) / 0.9, dim=-1)
            current.append(torch.stack([logp_all[len(p) - 1 + j, t] for j, t in enumerate(r)]))

    total, denominator = 0.0, 0.0
    for batch in batches:
        batch.old_logprobs = None
        assert batch.without_targets().old_logprobs is None and batch.to("cpu").old_logprobs is None
        loss, metrics = objective.loss(torch.cat([hidden_of[k] for k in batch.rollout_indices]), weight, batch)
        assert float(metrics["clip_high_tokens"]) == 0 and float(metrics["clip_low_tokens"]) == 0
        assert float(metrics["approx_kl_sum"]) == 0.0
        total = total + loss
        denominator += float(objective.denominator(batch))
    (total / denominator).backward()
    our_grads = [weight.grad.clone()] + [h.grad.clone() for h in hidden_of]
    for t in [weight, *hidden_of]:
        t.grad = None
    zeros = [torch.zeros(len(r), dtype=torch.float64) for r in responses]
    direct = _direct_loss(hidden_of, weight, prompts, responses, advantages, current, zeros, objective)
    direct.backward()
    with torch.no_grad():
        magnitude = _direct_loss(hidden_of, weight, prompts, responses, advantages, current, zeros, objective,
                                 absolute=True)
    _assert_loss_close(total / denominator, direct, magnitude)
    for ours_g, t in zip(our_grads, [weight, *hidden_of]):
        torch.testing.assert_close(ours_g.double(), t.grad.double(), rtol=1e-4, atol=1e-6)


def test_clip_metrics_count_the_clipped_tokens():
    prompts, responses = [[1, 2], [3, 4]], [[5, 6, 7], [8, 9]]
    (batch,) = pack_rollouts(prompts, responses, [1.0, -1.0], token_budget=64)
    objective = DAPOObjective(eps_low=0.2, eps_high=0.28, dual_clip=3.0)
    # current log-probs 0; old chosen so ratios are e^0.5 (> 1.28), 1, e^-0.1 | e^-1 (< 0.8), e^2 (> 3)
    mask = batch.loss_mask
    old = torch.zeros(batch.num_tokens)
    old[mask] = torch.tensor([-0.5, 0.0, 0.1, 1.0, -2.0])
    batch.old_logprobs = old
    per_token, metrics = objective.per_token_loss(torch.zeros(batch.num_tokens), batch)
    assert float(metrics["clip_high_tokens"]) == 1  # A > 0 and ratio above 1 + eps_high
    assert float(metrics["clip_low_tokens"]) == 1  # A < 0 and ratio below 1 - eps_low
    assert float(metrics["dual_clip_tokens"]) == 1  # A < 0 and ratio * |A| above 3 |A|
    values = per_token[mask].tolist()
    assert values == pytest.approx([-1.28, -1.0, -math.exp(-0.1), 0.8, 3.0], rel=1e-6)


def test_labels_are_the_response_tokens_only():
    (batch,) = pack_rollouts([[11, 12, 13]], [[21, 22]], [0.5], token_budget=16)
    assert batch.labels.tolist() == [IGNORE_INDEX, IGNORE_INDEX, 21, 22, IGNORE_INDEX]
    assert batch.advantages.tolist() == [0, 0, 0.5, 0.5, 0]
    assert batch.response_lengths.tolist() == [1, 1, 2, 2, 1]
    filler = batch.without_targets()
    assert bool((filler.labels == IGNORE_INDEX).all()) and filler.num_sequences == 0
    with pytest.raises(ValueError, match="longer than the micro-batch budget"):
        pack_rollouts([[1] * 10], [[2] * 10], [0.0], token_budget=16)


@pytest.mark.parametrize("length, expected", [(10, 0.0), (12, 0.0), (13, -0.25), (14, -0.5), (16, -1.0), (17, -1.0)])
def test_overlong_penalty_follows_the_paper(length, expected):
    # L_max 16, buffer 4: free up to 12, then (12 - |y|) / 4, then -1 beyond 16.
    assert overlong_penalty(length, 16, 4, factor=1.0) == pytest.approx(expected)
    assert overlong_penalty(length, 16, 4, factor=0.5) == pytest.approx(expected * 0.5)
    assert overlong_penalty(length, 16, 0) == 0.0


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="aggregation"):
        DAPOObjective(aggregation="mean")
    with pytest.raises(ValueError, match="dual_clip"):
        DAPOObjective(dual_clip=0.5)
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(3, 4, 8)


def test_log_ratio_is_clamped_so_one_bad_token_cannot_poison_the_step():
    """A token whose log-ratio is 100 (exp overflows fp32) gave an infinite loss for A < 0 and NaN gradients
    for A > 0, so the step was skipped. Clamped at +-20 (verl's bound): finite loss and gradients, and the
    other tokens' terms are unchanged."""
    (batch,) = pack_rollouts([[1, 2], [3, 4]], [[5, 6, 7], [8, 9]], [1.0, -1.0], token_budget=64)
    mask = batch.loss_mask
    old = torch.zeros(batch.num_tokens)
    old[mask] = torch.tensor([-100.0, 0.0, 0.0, -100.0, 0.0])  # ratio e^100 on one token of each sequence
    batch.old_logprobs = old
    logp = torch.zeros(batch.num_tokens, requires_grad=True)
    per_token, _ = DAPOObjective().per_token_loss(logp, batch)
    per_token.sum().backward()
    assert bool(torch.isfinite(per_token).all()) and bool(torch.isfinite(logp.grad).all())
    values = per_token[mask].tolist()
    assert values == pytest.approx([-1.28, -1.0, -1.0, math.exp(20.0), 1.0], rel=1e-5)
    unclamped = DAPOObjective(log_ratio_clamp=1e9).per_token_loss(torch.zeros(batch.num_tokens), batch)[0]
    assert not bool(torch.isfinite(unclamped).all())  # what the clamp prevents


def test_rollout_logprobs_travel_with_their_tokens():
    (batch,) = pack_rollouts([[11, 12, 13], [14]], [[21, 22], [23, 24, 25]], [0.5, -1.0], token_budget=16,
                             rollout_logprobs=[[-0.1, -0.2], [-0.3, -0.4, -0.5]])
    by_label = dict(zip(batch.labels.tolist(), batch.rollout_logprobs.tolist()))
    assert by_label[21] == pytest.approx(-0.1) and by_label[22] == pytest.approx(-0.2)
    assert [by_label[t] for t in (23, 24, 25)] == pytest.approx([-0.3, -0.4, -0.5])
    assert float(batch.rollout_logprobs[~batch.loss_mask].abs().sum()) == 0.0
    assert batch.without_targets().rollout_logprobs is not None and batch.to("cpu").rollout_logprobs is not None
    with pytest.raises(ValueError, match="one value per response token"):
        pack_rollouts([[1]], [[2, 3]], [0.0], token_budget=16, rollout_logprobs=[[-1.0]])


def test_rollout_mismatch_is_logged_and_truncated_importance_sampling_weights_tokens():
    """Trainer log-probs 0; the engine reported -0.5, 0, 0.3 | -2, 0.1. The IS weight exp(trainer - rollout)
    is e^0.5, 1, e^-0.3 | e^2 capped at 2, e^-0.1 (TIS; TRL's and verl's correction); k3 and max |delta|."""
    (batch,) = pack_rollouts([[1, 2], [3, 4]], [[5, 6, 7], [8, 9]], [1.0, -1.0], token_budget=64,
                             rollout_logprobs=[[-0.5, 0.0, 0.3], [-2.0, 0.1]])
    batch.old_logprobs = None  # on-policy: the trainer's old log-probs are the current ones
    logp = torch.zeros(batch.num_tokens)
    deltas = torch.tensor([0.5, 0.0, -0.3, 2.0, -0.1], dtype=torch.float64)
    plain, metrics = DAPOObjective().per_token_loss(logp, batch)
    assert float(metrics["rollout_k3_sum"]) == pytest.approx(float((deltas.exp() - deltas - 1).sum()), rel=1e-5)
    assert float(metrics["rollout_abs_delta_max"]) == pytest.approx(2.0)
    weighted, metrics = DAPOObjective(rollout_is_cap=2.0).per_token_loss(logp, batch)
    weights = deltas.exp().clamp(max=2.0)
    mask = batch.loss_mask
    assert weighted[mask].tolist() == pytest.approx((plain[mask].double() * weights).tolist(), rel=1e-5)
    assert float(metrics["rollout_is_capped_tokens"]) == 1
    batch.rollout_logprobs = None
    with pytest.raises(ValueError, match="rollout_logprobs"):
        DAPOObjective(rollout_is_cap=2.0).per_token_loss(logp, batch)
    with pytest.raises(ValueError, match="rollout_is_cap"):
        DAPOObjective(rollout_is_cap=0.5)
