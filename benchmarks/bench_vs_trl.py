"""Our trainer against TRL's, side by side, on the bundled tiny model and data, one torch thread each.

    python benchmarks/bench_vs_trl.py sft|rl|all [--steps N] [--seeds 0 1] [--out auto|PATH]

TRL is a benchmark-only dependency (`pip install -e '.[bench]'`, pinned in pyproject.toml); without it
the script exits with status 3 and says so. Everything runs on the CPU, fp32, with one torch thread
(OMP_NUM_THREADS=1 and torch.set_num_threads(1) are set before anything runs; `--threads` changes it).

SFT (`sft`): the same `--steps` optimizer steps, from the same weights, over the same samples in the
same order, by three trainers:

  ours      `redone_fast.loop.step.train_step` with the SFT stage's data (`stages/sft_data.SFTBatches`:
            the epoch order of `--seed`, `--batch-size` samples per step, packed first-fit-decreasing into
            `--micro-batch-tokens` micro-batches) and `TokenCrossEntropy` (the fused LM-head loss).
  trl       TRL `SFTTrainer`, `padding_free=True` (each step's samples flattened into one row, position
            ids restarting per sample; no packing across steps), its own chunked LM head.
  hf        transformers `Trainer` with a padding collator (right padding to the step's longest sample,
            attention mask, labels -100 on the padding and on the prompt).

  The TRL and transformers runs get the samples pre-tokenized by our `encode_sample` (input_ids, and
  labels = input_ids on the answer tokens, -100 on the prompt: the same mask our SFT trains on), in our
  order (`train_sampling_strategy="sequential"`, one optimizer step per `--batch-size` samples). All
  three: AdamW (torch's fused kernel) with the same lr (constant, no warmup), betas, eps and weight
  decay (not on 1-D parameters: ours skips ndim < 2, transformers skips names matching bias/norm; the
  script checks that both give the same sets), gradient clipping at the same norm, fp32, no gradient
  checkpointing, no dropout. Loss normalisation is the same in all three: the sum of the step's token
  losses over the step's number of loss tokens (ours: global token count before the first forward;
  TRL and transformers: `num_items_in_batch`, counted over all of the step's micro-batches), so the
  per-step losses must agree to float rounding; `--loss-rtol` (1e-5) is checked on every step and the
  exit status is 1 when they do not. Recorded per trainer: the loss and gradient norm of every step;
  step time (mean/min over the steps after `--warmup`); tokens/s counting the loss tokens, all real
  tokens, and every processed token (padding included).

  Step time: ours is `next_step()` (packing) + `train_step` + reading the step's figures (the loop's
  logging sync); TRL and transformers are timed from one `on_step_end` callback to the next, i.e.
  the dataloader + collator, forward/backward, clipping, optimizer, scheduler and their logging.
  `core` times leave the data out (ours: `train_step` + logging; theirs: `on_step_begin` to `on_step_end`).

RL (`rl`): one rollout step = generate `--group-size` answers to each of `--prompts` prompts (temperature
1.0, top-p 1, no top-k, at most `--max-completion` tokens), score them with our rewards
(`redone_fast.rewards`, plus DAPO's overlong penalty, `rl/shaping.overlong_penalty`), group-relative
advantages, one optimizer update on all of them (on-policy: no old-policy forward), DAPO token-mean
loss, no KL, for `--steps` rollout steps and every seed of `--seeds`:

  ours      the RL stage's `RLSource` (rl/source.py) with the HF rollout engine (`rollout/hf_engine.py`)
            and `DAPOObjective` through `train_step`, as `python -m redone_fast.stages.rl --preset tiny`
            builds them, with dynamic sampling off (TRL has none) and one generate call per step.
  trl       TRL `GRPOTrainer`, `use_vllm=False`, `loss_type="dapo"`, `beta=0`, epsilon 0.2 / 0.28,
            `scale_rewards="group"`, one generation batch per optimizer step, our reward function
            (the same scoring + overlong penalty, wrapped as a TRL reward function).

  Both draw the same prompts per step: TRL's dataset is the prompt sequence our task-balanced sampler
  gives for the seed, in order (`shuffle_dataset=False`). Sampling itself is random (different RNG use),
  so the rewards and losses are not expected to be equal: the mean task reward over the last
  `--reward-window` rollouts is compared, per seed. Each step's time is split (measured from outside:
  wrapped methods of the objects built here, a `GRPOTrainer` subclass for TRL):

    generate  ours: `HFEngine.generate`; TRL: `_generate_single_turn` (`model.generate`)
    score     ours: the reward pool's `score_many`; TRL: `_calculate_rewards` (our reward inside)
    sync      ours: `HFEngine.load_weights` (weights copied into the engine's inference copy); TRL: none
    prepare   the rest of producing the batch (tokenising, decoding, advantages, packing / padding)
    update    the optimizer step: forward + backward + clip + AdamW + logging (step time minus the above)

Output: a table; `--out PATH` writes the results JSON, `--out auto` writes
benchmarks/results/vs_trl-<device-slug>-<YYYYMMDD>[-N].json (device, versions, git commit, the command,
shapes, per-trainer times, ratios ours/theirs, losses, rewards and every known difference in the work).
"""
from __future__ import annotations

import os

# One torch thread each (set before torch is imported; --threads only changes torch's own setting).
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime as dt  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

_HERE = Path(__file__).resolve().parent
NO_TRL_EXIT = 3  # exit status when trl (or accelerate / datasets) cannot be imported


