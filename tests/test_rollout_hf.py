"""HFEngine (redone_fast.rollout) on the bundled tiny model, on CPU.

Pins: n rollouts per prompt in prompt order; finished/truncated flags against the stop token and
max_new_tokens; no padding in responses; log-probs equal to a teacher-forced recomputation under
log_softmax(logits / T) (before top-p) to 1e-5 (the reference in float64); seeds reproduce rollouts
without touching the global RNG; near-zero temperature equals greedy decoding; load_weights from an
FSDP2-sharded trainer model.
"""
import math

import pytest
import torch

from redone_fast.data.formatting import encode_prompt
from redone_fast.data.schema import load_jsonl
from redone_fast.rollout import HFEngine, Rollout, RolloutEngine, SamplingParams, make_engine
from redone_fast.tiny import data_path, model_path

LOGPROB_ATOL = 1e-5


@pytest.fixture(scope="module")
def engine():
    return HFEngine(model_path(), max_batch_prompts=8)


@pytest.fixture(scope="module")
def prompts(engine):
    samples = load_jsonl(data_path("rl"))
    # Different lengths, so the batch is left-padded; tasks whose answers are short and long.
    picked = [encode_prompt(engine.tokenizer, s) for s in samples[:5]]
    assert len({len(p) for p in picked}) > 1
    return picked


def check_invariants(groups, prompts, sampling, stops, vocab_size):
    assert len(groups) == len(prompts)
    for index, (prompt, group) in enumerate(zip(prompts, groups)):
        assert len(group) == sampling.n
        for rollout in group:
            assert isinstance(rollout, Rollout)
            assert rollout.prompt_index == index
            assert rollout.prompt_ids == prompt
            ids = rollout.response_ids
            assert 1 <= len(ids) <= sampling.max_new_tokens
            assert all(0 <= t < vocab_size for t in ids)
            assert len(rollout.logprobs) == len(ids)
            assert all(math.isfinite(v) and v <= 0.0 for v in rollout.logprobs)
            assert rollout.finished != rollout.truncated
            # A stop token ends a finished response and appears nowhere before its end, so no padding
            # (generate pads finished rows with the pad token) follows it; an unfinished response ran to
            # max_new_tokens, so no padding precedes it either (left padding stays in the prompt).
            assert rollout.finished == (ids[-1] in stops)
            assert not any(t in stops for t in ids[:-1])
            if rollout.truncated:
                assert len(ids) == sampling.max_new_tokens


@pytest.fixture(scope="module")
def model64(engine):
    """The engine's model in float64: the teacher-forced reference. An fp32 recomputation is itself off by
    up to 1.3e-5 on some CPUs (unpadded full forward vs the engine's padded, cached decode), more than the
    engine is (5.8e-6 against float64), so it cannot referee a 1e-5 tolerance."""
    import copy

    return copy.deepcopy(engine.model).double()


