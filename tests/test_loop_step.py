"""train_step against a direct implementation: the global-token loss, clipping and AdamW of a plain
(unsharded) model; the non-finite skip leaves everything untouched; fillers carry no gradient."""
import math

import pytest
import torch
from torch.distributed.tensor import DTensor

from loop_helpers import tiny_micro_batches
from redone_fast.data.packing import IGNORE_INDEX, PackedBatch
from redone_fast.loop import OptimConfig, TokenCrossEntropy, build_optimizer, build_scheduler, train_step
from redone_fast.loop.step import rank_micro_batches
from redone_fast.model import load_model, model_body_and_head, packed_hidden_states
from redone_fast.ops import linear_cross_entropy_ref
from redone_fast.parallelize import ParallelConfig, build_model, clean_name
from redone_fast.tiny import model_path


def _full(t):
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach()


def _params(model):
    return {clean_name(n): _full(p).clone() for n, p in model.named_parameters()}


def _reference_step(model, optimizer, micro_batches, grad_clip):
    """Sum of per-token CE over every micro-batch / number of label tokens; clip; AdamW."""
    optimizer.zero_grad(set_to_none=True)
    count = sum(int((b.labels != IGNORE_INDEX).sum()) for b in micro_batches)
    total = 0.0
    for b in micro_batches:
        hidden = packed_hidden_states(model, b.input_ids, b.position_ids, b.cu_seqlens)
        loss = linear_cross_entropy_ref(hidden, model_body_and_head(model)[1], b.labels, reduction="sum") / count
        loss.backward()
        total += float(loss.detach())
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return total, float(norm)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-adamw", "foreach-adamw"])
def test_train_step_matches_direct_implementation(dist_ctx, fused):
    # eps=1: Adam's first steps divide each gradient by its own magnitude, which turns float rounding in
    # near-zero gradients into full-size sign flips; a large eps keeps the update smooth in the gradient.
    cfg = OptimConfig(lr=3e-2, weight_decay=0.1, grad_clip=0.5, eps=1.0, fused=fused)
    model = build_model(model_path(), dist_ctx.mesh, ParallelConfig(activation_checkpointing=True))
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=10)

    reference = load_model(model_path(), device="cpu").train()
    decay = [p for p in reference.parameters() if p.ndim >= 2]
    no_decay = [p for p in reference.parameters() if p.ndim < 2]
    ref_optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                       {"params": no_decay, "weight_decay": 0.0}],
                                      lr=3e-2, eps=1.0, foreach=False)
    for step in range(3):
        micro_batches = tiny_micro_batches(start=12 * step)
        assert len(micro_batches) >= 3
        result = train_step(model, optimizer, scheduler, micro_batches, TokenCrossEntropy(), grad_clip=0.5)
        ref_loss, ref_norm = _reference_step(reference, ref_optimizer, micro_batches, 0.5)
        floats = result.as_floats()
        assert floats["loss"] == pytest.approx(ref_loss, rel=1e-5)
        assert floats["grad_norm"] == pytest.approx(ref_norm, rel=1e-4)
        assert floats["grad_norm"] > 0.5  # clipping was active
        assert floats["loss_tokens"] == sum(int((b.labels != IGNORE_INDEX).sum()) for b in micro_batches)
        assert floats["skipped"] == 0.0
    ours, theirs = _params(model), {n: p.detach() for n, p in reference.named_parameters()}
    for name, value in theirs.items():
        torch.testing.assert_close(ours[name], value, rtol=1e-4, atol=2e-6, msg=name)


class _PoisonedOnce(TokenCrossEntropy):
    """Cross-entropy whose loss is multiplied by NaN while `poison` is set: every gradient becomes NaN."""

    poison = False

    def loss(self, hidden, weight, batch):
        loss, metrics = super().loss(hidden, weight, batch)
        return (loss * float("nan") if self.poison else loss), metrics


