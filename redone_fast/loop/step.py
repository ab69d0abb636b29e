"""The loop's two inner steps: `forward_backward` over a rank's micro-batches, and `train_step`.

Loss normalisation (docs/design.md, "Steps"): the loss of a step is the sum over every token of the global
batch divided by the global number of loss tokens, counted on the device and summed over ranks before
the first forward. Each micro-batch's backward therefore sees `loss_sum * world_size / global_count`: the
`world_size` undoes FSDP2's averaging of gradients over ranks, so one process and N processes compute the
same gradient from the same global batch (to float rounding).

No host synchronisation happens inside a step: counts, losses, the gradient norm and the "skipped" flag
stay on the device (`StepResult`) until the caller logs them. A step whose gradient norm is not finite is
skipped without a sync through the fused AdamW's `found_inf` input (the mechanism `torch.amp.GradScaler`
uses): parameters, moments and the step count are left untouched. A non-fused optimizer needs the flag
on the host: that one sync is the fallback.

An objective (`Objective`) says how many tokens a micro-batch contributes to the denominator and gives
the micro-batch's loss sum from the hidden states and the head weight: SFT uses `TokenCrossEntropy`, RL
its clipped policy-gradient loss.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch
from torch.distributed.tensor import DTensor

from redone_fast.data.packing import IGNORE_INDEX
from redone_fast.distributed import all_reduce_max, all_reduce_sum
from redone_fast.model import model_body_and_head, packed_hidden_states
from redone_fast.ops import linear_cross_entropy

__all__ = ["Objective", "TokenCrossEntropy", "StepResult", "forward_backward", "train_step", "evaluate_loss",
           "rank_micro_batches", "grad_norm"]



class Objective(Protocol):
    def denominator(self, batch) -> torch.Tensor:
        """This micro-batch's share of the normaliser (e.g. its loss tokens), a device scalar."""

    def loss(self, hidden: torch.Tensor, weight: torch.Tensor, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss summed over the micro-batch, metric sums), from hidden [T, H] and the head weight [V, H].

        Metric sums are summed over micro-batches and ranks and reported as sums (StepResult.metrics): an
        objective that wants means also returns the count to divide by. A metric whose name ends in
        `_max` is reduced by its maximum instead."""


@dataclass
class TokenCrossEntropy:
    """Token cross-entropy on the batch's labels (SFT): the fused op, summed; IGNORE_INDEX is skipped."""

    label_smoothing: float = 0.0
    z_loss: float = 0.0

    def denominator(self, batch) -> torch.Tensor:
        return (batch.labels != IGNORE_INDEX).sum()

    def loss(self, hidden, weight, batch):
        labels = batch.labels.to(hidden.device)
        loss = linear_cross_entropy(hidden, weight, labels, ignore_index=IGNORE_INDEX, reduction="sum",
                                    label_smoothing=self.label_smoothing, z_loss=self.z_loss)
        return loss, {}


@dataclass
class StepResult:
    """One optimizer step's figures, on the device until logged (`as_floats`)."""

    loss: torch.Tensor  # global sum / global count
    count: torch.Tensor  # global number of loss tokens (the denominator)
    grad_norm: torch.Tensor  # before clipping
    skipped: torch.Tensor  # 1.0 when the gradients were not finite and the update was not applied
    lr: float
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # objective's metric sums over all ranks
    idle: bool = False  # no micro-batches: nothing was computed and the optimizer did not step

    def as_floats(self) -> dict[str, float]:
        values = torch.stack([self.loss.float(), self.count.float(), self.grad_norm.float(), self.skipped.float(),
                              *(v.float() for v in self.metrics.values())]).tolist()  # one sync
        out = {"loss": values[0], "loss_tokens": values[1], "grad_norm": values[2], "skipped": values[3], "lr": self.lr,
               "idle_step": float(self.idle)}
        out.update(zip(self.metrics, values[4:]))
        return out