def teacher_forced_logprobs(model, rollout, temperature):
    """log_softmax(logits / T) of each response token, from one forward over prompt + response."""
    ids = torch.tensor([rollout.prompt_ids + rollout.response_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(rollout.prompt_ids) - 1:-1].double()
    targets = torch.tensor(rollout.response_ids)
    return torch.log_softmax(logits / temperature, dim=-1).gather(1, targets[:, None])[:, 0]


def response_ids(groups):
    return [[r.response_ids for r in group] for group in groups]


# --- interface ------------------------------------------------------------------------------------

def test_engine_satisfies_protocol(engine):
    assert isinstance(engine, RolloutEngine)
    assert engine.eos_token_id == engine.tokenizer.eos_token_id
    assert engine.tokenizer.convert_ids_to_tokens(engine.eos_token_id) == "<|im_end|>"


def test_sampling_params_validation():
    assert SamplingParams().n == 16
    for bad in (dict(n=0), dict(temperature=-0.1), dict(temperature=float("nan")), dict(top_p=0.0),
                dict(top_p=1.5), dict(max_new_tokens=0), dict(seed=1.5)):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
    assert SamplingParams(stop_token_ids=[3, 4]).stop_token_ids == (3, 4)
    assert SamplingParams(temperature=0).greedy


def test_rollout_rejects_inconsistent_fields():
    with pytest.raises(ValueError, match="logprobs"):
        Rollout(0, [1], [2, 3], [-0.1], finished=True, truncated=False)
    with pytest.raises(ValueError, match="finished/truncated"):
        Rollout(0, [1], [2], [-0.1], finished=True, truncated=True)


def test_make_engine():
    assert isinstance(make_engine("hf", model_path()), HFEngine)
    with pytest.raises(ValueError, match="hf, vllm"):
        make_engine("tgi", model_path())


def test_bad_prompts_rejected(engine):
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[1, 2], []], SamplingParams(n=1, max_new_tokens=2))
    with pytest.raises(TypeError, match="text"):
        engine.generate(["hello"], SamplingParams(n=1, max_new_tokens=2))


# --- shapes and invariants ------------------------------------------------------------------------

def test_shapes_order_and_flags(engine, prompts):
    sampling = SamplingParams(n=5, temperature=1.0, max_new_tokens=24, seed=0)
    groups = engine.generate(prompts, sampling)
    check_invariants(groups, prompts, sampling, set(engine.stop_token_ids), engine.model.config.vocab_size)
    # The longest response of the batch is longer than the shortest: the short rows were padded by
    # generate (with the pad token <|endoftext|>), and none of that padding came back.
    assert engine.pad_token_id not in engine.stop_token_ids
    assert not any(engine.pad_token_id in r.response_ids for g in groups for r in g)
    flat = [r for g in groups for r in g]
    assert any(r.finished for r in flat)
    # Short answers (2 tokens) and long rationales (~20) in one left-padded batch: ragged lengths.
    assert len({r.response_length for r in flat}) > 1


def test_truncation_at_max_new_tokens(engine, prompts):
    sampling = SamplingParams(n=4, max_new_tokens=4, seed=1)
    groups = engine.generate(prompts, sampling)
    check_invariants(groups, prompts, sampling, set(engine.stop_token_ids), engine.model.config.vocab_size)
    flat = [r for g in groups for r in g]
    assert any(r.truncated for r in flat) and any(r.finished for r in flat)
    assert all(len(r.response_ids) == 4 for r in flat if r.truncated)


def test_stop_token_ids_end_responses(engine, prompts):
    greedy = engine.generate(prompts[:1], SamplingParams(n=1, temperature=0, max_new_tokens=24))[0][0]
    assert len(greedy.response_ids) > 3
    stop = greedy.response_ids[2]  # the third token of the greedy response becomes a stop token
    first = greedy.response_ids.index(stop)
    stopped = engine.generate(prompts[:1], SamplingParams(n=1, temperature=0, max_new_tokens=24,
                                                         stop_token_ids=(stop,)))[0][0]
    assert stopped.finished and not stopped.truncated
    assert stopped.response_ids == greedy.response_ids[:first + 1]
    assert stopped.logprobs == pytest.approx(greedy.logprobs[:first + 1], abs=1e-6)