@pytest.mark.parametrize("fused", [True, False], ids=["fused-adamw", "foreach-adamw"])
def test_non_finite_step_is_skipped_and_counted(dist_ctx, fused):
    cfg = OptimConfig(lr=1e-2, fused=fused)
    model = build_model(model_path(), dist_ctx.mesh, ParallelConfig(activation_checkpointing=False))
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=10)
    objective = _PoisonedOnce()
    train_step(model, optimizer, scheduler, tiny_micro_batches(0), objective)
    before = _params(model)
    moments = {id(p): {k: _full(v).clone() for k, v in optimizer.state[p].items()} for p in model.parameters()}

    objective.poison = True
    result = train_step(model, optimizer, scheduler, tiny_micro_batches(12), objective)
    floats = result.as_floats()
    assert floats["skipped"] == 1.0 and not math.isfinite(floats["grad_norm"])
    for name, value in _params(model).items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)
    for p in model.parameters():
        for key, value in optimizer.state[p].items():
            torch.testing.assert_close(_full(value), moments[id(p)][key], rtol=0, atol=0, msg=key)

    objective.poison = False
    result = train_step(model, optimizer, scheduler, tiny_micro_batches(24), objective)
    assert result.as_floats()["skipped"] == 0.0
    after = _params(model)
    assert any(not torch.equal(after[n], before[n]) for n in after)
    assert all(math.isfinite(float(v.abs().max())) for v in after.values())
    step_counts = {float(_full(optimizer.state[p]["step"])) for p in model.parameters()}
    assert step_counts == {2.0}  # the skipped step did not count


def test_rank_micro_batches_pads_with_fillers():
    batches = tiny_micro_batches(count=20, budget=200)
    assert len(batches) >= 5
    world = 3
    shares = [rank_micro_batches(batches, r, world, PackedBatch.without_targets) for r in range(world)]
    assert len({len(s) for s in shares}) == 1
    real = [b for share in shares for b in share if b.sample_indices]
    assert sorted(id(b) for b in real) == sorted(id(b) for b in batches)
    fillers = [b for share in shares for b in share if not b.sample_indices]
    assert len(fillers) == len(shares[0]) * world - len(batches)
    assert all(bool((b.labels == IGNORE_INDEX).all()) for b in fillers)
    with pytest.raises(ValueError, match="at least one micro-batch"):
        rank_micro_batches([], 0, 2, PackedBatch.without_targets)


def test_filler_micro_batch_adds_no_gradient(dist_ctx):
    """A step with a filler appended gives the same update as the step without it."""
    cfg = OptimConfig(lr=1e-2)
    states = []
    for with_filler in (False, True):
        model = build_model(model_path(), dist_ctx.mesh, ParallelConfig(activation_checkpointing=False))
        optimizer = build_optimizer(model, cfg)
        scheduler = build_scheduler(optimizer, cfg, total_steps=4)
        batches = tiny_micro_batches(0)
        if with_filler:
            batches = batches + [batches[0].without_targets()]
        result = train_step(model, optimizer, scheduler, batches, TokenCrossEntropy())
        states.append((result.as_floats()["loss"], _params(model)))
    assert states[0][0] == pytest.approx(states[1][0], rel=1e-7)
    for name, value in states[0][1].items():
        torch.testing.assert_close(states[1][1][name], value, rtol=1e-6, atol=1e-8, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host synchronisation is a CUDA notion")
def test_train_step_does_not_synchronise_on_cuda():
    from redone_fast.distributed import init_distributed
    ctx = init_distributed("cuda")
    cfg = OptimConfig(lr=1e-3)
    model = build_model(model_path(), ctx.mesh, ParallelConfig(), device=ctx.device)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=4)
    batches = [b.to(ctx.device) for b in tiny_micro_batches(0)]
    train_step(model, optimizer, scheduler, batches, TokenCrossEntropy(), device=ctx.device)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        train_step(model, optimizer, scheduler, batches, TokenCrossEntropy(), device=ctx.device)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("fused", [True, False], ids=["fused-adamw", "foreach-adamw"])
def test_an_empty_step_moves_no_weight(dist_ctx, fused):
    """An idle step (no micro-batches: an RL rollout with no signal) leaves the weights and AdamW's state
    exactly as they were, though momentum and weight decay would move them on a zero gradient; the
    schedule advances."""
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1, fused=fused)
    model = build_model(model_path(), dist_ctx.mesh, ParallelConfig(activation_checkpointing=False))
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=10)
    train_step(model, optimizer, scheduler, tiny_micro_batches(0), TokenCrossEntropy())  # momentum exists now
    before = _params(model)
    moments = {id(p): {k: _full(v).clone() for k, v in optimizer.state[p].items()} for p in model.parameters()}
    result = train_step(model, optimizer, scheduler, [], TokenCrossEntropy())
    floats = result.as_floats()
    assert floats["idle_step"] == 1.0 and floats["loss_tokens"] == 0.0 and floats["skipped"] == 0.0
    for name, value in _params(model).items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)
    for p in model.parameters():
        for key, value in optimizer.state[p].items():
            torch.testing.assert_close(_full(value), moments[id(p)][key], rtol=0, atol=0, msg=key)
    assert scheduler.last_epoch == 2