def _sibling(name: str):
    """benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_redone_bench_{name}", _HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


record = _sibling("record")  # versions, git state, slugs, the results folder
throughput = _sibling("bench_sft_throughput")  # device_info / device_slug (how results files name devices)

SFT_TRAINERS = ("ours", "trl", "hf")
RL_TRAINERS = ("ours", "trl")
DESCRIPTIONS = {
    "sft": {
        "ours": "redone_fast train_step + SFTBatches (packed micro-batches) + TokenCrossEntropy (fused LM-head loss)",
        "trl": "trl.SFTTrainer, padding_free=True (the step's samples flattened into one row), packing=False",
        "hf": "transformers.Trainer, right padding to the step's longest sample, labels -100 on padding and prompt",
    },
    "rl": {
        "ours": "redone_fast RLSource + HFEngine + DAPOObjective via train_step (stages/rl.py machinery)",
        "trl": "trl.GRPOTrainer, use_vllm=False, loss_type='dapo', beta=0",
    },
}
NORMALISATION = {
    "ours": "sum of the step's token losses / the step's loss tokens (counted over all micro-batches before "
            "the first forward; loop/step.py)",
    "trl": "sum of token losses / num_items_in_batch (the step's loss tokens over all accumulation micro-batches)",
    "hf": "model's ForCausalLMLoss: sum of token losses / num_items_in_batch (the step's loss tokens over all "
          "accumulation micro-batches)",
}
RL_NORMALISATION = {
    "ours": "token-mean: sum over all response tokens of the update / their count (DAPOObjective, aggregation "
            "'token-mean')",
    "trl": "loss_type='dapo': sum of per-token losses / num_items_in_batch (all completion tokens of the "
           "generation batch)",
}


def _require_trl() -> dict:
    """Versions of trl, accelerate and datasets; exits with NO_TRL_EXIT and a reason when one is missing."""
    versions = {}
    for module in ("trl", "accelerate", "datasets"):
        try:
            versions[module] = __import__(module).__version__
        except Exception as exc:  # noqa: BLE001 - any import failure means the bench extra is not usable
            print(f"bench_vs_trl: cannot import {module} ({type(exc).__name__}: {exc}); it is a benchmark-only "
                  "dependency: pip install -e '.[bench]' (the exact pins are in pyproject.toml)", file=sys.stderr)
            raise SystemExit(NO_TRL_EXIT) from None
    return versions


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # from_pretrained's "Loading weights" bar
    try:
        import datasets
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except Exception:  # noqa: BLE001
        pass


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------
class Clock:
    """Seconds spent in named phases, per step (wrap callables with `timed`)."""

    def __init__(self):
        self.current: dict[str, float] = defaultdict(float)

    def timed(self, name: str, fn):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[name] += time.perf_counter() - started
        return wrapper

    def pop(self) -> dict[str, float]:
        out, self.current = dict(self.current), defaultdict(float)
        return out


def _stats(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "min": None, "max": None, "median": None, "n": 0}
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "median": statistics.median(values), "n": len(values)}


def _ratio(a, b):
    return a / b if a is not None and b else None


def _rel_diff(a: list[float], b: list[float]) -> list[float]:
    return [abs(x - y) / max(abs(y), 1e-30) for x, y in zip(a, b)]


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _attn(args, trainer: str) -> str | None:
    """The attention implementation a trainer's model is built with (None: ours picks its default)."""
    if args.attn != "default":
        return args.attn
    return None if trainer == "ours" else "sdpa"  # transformers' default for Qwen3 on CPU


def _hf_model(attn: str):
    from transformers import AutoModelForCausalLM

    from redone_fast.tiny import model_path
    model = AutoModelForCausalLM.from_pretrained(str(model_path()), dtype=torch.float32, attn_implementation=attn)
    return model.train()


def _decay_sets_ours(model) -> tuple[set, set]:
    from redone_fast.parallelize import clean_name
    decay, no_decay = set(), set()
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 else decay).add(clean_name(name))
    return decay, no_decay


def _decay_sets_hf(trainer) -> tuple[set, set]:
    names = set(trainer.get_decay_parameter_names(trainer.model))
    every = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    return every & names, every - names


def _optimizer_record(optimizer) -> dict:
    group = optimizer.param_groups[0]
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the trainer's optimizer
    return {"class": f"{type(inner).__module__}.{type(inner).__name__}", "fused": bool(optimizer.defaults.get("fused")),
            "lr": group["lr"], "betas": list(group["betas"]), "eps": group["eps"],
            "weight_decay_per_group": [g["weight_decay"] for g in optimizer.param_groups],
            "params_per_group": [len(g["params"]) for g in optimizer.param_groups]}


def _train_args_common(args, out_dir: str, *, steps: int, lr: float, weight_decay: float, seed: int) -> dict:
    """TrainingArguments fields shared by the TRL and transformers runs: the same optimisation as ours."""
    return dict(output_dir=out_dir, max_steps=steps, learning_rate=lr, lr_scheduler_type="constant",
                warmup_steps=0, weight_decay=weight_decay, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
                optim="adamw_torch_fused", max_grad_norm=args.grad_clip, bf16=False, fp16=False,
                gradient_checkpointing=False, logging_steps=1, report_to="none", save_strategy="no",
                eval_strategy="no", seed=seed, use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
                dataloader_drop_last=False, dataloader_pin_memory=False)


def _silence(trainer) -> None:
    """No per-step log printing (disable_tqdm swaps the progress bar for a printer)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def _step_clock_callback():
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """Per optimizer step: time since the previous step's end (`total`) and begin-to-end (`core`)."""

        def __init__(self):
            self.total, self.core, self.grad_norms = [], [], []
            self._last = self._begin = None

        def on_train_begin(self, args, state, control, **kwargs):
            self._last = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            self._begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            self.core.append(now - self._begin)
            self.total.append(now - self._last)
            self._last = now

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "grad_norm" in logs:
                self.grad_norms.append(float(logs["grad_norm"]))

    return StepClock()


# --------------------------------------------------------------------------------------------------
# SFT
# --------------------------------------------------------------------------------------------------
def _sft_batches(args, samples):
    from redone_fast.stages.sft_data import SFTBatches
    per_epoch = math.ceil(len(samples) / args.batch_size)
    return SFTBatches(samples, [], epochs=max(1, math.ceil(args.steps / per_epoch)), general_ratio=0.0,
                      batch_size=args.batch_size, batch_tokens=0, micro_batch_tokens=args.micro_batch_tokens,
                      max_length=args.max_length, overlong="truncate", seed=args.seed)


