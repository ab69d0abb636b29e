"""From evaluation to data: the capability map, the failure bucket (stage 2) and the hard subsets (stage 3).

RedOne 2.0 (arXiv 2511.07070, section 3) evaluates the stage-1 model, and the "capability map" it yields
selects stage 2's data: the tasks and samples the model is weak on, rare-but-impactful cases up-weighted.
The paper does not give the rule; ours (every threshold a `DiagnosisConfig` field):

    task score    greedy eval-split score of the task, 0-100
    pass rate     share of k sampled answers (temperature T) whose reward >= pass_threshold, per pool sample
    bucket        every pool sample of a weak SNS task (task score < weak_task_below), plus the samples of
                  the other SNS tasks whose pass rate is < low_pass_below. A weak task keeps its mastered
                  samples too: trained on its failures alone, the tiny model drifted towards the labels it
                  got wrong and lost 9 points on note_taxonomy (measured; see README). For the same
                  reason a task that is not weak brings anchor_ratio of its passed samples (pool order)
                  per failure: on failures alone slang_translation fell from 74 to 61 (chrF), with the
                  anchors it stayed at 74 (measured on the 8-epoch tiny model)
    up-weighting  a task with fewer bucket samples than rare_floor x the largest task's is repeated up to
                  that count (a long-tail task then still weighs in the epoch)

Stage 3 trains on the SNS prompts the stage-2 model still fails often (pass rate < pass_below) with the
share of prompts that ask for a rationale raised to `rationale_share` by repeating them (the paper raises
it to 57%). All functions here are pure: the pipeline computes the pass rates and writes the files.
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from redone_fast.data.schema import Sample, write_jsonl
from redone_fast.errors import ConfigError
from redone_fast.pipeline.config import DiagnosisConfig, HardSubsetConfig
from redone_fast.pipeline.scoring import task_domain

__all__ = ["TaskDiagnosis", "CapabilityMap", "split_by_domain", "diagnose", "upweight_rare",
           "raise_rationale_share", "hard_subset", "write_capability_map"]


@dataclass
class TaskDiagnosis:
    domain: str
    score: float | None  # eval split, 0-100 (None: the task has no eval samples)
    mean_pass_rate: float
    pool_samples: int
    low_pass_samples: int
    weak: bool
    bucket_samples: int = 0  # after up-weighting
    weight: float = 0.0  # bucket_samples / distinct bucket samples of the task


@dataclass
class CapabilityMap:
    tasks: dict[str, TaskDiagnosis]
    bucket: list[Sample]
    rule: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"tasks": {name: vars(row) for name, row in sorted(self.tasks.items())},
                "bucket_size": len(self.bucket), "rule": self.rule}

    def table(self) -> str:
        lines = ["| task | domain | score | mean pass rate | pool | low pass | weak | bucket | weight |",
                 "|---|---|---:|---:|---:|---:|---|---:|---:|"]
        for name, row in sorted(self.tasks.items()):
            score = "-" if row.score is None else f"{row.score:.1f}"
            lines.append(f"| {name} | {row.domain} | {score} | {row.mean_pass_rate:.2f} | {row.pool_samples} | "
                         f"{row.low_pass_samples} | {'yes' if row.weak else 'no'} | {row.bucket_samples} | "
                         f"{row.weight:.2f} |")
        return "\n".join(lines)


def split_by_domain(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """(SNS samples, general samples) by the task registry's domain (unknown tasks count as SNS)."""
    sns = [s for s in samples if task_domain(s.task) == "sns"]
    general = [s for s in samples if task_domain(s.task) == "general"]
    return sns, general


def upweight_rare(by_task: dict[str, list[Sample]], rare_floor: float) -> dict[str, list[Sample]]:
    """Repeat each non-empty task's samples (cyclically) up to ceil(rare_floor x the largest count)."""
    largest = max((len(v) for v in by_task.values()), default=0)
    floor = math.ceil(rare_floor * largest) if rare_floor > 0 else 0
    out = {}
    for task, samples in by_task.items():
        if samples and len(samples) < floor:
            samples = [samples[i % len(samples)] for i in range(floor)]
        out[task] = list(samples)
    return out


def _is_weak(task: str, score: float | None, cfg: DiagnosisConfig) -> bool:
    """Only SNS tasks can be weak: general tasks are measured for forgetting, not targeted."""
    return task_domain(task) == "sns" and score is not None and score < cfg.weak_task_below


