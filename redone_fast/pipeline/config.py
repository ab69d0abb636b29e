"""The pipeline's configuration: one dataclass per step, the presets (`tiny`, `qwen3-4b`) and the recipes.

Recipes (the paper's comparison, arXiv 2511.07070 table 4, on the same data and stage settings):

    redone       stage1 = DAPO on all RL prompts -> diagnosis -> stage2 = SFT on the failure bucket + soft-labelled
                 general data -> stage3 = DAPO on the hard subsets (RedOne 2.0)
    sft-then-rl  stage1 = SFT on the whole SFT pool (references as targets) -> stage2 = DAPO with stage 3's
                 RL settings (RL after SFT, as redone's stage 3) on all RL prompts (the usual order)
    sft-only     stage1 = SFT on the whole SFT pool (the "seesaw" baseline)

The pipeline fills in each stage's `model`, `tokenizer` and data files itself (from the previous stage's
export and the files it derives); options given for those fields of `stage1`/`stage2`/`stage3` are
replaced.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from redone_fast.errors import ConfigError
from redone_fast.loop.optim import OptimConfig
from redone_fast.parallelize import ParallelConfig
from redone_fast.pipeline.scoring import EvalConfig
from redone_fast.stages import rl as rl_stage
from redone_fast.stages import sft as sft_stage
from redone_fast.stages.rl import RLConfig
from redone_fast.stages.sft import SFTConfig

__all__ = ["DiagnosisConfig", "SoftLabelConfig", "HardSubsetConfig", "PipelineConfig", "preset", "PRESETS",
           "RECIPES", "recipe_stages", "check_config"]

PRESETS = ("tiny", "qwen3-4b")
RECIPES = ("redone", "sft-only", "sft-then-rl")


def _tiny(split: str) -> list[str]:
    from redone_fast.tiny import data_path
    return [str(data_path(split))]


def _tiny_model() -> str:
    from redone_fast.tiny import model_path
    return str(model_path())


@dataclass
class DiagnosisConfig:
    """How stage 1's model is diagnosed and which SFT-pool samples make the failure bucket (the paper leaves
    the rule open; this one is ours). Every pool sample of a weak SNS task (eval score under
    `weak_task_below`) enters the bucket, and so does any other SNS pool sample whose pass rate is under
    `low_pass_below`, with `anchor_ratio` of its task's passed samples per failure. Rare tasks are then
    up-weighted: every task with bucket samples is repeated up to at least `rare_floor` x the largest task's
    count."""

    k: int = field(default=8, metadata={"help": "sampled answers per prompt for the pass rates"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the pass-rate answers"})
    pass_threshold: float = field(default=0.5, metadata={"help": "an answer passes when its reward >= this"})
    weak_task_below: float = field(default=60.0, metadata={
        "help": "an SNS task whose eval score (0-100) is under this is weak: all its pool samples go in the bucket"})
    low_pass_below: float = field(default=0.5, metadata={"help": "a pool sample with a pass rate under this is a failure"})
    anchor_ratio: float = field(default=1.0, metadata={
        "help": "a task that is not weak brings this many of its passed pool samples per low-pass sample (0: off)"})
    rare_floor: float = field(default=0.5, metadata={
        "help": "each bucket task is repeated up to at least this share of the largest task's count (0: off)"})
    max_pool_per_task: int = field(default=0, metadata={"help": "diagnose at most N pool samples per task (0: all)"})


@dataclass
class SoftLabelConfig:
    """Stage 2's general targets (the paper's soft labels): the stage-1 model writes `k` answers per general
    prompt, the judge picks one, and that answer becomes the target."""

    k: int = field(default=8, metadata={"help": "answers written per general prompt"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of those answers"})
    judge: str = field(default="reward", metadata={
        "help": "reward (the sample's reward against its reference) | model:<folder> (the local model's mean "
                "log-prob of each answer)"})
    min_judge_reward: float = field(default=0.5, metadata={
        "help": "a winner whose reward is under this is replaced by the reference (0: always the winner)"})
    max_prompts: int = field(default=0, metadata={"help": "label at most N general prompts (0: all)"})


@dataclass
class HardSubsetConfig:
    """Stage 3's prompts: the SNS RL prompts the stage-2 model still fails often, plus general prompts; the
    share of prompts asking for a rationale is raised by repeating them (the paper: 57%)."""

    k: int = field(default=8, metadata={"help": "sampled answers per prompt for the pass rates"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the pass-rate answers"})
    pass_threshold: float = field(default=0.5, metadata={"help": "an answer passes when its reward >= this"})
    pass_below: float = field(default=0.75, metadata={"help": "an SNS prompt with a pass rate under this is hard"})
    rationale_share: float = field(default=0.57, metadata={
        "help": "share of prompts with a rationale in stage 3's SNS data (0: leave as found)"})
    max_pool_per_task: int = field(default=0, metadata={"help": "diagnose at most N RL prompts per task (0: all)"})


@dataclass
class PipelineConfig:
    model: str = field(default_factory=_tiny_model, metadata={"help": "the starting model (a local HF folder)"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer folder; none: the model folder"})
    rl_files: list[str] = field(default_factory=lambda: _tiny("rl"), metadata={
        "help": "RL prompts of stages 1 and 3 (JSONL; SNS vs general by the task registry's domain)"})
    sft_files: list[str] = field(default_factory=lambda: _tiny("sft_pool"), metadata={
        "help": "SFT pool with references: the failure bucket comes from its SNS samples, soft labels from its "
                "general ones"})
    eval_files: list[str] = field(default_factory=lambda: _tiny("eval"), metadata={
        "help": "eval split scored after every stage (and the diagnosis' task scores)"})
    sns_bench: str | None = field(default=None, metadata={
        "help": "an SNS-Bench folder: also score every stage's export on it (report.json 'sns_bench')"})
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    stage1: RLConfig = field(default_factory=lambda: rl_stage.preset("paper"))
    diagnosis: DiagnosisConfig = field(default_factory=DiagnosisConfig)
    soft_labels: SoftLabelConfig = field(default_factory=SoftLabelConfig)
    stage2: SFTConfig = field(default_factory=lambda: sft_stage.preset("paper"))
    hard: HardSubsetConfig = field(default_factory=HardSubsetConfig)
    stage3: RLConfig = field(default_factory=lambda: rl_stage.preset("paper"))


def _tiny_rl(**overrides) -> RLConfig:
    settings = dict(rollout_steps=24, prompts_per_step=32, samples_per_prompt=8, updates_per_rollout=1,
                    general_ratio=0.15, max_prompt_tokens=256, max_response_tokens=32, overlong_buffer=4,
                    micro_batch_tokens=4096, generation_batch=64, reward_workers=0, checkpoint_every_rollouts=10,
                    optim=OptimConfig(lr=5e-4, weight_decay=0.0, schedule="constant", warmup_steps=0),
                    parallel=ParallelConfig(activation_checkpointing=False))
    settings.update(overrides)
    return RLConfig(**settings)


def preset(name: str) -> PipelineConfig:
    """`tiny` (the default): the bundled model and data on a laptop CPU in minutes. `qwen3-4b`: the paper's
    settings for GPU nodes (give --model and the data files; rollouts with vLLM)."""
    if name == "tiny":
        return PipelineConfig(
            evaluation=EvalConfig(max_new_tokens=48, batch_prompts=200, headroom_k=8, headroom_samples_per_task=20),
            stage1=_tiny_rl(),
            diagnosis=DiagnosisConfig(k=4),
            soft_labels=SoftLabelConfig(k=4),  # 4 answers judged per prompt: as good as 8 (one run), half the time
            # 35% general (the paper: 5.6%): at 5.6% stage 2 cost the tiny model 3.3-4.3 general points, at
            # 10-50% of the 3000 general prompts 1.3-2.6 on average (README, "How the tiny defaults were chosen")
            stage2=SFTConfig(epochs=6, batch_size=32, micro_batch_tokens=2048, max_length=512, general_ratio=0.35,
                             eval_every=0, checkpoint_every=50, eval_max_samples=128,
                             optim=OptimConfig(lr=1e-3, weight_decay=0.1, schedule="cosine", warmup_ratio=0.1),
                             parallel=ParallelConfig(activation_checkpointing=False)),
            hard=HardSubsetConfig(k=4, max_pool_per_task=200),
            # RL after SFT at a fifth of stage 1's rate: at 5e-4 stage 3 gave back 5.9 / 3.2 / 0.5 SNS points of
            # stage 2's gain (shipped eval, dev 21 / 22; seed 0), at 1e-4 -1.6 / +0.4 / +0.3 (README, as above)
            stage3=_tiny_rl(optim=OptimConfig(lr=1e-4, weight_decay=0.0, schedule="constant", warmup_steps=0)),
        )
    if name == "qwen3-4b":
        rl = rl_stage.preset("paper")
        rl.engine = "vllm"
        rl.general_ratio = 50 / 800  # 750K SNS + 50K general in stage 1
        rl3 = rl_stage.preset("paper")
        rl3.engine = "vllm"
        rl3.general_ratio = rl.general_ratio
        return PipelineConfig(model="", rl_files=[], sft_files=[], eval_files=[],
                              evaluation=EvalConfig(max_new_tokens=8192, batch_prompts=1024, engine="vllm"),
                              stage1=rl, stage2=sft_stage.preset("paper"), stage3=rl3)
    raise ConfigError(f"unknown pipeline preset {name!r} (known: {', '.join(PRESETS)})")


def recipe_stages(recipe: str) -> list[tuple[str, str]]:
    """[(stage key, kind)] of a recipe: kind "rl" or "sft"."""
    if recipe == "redone":
        return [("stage1", "rl"), ("stage2", "sft"), ("stage3", "rl")]
    if recipe == "sft-then-rl":
        return [("stage1", "sft"), ("stage2", "rl")]
    if recipe == "sft-only":
        return [("stage1", "sft")]
    raise ConfigError(f"unknown recipe {recipe!r} (known: {', '.join(RECIPES)})")


def check_config(cfg: PipelineConfig, recipe: str) -> None:
    """Every setting the recipe will use, checked before its first step, so that a bad value given for
    stage 3 fails in seconds rather than after stages 1 and 2 (ConfigError, prefixed with the section)."""
    # the settings each recipe reads: SFT always stage2's, RL on the base stage1's, RL after SFT stage3's
    sections: list[tuple[str, object]] = [("stage1", cfg.stage1)] if recipe == "redone" else []
    sections.append(("stage2", cfg.stage2))
    if recipe != "sft-only":
        sections.append(("stage3", cfg.stage3))
    for name, stage in sections:
        try:
            (rl_stage.check_config if isinstance(stage, RLConfig) else sft_stage.check_config)(stage)
        except ConfigError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    for name, section in (("diagnosis", cfg.diagnosis), ("soft_labels", cfg.soft_labels), ("hard", cfg.hard)):
        if section.k < 1 or not section.temperature > 0:
            raise ConfigError(f"{name}: k must be >= 1 and temperature > 0, got k={section.k}, "
                              f"temperature={section.temperature}")