# --- log-probs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.0, 0.8), (0.7, 0.9), (1.3, 1.0)])
def test_logprobs_match_teacher_forcing(engine, model64, prompts, temperature, top_p):
    """The engine's log-probs against a float64 teacher-forced forward, within 1e-5 or within twice what
    fp32 arithmetic itself gives on these tokens (the same model's plain fp32 forward against float64),
    whichever is larger: the fp32 forward's own error depends on the CPU's BLAS kernels (measured at
    T=1: up to 5.8e-6 on an AMD EPYC, 1.23e-5 on an Intel Xeon, where the engine gave 1.27e-5). A wrong
    temperature, position or padding is off by orders of magnitude more."""
    sampling = SamplingParams(n=4, temperature=temperature, top_p=top_p, max_new_tokens=24, seed=3)
    groups = engine.generate(prompts, sampling)
    worst = fp32_worst = 0.0
    for group in groups:
        for rollout in group:
            expected = teacher_forced_logprobs(model64, rollout, temperature)
            got = torch.tensor(rollout.logprobs, dtype=torch.float64)
            worst = max(worst, (got - expected).abs().max().item())
            fp32 = teacher_forced_logprobs(engine.model, rollout, temperature)
            fp32_worst = max(fp32_worst, (fp32 - expected).abs().max().item())
    bound = max(LOGPROB_ATOL, 2 * fp32_worst)
    assert worst <= bound, f"max |engine - teacher forced| = {worst:.3g}; fp32 forward's own error {fp32_worst:.3g}"


def test_greedy_logprobs_are_unscaled(engine, model64, prompts):
    groups = engine.generate(prompts, SamplingParams(n=1, temperature=0, max_new_tokens=16))
    for group in groups:
        rollout = group[0]
        expected = teacher_forced_logprobs(model64, rollout, 1.0)
        assert torch.allclose(torch.tensor(rollout.logprobs, dtype=torch.float64), expected, atol=LOGPROB_ATOL)


# --- the sampler ----------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.6, 1.0), (1.0, 0.7), (1.4, 0.9)])
def test_sampler_draws_from_the_tempered_nucleus(temperature, top_p):
    """The engine's own sampler (it replaces transformers' multinomial): frequencies of 40000 draws from
    one row of logits match softmax(logits / T) renormalised over the nucleus within 5 standard errors,
    and the nucleus is the one transformers' top-p warper keeps."""
    from transformers import TopPLogitsWarper

    from redone_fast.rollout.hf_engine import _InverseCdfSampler

    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(1, 37, generator=generator) * 2.0
    draws = 40000
    sampler = _InverseCdfSampler(temperature, top_p, torch.Generator().manual_seed(1))
    chosen = sampler(None, logits.expand(draws, -1).clone())
    assert torch.isinf(chosen).sum(dim=1).eq(36).all() and chosen.max(dim=1).values.eq(0).all()
    counts = torch.bincount(chosen.argmax(dim=1), minlength=37).double()

    probs = torch.softmax(logits.double()[0] / temperature, dim=-1)
    kept = torch.isfinite(TopPLogitsWarper(top_p)(None, logits / temperature))[0] if top_p < 1 else probs > 0
    assert counts[~kept].sum() == 0
    expected = torch.where(kept, probs, 0.0) / probs[kept].sum()
    error = (counts / draws - expected).abs()
    assert (error <= 5 * (expected * (1 - expected) / draws).sqrt() + 1e-12).all(), error.max()


def test_sampler_never_picks_a_dropped_token_at_the_top_uniform(monkeypatch):
    """A uniform number just under 1 times the fp32 total can round up to the total (1.0 here stands for
    that product); the draw must still land on the last token of the nucleus, not on one past it."""
    from redone_fast.rollout.hf_engine import _InverseCdfSampler

    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.ones(shape))
    logits = torch.tensor([[3.0, 2.9, -5.0, -6.0], [0.0, 0.0, 0.0, -40.0]])
    chosen = _InverseCdfSampler(1.0, 0.5, None)(None, logits.clone()).argmax(dim=1)
    assert chosen.tolist() == [0, 1]  # nucleus {0} (top-p 0.5), and {0, 1} (0.333 + 0.333 >= 0.5)


# --- seeds and greedy -----------------------------------------------------------------------------