def diagnose(task_scores: dict[str, float], pool: list[Sample], pass_rates: list[float],
             cfg: DiagnosisConfig) -> CapabilityMap:
    """The capability map and failure bucket from eval-split task scores and the pool's pass rates.

    pool: the SFT pool's SNS samples (the bucket's candidates); pass_rates: one per pool sample.
    """
    if len(pool) != len(pass_rates):
        raise ValueError(f"diagnose: {len(pass_rates)} pass rates for {len(pool)} pool samples")
    rates_by_task: dict[str, list[float]] = defaultdict(list)
    chosen: dict[str, list[Sample]] = defaultdict(list)
    passed: dict[str, list[Sample]] = defaultdict(list)  # anchor candidates of tasks that are not weak
    low: dict[str, int] = defaultdict(int)
    for sample, rate in zip(pool, pass_rates):
        rates_by_task[sample.task].append(rate)
        weak = _is_weak(sample.task, task_scores.get(sample.task), cfg)
        low[sample.task] += rate < cfg.low_pass_below
        if weak or rate < cfg.low_pass_below:
            chosen[sample.task].append(sample)
        elif task_domain(sample.task) == "sns":
            passed[sample.task].append(sample)
    for task, failures in list(chosen.items()):
        if not _is_weak(task, task_scores.get(task), cfg):
            chosen[task] = failures + passed[task][:math.ceil(cfg.anchor_ratio * len(failures))]
    weighted = upweight_rare(dict(chosen), cfg.rare_floor)

    tasks = {}
    for name in sorted(set(rates_by_task) | set(task_scores)):
        score = task_scores.get(name)
        rates = rates_by_task.get(name, [])
        distinct = len(chosen.get(name, []))
        final = len(weighted.get(name, []))
        tasks[name] = TaskDiagnosis(
            domain=task_domain(name), score=score, mean_pass_rate=sum(rates) / len(rates) if rates else 0.0,
            pool_samples=len(rates), low_pass_samples=low.get(name, 0),
            weak=_is_weak(name, score, cfg),
            bucket_samples=final, weight=final / distinct if distinct else 0.0)
    bucket = [s for name in sorted(weighted) for s in weighted[name]]
    rule = {"weak_task_below": cfg.weak_task_below, "low_pass_below": cfg.low_pass_below,
            "pass_threshold": cfg.pass_threshold, "k": cfg.k, "temperature": cfg.temperature,
            "rare_floor": cfg.rare_floor, "anchor_ratio": cfg.anchor_ratio,
            "text": "bucket = every pool sample of SNS tasks scoring < weak_task_below, plus the samples of the other "
                    "SNS tasks with pass rate < low_pass_below and anchor_ratio of their passed samples per failure; "
                    "tasks under rare_floor x the largest task's count are repeated"}
    return CapabilityMap(tasks, bucket, rule)


def raise_rationale_share(samples: list[Sample], share: float) -> list[Sample]:
    """Within each task, repeat the samples that carry a rationale until they are at least `share` of it.

    A task with no rationale samples, or already at the share, is left as is.
    """
    if not 0.0 <= share < 1.0:
        raise ConfigError(f"rationale_share: must be in [0, 1), got {share}")
    by_task: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_task[sample.task].append(sample)
    out = []
    for task in sorted(by_task):
        group = by_task[task]
        with_rationale = [s for s in group if s.rationale]
        without = [s for s in group if not s.rationale]
        r, n = len(with_rationale), len(group)
        if share == 0 or r == 0 or r / n >= share:
            out.extend(group)
            continue
        copies = math.ceil(share * len(without) / ((1.0 - share) * r))  # r * copies / (r * copies + rest) >= share
        out.extend(without)
        out.extend(with_rationale * copies)
    return out


def hard_subset(samples: list[Sample], pass_rates: list[float], cfg: HardSubsetConfig) -> list[Sample]:
    """The SNS prompts with a pass rate under `pass_below`, rationale share raised."""
    if len(samples) != len(pass_rates):
        raise ValueError(f"hard_subset: {len(pass_rates)} pass rates for {len(samples)} samples")
    hard = [s for s, rate in zip(samples, pass_rates) if rate < cfg.pass_below]
    return raise_rationale_share(hard, cfg.rationale_share)


def _write_text(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def write_capability_map(folder: Path, cmap: CapabilityMap, *, pool: list[Sample], pass_rates: list[float],
                         model: str) -> None:
    """capability_map.json + capability_map.md (the table) + failure_bucket.jsonl + pass_rates.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {"model": model, **cmap.to_json()}
    _write_text(folder / "capability_map.json", json.dumps(record, indent=1))
    _write_text(folder / "capability_map.md", f"# Capability map of {model}\n\n{cmap.table()}\n\n"
                f"Rule: {cmap.rule.get('text', '')}.\n\nFailure bucket: {len(cmap.bucket)} samples.\n")
    rates = "".join(json.dumps({"id": s.id, "task": s.task, "pass_rate": r}) + "\n" for s, r in zip(pool, pass_rates))
    _write_text(folder / "pass_rates.jsonl", rates)
    partial = folder / "failure_bucket.jsonl.partial"
    write_jsonl(partial, cmap.bucket)
    os.replace(partial, folder / "failure_bucket.jsonl")