def prepare_sft(args) -> dict:
    """The encoded samples and, per step, which samples it trains on (our SFT stage's epoch order)."""
    from redone_fast.data.formatting import encode_sample
    from redone_fast.data.schema import load_jsonl
    from redone_fast.model import load_tokenizer
    from redone_fast.tiny import data_path, model_path

    tokenizer = load_tokenizer(model_path())
    samples = [encode_sample(tokenizer, s, args.max_length) for s in load_jsonl(data_path(args.sft_split))]
    data = _sft_batches(args, samples)
    if data.total_steps < args.steps:
        raise SystemExit(f"--steps {args.steps}: the {args.sft_split} split gives only {data.total_steps} steps")
    steps, epoch = [], 0
    while len(steps) < args.steps:
        steps += data.steps_of_epoch(epoch)
        epoch += 1
    steps = steps[:args.steps]
    rows = []  # (input_ids, labels): labels are input_ids on the answer tokens, -100 elsewhere (unshifted)
    for step in steps:
        for s in step:
            rows.append((list(s.input_ids), [t if m else -100 for t, m in zip(s.input_ids, s.loss_mask)]))
    shapes = []
    for step in steps:
        lengths = [len(s) for s in step]
        shapes.append({"samples": len(step), "tokens": sum(lengths),
                       # a sample's first token is never a target, so its mask bit there never counts
                       "loss_tokens": sum(sum(s.loss_mask[1:]) for s in step),
                       "padded_tokens": len(step) * max(lengths), "longest": max(lengths)})
    return {"samples": samples, "steps": steps, "rows": rows, "shapes": shapes, "tokenizer": tokenizer,
            "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id}


def run_sft_ours(args, work) -> dict:
    from redone_fast.distributed import init_distributed
    from redone_fast.loop.optim import OptimConfig, build_optimizer, build_scheduler
    from redone_fast.loop.step import TokenCrossEntropy, train_step
    from redone_fast.parallelize import ParallelConfig, build_model
    from redone_fast.tiny import model_path

    ctx = init_distributed("cpu")
    pcfg = ParallelConfig(activation_checkpointing=False, attn_implementation=_attn(args, "ours"))
    model = build_model(str(model_path()), ctx.mesh, pcfg, device=ctx.device)
    ocfg = OptimConfig(lr=args.lr, weight_decay=args.weight_decay, schedule="constant", warmup_steps=0,
                       grad_clip=args.grad_clip)
    optimizer = build_optimizer(model, ocfg)
    scheduler = build_scheduler(optimizer, ocfg, args.steps)
    objective = TokenCrossEntropy()
    data = _sft_batches(args, work["samples"])
    losses, norms, counts, total, core, micro, tokens = [], [], [], [], [], [], []
    for _ in range(args.steps):
        started = time.perf_counter()
        micro_batches = data.next_step()
        packed = time.perf_counter()
        result = train_step(model, optimizer, scheduler, micro_batches, objective, grad_clip=ocfg.grad_clip,
                            world_size=ctx.world_size, device=ctx.device)
        row = result.as_floats()  # the loop's logging sync
        done = time.perf_counter()
        total.append(done - started)
        core.append(done - packed)
        losses.append(row["loss"])
        norms.append(row["grad_norm"])
        counts.append(row["loss_tokens"])
        micro.append(len(micro_batches))
        tokens.append(data.last_step_tokens)
    decay, no_decay = _decay_sets_ours(model)
    return {"losses": losses, "grad_norms": norms, "loss_tokens_counted": counts, "step_s": total, "core_s": core,
            "micro_batches_per_step": micro, "tokens_per_step_seen": tokens,
            "attn_implementation": model.config._attn_implementation, "optimizer": _optimizer_record(optimizer),
            "decay_params": sorted(decay), "no_decay_params": sorted(no_decay),
            "loss_head": "redone_fast.ops.linear_cross_entropy (fused, no [T, V] logits)"}


class _PadCollator:
    """Right padding to the batch's longest sample; labels -100 on the padding (the prompt already is)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            input_ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            attention_mask[i, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def _capturing(cls):
    """A subclass of a transformers/TRL trainer that keeps each micro-batch's training_step loss."""

    class Capturing(cls):
        def training_step(self, *args, **kwargs):
            loss = super().training_step(*args, **kwargs)
            self._bench_losses.append(float(loss))
            return loss

    Capturing.__name__ = f"Bench{cls.__name__}"
    return Capturing


def run_sft_hf(args, work, which: str) -> dict:
    """`which`: "trl" (SFTTrainer, padding-free) or "hf" (transformers Trainer with a padding collator)."""
    from datasets import Dataset

    micro = args.hf_micro_batches
    if args.batch_size % micro:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of --hf-micro-batches {micro}")
    dataset = Dataset.from_dict({"input_ids": [r[0] for r in work["rows"]], "labels": [r[1] for r in work["rows"]]})
    model = _hf_model(_attn(args, which))
    clock = _step_clock_callback()
    with tempfile.TemporaryDirectory(prefix="bench-vs-trl-") as out_dir:
        common = _train_args_common(args, out_dir, steps=args.steps, lr=args.lr, weight_decay=args.weight_decay,
                                    seed=args.seed)
        common.update(per_device_train_batch_size=args.batch_size // micro, gradient_accumulation_steps=micro,
                      train_sampling_strategy="sequential")
        if which == "trl":
            from trl import SFTConfig, SFTTrainer
            config = SFTConfig(**common, padding_free=True, packing=False, max_length=None, shuffle_dataset=False,
                               completion_only_loss=None, assistant_only_loss=False, loss_type="nll")
            trainer = _capturing(SFTTrainer)(model=model, args=config, train_dataset=dataset,
                                              processing_class=work["tokenizer"], callbacks=[clock])
        else:
            from transformers import Trainer, TrainingArguments
            config = TrainingArguments(**common, remove_unused_columns=False)
            trainer = _capturing(Trainer)(model=model, args=config, train_dataset=dataset,
                                          data_collator=_PadCollator(work["pad_token_id"]), callbacks=[clock])
        trainer._bench_losses = []
        _silence(trainer)
        trainer.train()
    per_step = [sum(trainer._bench_losses[i * micro:(i + 1) * micro]) for i in range(args.steps)]
    decay, no_decay = _decay_sets_hf(trainer)
    out = {"losses": per_step, "grad_norms": clock.grad_norms, "step_s": clock.total, "core_s": clock.core,
           "attn_implementation": model.config._attn_implementation,
           "optimizer": _optimizer_record(trainer.optimizer),
           "decay_params": sorted(decay), "no_decay_params": sorted(no_decay),
           "model_accepts_loss_kwargs": bool(getattr(trainer, "model_accepts_loss_kwargs", False)),
           "micro_batches_per_step": micro}
    out["loss_head"] = ("TRL's fused LM head (trl.trainer.utils.add_fused_lm_head: tiles of the labelled "
                        "positions, no [T, V] logits)" if which == "trl" else
                        "the model's forward: full [B, L, V] logits, then ForCausalLMLoss (fp32 cross-entropy)")
    return out


def _sft_summary(name: str, res: dict, shapes: list[dict], warmup: int, padded: bool) -> dict:
    timed = slice(warmup, None)
    step_s, core_s = res["step_s"][timed], res["core_s"][timed]
    t_total, t_core = sum(step_s), sum(core_s)
    loss_tokens = sum(s["loss_tokens"] for s in shapes[timed])
    tokens = sum(s["tokens"] for s in shapes[timed])
    processed = sum(s["padded_tokens"] if padded else s["tokens"] for s in shapes[timed])
    return {
        "description": DESCRIPTIONS["sft"][name],
        "normalisation": NORMALISATION[name],
        **{k: v for k, v in res.items() if k not in ("step_s", "core_s")},
        "step_times_s": res["step_s"],
        "core_step_times_s": res["core_s"],
        "timed_steps": len(step_s),
        "step_s": _stats(step_s),
        "core_step_s": _stats(core_s),
        "loss_tokens_per_s": _ratio(loss_tokens, t_total),
        "tokens_per_s": _ratio(tokens, t_total),
        "processed_tokens_per_s": _ratio(processed, t_total),
        "core_tokens_per_s": _ratio(tokens, t_core),
    }


def run_sft(args) -> dict:
    work = prepare_sft(args)
    results = {}
    for name in args.sft_trainers:
        print(f"[sft] {name}: {args.steps} steps of {args.batch_size} samples ...", flush=True)
        started = time.perf_counter()
        res = run_sft_ours(args, work) if name == "ours" else run_sft_hf(args, work, name)
        if len(res["losses"]) != args.steps or len(res["step_s"]) != args.steps:
            raise RuntimeError(f"sft {name}: {len(res['losses'])} losses / {len(res['step_s'])} step times for "
                               f"{args.steps} steps")
        results[name] = _sft_summary(name, res, work["shapes"], args.warmup, padded=name == "hf")
        results[name]["wall_s"] = time.perf_counter() - started

    shapes = work["shapes"]
    agreement = {}
    names = list(results)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            rel = _rel_diff(results[a]["losses"], results[b]["losses"])
            grad_rel = _rel_diff(results[a]["grad_norms"], results[b]["grad_norms"])
            agreement[f"{a}_vs_{b}"] = {"max_rel_diff": max(rel), "per_step_rel_diff": rel,
                                        "first_step_rel_diff": rel[0], "agree": max(rel) <= args.loss_rtol,
                                        "grad_norm_max_rel_diff": max(grad_rel) if grad_rel else None}
    same_decay = {}
    if "ours" in results:
        for other in names:
            if other != "ours":
                same_decay[other] = (results[other]["decay_params"] == results["ours"]["decay_params"]
                                     and results[other]["no_decay_params"] == results["ours"]["no_decay_params"])
    ratios = {}
    if "ours" in results:
        ours = results["ours"]
        for other in names:
            if other == "ours":
                continue
            theirs = results[other]
            ratios[other] = {
                "tokens_per_s_ours_over_theirs": _ratio(ours["tokens_per_s"], theirs["tokens_per_s"]),
                "loss_tokens_per_s_ours_over_theirs": _ratio(ours["loss_tokens_per_s"], theirs["loss_tokens_per_s"]),
                "mean_step_s_ours_over_theirs": _ratio(ours["step_s"]["mean"], theirs["step_s"]["mean"]),
                "min_step_s_ours_over_theirs": _ratio(ours["step_s"]["min"], theirs["step_s"]["min"]),
                "core_step_s_ours_over_theirs": _ratio(ours["core_step_s"]["mean"], theirs["core_step_s"]["mean"]),
            }
    return {
        "shapes": {
            "split": args.sft_split, "steps": args.steps, "warmup_steps_untimed": args.warmup,
            "batch_size_samples": args.batch_size, "micro_batch_tokens_ours": args.micro_batch_tokens,
            "micro_batches_per_step_trl_hf": args.hf_micro_batches, "max_length": args.max_length,
            "tokens_per_step_mean": statistics.fmean(s["tokens"] for s in shapes),
            "loss_tokens_per_step_mean": statistics.fmean(s["loss_tokens"] for s in shapes),
            "padded_tokens_per_step_mean": statistics.fmean(s["padded_tokens"] for s in shapes),
            "longest_sample": max(s["longest"] for s in shapes),
            "per_step": shapes,
        },
        "optimisation": {"optimizer": "AdamW (torch fused)", "lr": args.lr, "schedule": "constant, no warmup",
                         "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": args.weight_decay,
                         "grad_clip": args.grad_clip, "dtype": "float32", "gradient_checkpointing": False},
        "trainers": results,
        "loss_agreement": {"rtol": args.loss_rtol, "pairs": agreement,
                           "all_agree": all(v["agree"] for v in agreement.values())},
        "same_weight_decay_sets_as_ours": same_decay,
        "ratios": ratios,
    }


# --------------------------------------------------------------------------------------------------
# RL
# --------------------------------------------------------------------------------------------------
def _rl_config(args, seed: int):
    from redone_fast.rl.config import check_config, preset
    cfg = preset("tiny")
    cfg = dataclasses.replace(
        cfg, tasks=[] if args.task == "all" else [args.task], rollout_steps=args.steps,
        prompts_per_step=args.prompts, samples_per_prompt=args.group_size, updates_per_rollout=1,
        temperature=1.0, top_p=1.0, max_response_tokens=args.max_completion,
        overlong_buffer=min(args.overlong_buffer, args.max_completion), dynamic_sampling=False,
        generation_batch=args.prompts, reward_workers=0, seed=seed, kl_coef=0.0, aggregation="token-mean",
        eps_low=0.2, eps_high=0.28, rollout_correction="off",
        optim=dataclasses.replace(cfg.optim, lr=args.rl_lr, schedule="constant", warmup_steps=0,
                                  grad_clip=args.grad_clip))
    check_config(cfg)
    return cfg


def _prompt_pool(cfg) -> dict:
    from redone_fast.data.schema import load_jsonl
    by_task = defaultdict(list)
    for path in cfg.train_files:
        for s in load_jsonl(path):
            if not cfg.tasks or s.task in cfg.tasks:
                by_task[s.task].append(s)
    if not by_task:
        raise SystemExit(f"--task {cfg.tasks}: no such task in {cfg.train_files}")
    return dict(by_task)


def _sampler(cfg):
    from redone_fast.data.sampler import TaskBalancedSampler
    return TaskBalancedSampler(_prompt_pool(cfg), {}, general_ratio=0.0, temperature=cfg.task_temperature,
                               seed=cfg.seed)


def _reward_window(rewards: list[float], window: int) -> float:
    tail = rewards[-window:]
    return statistics.fmean(tail) if tail else float("nan")


def _zero_signal_groups(task_rewards: list[float], group_size: int) -> int:
    """Groups whose task rewards are all equal (no learning signal from the task reward)."""
    groups = [task_rewards[i:i + group_size] for i in range(0, len(task_rewards), group_size)]
    return sum(len(set(g)) == 1 for g in groups)


def run_rl_ours(args, seed: int) -> dict:
    from redone_fast.distributed import init_distributed
    from redone_fast.loop.optim import build_optimizer, build_scheduler
    from redone_fast.loop.step import train_step
    from redone_fast.model import load_tokenizer
    from redone_fast.parallelize import build_model
    from redone_fast.rewards.router import RewardPool
    from redone_fast.rl.config import rollout_is_cap
    from redone_fast.rl.loss import DAPOObjective
    from redone_fast.rl.source import RLSource
    from redone_fast.rollout.hf_engine import HFEngine

    cfg = _rl_config(args, seed)
    cfg = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, attn_implementation=_attn(args, "ours")))
    ctx = init_distributed("cpu")
    tokenizer = load_tokenizer(cfg.model)
    model = build_model(cfg.model, ctx.mesh, cfg.parallel, device=ctx.device)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.rollout_steps)
    objective = DAPOObjective(eps_low=cfg.eps_low, eps_high=cfg.eps_high, dual_clip=cfg.dual_clip,
                              aggregation=cfg.aggregation, kl_coef=cfg.kl_coef, temperature=cfg.temperature,
                              log_ratio_clamp=cfg.log_ratio_clamp, rollout_is_cap=rollout_is_cap(cfg))
    torch.manual_seed(cfg.seed)  # the engine's sampling, as run_rl seeds it
    engine = HFEngine(cfg.model, tokenizer, device=ctx.device, max_batch_prompts=cfg.generation_batch,
                      attn_implementation=cfg.parallel.attn_implementation)
    clock = Clock()
    rec = {"task_rewards": [], "generated_tokens": 0, "prompt_sample_ids": []}

    generate = engine.generate

    def counted_generate(prompts, sampling):
        out = generate(prompts, sampling)
        rec["generated_tokens"] += sum(len(r.response_ids) for group in out for r in group)
        return out

    engine.generate = clock.timed("generate", counted_generate)
    engine.load_weights = clock.timed("sync", engine.load_weights)
    steps = []
    with RewardPool(workers=cfg.reward_workers, timeout_s=cfg.reward_timeout_s) as pool:
        def score(samples, completions):
            outcomes = pool.score_many(samples, completions)
            rec["task_rewards"] = [float(o.score) for o in outcomes]
            return outcomes

        sampler = _sampler(cfg)
        take = sampler.take

        def recorded_take(count):
            drawn = take(count)
            rec["prompt_sample_ids"].append([s.id for s in drawn])
            return drawn

        sampler.take = recorded_take
        source = RLSource(cfg, sampler=sampler, tokenizer=tokenizer, engine=engine, model=model,
                          objective=objective, ctx=ctx, score_fn=clock.timed("score", score))
        source.next_step = clock.timed("prepare", source.next_step)
        for _ in range(cfg.rollout_steps):
            rec["generated_tokens"] = 0
            started = time.perf_counter()
            micro_batches = source.next_step()
            result = train_step(model, optimizer, scheduler, micro_batches, objective, grad_clip=cfg.optim.grad_clip,
                                world_size=ctx.world_size, device=ctx.device)
            row = result.as_floats()
            row.update(objective.summarize(row))
            metrics = source.pop_metrics()
            total = time.perf_counter() - started
            phases = clock.pop()
            prepare = phases.pop("prepare", 0.0)
            steps.append({
                "step_s": total, "generate_s": phases.get("generate", 0.0), "score_s": phases.get("score", 0.0),
                "sync_s": phases.get("sync", 0.0),
                "prepare_other_s": prepare - sum(phases.get(k, 0.0) for k in ("generate", "score", "sync")),
                "update_s": total - prepare,
                "loss": row["loss"], "grad_norm": row["grad_norm"], "entropy": row.get("entropy"),
                "task_reward": statistics.fmean(rec["task_rewards"]), "shaped_reward": metrics.get("shaped_reward"),
                "generated_tokens": rec["generated_tokens"], "completions": len(rec["task_rewards"]),
                "update_tokens": source.last_step_tokens, "update_processed_tokens": source.last_step_tokens,
                "update_loss_tokens": row["loss_tokens"],
                "micro_batches": len(micro_batches), "truncated_share": metrics.get("truncated_share"),
                "zero_signal_groups": _zero_signal_groups(rec["task_rewards"], cfg.samples_per_prompt),
            })
    engine.close()
    return {"steps": steps, "attn_implementation": model.config._attn_implementation,
            "engine_attn_implementation": engine.model.config._attn_implementation,
            "optimizer": _optimizer_record(optimizer), "prompt_sample_ids_per_step": rec["prompt_sample_ids"]}


