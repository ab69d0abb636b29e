"""The RL stage (RedOne 2.0 stages 1 and 3): DAPO on the FSDP2 loop. Reads top to bottom:

    set up: check the settings, join the group, load the tokenizer,   -> `start_stage` (stages/setup.py)
            the prompts, build the model, optimizer and schedule
    for each rollout step                                             -> `RLSource._rollout_step` (rl/source.py)
        sample prompts (task-balanced, general data mixed in)         -> TaskBalancedSampler (`prompt_sampler`)
        generate n answers per prompt with the current weights         -> a rollout engine (HF or vLLM)
        score each answer with its task's reward, in parallel workers  -> redone_fast.rewards (`score_rollouts`)
        add the overlong penalty                                        -> rl/shaping.py (`score_group`)
        drop groups whose task rewards are all equal; sample more prompts until the batch is full (bounded)
                                                                        -> `sample_until_full`
        group-relative advantages + the keep mask                       -> ops.group_advantages
        old-policy log-probs of every answer, no grad (several updates) -> ops.linear_logprobs
        split into exactly `updates_per_rollout` mini-batches; one clipped-objective optimizer step each,
        none where there is no signal                                   -> `pack_mini_batches`; rl/loss.py
                                                                           via loop.train_step

Where things are: the settings, presets and `check_config` in redone_fast/rl/config.py; the rollout step, as
small functions in that order, in redone_fast/rl/source.py; here `run_rl`, which wires the prompt sampler, the
rollout engine, the reward pool and `RLSource` into the loop, and the command line:

    python -m redone_fast.stages.rl --run-dir runs/rl                 # the bundled tiny default, CPU
    torchrun --nproc_per_node=8 -m redone_fast.stages.rl --preset paper --model /models/Qwen3-4B \\
        --train-files sns.jsonl --general-files general.jsonl --engine vllm --run-dir runs/stage1

Where this departs from the paper (arXiv 2511.07070) or fills in what it leaves open:
- Dynamic sampling keeps a group when its *task* rewards (before the overlong penalty) are not all equal,
  as DAPO's reference filters on accuracy (`filter_metric`: "task_reward", the default; "accuracy", the
  reward counted as 1 at >= 1 else 0; "shaped_reward", after the penalty). Filtering on the shaped reward
  would keep a group of 16 right answers where one ran a token into the overlong buffer, and std scaling
  would then give that answer an advantage of about -3.7, as strong as a wrong answer's. Advantages are
  still computed on the shaped rewards. Each refill round generates a full `prompts_per_step` batch of
  new prompts (surplus kept groups are discarded); rounds are bounded (`max_refill_rounds`); a batch still
  short after them trains on what it has, and a rollout where no group had signal takes no optimizer step
  (idle steps: AdamW's momentum and weight decay would otherwise still move the weights).
- Every rollout gives exactly `updates_per_rollout` optimizer steps: its sequences are split into that
  many mini-batches of near-equal size (groups stay together where the split allows), so checkpoints
  (every `loop.checkpoint_every` rollouts) fall on rollout boundaries. A mini-batch with nothing to learn
  (no sequences, or only zero advantages without a KL term) is an idle step.
- Sampling temperature 1.0 and no KL or entropy term (the DAPO reference's choices; the paper is silent);
  `kl_coef` adds a k3 KL to a frozen copy of the starting model.
- Loss aggregation: token-mean (DAPO's) by default; the paper's equation as printed is
  "seq-mean-token-mean". The log-ratio is clamped to +-20 before exp (verl's bound).
- The rollout engine's log-probs travel with each group; every update logs the rollout/trainer mismatch
  (`rollout_k3`, `rollout_abs_delta_max`), and `rollout_correction="truncate"` weights each token by
  min(trainer/rollout ratio, `rollout_is_cap`) (truncated importance sampling, as TRL and verl offer);
  "auto" turns it on with vLLM (bf16 sampling kernels) and off with the transformers engine (the same fp32
  model: the mismatch is rounding).
- A "step" of the paper is a rollout step; the loop counts optimizer steps (`updates_per_rollout` per
  rollout). Checkpoints fall between rollouts: a stop request (SIGTERM) that arrives during a rollout's
  updates is honoured after its last one, so a resumed run continues exactly (a SIGKILL resumes from the
  last checkpoint, also between rollouts).
- Rewards that raise or time out score 0 and are counted per task (`reward_errors/<task>`).
- Log-probs are of the temperature-scaled logits (the distribution sampled from), for the old policy, the
  current one and the reference alike.
"""
from __future__ import annotations

import sys

import torch