def test_same_seed_same_rollouts_and_global_rng_untouched(engine, prompts):
    sampling = SamplingParams(n=4, temperature=1.2, max_new_tokens=16, seed=11)
    state = torch.get_rng_state()
    first = engine.generate(prompts, sampling)
    assert torch.equal(torch.get_rng_state(), state)
    second = engine.generate(prompts, sampling)
    assert response_ids(first) == response_ids(second)
    assert [[r.logprobs for r in g] for g in first] == [[r.logprobs for r in g] for g in second]
    other = engine.generate(prompts, SamplingParams(n=4, temperature=1.2, max_new_tokens=16, seed=12))
    assert response_ids(first) != response_ids(other)


def test_unseeded_calls_draw_from_global_rng(engine, prompts):
    sampling = SamplingParams(n=8, temperature=1.5, max_new_tokens=16)
    torch.manual_seed(5)
    a = engine.generate(prompts, sampling)
    b = engine.generate(prompts, sampling)
    torch.manual_seed(5)
    c = engine.generate(prompts, sampling)
    assert response_ids(a) != response_ids(b)
    assert response_ids(a) == response_ids(c)


def test_near_zero_temperature_matches_greedy(engine, prompts):
    greedy = engine.generate(prompts, SamplingParams(n=2, temperature=0, max_new_tokens=24))
    cold = engine.generate(prompts, SamplingParams(n=2, temperature=1e-4, max_new_tokens=24, seed=0))
    assert response_ids(greedy) == response_ids(cold)
    for group in greedy:
        assert group[0].response_ids == group[1].response_ids
        rollout = group[0]
        ids = torch.tensor([rollout.prompt_ids + rollout.response_ids])
        with torch.no_grad():
            logits = engine.model(ids).logits[0, len(rollout.prompt_ids) - 1:-1]
        assert logits.argmax(-1).tolist() == rollout.response_ids  # each token is the argmax


def test_micro_batching_does_not_change_greedy_results(prompts):
    sampling = SamplingParams(n=2, temperature=0, max_new_tokens=24)
    one = HFEngine(model_path(), max_batch_prompts=1).generate(prompts, sampling)
    two = HFEngine(model_path(), max_batch_prompts=2).generate(prompts, sampling)
    assert response_ids(one) == response_ids(two)
    assert [r.prompt_index for g in two for r in g] == [i for i in range(len(prompts)) for _ in range(2)]
    for g1, g2 in zip(one, two):
        for r1, r2 in zip(g1, g2):
            assert r1.logprobs == pytest.approx(r2.logprobs, abs=1e-5)


def test_checkpoint_generation_config_is_ignored(prompts):
    engine = HFEngine(model_path())
    engine.model.generation_config.top_k = 1  # would make sampling greedy if it applied
    engine.model.generation_config.suppress_tokens = [engine.eos_token_id]  # would forbid stopping
    groups = engine.generate(prompts, SamplingParams(n=8, temperature=1.5, max_new_tokens=24, seed=0))
    assert any(r.finished for g in groups for r in g)
    assert any(len({tuple(r.response_ids) for r in g}) > 1 for g in groups)
    assert engine.model.generation_config.top_k == 1  # restored after generate


# --- weights --------------------------------------------------------------------------------------

def test_load_weights_from_sharded_model(dist_ctx, prompts):
    from torch.distributed.tensor import DTensor

    from redone_fast.parallelize import ParallelConfig, build_model

    engine = HFEngine(model_path())
    probe = torch.tensor([prompts[0]])
    with torch.no_grad():
        before = engine.model(probe).logits.clone()

    trainer = build_model(model_path(), dist_ctx.mesh, ParallelConfig())
    assert any(isinstance(p, DTensor) for p in trainer.parameters())
    assert any("_checkpoint_wrapped_module" in n for n, _ in trainer.named_parameters())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # an "update": perturb every local shard
        for param in trainer.parameters():
            local = param.to_local()
            local.add_(torch.randn(local.shape, generator=generator) * 0.05)

    engine.load_weights(trainer)
    trainer.eval()
    with torch.no_grad():
        after = engine.model(probe).logits
        expected = trainer(probe).logits
    assert not torch.allclose(after, before, atol=1e-3)
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=1e-5)

    # Rollouts now come from the new weights: their log-probs match teacher forcing under the trainer.
    groups = engine.generate(prompts[:2], SamplingParams(n=3, temperature=0.8, max_new_tokens=12, seed=0))
    for group in groups:
        for rollout in group:
            expected_lp = teacher_forced_logprobs(trainer, rollout, 0.8)
            assert torch.allclose(torch.tensor(rollout.logprobs, dtype=torch.float64), expected_lp,
                                  atol=LOGPROB_ATOL)


