"""Scoring a model on task samples: greedy evaluation, pass rates, and the numbers the pipeline reports.

What is scored, and how:
- Answers are generated from each sample's prompt through the tokenizer's chat template
  (`redone_fast.data.formatting.encode_prompt`), decoded with special tokens dropped.
  Evaluation (`evaluate_samples`) is greedy: one answer per sample, temperature 0.
- Each answer is scored with the sample's OWN reward, the `reward` spec of its record
  (`redone_fast.rewards.router.score_sample`): exact match, set F1, chrF, ... in [0, 1]. A reward that
  fails (raises, times out in a worker, returns garbage) scores 0; it never stops the evaluation.
- A task's score is the mean reward of its samples x 100 (0-100). A domain's score is the MACRO mean of
  its tasks' scores (every task weighs the same, whatever its number of samples), the domain being
  `redone_fast.data.tasks.TASKS[task].domain` ("sns" or "general"; a task not in the registry counts
  as "sns"). A domain with no task scored has no score: NaN in Python, `null` in JSON
  (`ModelScores.to_json` / `from_json` convert), so the JSON stays valid and a missing domain is never
  mistaken for a 0.
- Too-long prompts: a prompt whose encoded length + `max_new_tokens` exceeds the model's context
  (`max_position_embeddings` of the HF engine's model config, vLLM's `max_model_len`; not checked when
  the engine does not say) is not generated. Its answer is "" and it scores 0 (whatever its reward would
  give an empty answer); `ModelScores.too_long` counts them.
- Data-parallel: with a `DistContext` of more than one rank, rank r generates (and scores) samples[r::W]
  and the results are all-gathered, so every rank returns the full, ordered result. Greedy answers do not
  depend on the number of ranks; sampled ones (temperature > 0) do, since each rank seeds its own share
  (`seed + rank * len(samples) * n`, so no two ranks share a seed stream).
- Prompts go to the engine sorted by length (similar lengths share a padded batch: about 8x faster on
  the tiny model than file order); results come back in sample order.
- SNS-Bench (`score_sns_bench`): greedy answers to the benchmark's items scored per file with its own
  metric (`redone_fast.rewards.sns_bench`); the eval CLI and the pipeline both call it from here.
"""
from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from redone_fast.data.formatting import encode_prompt
from redone_fast.data.schema import Sample
from redone_fast.data.tasks import TASKS
from redone_fast.errors import ConfigError
from redone_fast.rollout.base import ENGINE_KINDS, EngineKind, SamplingParams

__all__ = ["EvalConfig", "ModelScores", "open_engine", "task_domain", "domain_means", "first_per_task",
           "context_length", "generate_answers", "generate_answers_flagged", "score_answers", "evaluate_samples",
           "pass_rates"]


