"""AdamW parameter groups and the learning-rate schedules (redone_fast.loop.optim); CPU only."""
from __future__ import annotations

import math

import pytest
import torch

from redone_fast.loop.optim import OptimConfig, build_optimizer, build_scheduler, lr_factor, warmup_steps


def _cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """The documented schedule, written out independently: linear warmup, then cosine to min_ratio at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    last = total - 1
    progress = min(1.0, (step - warmup) / max(1, last - warmup))
    return min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * progress)) / 2


# ---------------------------------------------------------------- warmup and constant

def test_linear_warmup_then_constant():
    cfg = OptimConfig(lr=1e-3, schedule="constant", warmup_steps=4)
    factors = [lr_factor(step, cfg, total_steps=20) for step in range(25)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[4:] == [1.0] * 21  # constant after the warmup, also past total_steps


def test_rl_paper_setting_ten_warmup_steps():
    cfg = OptimConfig(lr=5e-6, schedule="constant", warmup_steps=10)
    assert lr_factor(0, cfg, 100) == pytest.approx(0.1)
    assert lr_factor(4, cfg, 100) == pytest.approx(0.5)
    assert lr_factor(9, cfg, 100) == 1.0
    assert lr_factor(99, cfg, 100) == 1.0


def test_no_warmup_starts_at_full_lr():
    cfg = OptimConfig(schedule="constant")
    assert [lr_factor(s, cfg, 10) for s in range(10)] == [1.0] * 10
    cosine = OptimConfig(schedule="cosine")
    assert lr_factor(0, cosine, 10) == 1.0
    assert lr_factor(9, cosine, 10) == pytest.approx(0.0, abs=1e-12)


def test_warmup_longer_than_the_run_never_leaves_warmup():
    cfg = OptimConfig(schedule="cosine", warmup_steps=10)
    assert [lr_factor(s, cfg, 5) for s in range(5)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])


# ---------------------------------------------------------------- cosine

@pytest.mark.parametrize("min_ratio", [0.0, 0.1, 0.5])
def test_cosine_reaches_min_ratio_at_the_last_step(min_ratio):
    cfg = OptimConfig(schedule="cosine", warmup_steps=2, min_lr_ratio=min_ratio)
    total = 13  # decay over steps 2..12: 10 intervals
    factors = [lr_factor(s, cfg, total) for s in range(total)]
    assert factors[:4] == pytest.approx([0.5, 1.0, 1.0, 1.0 - (1 - min_ratio) * (1 - math.cos(math.pi / 10)) / 2])
    assert factors[2] == 1.0  # the first step after warmup is the full lr
    assert factors[7] == pytest.approx(min_ratio + (1 - min_ratio) * 0.5)  # half-way
    assert factors[-1] == pytest.approx(min_ratio, abs=1e-12)
    assert factors[-2] > factors[-1]
    # non-increasing after the warmup, and it stays at the floor after the last step
    assert all(a >= b for a, b in zip(factors[2:], factors[3:]))
    assert lr_factor(total, cfg, total) == pytest.approx(min_ratio, abs=1e-12)
    assert lr_factor(total + 50, cfg, total) == pytest.approx(min_ratio, abs=1e-12)
    # every value matches the schedule written out independently
    assert factors == pytest.approx([_cosine(s, 2, total, min_ratio) for s in range(total)])


def test_cosine_half_way_with_an_odd_number_of_intervals():
    cfg = OptimConfig(schedule="cosine", warmup_steps=0)
    total = 4  # decay over steps 0..3: three intervals, step 1.5 would be half-way
    factors = [lr_factor(s, cfg, total) for s in range(total)]
    assert factors == pytest.approx([1.0, 0.75, 0.25, 0.0], abs=1e-12)


def test_cosine_with_warmup_ratio_like_the_sft_stage():
    cfg = OptimConfig(lr=5e-6, schedule="cosine", warmup_ratio=0.1)
    total = 100
    assert warmup_steps(cfg, total) == 10
    factors = [lr_factor(s, cfg, total) for s in range(total)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10] == 1.0
    assert factors[99] == pytest.approx(0.0, abs=1e-12)
    assert factors == pytest.approx([_cosine(s, 10, total, 0.0) for s in range(total)])


def test_single_step_run():
    cfg = OptimConfig(schedule="cosine", min_lr_ratio=0.2)
    assert lr_factor(0, cfg, 1) == 1.0  # nothing to decay over: the one step gets the full lr


# ---------------------------------------------------------------- warmup_ratio rounding

@pytest.mark.parametrize("ratio, total, expected", [
    (0.0, 50, 0),
    (0.1, 20, 2),
    (0.1, 25, 3),  # 2.5 rounds up
    (0.1, 21, 3),  # 2.1 rounds up
    (0.1, 30, 3),
    (0.01, 10, 1),  # a tiny ratio still gives one warmup step
    (0.07, 100, 7),  # 0.07 * 100 is 7.000000000000001 in floating point: still 7
    (0.07, 300, 21),
    (0.3, 10, 3),
    (0.5, 7, 4),
])
def test_warmup_ratio_rounds_up(ratio, total, expected):
    cfg = OptimConfig(schedule="cosine", warmup_ratio=ratio)
    assert warmup_steps(cfg, total) == expected
    if expected:
        assert lr_factor(expected - 1, cfg, total) == 1.0
        assert lr_factor(0, cfg, total) == pytest.approx(1 / expected)
        if expected > 1:
            assert lr_factor(expected - 2, cfg, total) < 1.0


def test_warmup_steps_take_precedence_over_the_ratio():
    cfg = OptimConfig(schedule="cosine", warmup_steps=5, warmup_ratio=0.5)
    assert warmup_steps(cfg, 100) == 5
    assert lr_factor(4, cfg, 100) == 1.0 and lr_factor(3, cfg, 100) == pytest.approx(0.8)


# ---------------------------------------------------------------- LambdaLR

def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 3))


@pytest.mark.parametrize("cfg, total", [
    (OptimConfig(lr=2e-3, schedule="cosine", warmup_ratio=0.2, min_lr_ratio=0.1), 17),
    (OptimConfig(lr=5e-6, schedule="constant", warmup_steps=3), 9),
])
def test_scheduler_applies_the_factors_step_by_step(cfg, total):
    optimizer = build_optimizer(_model(), cfg)
    scheduler = build_scheduler(optimizer, cfg, total)
    assert len(optimizer.param_groups) == 2
    seen = []
    for step in range(total):
        # the lr in use for optimizer step `step` (0-based) is cfg.lr * lr_factor(step)
        lrs = {group["lr"] for group in optimizer.param_groups}
        assert len(lrs) == 1
        seen.append(lrs.pop())
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([cfg.lr * lr_factor(s, cfg, total) for s in range(total)], rel=1e-12)
    assert seen[0] < cfg.lr  # a warmup is there
    assert max(seen) == pytest.approx(cfg.lr)


def test_scheduler_resumes_from_its_state():
    cfg = OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=2)
    total = 12
    optimizer = build_optimizer(_model(), cfg)
    scheduler = build_scheduler(optimizer, cfg, total)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()

    fresh_optimizer = build_optimizer(_model(), cfg)
    fresh = build_scheduler(fresh_optimizer, cfg, total)
    fresh.load_state_dict(state)
    fresh_optimizer.param_groups[0]["lr"] = fresh_optimizer.param_groups[1]["lr"] = fresh.get_last_lr()[0]
    for step in range(5, total):
        assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(cfg.lr * lr_factor(step, cfg, total))
        fresh_optimizer.step()
        fresh.step()


# ---------------------------------------------------------------- AdamW and weight decay groups

def test_one_dimensional_parameters_get_no_weight_decay():
    model = _model()
    frozen = torch.nn.Linear(4, 4)
    frozen.requires_grad_(False)
    model.append(frozen)
    cfg = OptimConfig(lr=1e-2, weight_decay=0.25, beta1=0.8, beta2=0.95, eps=1e-6)
    optimizer = build_optimizer(model, cfg)

    decay, no_decay = optimizer.param_groups
    embedding, norm, linear = model[0], model[1], model[2]
    assert {id(p) for p in decay["params"]} == {id(embedding.weight), id(linear.weight)}
    assert {id(p) for p in no_decay["params"]} == {id(norm.weight), id(norm.bias), id(linear.bias)}
    assert decay["weight_decay"] == 0.25 and no_decay["weight_decay"] == 0.0
    # frozen parameters are left out
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(frozen.weight) not in in_groups and id(frozen.bias) not in in_groups
    for group in optimizer.param_groups:
        assert group["lr"] == 1e-2 and group["betas"] == (0.8, 0.95) and group["eps"] == 1e-6


def test_weight_decay_acts_on_matrices_only():
    model = _model()
    cfg = OptimConfig(lr=0.1, weight_decay=0.5)
    optimizer = build_optimizer(model, cfg)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only the decoupled decay moves parameters
    optimizer.step()
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            torch.testing.assert_close(p.detach(), before[name] * (1 - 0.1 * 0.5))
        else:
            torch.testing.assert_close(p.detach(), before[name], rtol=0, atol=0)


def test_groups_without_parameters_are_left_out():
    only_vectors = torch.nn.LayerNorm(6)
    optimizer = build_optimizer(only_vectors, OptimConfig(weight_decay=0.1))
    assert len(optimizer.param_groups) == 1
    assert optimizer.param_groups[0]["weight_decay"] == 0.0
    only_matrix = torch.nn.Linear(3, 3, bias=False)
    optimizer = build_optimizer(only_matrix, OptimConfig(weight_decay=0.1))
    assert len(optimizer.param_groups) == 1
    assert optimizer.param_groups[0]["weight_decay"] == 0.1


@pytest.mark.parametrize("fused", [True, False])
def test_fused_or_foreach(fused):
    model = _model()
    optimizer = build_optimizer(model, OptimConfig(lr=1e-2, fused=fused))
    assert bool(optimizer.defaults["fused"]) is fused
    assert optimizer.defaults["foreach"] is (None if fused else True)
    # and it steps on CPU
    loss = model(torch.tensor([1, 2, 3])).square().sum()
    loss.backward()
    before = model[2].weight.detach().clone()
    optimizer.step()
    assert not torch.equal(model[2].weight.detach(), before)


def test_fused_and_foreach_give_the_same_update():
    torch.manual_seed(0)
    models = [_model(), _model()]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [build_optimizer(m, OptimConfig(lr=1e-2, fused=f)) for m, f in zip(models, (True, False))]
    tokens = torch.tensor([4, 1, 7, 7])
    for _ in range(3):
        for model, optimizer in zip(models, optimizers):
            optimizer.zero_grad()
            model(tokens).square().mean().backward()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- invalid settings

@pytest.mark.parametrize("kwargs", [
    dict(schedule="linear"), dict(schedule="Cosine"), dict(lr=0.0), dict(lr=-1e-3), dict(warmup_steps=-1),
    dict(warmup_ratio=1.0), dict(warmup_ratio=-0.1), dict(grad_clip=-0.5), dict(min_lr_ratio=-0.1),
    dict(min_lr_ratio=1.5),
])
def test_invalid_settings_raise(kwargs):
    with pytest.raises(ValueError):
        OptimConfig(**kwargs)


def test_valid_edge_settings_are_accepted():
    OptimConfig(grad_clip=0.0)  # clipping off
    OptimConfig(warmup_ratio=0.0, min_lr_ratio=1.0)  # cosine to the same lr: constant
    cfg = OptimConfig(schedule="cosine", min_lr_ratio=1.0)
    assert [lr_factor(s, cfg, 6) for s in range(6)] == pytest.approx([1.0] * 6)
