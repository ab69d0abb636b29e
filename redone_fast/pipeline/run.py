"""The pipeline, top to bottom (recipe `redone`, RedOne 2.0 arXiv 2511.07070):

    validate every input (model folder, data files, tasks, rewards) before anything trains
    eval:base        score the starting model on the eval split
    stage1           Exploratory Learning: DAPO on the SNS prompts + general prompts (stages/rl.py; the
                     `rl_from_base` settings)
    eval:stage1
    diagnosis        task scores + pass rates of the SFT pool -> capability map, failure bucket
    soft_labels      the stage-1 model's best-of-k answers to the general prompts
    stage2           Targeted Fine-Tuning: SFT on the bucket + soft-labelled general data (stages/sft.py;
                     the `sft` settings);
                     skipped, with a note, when the bucket is empty
    eval:stage2
    hard_subset      pass rates of the SNS RL prompts under the stage-2 model -> stage 3's prompts
    stage3           Refinement Learning: DAPO on the hard subsets (the `rl_after_sft` settings)
    eval:stage3

Each step's outcome is recorded in `<run-dir>/pipeline_state.json` as soon as it finishes; a re-run with the
same run folder skips finished steps and resumes a stage from its last checkpoint, whichever stage it was.
The report (report.md, report.json, plots/) is rewritten after every step. Every rank runs every step
(training needs all ranks; generation is sharded over them); rank 0 writes the files.

Run-folder layout: pipeline_config.json, pipeline_state.json, stage<N>/ (the stage's run folder:
checkpoints/, metrics.jsonl, tensorboard/, export/ = its Hugging Face model, data/ = the files it trained
on), diagnosis/ (capability_map.json/.md, failure_bucket.jsonl, pass_rates.jsonl), soft_labels/,
eval/<stage>.json, report.md, report.json, plots/.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable

from redone_fast.config import to_dict
from redone_fast.errors import RedoneError
from redone_fast.pipeline.config import PipelineConfig, check_config, recipe_stages, stage_settings

__all__ = ["PipelineError", "run_pipeline", "STATE_FILE", "CONFIG_FILE", "steps_of"]

STATE_FILE = "pipeline_state.json"
CONFIG_FILE = "pipeline_config.json"
STAGE_TITLES = {"rl": "DAPO", "sft": "SFT"}
REDONE_TITLES = {"stage1": "Exploratory Learning (DAPO)", "stage2": "Targeted Fine-Tuning (SFT)",
                 "stage3": "Refinement Learning (DAPO)"}


class PipelineError(RedoneError, RuntimeError):
    """A pipeline-level problem (bad input, a stage out of order, a changed config); the message says what."""


def steps_of(recipe: str) -> list[tuple[str, str]]:
    """[(step name, the stage it belongs to)] in order; `--stages` selects steps by their stage."""
    stages = recipe_stages(recipe)
    steps = [("eval:base", stages[0][0])]
    for key, kind in stages:
        if recipe == "redone" and key == "stage2":
            steps += [("diagnosis", key), ("soft_labels", key)]
        if recipe == "redone" and key == "stage3":
            steps += [("hard_subset", key)]
        steps += [(key, key), (f"eval:{key}", key)]
    return steps


# --- small helpers ------------------------------------------------------------------------------------

def _barrier() -> None:
    import torch.distributed as dist
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _write_json(path: Path, data) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(partial, path)


def _write_samples(path: Path, samples) -> str:
    from redone_fast.data.schema import write_jsonl
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    write_jsonl(partial, samples)
    os.replace(partial, path)
    return str(path)


def _load(files: list[str], what: str):
    from redone_fast.data.schema import load_jsonl
    if not files:
        raise PipelineError(f"{what}: no files given")
    return [s for path in files for s in load_jsonl(path)]


def _config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


class Pipeline:
    """One run folder's pipeline. Steps are methods named after the step; state is a JSON-able dict."""

    def __init__(self, cfg: PipelineConfig, run_dir, recipe: str, ctx, log: Callable[[str], None]):
        self.cfg, self.recipe, self.ctx, self.log = cfg, recipe, ctx, log
        self.run_dir = Path(run_dir)
        self.state_path = self.run_dir / STATE_FILE
        self.kinds = dict(recipe_stages(recipe))

    # --- state ----------------------------------------------------------------------------------------

    def load_state(self, allow_config_change: bool) -> None:
        config = {"recipe": self.recipe, **to_dict(self.cfg)}
        if self.state_path.is_file():
            try:
                self.state = json.loads(self.state_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise PipelineError(f"{self.state_path}: unreadable ({exc}); move it away to start over") from None
            saved = self.run_dir / CONFIG_FILE
            if saved.is_file() and self.state.get("done"):
                changes = _config_differences(json.loads(saved.read_text(encoding="utf-8")), config)
                if changes and not allow_config_change:
                    raise PipelineError(f"{self.run_dir} was started with another configuration ("
                                        + "; ".join(changes[:8]) + (" ..." if len(changes) > 8 else "")
                                        + "). Use a new --run-dir, or --allow-config-change to go on anyway.")
            if self.state.get("recipe") != self.recipe:
                raise PipelineError(f"{self.run_dir} holds a {self.state.get('recipe')!r} run, not {self.recipe!r}")
        else:
            self.state = {"recipe": self.recipe, "done": [], "outputs": {}, "scores": {}, "sns_bench": {},
                          "seconds": {}, "notes": []}
        self.state["stages"] = {key: {"kind": kind, "dir": key, "title": self._title(key, kind),
                                      "done": key in self.state["done"],
                                      "skipped": bool(self.state["outputs"].get(key, {}).get("skipped"))}
                                for key, kind in recipe_stages(self.recipe)}
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _write_json(self.run_dir / CONFIG_FILE, config)
        _barrier()

    def _title(self, key: str, kind: str) -> str:
        return REDONE_TITLES[key] if self.recipe == "redone" else STAGE_TITLES[kind]

    def save_state(self) -> None:
        from redone_fast.pipeline.report import write_report
        self.state["domains"] = self._domains()
        for key, row in self.state["stages"].items():
            row["done"] = key in self.state["done"]
            row["skipped"] = bool(self.state["outputs"].get(key, {}).get("skipped"))
        if self.ctx.is_main:
            _write_json(self.state_path, self.state)
            write_report(self.run_dir, self.state)
        _barrier()

    def _domains(self) -> dict[str, str]:
        from redone_fast.pipeline.scoring import task_domain
        tasks = {t for scores in self.state["scores"].values() for t in scores.get("tasks", {})}
        return {t: task_domain(t) for t in sorted(tasks)}

    def finish(self, step: str, seconds: float, **outputs) -> None:
        self.state["done"].append(step)
        self.state["outputs"][step] = outputs
        self.state["seconds"][step] = round(seconds, 3)
        self.save_state()

    def note(self, text: str) -> None:
        self.log(text)
        if text not in self.state["notes"]:
            self.state["notes"].append(text)

    # --- models ---------------------------------------------------------------------------------------

    def model_after(self, stage: str | None) -> str:
        """The model a step starts from: the export of `stage`, of the last stage before it that ran, or the
        starting model."""
        order = [key for key, _ in recipe_stages(self.recipe)]
        candidates = order[:order.index(stage) + 1] if stage else []
        for key in reversed(candidates):
            out = self.state["outputs"].get(key, {})
            if out.get("export"):
                return out["export"]
        return self.cfg.model

    def previous_stage(self, stage: str) -> str | None:
        order = [key for key, _ in recipe_stages(self.recipe)]
        index = order.index(stage)
        return order[index - 1] if index else None

    @contextmanager
    def engine(self, model: str):
        """A generation engine on `model` for one step, closed after it (vLLM frees its memory)."""
        from redone_fast.pipeline.scoring import open_engine
        engine = open_engine(model, self.cfg.evaluation, device=self.ctx.device)
        try:
            yield engine
        finally:
            getattr(engine, "close", lambda: None)()

    # --- inputs ---------------------------------------------------------------------------------------

    def validate_inputs(self) -> None:
        """Every file (each line: JSON, schema, known task and reward) and the model folder, checked before the
        first step trains, so a bad input fails in seconds, not after stage 1."""
        from redone_fast.model import check_model_folder
        if not self.cfg.model:
            raise PipelineError("model: no starting model given (--model DIR)")
        check_model_folder(self.cfg.model)
        self.rl_samples = _load(self.cfg.rl_files, "rl_files") if self._needs("rl") else []
        self.sft_samples = _load(self.cfg.sft_files, "sft_files")
        self.eval_samples = _load(self.cfg.eval_files, "eval_files")  # the loader names unknown tasks/rewards

    def _needs(self, kind: str) -> bool:
        return kind in self.kinds.values()

    # --- steps ----------------------------------------------------------------------------------------

    def evaluate(self, key: str) -> dict:
        from redone_fast.pipeline.scoring import evaluate_samples
        model = self.cfg.model if key == "base" else self.model_after(key)
        if key != "base" and self.state["outputs"].get(key, {}).get("skipped"):
            self.note(f"eval:{key} skipped: {key} did not run")
            return {"skipped": True}
        evaluation = self.cfg.evaluation
        with self.engine(model) as engine:
            scores = evaluate_samples(engine, self.eval_samples, evaluation, ctx=self.ctx)
            bench = self._sns_bench(engine) if self.cfg.sns_bench else None
            if evaluation.headroom_k:
                from redone_fast.pipeline.headroom import measure_headroom
                table = measure_headroom(engine, self.eval_samples, k=evaluation.headroom_k,
                                         max_new_tokens=evaluation.max_new_tokens,
                                         max_samples_per_task=evaluation.headroom_samples_per_task, ctx=self.ctx)
                self.state.setdefault("headroom", {})[key] = {task: row.to_json() for task, row in table.items()}
        self.state["scores"][key] = scores.to_json()
        if bench is not None:
            self.state["sns_bench"][key] = bench
        if self.ctx.is_main:
            (self.run_dir / "eval").mkdir(exist_ok=True)
            _write_json(self.run_dir / "eval" / f"{key}.json", {"model": model, "scores": scores.to_json(),
                                                                "sns_bench": bench})
        self.log(f"[eval] {key}: SNS {scores.sns:.1f}, general {scores.general:.1f}  "
                 + ", ".join(f"{t} {v:.1f}" for t, v in scores.tasks.items()))
        return {"model": model}

    def _sns_bench(self, engine) -> dict:
        from redone_fast.pipeline.scoring import score_sns_bench
        return score_sns_bench(engine, self.cfg.sns_bench, self.cfg.evaluation, ctx=self.ctx)

    def run_stage(self, key: str) -> dict:
        kind = self.kinds[key]
        stage_dir = self.run_dir / key
        model = self.model_after(self.previous_stage(key))
        if kind == "rl":
            return self._run_rl(key, stage_dir, model)
        return self._run_sft(key, stage_dir, model)

    def _run_rl(self, key: str, stage_dir: Path, model: str) -> dict:
        from redone_fast.pipeline.diagnosis import split_by_domain
        from redone_fast.stages.rl import run_rl
        data_dir = stage_dir / "data"
        if self.recipe == "redone" and key == "stage3":
            sns_file = str(data_dir / "sns.jsonl")
            general_file = str(data_dir / "general.jsonl")
            if not Path(sns_file).is_file():
                raise PipelineError(f"{sns_file} is missing: the hard_subset step must run first")
        else:
            sns, general = split_by_domain(self.rl_samples)
            if not sns:
                raise PipelineError(f"rl_files {self.cfg.rl_files}: no SNS prompts")
            if self.ctx.is_main:
                _write_samples(data_dir / "sns.jsonl", sns)
                if general:
                    _write_samples(data_dir / "general.jsonl", general)
            _barrier()
            sns_file = str(data_dir / "sns.jsonl")
            general_file = str(data_dir / "general.jsonl") if general else ""
        base = stage_settings(self.cfg, self.recipe, key)
        general_files = [general_file] if general_file and Path(general_file).is_file() else []
        cfg = replace(base, model=model, tokenizer=self.cfg.tokenizer, train_files=[sns_file],
                      general_files=general_files, general_ratio=base.general_ratio if general_files else 0.0)
        summary = run_rl(cfg, stage_dir, stage=key)
        return self._stage_outcome(key, summary)

    def _run_sft(self, key: str, stage_dir: Path, model: str) -> dict:
        from redone_fast.pipeline.diagnosis import split_by_domain
        from redone_fast.stages.sft import run_sft
        base = stage_settings(self.cfg, self.recipe, key)
        if self.recipe == "redone":  # the failure bucket + soft-labelled general data
            bucket = self.run_dir / "diagnosis" / "failure_bucket.jsonl"
            soft = self.run_dir / "soft_labels" / "general.jsonl"
            if self.state["outputs"].get("diagnosis", {}).get("bucket_size", 0) == 0:
                self.note(f"{key} skipped: the failure bucket is empty (stage 1 left no weak task or sample under "
                          f"the diagnosis rule); stage 3 starts from the stage-1 model")
                return {"skipped": True}
            train_files, general_files = [str(bucket)], [str(soft)] if soft.is_file() else []
        else:  # the baselines: the whole SFT pool, references as targets
            sns, general = split_by_domain(self.sft_samples)
            if self.ctx.is_main:
                _write_samples(stage_dir / "data" / "sns.jsonl", sns)
                if general:
                    _write_samples(stage_dir / "data" / "general.jsonl", general)
            _barrier()
            train_files = [str(stage_dir / "data" / "sns.jsonl")]
            general_files = [str(stage_dir / "data" / "general.jsonl")] if general else []
        cfg = replace(base, model=model, tokenizer=self.cfg.tokenizer, train_files=train_files,
                      general_files=general_files, general_ratio=base.general_ratio if general_files else 0.0,
                      eval_files=list(self.cfg.eval_files))
        summary = run_sft(cfg, stage_dir, stage=key)
        return self._stage_outcome(key, summary)

    def _stage_outcome(self, key: str, summary: dict) -> dict:
        if summary["status"] != "finished":
            raise _Stopped(f"{key} stopped at step {summary['step']}/{summary['total_steps']} "
                           f"({summary['status']}); re-run the same command to resume")
        return {"export": summary.get("export"), "steps": summary["step"], "status": summary["status"],
                "stage_seconds": summary["seconds"]}

    def diagnosis(self) -> dict:
        from redone_fast.pipeline.diagnosis import diagnose, split_by_domain, write_capability_map
        from redone_fast.pipeline.scoring import first_per_task, pass_rates
        model = self.model_after("stage1")
        sns_pool, _ = split_by_domain(self.sft_samples)
        pool = first_per_task(sns_pool, self.cfg.diagnosis.max_pool_per_task)
        scores = self.state["scores"].get("stage1")
        if scores is None:
            raise PipelineError("diagnosis needs stage 1's eval scores (step eval:stage1)")
        with self.engine(model) as engine:
            rates, _ = pass_rates(engine, pool, k=self.cfg.diagnosis.k, temperature=self.cfg.diagnosis.temperature,
                                  max_new_tokens=self.cfg.evaluation.max_new_tokens,
                                  threshold=self.cfg.diagnosis.pass_threshold, seed=1, ctx=self.ctx)
        cmap = diagnose(scores["tasks"], pool, rates, self.cfg.diagnosis)
        if self.ctx.is_main:
            write_capability_map(self.run_dir / "diagnosis", cmap, pool=pool, pass_rates=rates, model=model)
        self.log("[diagnosis] capability map (stage 1):\n" + cmap.table()
                 + f"\n[diagnosis] failure bucket: {len(cmap.bucket)} samples")
        return {"bucket_size": len(cmap.bucket), "weak_tasks": [t for t, r in cmap.tasks.items() if r.weak]}

    def soft_labels(self) -> dict:
        from redone_fast.pipeline.diagnosis import split_by_domain
        from redone_fast.pipeline.soft_labels import make_judge, soft_label
        _, general = split_by_domain(self.sft_samples)
        if not general or self.cfg.sft.general_ratio == 0:
            self.note("soft_labels: no general samples in sft_files (or general_ratio 0): stage 2 trains on the "
                      "bucket only")
            return {"labelled": 0}
        model = self.model_after("stage1")
        judge = make_judge(self.cfg.soft_labels.judge, device=self.ctx.device)
        with self.engine(model) as engine:
            labels = soft_label(engine, general, self.cfg.soft_labels, judge=judge,
                                max_new_tokens=self.cfg.evaluation.max_new_tokens, seed=2, ctx=self.ctx)
        fallback = sum(label.fallback for label in labels)
        if self.ctx.is_main:
            folder = self.run_dir / "soft_labels"
            _write_samples(folder / "general.jsonl", [label.sample for label in labels])
            (folder / "candidates.jsonl").write_text(
                "".join(json.dumps(label.to_json()) + "\n" for label in labels), encoding="utf-8")
        self.log(f"[soft_labels] {len(labels)} general prompts labelled by the {self.cfg.soft_labels.judge} judge "
                 f"from {self.cfg.soft_labels.k} answers each; {fallback} kept their reference")
        return {"labelled": len(labels), "fallback": fallback}

    def hard_subset(self) -> dict:
        from redone_fast.pipeline.diagnosis import hard_subset, split_by_domain
        from redone_fast.pipeline.scoring import first_per_task, pass_rates
        sns, general = split_by_domain(self.rl_samples)
        candidates = first_per_task(sns, self.cfg.hard.max_pool_per_task)
        model = self.model_after("stage2")
        with self.engine(model) as engine:
            rates, _ = pass_rates(engine, candidates, k=self.cfg.hard.k, temperature=self.cfg.hard.temperature,
                                  max_new_tokens=self.cfg.evaluation.max_new_tokens,
                                  threshold=self.cfg.hard.pass_threshold, seed=3, ctx=self.ctx)
        hard = hard_subset(candidates, rates, self.cfg.hard)
        if not hard:
            self.note(f"hard_subset: no SNS prompt under pass rate {self.cfg.hard.pass_below}; stage 3 uses all "
                      f"{len(candidates)} SNS prompts")
            hard = candidates
        data_dir = self.run_dir / "stage3" / "data"
        if self.ctx.is_main:
            _write_samples(data_dir / "sns.jsonl", hard)
            if general:
                _write_samples(data_dir / "general.jsonl", general)
        with_rationale = sum(bool(s.rationale) for s in hard)
        self.log(f"[hard_subset] {len(hard)} SNS prompts for stage 3 ({with_rationale / len(hard):.0%} with a "
                 f"rationale) from {len(candidates)} scored with the {model} model")
        return {"prompts": len(hard), "rationale_share": with_rationale / len(hard)}

    # --- driver ---------------------------------------------------------------------------------------

    def run_step(self, step: str) -> dict:
        if step.startswith("eval:"):
            return self.evaluate(step.split(":", 1)[1])
        if step in self.kinds:
            return self.run_stage(step)
        return getattr(self, step)()


class _Stopped(Exception):
    """A stage returned before its last step (a stop signal): the pipeline stops, resumable."""


def run_pipeline(cfg: PipelineConfig, run_dir, *, recipe: str = "redone", stages: list[str] | None = None,
                 allow_config_change: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) the recipe's steps in `run_dir`; returns the state (what report.json is made from).

    stages: only the steps of these stages (e.g. ["stage1"]); earlier stages must be done already.
    """
    from redone_fast.distributed import init_distributed

    ctx = init_distributed()
    say = log or (lambda text: print(text, flush=True) if ctx.is_main else None)
    steps = steps_of(recipe)
    known = [key for key, _ in recipe_stages(recipe)]
    wanted = stages or known
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise PipelineError(f"--stages: {', '.join(unknown)} not in recipe {recipe!r} (its stages: {', '.join(known)})")

    check_config(cfg, recipe)  # before the run folder's config.json is written
    pipeline = Pipeline(cfg, run_dir, recipe, ctx, say)
    pipeline.validate_inputs()  # before load_state writes config.json: a bad input leaves the folder as it was
    pipeline.load_state(allow_config_change)
    first_wanted = min(known.index(s) for s in wanted)
    missing = [step for step, owner in steps
               if known.index(owner) < first_wanted and step not in pipeline.state["done"]]
    if missing:
        raise PipelineError(f"--stages {','.join(wanted)}: earlier steps are not done ({', '.join(missing)}); "
                            f"run them first (or leave out --stages)")

    pipeline.state["status"] = "running"
    pipeline.state.pop("stopped", None)
    for step, owner in steps:
        if owner not in wanted or step in pipeline.state["done"]:
            continue
        say(f"[pipeline] {step} ...")
        started = time.perf_counter()
        try:
            outputs = pipeline.run_step(step)
        except _Stopped as stop:
            say(f"[pipeline] {stop}")
            pipeline.state["status"] = "stopped"
            pipeline.state["stopped"] = str(stop)
            pipeline.save_state()
            return pipeline.state
        pipeline.finish(step, time.perf_counter() - started, **outputs)
    pipeline.state["status"] = "finished" if all(s in pipeline.state["done"] for s, _ in steps) else "partial"
    pipeline.save_state()
    return pipeline.state