@dataclass
class EvalConfig:
    max_new_tokens: int = 48
    """generation budget per answer (tokens)"""
    batch_prompts: int = 128
    """prompts per generate call (hf engine)"""
    engine: EngineKind = "hf"
    """generation engine: hf (transformers) or vllm"""
    max_samples_per_task: int = 0
    """score only the first N samples of each task, in file order (0: all)"""
    reward_workers: int = 0
    """reward worker processes (0: score in-process)"""
    reward_timeout_s: float = 10.0
    """time limit per reward call in the workers (seconds; ignored in-process)"""
    headroom_k: int = 0
    """also measure the sampling headroom with K answers per prompt at temperature 1 (redone_fast.pipeline.headroom;
    0: off)"""
    headroom_samples_per_task: int = 0
    """headroom on the first N samples of each task (0: all)"""

    def __post_init__(self) -> None:
        if self.engine not in ENGINE_KINDS:
            raise ConfigError(f"EvalConfig.engine: expected one of {', '.join(ENGINE_KINDS)}, got {self.engine!r}")
        for name in ("max_new_tokens", "batch_prompts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"EvalConfig.{name}: expected >= 1, got {getattr(self, name)}")
        if self.headroom_k == 1:
            raise ConfigError("EvalConfig.headroom_k: expected 0 (off) or >= 2, got 1")
        for name in ("max_samples_per_task", "reward_workers", "headroom_k", "headroom_samples_per_task"):
            if getattr(self, name) < 0:
                raise ConfigError(f"EvalConfig.{name}: expected >= 0, got {getattr(self, name)}")
        if not self.reward_timeout_s > 0:
            raise ConfigError(f"EvalConfig.reward_timeout_s: expected > 0, got {self.reward_timeout_s}")


def _json_number(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _from_json_number(value) -> float:
    return float("nan") if value is None else float(value)


@dataclass
class ModelScores:
    """Greedy scores of one model, 0-100. `sns` / `general` are NaN when no task of that domain was scored."""

    tasks: dict[str, float]  # task -> mean reward x 100, tasks in the order they first appear in the samples
    counts: dict[str, int]  # task -> samples scored (too-long ones included)
    sns: float  # macro mean over the SNS tasks' scores (NaN: none)
    general: float  # macro mean over the general tasks' scores (NaN: none)
    too_long: int = 0  # prompts longer than the context allows: not generated, scored 0

    def to_json(self) -> dict:
        """{"sns", "general", "tasks", "counts", "too_long"}; a NaN domain mean is written as None (null)."""
        return {"sns": _json_number(self.sns), "general": _json_number(self.general),
                "tasks": {task: float(score) for task, score in self.tasks.items()},
                "counts": {task: int(count) for task, count in self.counts.items()}, "too_long": int(self.too_long)}

    @classmethod
    def from_json(cls, data: dict) -> ModelScores:
        """The inverse of to_json (None -> NaN)."""
        return cls(tasks={t: float(v) for t, v in data["tasks"].items()},
                   counts={t: int(v) for t, v in data["counts"].items()},
                   sns=_from_json_number(data.get("sns")), general=_from_json_number(data.get("general")),
                   too_long=int(data.get("too_long", 0)))


# ---------------------------------------------------------------------------------------------------
# Small helpers


def task_domain(task: str) -> str:
    """TASKS[task].domain ("sns" or "general"); "sns" for a task not in the registry."""
    entry = TASKS.get(task)
    return entry.domain if entry is not None else "sns"


def domain_means(tasks: dict[str, float]) -> tuple[float, float]:
    """(sns, general): macro means of the task scores of each domain; NaN for a domain with no task."""
    by_domain: dict[str, list[float]] = {"sns": [], "general": []}
    for task, score in tasks.items():
        by_domain.setdefault(task_domain(task), []).append(float(score))
    return tuple(sum(v) / len(v) if v else float("nan") for v in (by_domain["sns"], by_domain["general"]))


def first_per_task(samples: Sequence[Sample], limit: int) -> list[Sample]:
    """The first `limit` samples of each task, in their original order (limit 0: all of them)."""
    if limit <= 0:
        return list(samples)
    seen: dict[str, int] = {}
    kept = []
    for sample in samples:
        if seen.get(sample.task, 0) < limit:
            seen[sample.task] = seen.get(sample.task, 0) + 1
            kept.append(sample)
    return kept


def open_engine(model_dir, cfg: EvalConfig, *, device=None, tokenizer=None):
    """A generation engine for an exported model folder (HF: config.json + safetensors + tokenizer).

    cfg.engine "hf": HFEngine(model_dir, tokenizer, device, max_batch_prompts=cfg.batch_prompts);
    "vllm": VLLMEngine(model_dir, tokenizer) (on the current CUDA device; `device` is not used).
    Close it with `.close()` when done.
    """
    from redone_fast.rollout import make_engine
    if cfg.engine == "hf":
        return make_engine("hf", model_dir, tokenizer=tokenizer, device=device, max_batch_prompts=cfg.batch_prompts)
    return make_engine(cfg.engine, model_dir, tokenizer=tokenizer)


def _tokenizer(engine):
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is None and hasattr(engine, "llm"):  # VLLMEngine keeps its tokenizer inside vLLM
        tokenizer = engine.llm.get_tokenizer()
    if tokenizer is None:
        raise ValueError(f"{type(engine).__name__}: no tokenizer (give the engine one: prompts are encoded with "
                         "its chat template and answers decoded with it)")
    return tokenizer


def context_length(engine) -> int | None:
    """The most positions the engine's model takes (prompt + answer); None when it does not say."""
    for read in (lambda: engine.model.config.max_position_embeddings,
                 lambda: engine.llm.llm_engine.model_config.max_model_len):
        try:
            value = read()
        except Exception:  # noqa: BLE001  (an engine without that attribute: try the next way)
            continue
        if isinstance(value, int) and value > 0:
            return value
    return None


# ---------------------------------------------------------------------------------------------------
# Data parallelism: shard, work, gather


def _all_gather(obj, ctx) -> list:
    """Every rank's `obj`, in rank order (tests replace this to simulate ranks)."""
    from redone_fast.distributed import all_gather_objects
    return all_gather_objects(obj)


def _map_sharded(work: Callable[[list, int], list], items: list, ctx) -> list:
    """work(items[r::W], r) on each rank r, gathered back into the order of `items` on every rank."""
    world = getattr(ctx, "world_size", 1) if ctx is not None else 1
    if world <= 1:
        return work(items, 0)
    rank = ctx.rank
    local = work(items[rank::world], rank)
    parts = _all_gather(local, ctx)
    if len(parts) != world:
        raise RuntimeError(f"all-gather returned {len(parts)} parts for {world} ranks")
    merged: list = [None] * len(items)
    for r, part in enumerate(parts):
        if len(part) != len(items[r::world]):
            raise RuntimeError(f"rank {r} returned {len(part)} results for {len(items[r::world])} samples")
        merged[r::world] = part
    return merged


# ---------------------------------------------------------------------------------------------------
# Generation and scoring


def _generate_local(engine, samples: list[Sample], *, n: int, temperature: float, max_new_tokens: int,
                    seed: int | None) -> tuple[list[list[str]], list[bool]]:
    """(n answers per sample, too-long flag per sample), on this process only."""
    if not samples:
        return [], []
    tokenizer = _tokenizer(engine)
    prompts = [encode_prompt(tokenizer, sample) for sample in samples]
    limit = context_length(engine)
    too_long = [limit is not None and len(ids) + max_new_tokens > limit for ids in prompts]
    answers: list[list[str]] = [[""] * n for _ in samples]
    # Similar lengths share a padded batch; Python's sort is stable, so ties keep sample order.
    order = sorted((i for i in range(len(samples)) if not too_long[i]), key=lambda i: len(prompts[i]))
    if order:
        sampling = SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
        groups = engine.generate([prompts[i] for i in order], sampling)
        if len(groups) != len(order):
            raise RuntimeError(f"{type(engine).__name__}.generate returned {len(groups)} groups for "
                               f"{len(order)} prompts")
        for i, group in zip(order, groups):
            if len(group) != n:
                raise RuntimeError(f"{type(engine).__name__}.generate returned {len(group)} answers, expected {n}")
            answers[i] = [tokenizer.decode(rollout.response_ids, skip_special_tokens=True) for rollout in group]
    return answers, too_long


def generate_answers_flagged(engine, samples: Sequence[Sample], *, n: int = 1, temperature: float = 0.0,
                             max_new_tokens: int = 48, seed: int | None = 0, ctx=None
                             ) -> tuple[list[list[str]], list[bool]]:
    """generate_answers, and for each sample whether its prompt was too long to generate (answers "")."""
    samples = list(samples)

    def work(part: list[Sample], rank: int) -> list:
        rank_seed = None if seed is None else seed + rank * len(samples) * n
        answers, flags = _generate_local(engine, part, n=n, temperature=temperature, max_new_tokens=max_new_tokens,
                                         seed=rank_seed)
        return list(zip(answers, flags))

    pairs = _map_sharded(work, samples, ctx)
    return [answers for answers, _ in pairs], [flag for _, flag in pairs]


def generate_answers(engine, samples: Sequence[Sample], *, n: int = 1, temperature: float = 0.0,
                     max_new_tokens: int = 48, seed: int | None = 0, ctx=None) -> list[list[str]]:
    """n decoded answers per sample (special tokens dropped), in sample order.

    temperature 0 decodes greedily (the n answers are then identical). With `ctx` (a DistContext) of
    world_size > 1, rank r generates samples[r::W] and every rank returns the full list. A prompt too
    long for the model's context (see the module docstring) is not generated: its answers are "".
    """
    return generate_answers_flagged(engine, samples, n=n, temperature=temperature, max_new_tokens=max_new_tokens,
                                    seed=seed, ctx=ctx)[0]


def score_answers(samples: Sequence[Sample], answers: Sequence[Sequence[str]], *, reward_workers: int = 0,
                  timeout_s: float = 10.0) -> list[list[float]]:
    """Each answer's reward in [0, 1] under its sample's own reward; a failing reward scores 0.

    reward_workers 0 scores in this process; N > 0 in a RewardPool of N worker processes, each reward call
    limited to `timeout_s` seconds.
    """
    from redone_fast.rewards.router import RewardPool
    if len(samples) != len(answers):
        raise ValueError(f"score_answers: {len(answers)} answer lists for {len(samples)} samples")
    flat_samples = [sample for sample, group in zip(samples, answers) for _ in group]
    flat_answers = [answer for group in answers for answer in group]
    outcomes = []
    if flat_answers:
        with RewardPool(workers=reward_workers, timeout_s=timeout_s) as pool:
            outcomes = pool.score_many(flat_samples, flat_answers)
    scores, start = [], 0
    for group in answers:
        scores.append([outcome.score for outcome in outcomes[start:start + len(group)]])
        start += len(group)
    return scores


def _generate_and_score(engine, samples: list[Sample], *, n: int, temperature: float, max_new_tokens: int,
                        seed: int | None, reward_workers: int, timeout_s: float, ctx) -> list[tuple[list[float], bool]]:
    """(n rewards, too-long flag) per sample; each rank scores its own share before the gather."""

    def work(part: list[Sample], rank: int) -> list:
        rank_seed = None if seed is None else seed + rank * len(samples) * n
        answers, too_long = _generate_local(engine, part, n=n, temperature=temperature,
                                            max_new_tokens=max_new_tokens, seed=rank_seed)
        fits = [i for i, flag in enumerate(too_long) if not flag]
        rewards: list[list[float]] = [[0.0] * n for _ in part]  # too long: 0, never scored
        scored = score_answers([part[i] for i in fits], [answers[i] for i in fits],
                               reward_workers=reward_workers, timeout_s=timeout_s)
        for i, values in zip(fits, scored):
            rewards[i] = values
        return list(zip(rewards, too_long))

    return _map_sharded(work, samples, ctx)


def evaluate_samples(engine, samples: Sequence[Sample], cfg: EvalConfig, *, ctx=None) -> ModelScores:
    """Greedy scores (n=1, temperature 0) of the engine's model on `samples` (cfg.max_samples_per_task of
    each task when set): per task, per domain (macro), and the number of too-long prompts."""
    chosen = first_per_task(list(samples), cfg.max_samples_per_task)
    if not chosen:
        raise ValueError("evaluate_samples: no samples to score")
    results = _generate_and_score(engine, chosen, n=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens, seed=0,
                                  reward_workers=cfg.reward_workers, timeout_s=cfg.reward_timeout_s, ctx=ctx)
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    for sample, (rewards, _) in zip(chosen, results):
        totals[sample.task] = totals.get(sample.task, 0.0) + rewards[0]
        counts[sample.task] = counts.get(sample.task, 0) + 1
    tasks = {task: 100.0 * totals[task] / counts[task] for task in totals}
    sns, general = domain_means(tasks)
    return ModelScores(tasks=tasks, counts=counts, sns=sns, general=general,
                       too_long=sum(flag for _, flag in results))


def pass_rates(engine, samples: Sequence[Sample], *, k: int, temperature: float = 1.0, max_new_tokens: int = 48,
               threshold: float = 0.5, seed: int = 0, ctx=None, reward_workers: int = 0
               ) -> tuple[list[float], list[float]]:
    """Per sample, from k sampled answers: (share of answers whose reward >= threshold, mean reward).

    A too-long prompt gets (0.0, 0.0).
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"pass_rates: k must be an int >= 1, got {k!r}")
    results = _generate_and_score(engine, list(samples), n=k, temperature=temperature, max_new_tokens=max_new_tokens,
                                  seed=seed, reward_workers=reward_workers, timeout_s=10.0, ctx=ctx)
    rates = [0.0 if too_long else sum(r >= threshold for r in rewards) / k for rewards, too_long in results]
    means = [sum(rewards) / k for rewards, _ in results]
    return rates, means


def score_sns_bench_samples(engine, samples_by_task: dict[str, list[Sample]], cfg: EvalConfig, *, ctx=None) -> dict:
    """Greedy answers to every item, scored per file with SNS-Bench's metric; the "sns_bench" JSON part.

    samples_by_task: `redone_fast.data.sns_bench.load_sns_bench(...)`'s result (possibly cut per file).
    Returns {"files": {stem: {"score", "metric", "items", "too_long", "stand_in"}}, "mean", "too_long"};
    "mean" is the plain mean of the files' scores.
    """
    from redone_fast.data.sns_bench import TASK_PREFIX
    from redone_fast.rewards.sns_bench import QUERY_GEN_STAND_IN, evaluate

    samples = [sample for items in samples_by_task.values() for sample in items]
    if not samples:
        raise ValueError("score_sns_bench: no SNS-Bench items to score")
    # One generate call for all files: the engine's length-sorted batches mix files of similar lengths.
    answers, too_long = generate_answers_flagged(engine, samples, n=1, temperature=0.0,
                                                 max_new_tokens=cfg.max_new_tokens, seed=0, ctx=ctx)
    files, start = {}, 0
    for task, items in samples_by_task.items():
        stop = start + len(items)
        predictions = [group[0] for group in answers[start:stop]]
        with warnings.catch_warnings():  # the stand-in is recorded in the result instead
            warnings.filterwarnings("ignore", message=re.escape(QUERY_GEN_STAND_IN[:60]))
            result = evaluate(task, predictions, items)
        stem = task[len(TASK_PREFIX):] if task.startswith(TASK_PREFIX) else task
        files[stem] = {"score": float(result.score), "metric": result.metric, "items": len(items),
                       "too_long": int(sum(too_long[start:stop])), "stand_in": result.stand_in}
        start = stop
    mean = sum(row["score"] for row in files.values()) / len(files)
    return {"files": files, "mean": mean, "too_long": int(sum(too_long))}


def score_sns_bench(engine, root, cfg: EvalConfig, *, ctx=None, limit: int | None = None) -> dict:
    """`score_sns_bench_samples` on the SNS-Bench folder `root`, the first `limit` items of each file
    (None: cfg.max_samples_per_task; 0: all). Raises DataError for a missing folder or a bad item."""
    from redone_fast.data.sns_bench import load_sns_bench
    limit = cfg.max_samples_per_task if limit is None else limit
    by_task = {task: first_per_task(items, limit) for task, items in load_sns_bench(root).items()}
    result = score_sns_bench_samples(engine, by_task, cfg, ctx=ctx)
    result["limit"] = limit
    return result
