"""Rollout engines (docs/design.md, "Rollouts"): one interface, a transformers sampler and a vLLM one.

    SamplingParams, Rollout, RolloutEngine   the interface (base.py; log-prob contract there)
    HFEngine                                 transformers `generate`: the CPU default, the GPU fallback
    VLLMEngine                               vLLM, colocated with the trainer on GPU nodes (vllm imported lazily)
    make_engine(kind, model_path, ...)       "hf" or "vllm"
    iter_full_parameters / iter_weight_buckets / drain
                                             the trainer's weights, gathered one parameter at a time
"""
from __future__ import annotations

from redone_fast.errors import ConfigError
from redone_fast.rollout.base import ENGINE_KINDS, EngineKind, Rollout, RolloutEngine, SamplingParams
from redone_fast.rollout.hf_engine import HFEngine
from redone_fast.rollout.vllm_engine import VLLMEngine  # imports vllm only when an engine is made
from redone_fast.rollout.weights import drain, iter_full_parameters, iter_weight_buckets

__all__ = ["SamplingParams", "Rollout", "RolloutEngine", "HFEngine", "VLLMEngine", "make_engine",
           "ENGINE_KINDS", "EngineKind", "iter_full_parameters", "iter_weight_buckets", "drain"]

def make_engine(kind: str, model_path, **kwargs) -> RolloutEngine:
    """A rollout engine: kind "hf" -> HFEngine(model_path, **kwargs), "vllm" -> VLLMEngine(model_path, **kwargs)."""
    if kind == "hf":
        return HFEngine(model_path, **kwargs)
    if kind == "vllm":
        return VLLMEngine(model_path, **kwargs)
    raise ConfigError(f"rollout engine kind: expected one of {', '.join(ENGINE_KINDS)}, got {kind!r}")
