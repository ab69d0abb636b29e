"""The RL stage (RedOne 2.0 stages 1 and 3): DAPO on the FSDP2 loop. Reads top to bottom:

    for each rollout step:
        sample prompts (task-balanced, general data mixed in)         -> TaskBalancedSampler
        generate n answers per prompt with the current weights         -> a rollout engine (HF or vLLM)
        score each answer with its task's reward, in parallel workers  -> redone_fast.rewards
        add the overlong penalty                                        -> rl/shaping.py
        group-relative advantages + the keep mask                       -> ops.group_advantages
        drop groups whose task rewards are all equal; sample more prompts until the batch is full (bounded)
        old-policy log-probs of every answer, no grad (several updates) -> ops.linear_logprobs
        split into exactly `updates_per_rollout` mini-batches; one clipped-objective optimizer step each,
        none where there is no signal                                    -> rl/loss.py via loop.train_step

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
  (every `checkpoint_every_rollouts`) fall on rollout boundaries. A mini-batch with nothing to learn
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

import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from redone_fast.config import to_dict
from redone_fast.errors import ConfigError
from redone_fast.loop.optim import OptimConfig
from redone_fast.parallelize import ParallelConfig

__all__ = ["RLConfig", "VLLMSettings", "preset", "PRESETS", "FILTER_METRICS", "ROLLOUT_CORRECTIONS", "RLSource",
           "filter_values", "has_signal", "split_evenly", "check_config", "rollout_is_cap", "run_rl", "main"]

FILTER_METRICS = ("task_reward", "accuracy", "shaped_reward")
ROLLOUT_CORRECTIONS = ("auto", "off", "truncate")


def _tiny_model() -> str:
    from redone_fast.tiny import model_path
    return str(model_path())


def _tiny_rl_data() -> list[str]:
    from redone_fast.tiny import data_path
    return [str(data_path("rl"))]


@dataclass
class VLLMSettings:
    """What VLLMEngine needs on a GPU node (see redone_fast/rollout/vllm_engine.py); unused by the hf engine."""

    gpu_memory_utilization: float = field(default=0.3, metadata={
        "help": "share of the GPU vLLM reserves for weights + KV cache (leave room for the trainer)"})
    max_model_len: int | None = field(default=None, metadata={
        "help": "longest prompt + response vLLM plans for (none: max prompt + max response tokens)"})
    sleep_level: int = field(default=1, metadata={"help": "1: offload weights while training; 2: discard them"})
    enforce_eager: bool = field(default=False, metadata={"help": "no CUDA graphs (less memory, slower decoding)"})
    dtype: str = field(default="auto", metadata={"help": "vLLM's dtype (auto: the checkpoint's)"})


@dataclass
class RLConfig:
    model: str = field(default_factory=_tiny_model, metadata={"help": "local model folder (HF: config + safetensors)"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer folder; none: the model folder"})
    train_files: list[str] = field(default_factory=_tiny_rl_data, metadata={"help": "JSONL prompts (task samples)"})
    general_files: list[str] = field(default_factory=list, metadata={"help": "JSONL general prompts mixed in"})
    general_ratio: float = field(default=0.0, metadata={"help": "share of prompts drawn from the general files"})
    tasks: list[str] = field(default_factory=list, metadata={"help": "only these tasks of the files (empty: all)"})
    task_temperature: float = field(default=2.0, metadata={"help": "task-balanced sampling temperature (1: by size)"})
    rollout_steps: int = field(default=500, metadata={"help": "rollout steps (each gives updates_per_rollout updates)"})
    prompts_per_step: int = field(default=1024, metadata={"help": "prompts (groups) per rollout step"})
    samples_per_prompt: int = field(default=16, metadata={"help": "answers per prompt (group size)"})
    updates_per_rollout: int = field(default=4, metadata={"help": "mini-batches (optimizer steps) per rollout"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling"})
    max_prompt_tokens: int = field(default=10240, metadata={"help": "longer prompts are skipped (counted)"})
    max_response_tokens: int = field(default=8192, metadata={"help": "generation budget per answer"})
    overlong_buffer: int = field(default=4096, metadata={"help": "DAPO overlong buffer (0: no shaping)"})
    overlong_factor: float = field(default=1.0, metadata={"help": "DAPO overlong penalty factor"})
    dynamic_sampling: bool = field(default=True, metadata={"help": "drop groups whose rewards are all equal"})
    filter_metric: str = field(default="task_reward", metadata={
        "help": "what dynamic sampling compares: task_reward (before shaping; DAPO) | accuracy | shaped_reward"})
    max_refill_rounds: int = field(default=3, metadata={"help": "extra generation rounds to refill the batch"})
    scale_by_std: bool = field(default=True, metadata={"help": "divide advantages by the group std (False: Dr. GRPO)"})
    eps_low: float = field(default=0.2, metadata={"help": "clip range below 1"})
    eps_high: float = field(default=0.28, metadata={"help": "clip range above 1 (DAPO clip-higher)"})
    dual_clip: float | None = field(default=None, metadata={"help": "dual-clip bound c > 1 for negative advantages"})
    aggregation: str = field(default="token-mean", metadata={
        "help": "token-mean | seq-mean-token-mean (the paper's equation) | seq-mean-token-sum"})
    kl_coef: float = field(default=0.0, metadata={"help": "k3 KL to the frozen starting model (0: off)"})
    log_ratio_clamp: float = field(default=20.0, metadata={"help": "bound on |logp - old_logp| before exp (verl)"})
    rollout_correction: str = field(default="auto", metadata={
        "help": "truncated importance sampling on the rollout/trainer mismatch: auto (on with vllm) | off | truncate"})
    rollout_is_cap: float = field(default=2.0, metadata={"help": "upper cap of the truncated IS weight (TRL: 2)"})
    micro_batch_tokens: int = field(default=16384, metadata={"help": "token budget of a packed micro-batch"})
    engine: str = field(default="hf", metadata={"help": "rollout engine: hf (transformers) or vllm"})
    generation_batch: int = field(default=64, metadata={"help": "prompts per generate call (both engines)"})
    vllm: VLLMSettings = field(default_factory=VLLMSettings)
    reward_workers: int = field(default=2, metadata={"help": "reward worker processes (0: in-process)"})
    reward_timeout_s: float = field(default=10.0, metadata={"help": "a reward slower than this scores 0"})
    seed: int = field(default=0, metadata={"help": "prompt order and sampling seed"})
    log_every: int = field(default=1, metadata={"help": "log every N optimizer steps"})
    checkpoint_every_rollouts: int = field(default=10, metadata={"help": "checkpoint every N rollout steps"})
    keep_checkpoints: int = field(default=2, metadata={"help": "complete checkpoints kept"})
    export: bool = field(default=True, metadata={"help": "write a Hugging Face folder <run-dir>/export at the end"})
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-6, weight_decay=0.1, schedule="constant",
                                                                   warmup_steps=10, grad_clip=1.0))
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


PRESETS = ("tiny", "paper")


def preset(name: str) -> RLConfig:
    """`paper`: stage 1 of RedOne 2.0 (model and data paths must be given); `tiny`: the bundled CPU default."""
    if name == "paper":
        return RLConfig()
    if name == "tiny":
        return RLConfig(rollout_steps=12, prompts_per_step=16, samples_per_prompt=8, updates_per_rollout=1,
                        max_prompt_tokens=256, max_response_tokens=24, overlong_buffer=8, micro_batch_tokens=2048,
                        generation_batch=16, reward_workers=0, checkpoint_every_rollouts=4,
                        optim=OptimConfig(lr=2e-4, weight_decay=0.0, schedule="constant", warmup_steps=0),
                        parallel=ParallelConfig(activation_checkpointing=False))
    raise ConfigError(f"unknown RL preset {name!r} (known: {', '.join(PRESETS)})")


@dataclass
class Group:
    """The answers to one prompt: the unit dynamic sampling keeps or drops."""

    sample: object  # redone_fast.data.schema.Sample
    prompt_ids: list[int]
    responses: list[list[int]]
    truncated: list[bool]
    task_rewards: list[float]  # the task's reward, before shaping
    rewards: list[float]  # after the overlong penalty
    errors: list[str | None]
    rollout_logprobs: list[list[float]] = field(default_factory=list)  # the engine's, one per response token


def filter_values(group: Group, metric: str) -> list[float]:
    """The per-answer values dynamic sampling compares (see the module docstring)."""
    if metric == "task_reward":
        return group.task_rewards
    if metric == "accuracy":
        return [float(r >= 1.0) for r in group.task_rewards]
    if metric == "shaped_reward":
        return group.rewards
    raise ConfigError(f"filter_metric: must be one of {FILTER_METRICS}, got {metric!r}")


def has_signal(group: Group, metric: str) -> bool:
    """Whether the group's answers differ in `metric` (all equal: zero advantage, nothing to learn)."""
    return len(set(filter_values(group, metric))) > 1


