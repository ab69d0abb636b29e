"""The RL stage's settings: `RLConfig` (with `VLLMSettings` for the vLLM engine), the presets (`paper`: stage 1
of RedOne 2.0; `tiny`: the bundled CPU default) and `check_config`, which rejects bad values before anything is
built. The stage that reads them is redone_fast/stages/rl.py (its docstring: the stage top to bottom and where
it departs from the paper); the rollouts they drive are redone_fast/rl/source.py."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from redone_fast.config import check_choices
from redone_fast.errors import ConfigError
from redone_fast.loop.optim import OptimConfig
from redone_fast.loop.outer import LoopSettings
from redone_fast.parallelize import ParallelConfig, check_parallel_config
from redone_fast.rl.loss import DAPOObjective
from redone_fast.rollout.base import EngineKind, SamplingParams
from redone_fast.tiny import data_path, model_path

__all__ = ["RLConfig", "VLLMSettings", "preset", "PRESETS", "FILTER_METRICS", "ROLLOUT_CORRECTIONS", "check_config",
           "rollout_is_cap"]

FilterMetric = Literal["task_reward", "accuracy", "shaped_reward"]
RolloutCorrection = Literal["auto", "off", "truncate"]
Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]
FILTER_METRICS: tuple[str, ...] = FilterMetric.__args__
ROLLOUT_CORRECTIONS: tuple[str, ...] = RolloutCorrection.__args__


@dataclass
class VLLMSettings:
    """What VLLMEngine needs on a GPU node (see redone_fast/rollout/vllm_engine.py); unused by the hf engine."""

    gpu_memory_utilization: float = 0.3
    """share of the GPU vLLM reserves for weights + KV cache (leave room for the trainer)"""
    max_model_len: int | None = None
    """longest prompt + response vLLM plans for (None: max prompt + max response tokens)"""
    sleep_level: int = 1
    """1: offload weights while training; 2: discard them"""
    enforce_eager: bool = False
    """no CUDA graphs (less memory, slower decoding)"""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """vLLM's dtype (auto: the checkpoint's)"""


@dataclass
class RLConfig:
    """One RL stage (DAPO). The defaults are the paper's stage-1 settings without paths (`preset("paper")`)."""

    model: str = ""
    """local model folder (HF: config + safetensors)"""
    tokenizer: str | None = None
    """tokenizer folder; None: the model folder"""
    train_files: list[str] = field(default_factory=list)
    """JSONL prompts (task samples)"""
    general_files: list[str] = field(default_factory=list)
    """JSONL general prompts mixed in"""
    general_ratio: float = 0.0
    """share of prompts drawn from the general files"""
    tasks: list[str] = field(default_factory=list)
    """only these tasks of the files (empty: all)"""
    task_temperature: float = 2.0
    """task-balanced sampling temperature (1: by size)"""
    rollout_steps: int = 500
    """rollout steps (each gives updates_per_rollout updates)"""
    prompts_per_step: int = 1024
    """prompts (groups) per rollout step"""
    samples_per_prompt: int = 16
    """answers per prompt (group size)"""
    updates_per_rollout: int = 4
    """mini-batches (optimizer steps) per rollout"""
    temperature: float = 1.0
    """sampling temperature"""
    top_p: float = 1.0
    """nucleus sampling"""
    max_prompt_tokens: int = 10240
    """longer prompts are skipped (counted)"""
    max_response_tokens: int = 8192
    """generation budget per answer"""
    overlong_buffer: int = 4096
    """DAPO overlong buffer (0: no shaping)"""
    overlong_factor: float = 1.0
    """DAPO overlong penalty factor"""
    dynamic_sampling: bool = True
    """drop groups whose rewards are all equal"""
    filter_metric: FilterMetric = "task_reward"
    """what dynamic sampling compares: task_reward (before shaping; DAPO) | accuracy | shaped_reward"""
    max_refill_rounds: int = 3
    """extra generation rounds to refill the batch"""
    scale_by_std: bool = True
    """divide advantages by the group std (False: Dr. GRPO)"""
    eps_low: float = 0.2
    """clip range below 1"""
    eps_high: float = 0.28
    """clip range above 1 (DAPO clip-higher)"""
    dual_clip: float | None = None
    """dual-clip bound c > 1 for negative advantages"""
    aggregation: Aggregation = "token-mean"
    """token-mean | seq-mean-token-mean (the paper's equation) | seq-mean-token-sum"""
    kl_coef: float = 0.0
    """k3 KL to the frozen starting model (0: off)"""
    log_ratio_clamp: float = 20.0
    """bound on |logp - old_logp| before exp (verl)"""
    rollout_correction: RolloutCorrection = "auto"
    """truncated importance sampling on the rollout/trainer mismatch: auto (on with vllm) | off | truncate"""
    rollout_is_cap: float = 2.0
    """upper cap of the truncated IS weight (TRL: 2)"""
    micro_batch_tokens: int = 16384
    """token budget of a packed micro-batch"""
    engine: EngineKind = "hf"
    """rollout engine: hf (transformers) or vllm"""
    generation_batch: int = 64
    """prompts per generate call (both engines)"""
    vllm: VLLMSettings = field(default_factory=VLLMSettings)
    reward_workers: int = 2
    """reward worker processes (0: in-process)"""
    reward_timeout_s: float = 10.0
    """a reward slower than this scores 0"""
    seed: int = 0
    """prompt order and sampling seed"""
    loop: LoopSettings = field(default_factory=lambda: LoopSettings(checkpoint_every=10))
    """logging and checkpoints; `loop.checkpoint_every` counts rollout steps"""
    export: bool = True
    """write a Hugging Face folder <run-dir>/export at the end"""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-6, weight_decay=0.1, schedule="constant",
                                                                   warmup_steps=10, grad_clip=1.0))
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