def _timed_grpo_class():
    from trl import GRPOTrainer

    class TimedGRPOTrainer(GRPOTrainer):
        """GRPOTrainer with its generation / reward / batch-building / loss phases timed from outside."""

        def _bench_add(self, name, started):
            self._bench_clock[name] += time.perf_counter() - started

        def _generate_single_turn(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return super()._generate_single_turn(*args, **kwargs)
            finally:
                self._bench_add("generate", started)

        def _calculate_rewards(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return super()._calculate_rewards(*args, **kwargs)
            finally:
                self._bench_add("score", started)

        def _tokenize_prompts(self, prompts):
            out = super()._tokenize_prompts(prompts)
            self._bench_prompt_ids.append([list(ids) for ids in out[0]])
            return out

        def _prepare_inputs(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return super()._prepare_inputs(*args, **kwargs)
            finally:
                if self.model.training:
                    self._bench_add("prepare", started)

        def _compute_loss(self, model, inputs):
            loss = super()._compute_loss(model, inputs)
            rows = inputs["prompt_ids"].shape[0]
            width = inputs["prompt_ids"].shape[1] + inputs["completion_ids"].shape[1]
            real = int(inputs["prompt_mask"].sum() + inputs["completion_mask"].sum())
            self._bench_shapes.append({"rows": rows, "padded_tokens": rows * width, "real_tokens": real,
                                       "loss_tokens": int(inputs["completion_mask"].sum())})
            self._bench_losses.append(float(loss.detach()))
            return loss

    return TimedGRPOTrainer


def run_rl_trl(args, seed: int) -> dict:
    from datasets import Dataset
    from trl import GRPOConfig

    from redone_fast.data.formatting import encode_prompt
    from redone_fast.model import load_tokenizer
    from redone_fast.rewards.router import RewardPool
    from redone_fast.rl.shaping import overlong_penalty

    cfg = _rl_config(args, seed)
    tokenizer = load_tokenizer(cfg.model)
    sampler = _sampler(cfg)
    prompts = [s for _ in range(cfg.rollout_steps) for s in sampler.take(cfg.prompts_per_step)]
    dataset = Dataset.from_dict({"prompt": [s.messages() for s in prompts], "sample_index": list(range(len(prompts)))})
    model = _hf_model(_attn(args, "trl"))
    clock = _step_clock_callback()
    rec = {"task": [], "shaped": [], "lengths": [], "truncated": []}

    with RewardPool(workers=cfg.reward_workers, timeout_s=cfg.reward_timeout_s) as pool, \
            tempfile.TemporaryDirectory(prefix="bench-vs-trl-") as out_dir:
        eos_ids: set[int] = set()

        def redone_reward(prompts, completions, completion_ids, sample_index, **_):
            """Our task reward (reward pool) plus DAPO's overlong penalty, exactly as RLSource shapes it."""
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            outcomes = pool.score_many([prompts_by_index[i] for i in sample_index], texts)
            task = [float(o.score) for o in outcomes]
            shaped, lengths, truncated = [], [], []
            for r, ids in zip(task, completion_ids):
                finished = bool(ids) and ids[-1] in eos_ids
                length = len(ids) if finished else cfg.max_response_tokens + 1
                shaped.append(r + overlong_penalty(length, cfg.max_response_tokens, cfg.overlong_buffer,
                                                   cfg.overlong_factor))
                lengths.append(len(ids))
                truncated.append(not finished)
            rec["task"].append(task)
            rec["shaped"].append(shaped)
            rec["lengths"].append(lengths)
            rec["truncated"].append(truncated)
            return shaped

        prompts_by_index = prompts
        common = _train_args_common(args, out_dir, steps=cfg.rollout_steps, lr=cfg.optim.lr,
                                    weight_decay=cfg.optim.weight_decay, seed=seed)
        config = GRPOConfig(**common, per_device_train_batch_size=cfg.prompts_per_step * cfg.samples_per_prompt,
                            gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
                            num_generations=cfg.samples_per_prompt, max_completion_length=cfg.max_response_tokens,
                            temperature=cfg.temperature, top_p=cfg.top_p, top_k=0, min_p=None, repetition_penalty=1.0,
                            use_vllm=False, loss_type="dapo", beta=0.0, epsilon=cfg.eps_low,
                            epsilon_high=cfg.eps_high, scale_rewards="group", mask_truncated_completions=False,
                            shuffle_dataset=False, importance_sampling_level="token", top_entropy_quantile=1.0,
                            log_completions=False)
        trainer = _timed_grpo_class()(model=model, reward_funcs=[redone_reward], args=config, train_dataset=dataset,
                                      processing_class=tokenizer, callbacks=[clock])
        eos_ids.update(int(t) for t in trainer.eos_token_ids)
        trainer._bench_clock = defaultdict(float)
        trainer._bench_prompt_ids, trainer._bench_shapes, trainer._bench_losses = [], [], []
        phases_per_step = []

        from transformers import TrainerCallback

        class PhaseSnapshot(TrainerCallback):
            def on_step_end(self, *a, **k):
                phases_per_step.append(dict(trainer._bench_clock))
                trainer._bench_clock.clear()

        trainer.add_callback(PhaseSnapshot())
        _silence(trainer)
        trainer.train()

    per_step = cfg.prompts_per_step
    # the prompts TRL tokenised are the ones our engine would be given (our chat formatting)
    ours_ids = [encode_prompt(tokenizer, s) for s in prompts]
    theirs = [ids for call in trainer._bench_prompt_ids for ids in call]
    expected = [ids for ids in ours_ids for _ in range(cfg.samples_per_prompt)]
    steps = []
    for k in range(cfg.rollout_steps):
        phases = phases_per_step[k]
        total = clock.total[k]
        prepare = phases.get("prepare", 0.0)
        shape = trainer._bench_shapes[k]
        lengths = rec["lengths"][k]
        steps.append({
            "step_s": total, "generate_s": phases.get("generate", 0.0), "score_s": phases.get("score", 0.0),
            "sync_s": 0.0,
            "prepare_other_s": prepare - phases.get("generate", 0.0) - phases.get("score", 0.0),
            "update_s": total - prepare,
            "loss": trainer._bench_losses[k], "grad_norm": clock.grad_norms[k] if k < len(clock.grad_norms) else None,
            "task_reward": statistics.fmean(rec["task"][k]), "shaped_reward": statistics.fmean(rec["shaped"][k]),
            "generated_tokens": sum(lengths), "completions": len(lengths),
            "update_tokens": shape["real_tokens"], "update_processed_tokens": shape["padded_tokens"],
            "update_loss_tokens": shape["loss_tokens"], "micro_batches": 1,
            "truncated_share": sum(rec["truncated"][k]) / len(lengths),
            "zero_signal_groups": _zero_signal_groups(rec["task"][k], cfg.samples_per_prompt),
        })
    return {"steps": steps, "attn_implementation": model.config._attn_implementation,
            "optimizer": _optimizer_record(trainer.optimizer), "prompt_ids_match_ours": theirs == expected,
            "prompt_sample_ids_per_step": [[s.id for s in prompts[k * per_step:(k + 1) * per_step]]
                                           for k in range(cfg.rollout_steps)]}


def _rl_summary(name: str, runs: dict, args) -> dict:
    timed = [s for run in runs.values() for s in run["steps"][args.warmup:]]
    out = {"description": DESCRIPTIONS["rl"][name], "normalisation": RL_NORMALISATION[name]}
    for phase in ("step_s", "generate_s", "score_s", "sync_s", "prepare_other_s", "update_s"):
        out[phase] = _stats([s[phase] for s in timed])
    gen_time = sum(s["generate_s"] for s in timed)
    out["generated_tokens_per_s"] = _ratio(sum(s["generated_tokens"] for s in timed), gen_time)
    update_time = sum(s["update_s"] for s in timed)
    out["update_tokens_per_s"] = _ratio(sum(s["update_tokens"] for s in timed), update_time)  # prompt + completion
    out["update_processed_tokens_per_s"] = _ratio(sum(s["update_processed_tokens"] for s in timed), update_time)
    out["update_loss_tokens_per_s"] = _ratio(sum(s["update_loss_tokens"] for s in timed), update_time)
    out["timed_steps"] = len(timed)
    out["per_seed"] = {}
    for seed, run in runs.items():
        rewards = [s["task_reward"] for s in run["steps"]]
        out["per_seed"][str(seed)] = {
            **{k: v for k, v in run.items() if k != "steps"},
            "steps": run["steps"],
            "task_reward_per_step": rewards,
            "task_reward_first": rewards[0],
            "task_reward_last_window": _reward_window(rewards, args.reward_window),
            "shaped_reward_last_window": _reward_window([s["shaped_reward"] for s in run["steps"]],
                                                        args.reward_window),
        }
    windows = [v["task_reward_last_window"] for v in out["per_seed"].values()]
    out["task_reward_last_window_mean_over_seeds"] = statistics.fmean(windows)
    return out


def run_rl(args) -> dict:
    trainers = {}
    for name in args.rl_trainers:
        runs = {}
        for seed in args.seeds:
            print(f"[rl] {name} seed {seed}: {args.steps} rollout steps of {args.prompts} prompts x "
                  f"{args.group_size} answers ...", flush=True)
            runs[seed] = run_rl_ours(args, seed) if name == "ours" else run_rl_trl(args, seed)
        trainers[name] = _rl_summary(name, runs, args)
    ratios, same_prompts = {}, {}
    if "ours" in trainers and "trl" in trainers:
        ours, trl = trainers["ours"], trainers["trl"]
        same_prompts = {seed: ours["per_seed"][seed]["prompt_sample_ids_per_step"]
                        == trl["per_seed"][seed]["prompt_sample_ids_per_step"] for seed in ours["per_seed"]}
        ratios["trl"] = {f"{phase}_mean_ours_over_theirs": _ratio(ours[phase]["mean"], trl[phase]["mean"])
                         for phase in ("step_s", "generate_s", "score_s", "update_s")}
        for rate in ("generated_tokens_per_s", "update_tokens_per_s", "update_loss_tokens_per_s"):
            ratios["trl"][f"{rate}_ours_over_theirs"] = _ratio(ours[rate], trl[rate])
    cfg = _rl_config(args, args.seeds[0])
    return {
        "shapes": {"task": args.task, "steps": args.steps, "warmup_steps_untimed": args.warmup,
                   "seeds": args.seeds, "prompts_per_step": cfg.prompts_per_step, "group_size": cfg.samples_per_prompt,
                   "completions_per_step": cfg.prompts_per_step * cfg.samples_per_prompt,
                   "max_completion_tokens": cfg.max_response_tokens, "temperature": cfg.temperature,
                   "top_p": cfg.top_p, "overlong_buffer": cfg.overlong_buffer, "reward_window": args.reward_window,
                   "updates_per_rollout": 1, "micro_batch_tokens_ours": cfg.micro_batch_tokens},
        "optimisation": {"optimizer": "AdamW (torch fused)", "lr": cfg.optim.lr, "schedule": "constant, no warmup",
                         "betas": [cfg.optim.beta1, cfg.optim.beta2], "eps": cfg.optim.eps,
                         "weight_decay": cfg.optim.weight_decay, "grad_clip": cfg.optim.grad_clip,
                         "loss": "DAPO clipped objective, eps 0.2 / 0.28, token-mean, no KL, on-policy (ratio 1)"},
        "trainers": trainers,
        "same_prompts_per_step": same_prompts,
        "ratios": ratios,
    }


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------
DIFFERENCES = {
    "sft": [
        "Batch layout: ours packs each step's samples into --micro-batch-tokens micro-batches (one per step "
        "with the defaults), TRL puts the step's samples in one flattened row (padding_free), transformers "
        "pads them to [batch, longest]. Same tokens and loss tokens; the padded run also computes its padding "
        "(processed_tokens_per_s counts it).",
        "Attention: by default each trainer's own choice is recorded (ours: redone_fast's default for the "
        "device; TRL and transformers: sdpa, which for a padding-free row builds a dense block-causal [T, T] "
        "mask). --attn NAME gives all three the same implementation.",
        "LM head and loss: ours redone_fast.ops.linear_cross_entropy (chunked, no [T, V] logits), TRL its own "
        "chunked fused head (log-probs, entropy and top-1 for its metrics), transformers the full logits. "
        "Same loss value; different cost.",
        "Per-step overhead counted in step time: ours packing + the loop's logging sync; TRL/transformers "
        "dataloader + collator + callbacks + logging (TRL also computes entropy and token accuracy each step).",
        "Normalisation is the same (sum / the step's loss tokens, over all micro-batches) in all three.",
    ],
    "rl": [
        "Sampling: ours draws with its own inverse-CDF sampler inside model.generate (greedy mode, n rows per "
        "prompt, log-probs recorded), TRL with transformers' do_sample (torch.multinomial). Same distribution "
        "(temperature 1, top-p 1, no top-k), different random draws: rewards and losses differ per step.",
        "Weights: ours generates with a separate inference copy and copies the trainer's weights into it "
        "every rollout (sync_s); TRL generates with the training model itself.",
        "Update batch: ours packs prompt+response sequences into --micro-batch-tokens micro-batches (no "
        "padding); TRL runs one padded [completions, prompt+completion] forward (left-padded prompts, "
        "right-padded completions).",
        "Advantages: both (r - group mean) / (group std + eps) with the unbiased std; eps is 1e-6 in ours "
        "(ops.group_advantages default, not a stage setting) and 1e-4 in TRL (hard-coded): a relative "
        "difference of eps/std, about 3e-4 at std 0.3. Not made equal (it would need a hook in our code).",
        "Groups whose rewards are all equal: both give them advantage 0 and keep their tokens in the loss's "
        "denominator (dynamic sampling is off in ours for this comparison; TRL has none). A rollout where "
        "every group is such a group: ours skips the optimizer step (idle), TRL steps AdamW on zero "
        "gradients (momentum still moves the weights).",
        "Rewards: the same functions (our reward pool in process, plus DAPO's overlong penalty with the same "
        "buffer); ours shapes inside RLSource, TRL through the wrapped reward function. Completion text: both "
        "decode with skip_special_tokens=True.",
        "Prompts: the same samples per step (TRL's dataset is our sampler's sequence, unshuffled); the chat "
        "formatting is checked to give the same token ids (prompt_ids_match_ours).",
        "TRL computes per-step metrics ours does not (clip ratios per sequence, completion-length statistics, "
        "reward std); ours computes its rollout metrics. Both are inside the timed step.",
    ],
}


def print_sft(res: dict) -> None:
    sh = res["shapes"]
    print(f"\nSFT: {sh['steps']} steps x {sh['batch_size_samples']} samples ({sh['tokens_per_step_mean']:.0f} tokens, "
          f"{sh['loss_tokens_per_step_mean']:.0f} loss tokens, {sh['padded_tokens_per_step_mean']:.0f} padded "
          f"tokens per step), first {sh['warmup_steps_untimed']} untimed")
    header = (f"{'trainer':<7} {'attn':<12} {'step ms':>9} {'min ms':>9} {'core ms':>9} {'tok/s':>9} "
              f"{'loss tok/s':>10} {'proc tok/s':>10} {'loss 1st -> last':>18}")
    print(header)
    print("-" * len(header))
    for name, r in res["trainers"].items():
        ms = [_fmt(r["step_s"]["mean"] and 1e3 * r["step_s"]["mean"], ".1f"),
              _fmt(r["step_s"]["min"] and 1e3 * r["step_s"]["min"], ".1f"),
              _fmt(r["core_step_s"]["mean"] and 1e3 * r["core_step_s"]["mean"], ".1f")]
        print(f"{name:<7} {str(r['attn_implementation']):<12} {ms[0]:>9} {ms[1]:>9} {ms[2]:>9} "
              f"{_fmt(r['tokens_per_s'], '.0f'):>9} {_fmt(r['loss_tokens_per_s'], '.0f'):>10} "
              f"{_fmt(r['processed_tokens_per_s'], '.0f'):>10} {r['losses'][0]:.6f} -> {r['losses'][-1]:.6f}")
    for other, ratio in res["ratios"].items():
        print(f"ours/{other}: tokens/s {_fmt(ratio['tokens_per_s_ours_over_theirs'], '.3f')}, mean step time "
              f"{_fmt(ratio['mean_step_s_ours_over_theirs'], '.3f')}, core step time "
              f"{_fmt(ratio['core_step_s_ours_over_theirs'], '.3f')}")
    agreement = res["loss_agreement"]
    for pair, a in agreement["pairs"].items():
        print(f"loss {pair}: max rel diff {a['max_rel_diff']:.2e} over {len(a['per_step_rel_diff'])} steps "
              f"(step 1: {a['first_step_rel_diff']:.2e}; grad norm {_fmt(a['grad_norm_max_rel_diff'], '.2e')}) "
              f"{'ok' if a['agree'] else 'DISAGREE'} at rtol {agreement['rtol']:g}")
    for name, r in res["trainers"].items():
        print(f"normalisation {name}: {r['normalisation']}")
    for other, same in res["same_weight_decay_sets_as_ours"].items():
        print(f"weight-decay parameter sets ours vs {other}: {'same' if same else 'DIFFERENT'}")


def print_rl(res: dict) -> None:
    sh = res["shapes"]
    print(f"\nRL ({sh['task']}): {sh['steps']} rollout steps x {sh['prompts_per_step']} prompts x {sh['group_size']} "
          f"answers, <= {sh['max_completion_tokens']} tokens, seeds {sh['seeds']}, first {sh['warmup_steps_untimed']} "
          "steps of each seed untimed")
    header = (f"{'trainer':<7} {'step ms':>9} {'gen ms':>9} {'score ms':>9} {'sync ms':>8} {'prep ms':>8} "
              f"{'update ms':>9} {'gen tok/s':>9} {'upd tok/s':>9} {'reward (last window, per seed)':>32}")
    print(header)
    print("-" * len(header))
    for name, r in res["trainers"].items():
        ms = {k: _fmt(r[k]["mean"] and 1e3 * r[k]["mean"], ".1f") for k in
              ("step_s", "generate_s", "score_s", "sync_s", "prepare_other_s", "update_s")}
        rewards = ", ".join(f"{v['task_reward_last_window']:.3f}" for v in r["per_seed"].values())
        print(f"{name:<7} {ms['step_s']:>9} {ms['generate_s']:>9} {ms['score_s']:>9} {ms['sync_s']:>8} "
              f"{ms['prepare_other_s']:>8} {ms['update_s']:>9} {_fmt(r['generated_tokens_per_s'], '.0f'):>9} "
              f"{_fmt(r['update_tokens_per_s'], '.0f'):>9} {rewards:>32}")
    for name, r in res["trainers"].items():
        for seed, v in r["per_seed"].items():
            first = v["task_reward_first"]
            print(f"{name} seed {seed}: task reward step 1 {first:.3f} -> last {res['shapes']['reward_window']} "
                  f"steps {v['task_reward_last_window']:.3f}"
                  + (f"; prompt ids match ours: {v['prompt_ids_match_ours']}" if "prompt_ids_match_ours" in v else ""))
    for seed, same in res["same_prompts_per_step"].items():
        print(f"seed {seed}: the same prompts at every step in both trainers: {same}")
    for other, ratio in res["ratios"].items():
        print(f"ours/{other}: step time {_fmt(ratio['step_s_mean_ours_over_theirs'], '.3f')}, generate "
              f"{_fmt(ratio['generate_s_mean_ours_over_theirs'], '.3f')}, score "
              f"{_fmt(ratio['score_s_mean_ours_over_theirs'], '.3f')}, update "
              f"{_fmt(ratio['update_s_mean_ours_over_theirs'], '.3f')}")


def auto_out_path(info: dict, started: dt.datetime) -> Path:
    return record.new_results_path(f"vs_trl-{throughput.device_slug(info)}-{started.strftime('%Y%m%d')}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " See the module docstring.")
    p.add_argument("what", choices=("sft", "rl", "all"), help="which comparison to run")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps (SFT) and rollout steps per seed (RL) (20)")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the time statistics (2)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="RL seeds (0 1); SFT uses --seed")
    p.add_argument("--out", default=None, help="results JSON; 'auto': benchmarks/results/vs_trl-<device>-<date>.json")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    p.add_argument("--attn", default="default",
                   help="attention implementation for every trainer's model (default: each trainer's own: ours "
                        "redone_fast's default, TRL and transformers sdpa)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm, all trainers (1.0)")
    s = p.add_argument_group("SFT")
    s.add_argument("--sft-trainers", nargs="+", choices=SFT_TRAINERS, default=list(SFT_TRAINERS))
    s.add_argument("--sft-split", default="sft_pool", help="bundled split the samples come from (sft_pool)")
    s.add_argument("--batch-size", type=int, default=32, help="samples per optimizer step (32, the tiny preset's)")
    s.add_argument("--micro-batch-tokens", type=int, default=4096,
                   help="our packed micro-batch budget (4096: a step of 32 tiny samples is one micro-batch, as "
                        "TRL's padding-free row is one)")
    s.add_argument("--hf-micro-batches", type=int, default=1,
                   help="gradient-accumulation micro-batches per step for TRL and transformers (1)")
    s.add_argument("--max-length", type=int, default=512, help="longest sample in tokens (512)")
    s.add_argument("--lr", type=float, default=1e-3, help="SFT learning rate, constant (1e-3, the tiny preset's peak)")
    s.add_argument("--weight-decay", type=float, default=0.1, help="SFT AdamW weight decay (0.1)")
    s.add_argument("--seed", type=int, default=0, help="SFT data order seed (0)")
    s.add_argument("--loss-rtol", type=float, default=1e-5, help="per-step loss agreement required (1e-5)")
    r = p.add_argument_group("RL")
    r.add_argument("--rl-trainers", nargs="+", choices=RL_TRAINERS, default=list(RL_TRAINERS))
    r.add_argument("--task", default="hashtag_choice", help="bundled RL task, or 'all' (hashtag_choice)")
    r.add_argument("--prompts", type=int, default=16, help="prompts per rollout step (16)")
    r.add_argument("--group-size", type=int, default=8, help="answers per prompt (8)")
    r.add_argument("--max-completion", type=int, default=24, help="max completion tokens (24)")
    r.add_argument("--overlong-buffer", type=int, default=8, help="DAPO overlong buffer, both trainers (8)")
    r.add_argument("--rl-lr", type=float, default=2e-4, help="RL learning rate, constant (2e-4, the tiny preset's)")
    r.add_argument("--reward-window", type=int, default=5, help="mean task reward over the last N rollouts (5)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("need --steps >= 1 and --warmup >= 0")
    args.warmup = min(args.warmup, args.steps - 1)  # at least one timed step
    if args.threads < 1:
        raise SystemExit("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (the process ran parallel work)
        pass
    lib_versions = _require_trl()
    _quiet()
    started = dt.datetime.now(dt.timezone.utc)
    info = throughput.device_info(torch.device("cpu"))
    commit = record._git("rev-parse", "HEAD")
    dirty = (record._git("status", "--porcelain") or "").splitlines()
    result = {
        "suite": "vs_trl",
        "date_utc": started.isoformat(timespec="seconds"),
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "cwd": os.getcwd(),
        "device": info,
        "threads": {"torch_num_threads": torch.get_num_threads(), "torch_num_interop_threads":
                    torch.get_num_interop_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": record._version("transformers"), **lib_versions,
                     "redone_fast": record._version("redone_fast")},
        "git": {"commit": commit, "dirty": bool(dirty) if commit is not None else None,
                "dirty_paths": [line[3:] for line in dirty][:100]},
        "config": vars(args),
        "differences": {k: v for k, v in DIFFERENCES.items() if args.what in (k, "all")},
        "notes": [
            "step times: wall seconds per optimizer step (SFT) or rollout step (RL), CPU, fp32, one torch thread; "
            "statistics over the steps after --warmup (every seed's for RL).",
            "ratios ours/theirs: tokens/s ratio > 1 and time ratio < 1 mean ours is faster.",
            "tokens_per_s counts every real token of the step (prompt and answer); loss_tokens_per_s only the "
            "tokens with a loss; processed_tokens_per_s adds the padding a trainer computes.",
            "RL rewards: mean task reward (before the overlong penalty) of the step's answers; sampling differs "
            "between the trainers, so only the means over the last --reward-window rollouts are comparable.",
        ],
    }
    wall = time.perf_counter()
    if args.what in ("sft", "all"):
        result["sft"] = run_sft(args)
        print_sft(result["sft"])
    if args.what in ("rl", "all"):
        result["rl"] = run_rl(args)
        print_rl(result["rl"])
    result["wall_s"] = time.perf_counter() - wall
    if args.out:
        out = auto_out_path(info, started) if args.out == "auto" else Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nresults: {out}")
    if "sft" in result and not result["sft"]["loss_agreement"]["all_agree"]:
        print(f"bench_vs_trl: the SFT losses disagree beyond rtol {args.loss_rtol:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