def rank_micro_batches(micro_batches: Sequence, rank: int, world_size: int, empty) -> list:
    """This rank's share (every world_size-th micro-batch), padded to the same count on every rank.

    FSDP2's all-gathers are collectives, so every rank must run as many forwards and backwards; a rank
    with fewer micro-batches runs `empty(batch)` copies (no loss tokens: zero loss, zero gradient).
    """
    per_rank = -(-len(micro_batches) // world_size)
    mine = list(micro_batches[rank::world_size])
    filler = micro_batches[0] if micro_batches else None
    if filler is None:
        raise ValueError("rank_micro_batches: a step needs at least one micro-batch")
    return mine + [empty(filler) for _ in range(per_rank - len(mine))]


def forward_backward(model, micro_batches: Sequence, objective: Objective, global_count: torch.Tensor, *,
                     world_size: int = 1, device=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward and backward over this rank's micro-batches; returns the local (loss sum, metric sums).

    Gradients accumulate into the parameters' .grad, scaled so that they sum to d(global loss)/d(param).
    """
    scale = world_size / global_count.clamp(min=1).float()
    loss_sum = torch.zeros((), device=global_count.device, dtype=torch.float32)
    metric_sums: dict[str, torch.Tensor] = {}
    for batch in micro_batches:
        if device is not None:
            batch = batch.to(device)
        hidden = packed_hidden_states(model, batch.input_ids, batch.position_ids, batch.cu_seqlens,
                                      max_seqlen=batch.max_seqlen or None)
        _, weight = model_body_and_head(model)
        loss, metrics = objective.loss(hidden, weight, batch)
        (loss * scale).backward()
        loss_sum += loss.detach().float()
        for name, value in metrics.items():
            value = value.detach().float()
            if name in metric_sums:
                value = torch.maximum(metric_sums[name], value) if _is_max(name) else metric_sums[name] + value
            metric_sums[name] = value
    return loss_sum, metric_sums


def _is_max(name: str) -> bool:
    return name.endswith("_max")


def grad_norm(parameters) -> torch.Tensor:
    """Global L2 norm of the gradients of (possibly sharded) parameters, a replicated device scalar."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0, error_if_nonfinite=False, foreach=True)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def _fused(optimizer) -> bool:
    return bool(optimizer.defaults.get("fused"))


def train_step(model, optimizer, scheduler, micro_batches: Sequence, objective: Objective, *,
               grad_clip: float = 1.0, world_size: int = 1, device=None) -> StepResult:
    """Accumulate over this rank's micro-batches, clip, step AdamW (unless non-finite), step the schedule.

    An empty `micro_batches` (on every rank: the source decides it from data all ranks share) is an idle
    step: no forward, no backward and no optimizer step, so neither AdamW's momentum nor its weight decay
    moves the weights; the schedule still advances, keeping step counts aligned with `total_steps`. An RL
    rollout with no group-relative signal is such a step.
    """
    device = device if device is not None else next(model.parameters()).device
    if not micro_batches:
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        zero = torch.zeros((), device=device)
        return StepResult(loss=zero, count=zero, grad_norm=zero, skipped=zero, lr=lr, idle=True)
    local_count = torch.zeros((), device=device, dtype=torch.float32)
    for batch in micro_batches:
        local_count += objective.denominator(batch).to(device).float()
    global_count = all_reduce_sum(local_count.clone())

    optimizer.zero_grad(set_to_none=True)
    loss_sum, metric_sums = forward_backward(model, micro_batches, objective, global_count,
                                             world_size=world_size, device=device)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm = grad_norm(params).to(device)
    found_inf = (~torch.isfinite(norm)).float()
    if grad_clip > 0:
        torch.nn.utils.clip_grads_with_norm_(params, grad_clip, norm, foreach=True)
    lr = optimizer.param_groups[0]["lr"]
    if _fused(optimizer):
        optimizer.found_inf = found_inf  # the fused kernel skips the update and undoes the step count
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif not bool(found_inf):  # host sync: only for optimizers without found_inf
        optimizer.step()
    scheduler.step()

    loss_total, metrics = _reduce_over_ranks(loss_sum, metric_sums)
    return StepResult(loss=loss_total / global_count.clamp(min=1), count=global_count, grad_norm=norm,
                      skipped=found_inf, lr=lr, metrics=metrics)


def _reduce_over_ranks(loss_sum: torch.Tensor, metric_sums: dict[str, torch.Tensor]):
    """(global loss sum, metrics): sums over ranks, maxima for the `_max` metrics; one collective each."""
    sums = sorted(n for n in metric_sums if not _is_max(n))
    maxima = sorted(n for n in metric_sums if _is_max(n))
    totals = all_reduce_sum(torch.stack([loss_sum, *(metric_sums[n] for n in sums)]))
    metrics = {n: totals[i + 1] for i, n in enumerate(sums)}
    if maxima:
        peaks = all_reduce_max(torch.stack([metric_sums[n] for n in maxima]))
        metrics.update({n: peaks[i] for i, n in enumerate(maxima)})
    return totals[0], metrics


@torch.no_grad()
def evaluate_loss(model, micro_batches: Sequence, objective: Objective, *, device=None) -> torch.Tensor:
    """Global mean loss over this rank's micro-batches (every rank calls it: the forwards are collectives)."""
    device = device if device is not None else next(model.parameters()).device
    totals = torch.zeros(2, device=device, dtype=torch.float32)
    for batch in micro_batches:
        batch = batch.to(device)
        hidden = packed_hidden_states(model, batch.input_ids, batch.position_ids, batch.cu_seqlens,
                                      max_seqlen=batch.max_seqlen or None)
        _, weight = model_body_and_head(model)
        loss, _ = objective.loss(hidden, weight, batch)
        totals[0] += loss.float()
        totals[1] += objective.denominator(batch).float()
    all_reduce_sum(totals)
    return totals[0] / totals[1].clamp(min=1)
