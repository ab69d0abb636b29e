"""The pipeline's configuration: one dataclass per step, the presets (`tiny`, `qwen3-4b`) and the recipes.

Recipes (the paper's comparison, arXiv 2511.07070 table 4, on the same data and stage settings):

    redone       stage1 = DAPO on all RL prompts -> diagnosis -> stage2 = SFT on the failure bucket + soft-labelled
                 general data -> stage3 = DAPO on the hard subsets (RedOne 2.0)
    sft-then-rl  stage1 = SFT on the whole SFT pool (references as targets) -> stage2 = DAPO on all RL prompts
                 (the usual order)
    sft-only     stage1 = SFT on the whole SFT pool (the "seesaw" baseline)

Each stage runs with the section of its role (`RECIPE_STAGES`): `rl_from_base`, `sft` or `rl_after_sft`, so
the two recipes' RL after SFT share one set of settings and no recipe can hand an SFT section to an RL stage.
The pipeline fills in each stage's `model`, `tokenizer` and data files itself (from the previous stage's
export and the files it derives); values given for those fields of a role's section are replaced.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from redone_fast.errors import ConfigError
from redone_fast.loop.outer import LoopSettings
from redone_fast.pipeline.scoring import EvalConfig
from redone_fast.rl.config import RLConfig
from redone_fast.rl.config import check_config as check_rl_config
from redone_fast.rl.config import preset as rl_preset
from redone_fast.stages.sft import SFTConfig
from redone_fast.stages.sft import check_config as check_sft_config
from redone_fast.stages.sft import preset as sft_preset
from redone_fast.tiny import data_path, model_path

__all__ = ["DiagnosisConfig", "SoftLabelConfig", "HardSubsetConfig", "PipelineConfig", "preset", "PRESETS",
           "RECIPES", "Preset", "Recipe", "RECIPE_STAGES", "recipe_stages", "stage_settings", "check_config"]

Preset = Literal["tiny", "qwen3-4b"]
Recipe = Literal["redone", "sft-only", "sft-then-rl"]
PRESETS: tuple[str, ...] = Preset.__args__
RECIPES: tuple[str, ...] = Recipe.__args__


@dataclass
class DiagnosisConfig:
    """How stage 1's model is diagnosed and which SFT-pool samples make the failure bucket (the paper leaves
    the rule open; this one is ours). Every pool sample of a weak SNS task (eval score under
    `weak_task_below`) enters the bucket, and so does any other SNS pool sample whose pass rate is under
    `low_pass_below`, with `anchor_ratio` of its task's passed samples per failure. Rare tasks are then
    up-weighted: every task with bucket samples is repeated up to at least `rare_floor` x the largest task's
    count."""

    k: int = 8
    """sampled answers per prompt for the pass rates"""
    temperature: float = 1.0
    """sampling temperature of the pass-rate answers"""
    pass_threshold: float = 0.5
    """an answer passes when its reward >= this"""
    weak_task_below: float = 60.0
    """an SNS task whose eval score (0-100) is under this is weak: all its pool samples go in the bucket"""
    low_pass_below: float = 0.5
    """a pool sample with a pass rate under this is a failure"""
    anchor_ratio: float = 1.0
    """a task that is not weak brings this many of its passed pool samples per low-pass sample (0: off)"""
    rare_floor: float = 0.5
    """each bucket task is repeated up to at least this share of the largest task's count (0: off)"""
    max_pool_per_task: int = 0
    """diagnose at most N pool samples per task (0: all)"""


@dataclass
class SoftLabelConfig:
    """Stage 2's general targets (the paper's soft labels): the stage-1 model writes `k` answers per general
    prompt, the judge picks one, and that answer becomes the target."""

    k: int = 8
    """answers written per general prompt"""
    temperature: float = 1.0
    """sampling temperature of those answers"""
    judge: str = "reward"
    """reward (the sample's reward against its reference) | model:<folder> (the local model's mean log-prob of each
    answer)"""
    min_judge_reward: float = 0.5
    """a winner whose reward is under this is replaced by the reference (0: always the winner)"""
    max_prompts: int = 0
    """label at most N general prompts (0: all)"""


@dataclass
class HardSubsetConfig:
    """Stage 3's prompts: the SNS RL prompts the stage-2 model still fails often, plus general prompts; the
    share of prompts asking for a rationale is raised by repeating them (the paper: 57%)."""

    k: int = 8
    """sampled answers per prompt for the pass rates"""
    temperature: float = 1.0
    """sampling temperature of the pass-rate answers"""
    pass_threshold: float = 0.5
    """an answer passes when its reward >= this"""
    pass_below: float = 0.75
    """an SNS prompt with a pass rate under this is hard"""
    rationale_share: float = 0.57
    """share of prompts with a rationale in stage 3's SNS data (0: leave as found)"""
    max_pool_per_task: int = 0
    """diagnose at most N RL prompts per task (0: all)"""


