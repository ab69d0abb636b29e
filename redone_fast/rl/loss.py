"""DAPO's clipped policy-gradient objective on packed rollouts, through the fused no-logits op.

Per response token t of sequence i, with r = exp(clamp(logp - old_logp, +-log_ratio_clamp)) and A_i the
group-relative advantage:

    l_t = -min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A)            (DAPO: decoupled "clip-higher")
    l_t = min(l_t, -dual_clip * A)  where A < 0, when dual_clip is set    (dual-clip PPO, Ye et al. 2020)
    l_t *= min(exp(old_logp - rollout_logp), rollout_is_cap)              (optional: truncated IS, see below)
    l_t += kl_coef * k3(ref_logp, logp)                                   (optional; off by default)

The clamp (+-20, verl's value) keeps one token whose log-ratio blew up (a stale or corrupted old log-prob)
from making the loss infinite or the gradient NaN, which would skip the whole step.

Rollout/trainer mismatch: the rollout engine (vLLM in bf16, other kernels) samples from a slightly
different distribution than the trainer computes. With `rollout_logprobs` in the batch the objective
logs the mismatch (k3 estimate of KL(rollout || trainer) and the largest |delta| per token) and, when
`rollout_is_cap` is set, weights each token by the truncated importance ratio trainer/rollout (detached,
capped from above): TIS, Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
training"; TRL's `vllm_importance_sampling_correction` and verl's rollout IS are the same correction.

k3(ref, logp) = exp(ref - logp) - (ref - logp) - 1 (Schulman's unbiased, positive KL estimator). The
aggregation over the global mini-batch (every micro-batch and rank):

    token-mean                 sum_i sum_t l_t / sum_i |o_i|        (DAPO's token-level loss; the default)
    seq-mean-token-mean        sum_i (sum_t l_t / |o_i|) / N        (RedOne 2.0's equation as printed, GRPO's)
    seq-mean-token-sum         sum_i sum_t l_t / N

The loop divides by the objective's global denominator, so each mode is a per-token weight (1 or 1/|o_i|)
and a denominator (tokens or sequences). Log-probs are of the temperature-scaled logits, the distribution
the rollouts were sampled from.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from redone_fast.data.packing import IGNORE_INDEX
from redone_fast.errors import ConfigError
from redone_fast.ops import linear_logprob_loss

__all__ = ["RLMicroBatch", "DAPOObjective", "AGGREGATIONS"]

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")


@dataclass
class RLMicroBatch:
    """Packed prompt+response sequences with what the policy loss needs per token."""

    input_ids: torch.Tensor  # [T] int64
    position_ids: torch.Tensor  # [T] int64, 0 at each sequence's first token
    cu_seqlens: torch.Tensor  # [B + 1] int32
    labels: torch.Tensor  # [T] int64: the next (response) token, IGNORE_INDEX on prompt positions and ends
    advantages: torch.Tensor  # [T] fp32, the sequence's advantage on its loss tokens, 0 elsewhere
    response_lengths: torch.Tensor  # [T] fp32, |o_i| on sequence i's loss tokens, 1 elsewhere
    # [T] fp32, log-probs of the labels under the rollout policy (filled later); None when the update is
    # on-policy (one update per rollout): the rollout policy is then the current one, see per_token_loss
    old_logprobs: torch.Tensor | None
    ref_logprobs: torch.Tensor | None = None  # [T] fp32, under the frozen reference (KL only)
    rollout_logprobs: torch.Tensor | None = None  # [T] fp32, what the rollout engine reported (0 off the loss tokens)
    num_sequences: int = 0
    max_seqlen: int = 0
    rollout_indices: tuple[int, ...] = ()  # which rollouts of the step are packed here, in order

    @property
    def loss_mask(self) -> torch.Tensor:
        return self.labels != IGNORE_INDEX

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    def without_targets(self) -> "RLMicroBatch":
        """A filler with no loss tokens (ranks with fewer micro-batches run these: FSDP2 collectives)."""
        zeros = torch.zeros_like(self.advantages)

        def filler(t):
            return None if t is None else zeros.clone()
        return dataclasses.replace(self, labels=torch.full_like(self.labels, IGNORE_INDEX), advantages=zeros,
                                   response_lengths=torch.ones_like(zeros), old_logprobs=filler(self.old_logprobs),
                                   ref_logprobs=filler(self.ref_logprobs),
                                   rollout_logprobs=filler(self.rollout_logprobs), num_sequences=0,
                                   rollout_indices=())

    def token_slice(self, start: int, end: int) -> "RLMicroBatch":
        """Tokens start:end of every per-token field (what `DAPOObjective.per_token_loss` reads per token)."""
        def cut(t):
            return None if t is None else t[start:end]
        return dataclasses.replace(self, input_ids=cut(self.input_ids), position_ids=cut(self.position_ids),
                                   labels=cut(self.labels), advantages=cut(self.advantages),
                                   response_lengths=cut(self.response_lengths), old_logprobs=cut(self.old_logprobs),
                                   ref_logprobs=cut(self.ref_logprobs), rollout_logprobs=cut(self.rollout_logprobs))

    def to(self, device) -> "RLMicroBatch":
        def move(t):
            return None if t is None else t.to(device)
        return dataclasses.replace(self, **{f.name: move(getattr(self, f.name)) for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), torch.Tensor)})


@dataclass
class DAPOObjective:
    """The loop's Objective for DAPO updates (see the module docstring for the formula)."""

    eps_low: float = 0.2
    eps_high: float = 0.28
    dual_clip: float | None = None  # c > 1, e.g. 3.0; None disables
    aggregation: str = "token-mean"
    kl_coef: float = 0.0
    temperature: float = 1.0
    log_ratio_clamp: float = 20.0  # |logp - old_logp| bound before exp (verl's value)
    rollout_is_cap: float | None = None  # truncated IS on the rollout/trainer ratio (None: off; TRL and verl: 2.0)

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"aggregation: must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ConfigError(f"dual_clip: must be > 1 (or None), got {self.dual_clip}")
        if not (0 <= self.eps_low < 1 and self.eps_high >= 0):
            raise ConfigError(f"clip range out of bounds: eps_low={self.eps_low}, eps_high={self.eps_high}")
        if not self.log_ratio_clamp > 0:
            raise ConfigError(f"log_ratio_clamp: must be > 0, got {self.log_ratio_clamp}")
        if self.rollout_is_cap is not None and not self.rollout_is_cap >= 1.0:
            raise ConfigError(f"rollout_is_cap: must be >= 1 (or None), got {self.rollout_is_cap}")

    def denominator(self, batch: RLMicroBatch) -> torch.Tensor:
        if self.aggregation == "token-mean":
            return batch.loss_mask.sum()
        return torch.tensor(batch.num_sequences, dtype=torch.float32)

    def per_token_loss(self, logp: torch.Tensor, batch: RLMicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """([T] loss before aggregation weights, 0 off the loss tokens; token-count metric sums)."""
        mask = batch.loss_mask
        adv = batch.advantages.float()
        # On-policy (no old log-probs given): the parameters that sampled the rollouts are the ones being
        # differentiated, so the old log-probs are these log-probs, detached (the ratio is exactly 1 and its
        # gradient is grad log p). This is what a recompute would return, without the extra forward pass.
        old = logp.detach() if batch.old_logprobs is None else batch.old_logprobs.float()
        bound = self.log_ratio_clamp
        log_ratio = torch.where(mask, (logp - old).clamp(-bound, bound), torch.zeros_like(logp))
        ratio = torch.exp(log_ratio)
        unclipped = -adv * ratio
        clipped = -adv * ratio.clamp(1.0 - self.eps_low, 1.0 + self.eps_high)
        loss = torch.maximum(unclipped, clipped)
        metrics = {
            "clip_high_tokens": (mask & (adv > 0) & (ratio > 1.0 + self.eps_high)).sum().float(),
            "clip_low_tokens": (mask & (adv < 0) & (ratio < 1.0 - self.eps_low)).sum().float(),
            # KL(old || new) with samples from old: k3 = exp(-log_ratio) + log_ratio - 1
            "approx_kl_sum": torch.where(mask, torch.exp(-log_ratio) + log_ratio - 1, 0).sum().detach(),
        }
        if self.dual_clip is not None:
            lower = -adv * self.dual_clip
            dual = mask & (adv < 0) & (loss > lower)
            loss = torch.where(adv < 0, torch.minimum(loss, lower), loss)
            metrics["dual_clip_tokens"] = dual.sum().float()
        if batch.rollout_logprobs is not None:
            # trainer (old policy) over rollout engine, per token; samples came from the rollout engine
            delta = torch.where(mask, (old.detach() - batch.rollout_logprobs.float()).clamp(-bound, bound), 0)
            metrics["rollout_k3_sum"] = torch.where(mask, torch.exp(delta) - delta - 1, 0).sum().detach()
            metrics["rollout_abs_delta_max"] = delta.abs().max().detach()
            if self.rollout_is_cap is not None:
                weight = torch.exp(delta).clamp(max=self.rollout_is_cap)
                loss = loss * weight
                metrics["rollout_is_capped_tokens"] = (mask & (torch.exp(delta) > self.rollout_is_cap)).sum().float()
        elif self.rollout_is_cap is not None:
            raise ValueError("rollout_is_cap is set but the micro-batch has no rollout_logprobs")
        if self.kl_coef:
            if batch.ref_logprobs is None:
                raise ValueError("kl_coef > 0 needs ref_logprobs in the micro-batch")
            delta = batch.ref_logprobs.float() - logp
            k3 = torch.exp(delta) - delta - 1
            loss = loss + self.kl_coef * k3
            metrics["ref_kl_sum"] = torch.where(mask, k3, 0).sum().detach()
        return torch.where(mask, loss, torch.zeros_like(loss)), metrics

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """Per-token means of the logged metric sums (the loop calls this when it logs)."""
        tokens = max(sums.get("response_tokens", 0.0), 1.0)
        means = {"clip_frac_high": sums.get("clip_high_tokens", 0.0) / tokens,
                 "clip_frac_low": sums.get("clip_low_tokens", 0.0) / tokens,
                 "approx_kl": sums.get("approx_kl_sum", 0.0) / tokens,
                 "entropy": sums.get("entropy_sum", 0.0) / tokens}
        if "dual_clip_tokens" in sums:
            means["dual_clip_frac"] = sums["dual_clip_tokens"] / tokens
        if "ref_kl_sum" in sums:
            means["ref_kl"] = sums["ref_kl_sum"] / tokens
        if "rollout_k3_sum" in sums:
            means["rollout_k3"] = sums["rollout_k3_sum"] / tokens
        if "rollout_is_capped_tokens" in sums:
            means["rollout_is_capped_frac"] = sums["rollout_is_capped_tokens"] / tokens
        return means

    def token_weights(self, batch: RLMicroBatch) -> torch.Tensor:
        if self.aggregation == "seq-mean-token-mean":
            return 1.0 / batch.response_lengths.float()
        return torch.ones_like(batch.response_lengths, dtype=torch.float32)

    def loss(self, hidden, weight, batch: RLMicroBatch):
        """The micro-batch's summed weighted token loss and its metric sums. The loss is a sum of per-token
        terms of each token's own log-prob, so its gradient is formed chunk by chunk in the forward pass
        (`ops.linear_logprob_loss`: three GEMMs over the LM head instead of four)."""
        batch = batch.to(hidden.device)
        targets = batch.labels.clamp(min=0)
        weights = self.token_weights(batch)

        def token_loss(logp, _entropy, start, end):
            per_token, _ = self.per_token_loss(logp, batch.token_slice(start, end))
            return per_token * weights[start:end]

        total, logp, entropy = linear_logprob_loss(hidden, weight, targets, token_loss, temperature=self.temperature,
                                                   with_entropy=True)
        with torch.no_grad():
            _, metrics = self.per_token_loss(logp, batch)
        mask = batch.loss_mask
        metrics["response_tokens"] = mask.sum().float()
        metrics["entropy_sum"] = torch.where(mask, entropy, 0).sum()
        return total, metrics