PRESETS = ("tiny", "paper")


def preset(name: str) -> RLConfig:
    """`paper`: stage 1 of RedOne 2.0 (give the model and data paths); `tiny`: the bundled model and RL prompts
    on a laptop CPU, the settings the pipeline's tiny RL stages run (README, "How the tiny defaults were
    chosen": 24 rollouts of 32 prompts x 8 answers, 32-token answers, lr 5e-4). The bundled RL file holds
    SNS and general prompts together, all sampled as tasks here; the pipeline splits it by domain and mixes
    the general ones in at 15% (`pipeline.config.preset("tiny")`)."""
    if name == "paper":
        return RLConfig()
    if name == "tiny":
        return RLConfig(model=str(model_path()), train_files=[str(data_path("rl"))], rollout_steps=24,
                        prompts_per_step=32, samples_per_prompt=8, updates_per_rollout=1,
                        max_prompt_tokens=256, max_response_tokens=32, overlong_buffer=4, micro_batch_tokens=4096,
                        generation_batch=64, reward_workers=0, loop=LoopSettings(checkpoint_every=10),
                        optim=OptimConfig(lr=5e-4, weight_decay=0.0, schedule="constant", warmup_steps=0),
                        parallel=ParallelConfig(activation_checkpointing=False))
    raise ConfigError(f"unknown RL preset {name!r} (known: {', '.join(PRESETS)})")


def check_config(cfg: RLConfig) -> None:
    """Reject bad values before anything is built or written (ConfigError naming the field): the pipeline
    checks every stage's settings this way before its first step."""
    check_choices(cfg)  # engine, filter_metric, ...: values from code or files, not only from flags
    minimum = {"updates_per_rollout": 1, "prompts_per_step": 1, "rollout_steps": 0, "max_prompt_tokens": 1,
               "overlong_buffer": 0, "max_refill_rounds": 0, "micro_batch_tokens": 2, "generation_batch": 1,
               "reward_workers": 0, "loop.log_every": 1, "loop.checkpoint_every": 1, "loop.keep_checkpoints": 1}
    for name, least in minimum.items():
        value = getattr(cfg.loop, name[5:]) if name.startswith("loop.") else getattr(cfg, name)
        if value < least:
            raise ConfigError(f"{name}: must be >= {least}, got {value}")
    if not 0.0 <= cfg.general_ratio < 1.0:
        raise ConfigError(f"general_ratio: must be in [0, 1), got {cfg.general_ratio}")
    if not (cfg.reward_timeout_s > 0 and cfg.task_temperature > 0 and cfg.temperature > 0):
        raise ConfigError(f"reward_timeout_s, task_temperature and temperature must be > 0; got "
                          f"{cfg.reward_timeout_s}, {cfg.task_temperature}, {cfg.temperature}")
    SamplingParams(n=cfg.samples_per_prompt, temperature=cfg.temperature, top_p=cfg.top_p,
                   max_new_tokens=cfg.max_response_tokens)
    DAPOObjective(eps_low=cfg.eps_low, eps_high=cfg.eps_high, dual_clip=cfg.dual_clip, aggregation=cfg.aggregation,
                  kl_coef=cfg.kl_coef, temperature=cfg.temperature, log_ratio_clamp=cfg.log_ratio_clamp,
                  rollout_is_cap=rollout_is_cap(cfg))
    check_parallel_config(cfg.parallel)


def rollout_is_cap(cfg: RLConfig) -> float | None:
    """The truncated-IS cap in force: `rollout_is_cap` when the correction is on (auto: with vLLM), else None."""
    on = cfg.rollout_correction == "truncate" or (cfg.rollout_correction == "auto" and cfg.engine == "vllm")
    return cfg.rollout_is_cap if on else None