def test_load_weights_from_plain_model_and_mismatch(engine):
    from transformers import AutoConfig

    from redone_fast.model import load_model

    fresh = HFEngine(model_path())
    donor = load_model(model_path(), device="cpu")
    with torch.no_grad():
        donor.model.norm.weight.mul_(2.0)
    fresh.load_weights(donor)
    assert torch.equal(fresh.model.model.norm.weight, donor.model.norm.weight)

    config = AutoConfig.from_pretrained(model_path())
    config.num_hidden_layers = 2
    config.intermediate_size = 256
    smaller = load_model(config, device="cpu")
    norm_before = fresh.model.model.norm.weight.clone()
    with pytest.raises(ValueError, match=r"not in the trainer's model: model\.layers\.2\..*shape mismatch"):
        fresh.load_weights(smaller)
    assert torch.equal(fresh.model.model.norm.weight, norm_before)  # checked before anything was copied


def test_sleep_and_wake_are_noops_on_cpu(prompts):
    engine = HFEngine(model_path())
    engine.sleep()
    engine.wake()
    groups = engine.generate(prompts[:1], SamplingParams(n=1, max_new_tokens=4, seed=0))
    assert len(groups[0]) == 1


def test_engine_from_model_object_and_config():
    from transformers import AutoConfig

    from redone_fast.model import load_model, load_tokenizer

    model = load_model(model_path(), device="cpu")
    engine = HFEngine(model, load_tokenizer(model_path()))
    assert engine.model is model
    groups = engine.generate([[5, 6, 7]], SamplingParams(n=2, max_new_tokens=3, seed=0))
    assert len(groups) == 1 and len(groups[0]) == 2

    # From a config (random weights), no tokenizer: the config's eos and pad ids are used.
    engine = HFEngine(AutoConfig.from_pretrained(model_path()), device="cpu")
    assert engine.eos_token_id == 2 and engine.pad_token_id == 0
    groups = engine.generate([[5, 6, 7]], SamplingParams(n=2, max_new_tokens=3, seed=0))
    assert all(len(r.response_ids) <= 3 for r in groups[0])


def test_shared_prompt_prefill_equals_prefilling_every_copy(engine, prompts, monkeypatch):
    """The prompt's KV cache is computed once and repeated for its n rows: the same responses and (to fp32
    rounding) log-probs as generate prefilling each copy, with left padding and one- and two-token prompts."""
    mixed = prompts + [prompts[0][-1:], prompts[1][-2:]]
    sampling = SamplingParams(n=4, temperature=1.0, max_new_tokens=12, seed=5)
    calls = []
    shared_prefix = HFEngine._shared_prefix_cache
    monkeypatch.setattr(HFEngine, "_shared_prefix_cache", lambda self, *a: calls.append(1) or shared_prefix(self, *a))
    shared = engine.generate(mixed, sampling)
    assert calls, "the shared prefill was not used"
    # No cache: generate prefills each copy.
    monkeypatch.setattr(HFEngine, "_shared_prefix_cache", lambda self, *a: None)
    separate = engine.generate(mixed, sampling)
    for group_a, group_b in zip(shared, separate):
        for a, b in zip(group_a, group_b):
            assert a.response_ids == b.response_ids
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), rtol=0, atol=1e-5)