def split_evenly(count: int, parts: int) -> list[range]:
    """`parts` contiguous ranges covering 0..count-1, sizes differing by at most one (empty when count < parts)."""
    base, extra = divmod(count, parts)
    bounds = [0]
    for part in range(parts):
        bounds.append(bounds[-1] + base + (part < extra))
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


class RLSource:
    """The RL stage's `StepSource`: a rollout step every `updates_per_rollout` optimizer steps."""

    def __init__(self, cfg: RLConfig, *, sampler, tokenizer, engine, model, objective, ctx, score_fn,
                 ref_model=None):
        from redone_fast.rollout.base import SamplingParams
        self.cfg, self.sampler, self.tokenizer, self.engine = cfg, sampler, tokenizer, engine
        self.model, self.objective, self.ctx, self.score_fn, self.ref_model = model, objective, ctx, score_fn, ref_model
        self.sampling = SamplingParams(n=cfg.samples_per_prompt, temperature=cfg.temperature, top_p=cfg.top_p,
                                       max_new_tokens=cfg.max_response_tokens)
        self.pending: list[list] = []
        self.rollouts_done = 0
        self.last_step_tokens = 0
        self._metrics: dict[str, float] = {}

    # --- the StepSource protocol ---------------------------------------------------------------------

    def next_step(self) -> list:
        if not self.pending:
            self._rollout_step()
        micro_batches = self.pending.pop(0)
        self.last_step_tokens = sum(b.num_tokens for b in micro_batches if b.num_sequences)
        return micro_batches

    def state_dict(self) -> dict:
        # Saved at rollout boundaries; a checkpoint inside a rollout resumes at the next one.
        # The sampler is already past the prompts of a rollout still being trained on.
        return {"rollouts_done": self.rollouts_done, "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.rollouts_done = int(state["rollouts_done"])
        self.sampler.load_state_dict(state["sampler"])
        self.pending = []

    def at_resume_point(self) -> bool:
        """True between rollouts, the only places `state_dict` resumes exactly (the loop defers a stop
        request to the next one). Every rank has the same number of pending mini-batches."""
        return not self.pending

    def pop_metrics(self) -> dict[str, float]:
        metrics, self._metrics = self._metrics, {}
        return metrics

    # --- one rollout step ------------------------------------------------------------------------------

    def _encode(self, sample) -> list[int] | None:
        from redone_fast.data.formatting import encode_prompt
        ids = encode_prompt(self.tokenizer, sample)
        return ids if len(ids) <= self.cfg.max_prompt_tokens else None

    def _generate_groups(self, samples) -> tuple[list[Group], dict[str, float]]:
        """Generate and score this rank's share of `samples`, then gather every rank's groups (same order)."""
        from redone_fast.distributed import all_gather_objects
        from redone_fast.rl.shaping import overlong_penalty

        timings = {"generate_s": 0.0, "reward_s": 0.0, "generated_tokens": 0.0, "skipped_prompts": 0.0}
        encoded = [(i, s, self._encode(s)) for i, s in enumerate(samples)]
        timings["skipped_prompts"] = float(sum(ids is None for _, _, ids in encoded))
        mine = [(i, s, ids) for i, s, ids in encoded if ids is not None][self.ctx.rank::self.ctx.world_size]
        started = time.perf_counter()
        generated = []
        for start in range(0, len(mine), self.cfg.generation_batch):
            chunk = mine[start:start + self.cfg.generation_batch]
            generated += self.engine.generate([ids for _, _, ids in chunk], self.sampling)
        timings["generate_s"] = time.perf_counter() - started

        started = time.perf_counter()
        flat_samples, completions = [], []
        for (_, sample, _), rollouts in zip(mine, generated):
            for rollout in rollouts:
                flat_samples.append(sample)
                completions.append(self.tokenizer.decode(rollout.response_ids, skip_special_tokens=True))
        outcomes = self.score_fn(flat_samples, completions)
        timings["reward_s"] = time.perf_counter() - started

        local, k = [], 0
        for (index, sample, prompt_ids), rollouts in zip(mine, generated):
            outs = outcomes[k:k + len(rollouts)]
            k += len(rollouts)
            task_rewards = [float(o.score) for o in outs]
            shaped = [r + overlong_penalty(len(ro.response_ids) if ro.finished else self.cfg.max_response_tokens + 1,
                                           self.cfg.max_response_tokens, self.cfg.overlong_buffer, self.cfg.overlong_factor)
                      for r, ro in zip(task_rewards, rollouts)]
            timings["generated_tokens"] += sum(len(ro.response_ids) for ro in rollouts)
            local.append((index, Group(sample, prompt_ids, [list(ro.response_ids) for ro in rollouts],
                                       [bool(ro.truncated) for ro in rollouts], task_rewards, shaped,
                                       [o.error for o in outs], [list(ro.logprobs) for ro in rollouts])))
        gathered = all_gather_objects((local, timings))
        groups = sorted((item for part, _ in gathered for item in part), key=lambda item: item[0])
        totals = {key: sum(t[key] for _, t in gathered) for key in timings}
        totals["generate_s"] = max(t["generate_s"] for _, t in gathered)  # ranks generate concurrently
        totals["reward_s"] = max(t["reward_s"] for _, t in gathered)
        return [g for _, g in groups], totals

    def _rollout_step(self) -> None:
        from redone_fast.ops import group_advantages

        cfg = self.cfg
        self.engine.load_weights(self.model)
        self.engine.wake()
        kept: list[Group] = []
        generated: list[Group] = []  # every group of every round (the metrics of what the policy sampled)
        dropped, rounds = 0, 0
        stats = defaultdict(float)
        while len(kept) < cfg.prompts_per_step and rounds <= cfg.max_refill_rounds:
            samples = self.sampler.take(cfg.prompts_per_step)  # full rounds, as DAPO's reference does
            groups, timings = self._generate_groups(samples)
            for key, value in timings.items():
                stats[key] += value
            rounds += 1
            generated += groups
            for group in groups:
                if not cfg.dynamic_sampling or has_signal(group, cfg.filter_metric):
                    kept.append(group)
                else:
                    dropped += 1
        self.engine.sleep()
        kept = kept[:cfg.prompts_per_step]

        started = time.perf_counter()
        if kept:
            # Advantages (on the shaped rewards): one launch over the whole batch; groups are contiguous here.
            rewards = torch.tensor([r for g in kept for r in g.rewards], dtype=torch.float32)
            group_ids = torch.tensor([gi for gi, g in enumerate(kept) for _ in g.rewards], dtype=torch.int64)
            advantages = group_advantages(rewards, group_ids, len(kept), scale_by_std=cfg.scale_by_std).seq.tolist()
            self.pending = self._mini_batches(kept, advantages)
        else:  # no group had signal in any round: idle steps, the weights stay where they are
            self.pending = [[] for _ in range(cfg.updates_per_rollout)]
        stats["old_logprob_s"] = time.perf_counter() - started
        last_round = generated[-len(groups):]
        self._metrics = self._rollout_metrics(kept or last_round, generated, len(kept), dropped, rounds, stats)
        self.rollouts_done += 1

    def _mini_batches(self, kept: list[Group], advantages: list[float]) -> list[list]:
        """Exactly `updates_per_rollout` steps of this rank's micro-batches; [] marks an idle step."""
        from redone_fast.loop.step import rank_micro_batches
        from redone_fast.rl.batch import pack_rollouts
        from redone_fast.rl.loss import RLMicroBatch

        updates = self.cfg.updates_per_rollout
        sequences = [(g, j) for g in kept for j in range(len(g.responses))]  # rollout index = position here
        budget = max(self.cfg.micro_batch_tokens,
                     max(len(g.prompt_ids) + len(r) for g in kept for r in g.responses))
        mini_batches = []
        for chosen in split_evenly(len(sequences), updates):
            if not any(advantages[k] != 0.0 for k in chosen) and not self.cfg.kl_coef:
                mini_batches.append([])  # nothing to learn from these sequences
                continue
            packed = pack_rollouts([sequences[k][0].prompt_ids for k in chosen],
                                   [sequences[k][0].responses[sequences[k][1]] for k in chosen],
                                   [advantages[k] for k in chosen], budget, indices=list(chosen),
                                   rollout_logprobs=[sequences[k][0].rollout_logprobs[sequences[k][1]] for k in chosen])
            mine = rank_micro_batches(packed, self.ctx.rank, self.ctx.world_size, RLMicroBatch.without_targets)
            for batch in mine:
                # one update per rollout is on-policy: DAPOObjective then uses the current log-probs, detached,
                # which equal this recompute (same parameters, same packed batch), without the extra forward
                batch.old_logprobs = None if updates == 1 else self._logprobs(self.model, batch)
                if self.ref_model is not None:
                    batch.ref_logprobs = self._logprobs(self.ref_model, batch)
            mini_batches.append(mine)
        return mini_batches

    @torch.no_grad()
    def _logprobs(self, model, batch) -> torch.Tensor:
        """Log-probs of the labels under `model` (temperature-scaled), on the host; every rank calls it."""
        from redone_fast.model import model_body_and_head, packed_hidden_states
        from redone_fast.ops import linear_logprobs
        device = self.ctx.device
        hidden = packed_hidden_states(model, batch.input_ids.to(device), batch.position_ids.to(device),
                                      batch.cu_seqlens.to(device), max_seqlen=batch.max_seqlen or None)
        _, weight = model_body_and_head(model)
        logp = linear_logprobs(hidden, weight, batch.labels.to(device).clamp(min=0), temperature=self.cfg.temperature)
        return logp.float()

    def _rollout_metrics(self, kept: list[Group], generated: list[Group], kept_count: int, dropped: int,
                         rounds: int, stats) -> dict[str, float]:
        """Figures of the kept groups (the trained batch; the last round's groups when none was kept), and
        `*_generated` / `signal_share` over every group sampled in the rollout (an unfiltered view)."""
        from redone_fast.data.tasks import TASKS
        by_task_reward, by_task_acc, errors = defaultdict(list), defaultdict(list), defaultdict(int)
        lengths, truncated = [], []
        for g in kept:
            by_task_reward[g.sample.task] += g.task_rewards
            by_task_acc[g.sample.task] += [float(r >= 1.0) for r in g.task_rewards]
            lengths += [len(r) for r in g.responses]
            truncated += g.truncated
            errors[g.sample.task] += sum(e is not None for e in g.errors)
        all_rewards = [r for rs in by_task_reward.values() for r in rs]
        metrics = {
            "rollout": float(self.rollouts_done + 1),
            "reward": sum(all_rewards) / len(all_rewards),
            "shaped_reward": sum(r for g in kept for r in g.rewards) / max(1, sum(len(g.rewards) for g in kept)),
            "accuracy": sum(a for accs in by_task_acc.values() for a in accs) / len(all_rewards),
            "response_length_mean": sum(lengths) / len(lengths),
            "response_length_max": float(max(lengths)),
            "truncated_share": sum(truncated) / len(truncated),
            "groups_kept": float(kept_count),
            "reward_generated": sum(r for g in generated for r in g.task_rewards)
            / max(1, sum(len(g.task_rewards) for g in generated)),
            "accuracy_generated": sum(float(r >= 1.0) for g in generated for r in g.task_rewards)
            / max(1, sum(len(g.task_rewards) for g in generated)),
            "signal_share": sum(has_signal(g, self.cfg.filter_metric) for g in generated) / max(1, len(generated)),
            "idle_updates": float(sum(not step for step in self.pending)),
            "groups_dropped": float(dropped),
            "generation_rounds": float(rounds),
            "generate_s": stats["generate_s"],
            "reward_s": stats["reward_s"],
            "old_logprob_s": stats["old_logprob_s"],
            "generate_tokens_per_s": stats["generated_tokens"] / max(stats["generate_s"], 1e-9),
            "skipped_prompts": stats["skipped_prompts"],
        }
        for task, rewards in sorted(by_task_reward.items()):
            metrics[f"reward/{task}"] = sum(rewards) / len(rewards)
            metrics[f"accuracy/{task}"] = sum(by_task_acc[task]) / len(by_task_acc[task])
            metrics[f"reward_errors/{task}"] = float(errors[task])
        for domain in ("sns", "general"):
            values = [r for t, rs in by_task_reward.items() for r in rs
                      if (TASKS[t].domain if t in TASKS else "sns") == domain]
            if values:
                metrics[f"reward/{domain}"] = sum(values) / len(values)
        return metrics


def _load_prompts(files: list[str], tasks: list[str]):
    from redone_fast.data.schema import DataError, load_jsonl
    samples = [s for path in files for s in load_jsonl(path)]
    if tasks:
        samples = [s for s in samples if s.task in tasks]
        if not samples:
            raise DataError(f"no samples of tasks {tasks} in {files}")
    by_task = defaultdict(list)
    for s in samples:
        by_task[s.task].append(s)
    return dict(by_task)


def _make_engine(cfg: RLConfig, tokenizer, ctx):
    if cfg.engine == "hf":
        from redone_fast.rollout.hf_engine import HFEngine
        return HFEngine(cfg.model, tokenizer, device=ctx.device, max_batch_prompts=cfg.generation_batch)
    if cfg.engine == "vllm":
        from redone_fast.rollout.vllm_engine import VLLMEngine
        v = cfg.vllm
        max_len = v.max_model_len or cfg.max_prompt_tokens + cfg.max_response_tokens
        return VLLMEngine(cfg.model, tokenizer, dtype=v.dtype, gpu_memory_utilization=v.gpu_memory_utilization,
                          max_model_len=max_len, sleep_level=v.sleep_level, enforce_eager=v.enforce_eager)
    raise ConfigError(f"engine: must be 'hf' or 'vllm', got {cfg.engine!r}")


def check_config(cfg: RLConfig) -> None:
    """Reject bad values before anything is built or written (ConfigError naming the field): the pipeline
    checks every stage's settings this way before its first step."""
    from redone_fast.parallelize import check_parallel_config
    from redone_fast.rl.loss import DAPOObjective
    from redone_fast.rollout.base import SamplingParams
    choices = {"engine": ("hf", "vllm"), "filter_metric": FILTER_METRICS, "rollout_correction": ROLLOUT_CORRECTIONS}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"{name}: must be one of {', '.join(allowed)}; got {getattr(cfg, name)!r}")
    minimum = {"updates_per_rollout": 1, "prompts_per_step": 1, "rollout_steps": 0, "max_prompt_tokens": 1,
               "overlong_buffer": 0, "max_refill_rounds": 0, "micro_batch_tokens": 2, "generation_batch": 1,
               "reward_workers": 0, "log_every": 1, "checkpoint_every_rollouts": 1, "keep_checkpoints": 1}
    for name, least in minimum.items():
        if getattr(cfg, name) < least:
            raise ConfigError(f"{name}: must be >= {least}, got {getattr(cfg, name)}")
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