from redone_fast.data.sampler import TaskBalancedSampler
from redone_fast.loop import LoopConfig, Trainer, train
from redone_fast.parallelize import build_model
from redone_fast.rewards.router import RewardPool
from redone_fast.rl.config import (
    FILTER_METRICS,
    PRESETS,
    ROLLOUT_CORRECTIONS,
    RLConfig,
    VLLMSettings,
    check_config,
    preset,
    rollout_is_cap,
)
from redone_fast.rl.loss import DAPOObjective
from redone_fast.rl.source import RLSource, make_rollout_engine, prompt_sampler
from redone_fast.stages.cli import StageCommand, parse_stage_args, stage_main
from redone_fast.stages.result import finish_stage
from redone_fast.stages.setup import start_stage

# The settings' names are re-exported: they lived here before redone_fast/rl/config.py.
__all__ = ["RLConfig", "VLLMSettings", "preset", "PRESETS", "FILTER_METRICS", "ROLLOUT_CORRECTIONS", "check_config",
           "rollout_is_cap", "RLSource", "run_rl", "parse_args", "main"]


def _prompts(cfg: RLConfig, ctx, tokenizer) -> tuple[TaskBalancedSampler, int]:
    """The stage's data for `start_stage`: the prompt sampler, and its optimizer steps."""
    return prompt_sampler(cfg), cfg.rollout_steps * cfg.updates_per_rollout


def run_rl(cfg: RLConfig, run_dir, *, stage: str = "rl") -> dict:
    """Train (or resume) the RL stage in `run_dir`; returns a summary (also written as <stage>_result.json)."""
    setup = start_stage(cfg, run_dir, stage, check_config=check_config, prepare=_prompts)
    ctx, model, tokenizer, total_steps = setup.ctx, setup.model, setup.tokenizer, setup.total_steps
    ref_model = None
    if cfg.kl_coef:  # the frozen starting model of the KL term
        ref_model = build_model(cfg.model, ctx.mesh, cfg.parallel, device=ctx.device).eval().requires_grad_(False)
    objective = DAPOObjective(eps_low=cfg.eps_low, eps_high=cfg.eps_high, dual_clip=cfg.dual_clip,
                              aggregation=cfg.aggregation, kl_coef=cfg.kl_coef, temperature=cfg.temperature,
                              log_ratio_clamp=cfg.log_ratio_clamp, rollout_is_cap=rollout_is_cap(cfg))
    torch.manual_seed(cfg.seed + ctx.rank)  # the engine's sampling; restored from checkpoints on resume
    engine = make_rollout_engine(cfg, tokenizer, ctx)
    try:
        with RewardPool(workers=cfg.reward_workers, timeout_s=cfg.reward_timeout_s) as pool:
            source = RLSource(cfg, sampler=setup.data, tokenizer=tokenizer, engine=engine, model=model,
                              objective=objective, ctx=ctx, score_fn=pool.score_many, ref_model=ref_model)
            loop = LoopConfig(total_steps=total_steps, log_every=cfg.loop.log_every,
                              checkpoint_every=cfg.loop.checkpoint_every * cfg.updates_per_rollout,
                              keep_checkpoints=cfg.loop.keep_checkpoints, grad_clip=cfg.optim.grad_clip)
            outcome = train(Trainer(model, setup.optimizer, setup.scheduler, objective, ctx), source, loop,
                            run_dir=setup.run_dir, stage=stage)
            reward_stats = {task: vars(stats) for task, stats in pool.stats().items()}
    finally:
        close = getattr(engine, "close", None)
        if close is not None:  # vLLM releases its process groups before ours is destroyed
            close()
    return finish_stage(setup.run_dir, stage, ctx, outcome, model=model, tokenizer=tokenizer, export=cfg.export,
                        total_steps=total_steps, started=setup.started,
                        rollouts=outcome.step // cfg.updates_per_rollout,
                        rewards=[r["reward"] for r in outcome.history if "reward" in r], reward_stats=reward_stats)


def parse_args(argv) -> StageCommand:
    """The command line as a `StageCommand[RLConfig]` (tyro; bad input raises ConfigError with one line)."""
    return parse_stage_args(RLConfig, PRESET_FUNCTIONS, argv, prog=PROG, description=__doc__.split("\n\n")[0])


def main(argv=None) -> int:
    return stage_main(RLConfig, PRESET_FUNCTIONS, run_rl, argv, prog=PROG, description=__doc__.split("\n\n")[0])


PROG = "python -m redone_fast.stages.rl"
PRESET_FUNCTIONS = {name: (lambda name=name: preset(name)) for name in PRESETS}


if __name__ == "__main__":
    sys.exit(main())
