"""The RL stage's rollouts: `RLSource`, the loop's `StepSource` that runs a rollout step every
`updates_per_rollout` optimizer steps, and the small functions a rollout step is made of, in its order:

    encode_prompts        the prompts' token ids (longer than `max_prompt_tokens`: skipped, counted)
    generate_in_batches   n answers per prompt from the rollout engine, `generation_batch` prompts a call
    score_rollouts        every answer's task reward in one `score_fn` call (the reward pool's workers)
    score_group           one prompt's answers -> a `Group`: task rewards, plus the overlong penalty
    gather_groups         every rank's groups, in sample order, on every rank
    sample_until_full     dynamic sampling: rounds of new prompts until `prompts_per_step` groups have signal
                          (`has_signal` on `filter_metric`), at most 1 + `max_refill_rounds` rounds
    sequence_advantages   group-relative advantages of the kept groups (ops.group_advantages)
    pack_mini_batches     the kept answers split into exactly `updates_per_rollout` packed mini-batches
                          (`split_evenly`; None: an idle step)
    RLSource._mini_batches   this rank's micro-batches of each, with the old (and reference) log-probs
    rollout_metrics       what a rollout logs

and what the runner (redone_fast/stages/rl.py) wires in: `prompt_sampler` (the JSONL prompts by task,
task-balanced) and `make_rollout_engine` (transformers or vLLM). Why each step is as it is, and where it departs
from the paper, is in redone_fast/stages/rl.py's docstring; the settings are redone_fast/rl/config.py.
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from redone_fast.data.formatting import encode_prompt
from redone_fast.data.sampler import TaskBalancedSampler
from redone_fast.data.schema import DataError, Sample, load_jsonl
from redone_fast.data.tasks import TASKS
from redone_fast.distributed import all_gather_objects
from redone_fast.errors import ConfigError
from redone_fast.loop.step import rank_micro_batches
from redone_fast.model import model_body_and_head, packed_hidden_states
from redone_fast.ops import group_advantages, linear_logprobs
from redone_fast.rl.batch import pack_rollouts
from redone_fast.rl.config import FILTER_METRICS, RLConfig
from redone_fast.rl.loss import RLMicroBatch
from redone_fast.rl.shaping import overlong_penalty
from redone_fast.rollout.base import SamplingParams
from redone_fast.rollout.hf_engine import HFEngine

__all__ = ["Group", "filter_values", "has_signal", "split_evenly", "encode_prompts", "generate_in_batches",
           "score_rollouts", "score_group", "gather_groups", "Rounds", "sample_until_full", "sequence_advantages",
           "pack_mini_batches", "rollout_metrics", "RLSource", "load_prompts", "prompt_sampler",
           "make_rollout_engine"]


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
    """The per-answer values dynamic sampling compares (see redone_fast/stages/rl.py's docstring)."""
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


# --- generating and scoring one round of prompts ------------------------------------------------------------

def encode_prompts(tokenizer, samples: Sequence[Sample],
                   max_prompt_tokens: int) -> list[tuple[int, Sample, list[int] | None]]:
    """(position, sample, prompt ids) of each sample; ids None where the prompt is over `max_prompt_tokens`."""
    encoded = []
    for index, sample in enumerate(samples):
        ids = encode_prompt(tokenizer, sample)
        encoded.append((index, sample, ids if len(ids) <= max_prompt_tokens else None))
    return encoded


def generate_in_batches(engine, prompts: list[list[int]], sampling: SamplingParams, batch: int) -> list[list]:
    """The engine's rollouts of each prompt (n per prompt), `batch` prompts per generate call."""
    generated = []
    for start in range(0, len(prompts), batch):
        generated += engine.generate(prompts[start:start + batch], sampling)
    return generated


def score_rollouts(tokenizer, score_fn, samples: Sequence[Sample], generated: list[list]) -> list[list]:
    """Every answer scored by one `score_fn(samples, completions)` call (completions decoded without special
    tokens); the outcomes, one list per prompt."""
    flat_samples, completions = [], []
    for sample, rollouts in zip(samples, generated):
        for rollout in rollouts:
            flat_samples.append(sample)
            completions.append(tokenizer.decode(rollout.response_ids, skip_special_tokens=True))
    outcomes = score_fn(flat_samples, completions)
    per_prompt, k = [], 0
    for _, rollouts in zip(samples, generated):
        per_prompt.append(outcomes[k:k + len(rollouts)])
        k += len(rollouts)
    return per_prompt


def score_group(cfg: RLConfig, sample: Sample, prompt_ids: list[int], rollouts: list, outcomes: Sequence) -> Group:
    """One prompt's answers as a Group: each outcome's score is the task reward; the shaped reward adds DAPO's
    overlong penalty (an answer the engine cut off counts as `max_response_tokens + 1` tokens)."""
    task_rewards = [float(o.score) for o in outcomes]
    shaped = [r + overlong_penalty(len(ro.response_ids) if ro.finished else cfg.max_response_tokens + 1,
                                   cfg.max_response_tokens, cfg.overlong_buffer, cfg.overlong_factor)
              for r, ro in zip(task_rewards, rollouts)]
    return Group(sample, prompt_ids, [list(ro.response_ids) for ro in rollouts],
                 [bool(ro.truncated) for ro in rollouts], task_rewards, shaped,
                 [o.error for o in outcomes], [list(ro.logprobs) for ro in rollouts])


def gather_groups(local: list[tuple[int, Group]], timings: dict[str, float]) -> tuple[list[Group], dict[str, float]]:
    """Every rank's (position, group) pairs as one list in position order, and the timings summed over the ranks
    (generation and scoring time: the slowest rank's, as ranks run concurrently). Every rank calls it."""
    gathered = all_gather_objects((local, timings))
    groups = sorted((item for part, _ in gathered for item in part), key=lambda item: item[0])
    totals = {key: sum(t[key] for _, t in gathered) for key in timings}
    totals["generate_s"] = max(t["generate_s"] for _, t in gathered)  # ranks generate concurrently
    totals["reward_s"] = max(t["reward_s"] for _, t in gathered)
    return [g for _, g in groups], totals


# --- dynamic sampling, advantages, mini-batches ---------------------------------------------------------------

@dataclass
class Rounds:
    """What a rollout's generation rounds gave: the groups kept for training and every group sampled."""

    kept: list[Group]  # groups with signal (every group with dynamic sampling off), at most prompts_per_step
    generated: list[Group]  # every group of every round (the metrics of what the policy sampled)
    last_round: list[Group]  # the last round's groups
    dropped: int
    rounds: int
    stats: dict[str, float]  # the rounds' timings, summed (generate_s, reward_s, generated_tokens, skipped_prompts)


def sample_until_full(take: Callable[[int], list], generate: Callable[[list], tuple[list[Group], dict]],
                      cfg: RLConfig) -> Rounds:
    """Rounds of `prompts_per_step` new prompts (`take`), generated and scored (`generate`), until
    `prompts_per_step` groups are kept or 1 + `max_refill_rounds` rounds have run; a group is kept when dynamic
    sampling is off or it `has_signal` on `filter_metric`. Surplus kept groups of the last round are dropped."""
    kept: list[Group] = []
    generated: list[Group] = []
    groups: list[Group] = []
    dropped, rounds = 0, 0
    stats = defaultdict(float)
    while len(kept) < cfg.prompts_per_step and rounds <= cfg.max_refill_rounds:
        samples = take(cfg.prompts_per_step)  # full rounds, as DAPO's reference does
        groups, timings = generate(samples)
        for key, value in timings.items():
            stats[key] += value
        rounds += 1
        generated += groups
        for group in groups:
            if not cfg.dynamic_sampling or has_signal(group, cfg.filter_metric):
                kept.append(group)
            else:
                dropped += 1
    return Rounds(kept[:cfg.prompts_per_step], generated, generated[-len(groups):], dropped, rounds, stats)


def sequence_advantages(kept: list[Group], scale_by_std: bool) -> list[float]:
    """Each answer's group-relative advantage on the shaped rewards: one launch over the whole batch (groups are
    contiguous here), in the order of `kept` and each group's responses."""
    rewards = torch.tensor([r for g in kept for r in g.rewards], dtype=torch.float32)
    group_ids = torch.tensor([gi for gi, g in enumerate(kept) for _ in g.rewards], dtype=torch.int64)
    return group_advantages(rewards, group_ids, len(kept), scale_by_std=scale_by_std).seq.tolist()


def pack_mini_batches(kept: list[Group], advantages: list[float], cfg: RLConfig) -> Iterator[list[RLMicroBatch] | None]:
    """Exactly `updates_per_rollout` mini-batches of the kept answers (`split_evenly`, in order: groups stay
    together where the split allows), each packed into micro-batches of every rank; None for one with nothing to
    learn (only zero advantages and no KL term). Rollout index = the answer's position in `kept`."""
    sequences = [(g, j) for g in kept for j in range(len(g.responses))]
    budget = max(cfg.micro_batch_tokens, max(len(g.prompt_ids) + len(r) for g in kept for r in g.responses))
    for chosen in split_evenly(len(sequences), cfg.updates_per_rollout):
        if not any(advantages[k] != 0.0 for k in chosen) and not cfg.kl_coef:
            yield None  # nothing to learn from these sequences
            continue
        yield pack_rollouts([sequences[k][0].prompt_ids for k in chosen],
                            [sequences[k][0].responses[sequences[k][1]] for k in chosen],
                            [advantages[k] for k in chosen], budget, indices=list(chosen),
                            rollout_logprobs=[sequences[k][0].rollout_logprobs[sequences[k][1]] for k in chosen])


def rollout_metrics(rounds: Rounds, *, rollout: int, idle_updates: int, filter_metric: str) -> dict[str, float]:
    """Figures of the kept groups (the trained batch; the last round's groups when none was kept), and
    `*_generated` / `signal_share` over every group sampled in the rollout (an unfiltered view)."""
    kept, generated, stats = rounds.kept or rounds.last_round, rounds.generated, rounds.stats
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
        "rollout": float(rollout),
        "reward": sum(all_rewards) / len(all_rewards),
        "shaped_reward": sum(r for g in kept for r in g.rewards) / max(1, sum(len(g.rewards) for g in kept)),
        "accuracy": sum(a for accs in by_task_acc.values() for a in accs) / len(all_rewards),
        "response_length_mean": sum(lengths) / len(lengths),
        "response_length_max": float(max(lengths)),
        "truncated_share": sum(truncated) / len(truncated),
        "groups_kept": float(len(rounds.kept)),
        "reward_generated": sum(r for g in generated for r in g.task_rewards)
        / max(1, sum(len(g.task_rewards) for g in generated)),
        "accuracy_generated": sum(float(r >= 1.0) for g in generated for r in g.task_rewards)
        / max(1, sum(len(g.task_rewards) for g in generated)),
        "signal_share": sum(has_signal(g, filter_metric) for g in generated) / max(1, len(generated)),
        "idle_updates": float(idle_updates),
        "groups_dropped": float(rounds.dropped),
        "generation_rounds": float(rounds.rounds),
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


# --- the StepSource -------------------------------------------------------------------------------------------

class RLSource:
    """The RL stage's `StepSource`: a rollout step every `updates_per_rollout` optimizer steps."""

    def __init__(self, cfg: RLConfig, *, sampler, tokenizer, engine, model, objective, ctx, score_fn,
                 ref_model=None):
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

    def _rollout_step(self) -> None:
        cfg = self.cfg
        self.engine.load_weights(self.model)
        self.engine.wake()
        rounds = sample_until_full(self.sampler.take, self._generate_groups, cfg)
        self.engine.sleep()

        started = time.perf_counter()
        if rounds.kept:
            self.pending = self._mini_batches(rounds.kept, sequence_advantages(rounds.kept, cfg.scale_by_std))
        else:  # no group had signal in any round: idle steps, the weights stay where they are
            self.pending = [[] for _ in range(cfg.updates_per_rollout)]
        rounds.stats["old_logprob_s"] = time.perf_counter() - started
        self._metrics = rollout_metrics(rounds, rollout=self.rollouts_done + 1,
                                        idle_updates=sum(not step for step in self.pending),
                                        filter_metric=cfg.filter_metric)
        self.rollouts_done += 1

    def _generate_groups(self, samples) -> tuple[list[Group], dict[str, float]]:
        """Generate and score this rank's share of `samples`, then gather every rank's groups (same order)."""
        timings = {"generate_s": 0.0, "reward_s": 0.0, "generated_tokens": 0.0, "skipped_prompts": 0.0}
        encoded = encode_prompts(self.tokenizer, samples, self.cfg.max_prompt_tokens)
        timings["skipped_prompts"] = float(sum(ids is None for _, _, ids in encoded))
        mine = [(i, s, ids) for i, s, ids in encoded if ids is not None][self.ctx.rank::self.ctx.world_size]
        started = time.perf_counter()
        generated = generate_in_batches(self.engine, [ids for _, _, ids in mine], self.sampling,
                                        self.cfg.generation_batch)
        timings["generate_s"] = time.perf_counter() - started

        started = time.perf_counter()
        outcomes = score_rollouts(self.tokenizer, self.score_fn, [s for _, s, _ in mine], generated)
        timings["reward_s"] = time.perf_counter() - started

        local = []
        for (index, sample, prompt_ids), rollouts, outs in zip(mine, generated, outcomes):
            timings["generated_tokens"] += sum(len(ro.response_ids) for ro in rollouts)
            local.append((index, score_group(self.cfg, sample, prompt_ids, rollouts, outs)))
        return gather_groups(local, timings)

    def _mini_batches(self, kept: list[Group], advantages: list[float]) -> list[list]:
        """Exactly `updates_per_rollout` steps of this rank's micro-batches; [] marks an idle step."""
        updates = self.cfg.updates_per_rollout
        mini_batches = []
        for packed in pack_mini_batches(kept, advantages, self.cfg):
            if packed is None:
                mini_batches.append([])
                continue
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
        device = self.ctx.device
        hidden = packed_hidden_states(model, batch.input_ids.to(device), batch.position_ids.to(device),
                                      batch.cu_seqlens.to(device), max_seqlen=batch.max_seqlen or None)
        _, weight = model_body_and_head(model)
        logp = linear_logprobs(hidden, weight, batch.labels.to(device).clamp(min=0), temperature=self.cfg.temperature)
        return logp.float()


# --- what the runner wires in ----------------------------------------------------------------------------------

def load_prompts(files: list[str], tasks: list[str]) -> dict[str, list[Sample]]:
    """The samples of the JSONL `files` by task (only `tasks`, when given: DataError if none is there)."""
    samples = [s for path in files for s in load_jsonl(path)]
    if tasks:
        samples = [s for s in samples if s.task in tasks]
        if not samples:
            raise DataError(f"no samples of tasks {tasks} in {files}")
    by_task = defaultdict(list)
    for s in samples:
        by_task[s.task].append(s)
    return dict(by_task)


def prompt_sampler(cfg: RLConfig) -> TaskBalancedSampler:
    """The stage's prompts: `train_files` (only `tasks`), `general_files` mixed in at `general_ratio`,
    task-balanced at `task_temperature`, in the order `seed` gives."""
    if cfg.general_ratio > 0 and not cfg.general_files:
        raise ConfigError(f"general_ratio: {cfg.general_ratio} > 0 but no general_files were given")
    sns = load_prompts(cfg.train_files, cfg.tasks)
    general = load_prompts(cfg.general_files, []) if cfg.general_files else {}
    return TaskBalancedSampler(sns, general, general_ratio=cfg.general_ratio, temperature=cfg.task_temperature,
                               seed=cfg.seed)


def make_rollout_engine(cfg: RLConfig, tokenizer, ctx):
    """The rollout engine `cfg.engine` names: "hf" (transformers, on this rank's device) or "vllm"."""
    if cfg.engine == "hf":
        return HFEngine(cfg.model, tokenizer, device=ctx.device, max_batch_prompts=cfg.generation_batch)
    if cfg.engine == "vllm":
        from redone_fast.rollout.vllm_engine import VLLMEngine  # here: only a vLLM run needs it (and vllm)
        v = cfg.vllm
        max_len = v.max_model_len or cfg.max_prompt_tokens + cfg.max_response_tokens
        return VLLMEngine(cfg.model, tokenizer, dtype=v.dtype, gpu_memory_utilization=v.gpu_memory_utilization,
                          max_model_len=max_len, sleep_level=v.sleep_level, enforce_eager=v.enforce_eager)
    raise ConfigError(f"engine: must be 'hf' or 'vllm', got {cfg.engine!r}")