def run_rl(cfg: RLConfig, run_dir, *, stage: str = "rl") -> dict:
    """Train (or resume) the RL stage in `run_dir`; returns a summary (also written as <stage>_result.json)."""
    from redone_fast.data.sampler import TaskBalancedSampler
    from redone_fast.distributed import init_distributed
    from redone_fast.loop import LoopConfig, Trainer, build_optimizer, build_scheduler, train
    from redone_fast.model import load_tokenizer
    from redone_fast.parallelize import build_model
    from redone_fast.rewards.router import RewardPool
    from redone_fast.stages.result import finish_stage
    from redone_fast.rl.loss import DAPOObjective

    check_config(cfg)
    run_dir = Path(run_dir)
    started = time.perf_counter()
    ctx = init_distributed()
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    sns = _load_prompts(cfg.train_files, cfg.tasks)
    general = _load_prompts(cfg.general_files, []) if cfg.general_files else {}
    sampler = TaskBalancedSampler(sns, general, general_ratio=cfg.general_ratio, temperature=cfg.task_temperature,
                                  seed=cfg.seed)
    total_steps = cfg.rollout_steps * cfg.updates_per_rollout
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / f"{stage}_config.json").write_text(json.dumps(to_dict(cfg), indent=1), encoding="utf-8")

    model = build_model(cfg.model, ctx.mesh, cfg.parallel, device=ctx.device)
    ref_model = None
    if cfg.kl_coef:
        ref_model = build_model(cfg.model, ctx.mesh, cfg.parallel, device=ctx.device).eval().requires_grad_(False)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    objective = DAPOObjective(eps_low=cfg.eps_low, eps_high=cfg.eps_high, dual_clip=cfg.dual_clip,
                              aggregation=cfg.aggregation, kl_coef=cfg.kl_coef, temperature=cfg.temperature,
                              log_ratio_clamp=cfg.log_ratio_clamp, rollout_is_cap=rollout_is_cap(cfg))
    torch.manual_seed(cfg.seed + ctx.rank)  # the engine's sampling; restored from checkpoints on resume
    engine = _make_engine(cfg, tokenizer, ctx)
    try:
        with RewardPool(workers=cfg.reward_workers, timeout_s=cfg.reward_timeout_s) as pool:
            source = RLSource(cfg, sampler=sampler, tokenizer=tokenizer, engine=engine, model=model,
                              objective=objective, ctx=ctx, score_fn=pool.score_many, ref_model=ref_model)
            loop = LoopConfig(total_steps=total_steps, log_every=cfg.log_every,
                              checkpoint_every=cfg.checkpoint_every_rollouts * cfg.updates_per_rollout,
                              keep_checkpoints=cfg.keep_checkpoints, grad_clip=cfg.optim.grad_clip)
            outcome = train(Trainer(model, optimizer, scheduler, objective, ctx), source, loop, run_dir=run_dir,
                            stage=stage)
            reward_stats = {task: vars(stats) for task, stats in pool.stats().items()}
    finally:
        close = getattr(engine, "close", None)
        if close is not None:  # vLLM releases its process groups before ours is destroyed
            close()
    return finish_stage(run_dir, stage, ctx, outcome, model=model, tokenizer=tokenizer, export=cfg.export,
                        total_steps=total_steps, started=started, rollouts=outcome.step // cfg.updates_per_rollout,
                        rewards=[r["reward"] for r in outcome.history if "reward" in r], reward_stats=reward_stats)


def build_parser():
    from redone_fast.stages.cli import stage_parser
    return stage_parser("python -m redone_fast.stages.rl", __doc__.split("\n\n")[0], RLConfig, preset, PRESETS)


def main(argv=None) -> int:
    from redone_fast.stages.cli import stage_main
    return stage_main(build_parser(), preset, run_rl, argv)


if __name__ == "__main__":
    sys.exit(main())