@dataclass
class PipelineConfig:
    """The whole pipeline: inputs, evaluation, and one section per stage role (not per stage number), so a
    recipe hands each stage the settings of its role: `rl_from_base` (redone's stage 1), `sft` (redone's
    stage 2; stage 1 of the baselines), `rl_after_sft` (redone's stage 3; sft-then-rl's stage 2)."""

    model: str = ""
    """the starting model (a local HF folder)"""
    tokenizer: str | None = None
    """tokenizer folder; None: the model folder"""
    rl_files: list[str] = field(default_factory=list)
    """RL prompts of the RL stages (JSONL; SNS vs general by the task registry's domain)"""
    sft_files: list[str] = field(default_factory=list)
    """SFT pool with references: the failure bucket comes from its SNS samples, soft labels from its general ones"""
    eval_files: list[str] = field(default_factory=list)
    """eval split scored after every stage (and the diagnosis' task scores)"""
    sns_bench: str | None = None
    """an SNS-Bench folder: also score every stage's export on it (report.json 'sns_bench')"""
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    rl_from_base: RLConfig = field(default_factory=lambda: rl_preset("paper"))
    """RL on the starting model: redone's stage 1 (Exploratory Learning)"""
    diagnosis: DiagnosisConfig = field(default_factory=DiagnosisConfig)
    soft_labels: SoftLabelConfig = field(default_factory=SoftLabelConfig)
    sft: SFTConfig = field(default_factory=lambda: sft_preset("paper"))
    """every SFT stage: redone's stage 2 (Targeted Fine-Tuning) and the baselines' stage 1"""
    hard: HardSubsetConfig = field(default_factory=HardSubsetConfig)
    rl_after_sft: RLConfig = field(default_factory=lambda: rl_preset("paper"))
    """RL after an SFT stage: redone's stage 3 (Refinement Learning) and sft-then-rl's stage 2"""


def preset(name: str) -> PipelineConfig:
    """`tiny` (the default): the bundled model and data on a laptop CPU in minutes. `qwen3-4b`: the paper's
    settings for GPU nodes (give --model and the data files; rollouts with vLLM)."""
    if name == "tiny":
        return PipelineConfig(
            model=str(model_path()), rl_files=[str(data_path("rl"))], sft_files=[str(data_path("sft_pool"))],
            eval_files=[str(data_path("eval"))],
            evaluation=EvalConfig(max_new_tokens=48, batch_prompts=200, headroom_k=8, headroom_samples_per_task=20),
            # The RL stage's tiny preset, with general prompts (the pipeline's own split of rl_files) at 15%
            rl_from_base=replace(rl_preset("tiny"), general_ratio=0.15),
            diagnosis=DiagnosisConfig(k=4),
            soft_labels=SoftLabelConfig(k=4),  # 4 answers judged per prompt: as good as 8 (one run), half the time
            # The SFT stage's tiny preset in the targeted-SFT role: 6 epochs over the small failure bucket, and
            # 35% general (the paper: 5.6%): at 5.6% stage 2 cost the tiny model 3.3-4.3 general points, at
            # 10-50% of the 3000 general prompts 1.3-2.6 on average (README, "How the tiny defaults were chosen")
            sft=replace(sft_preset("tiny"), epochs=6, general_ratio=0.35, eval_every=0,
                        loop=LoopSettings(checkpoint_every=50)),
            hard=HardSubsetConfig(k=4, max_pool_per_task=200),
            # RL after SFT at a fifth of stage 1's rate: at 5e-4 stage 3 gave back 5.9 / 3.2 / 0.5 SNS points of
            # stage 2's gain (shipped eval, dev 21 / 22; seed 0), at 1e-4 -1.6 / +0.4 / +0.3 (README, as above)
            rl_after_sft=replace(rl_preset("tiny"), general_ratio=0.15,
                                 optim=replace(rl_preset("tiny").optim, lr=1e-4)),
        )
    if name == "qwen3-4b":
        # 750K SNS + 50K general prompts in stage 1; rollouts with vLLM
        rl = replace(rl_preset("paper"), engine="vllm", general_ratio=50 / 800)
        return PipelineConfig(evaluation=EvalConfig(max_new_tokens=8192, batch_prompts=1024, engine="vllm"),
                              rl_from_base=rl, sft=sft_preset("paper"), rl_after_sft=replace(rl))
    raise ConfigError(f"unknown pipeline preset {name!r} (known: {', '.join(PRESETS)})")


# (stage key, role) of each recipe's stages; a role names the PipelineConfig section a stage runs with
RECIPE_STAGES: dict[str, list[tuple[str, str]]] = {
    "redone": [("stage1", "rl_from_base"), ("stage2", "sft"), ("stage3", "rl_after_sft")],
    "sft-then-rl": [("stage1", "sft"), ("stage2", "rl_after_sft")],
    "sft-only": [("stage1", "sft")],
}


def recipe_stages(recipe: str) -> list[tuple[str, str]]:
    """[(stage key, kind)] of a recipe: kind "rl" or "sft"."""
    return [(key, "sft" if role == "sft" else "rl") for key, role in _roles(recipe)]


def stage_settings(cfg: PipelineConfig, recipe: str, key: str):
    """The settings stage `key` of `recipe` runs with: its role's section of `cfg`."""
    return getattr(cfg, dict(_roles(recipe))[key])


def _roles(recipe: str) -> list[tuple[str, str]]:
    if recipe not in RECIPE_STAGES:
        raise ConfigError(f"unknown recipe {recipe!r} (known: {', '.join(RECIPES)})")
    return RECIPE_STAGES[recipe]


def check_config(cfg: PipelineConfig, recipe: str) -> None:
    """Every setting the recipe will use, checked before its first step, so that a bad value given for
    its last stage fails in seconds rather than after the first ones (ConfigError, prefixed with the section)."""
    for role in dict.fromkeys(role for _, role in _roles(recipe)):
        section = getattr(cfg, role)
        try:
            (check_rl_config if isinstance(section, RLConfig) else check_sft_config)(section)
        except ConfigError as exc:
            raise ConfigError(f"{role}: {exc}") from None
    for name, section in (("diagnosis", cfg.diagnosis), ("soft_labels", cfg.soft_labels), ("hard", cfg.hard)):
        if section.k < 1 or not section.temperature > 0:
            raise ConfigError(f"{name}: k must be >= 1 and temperature > 0, got k={section.k}, "
                              f"temperature={section.temperature}")
