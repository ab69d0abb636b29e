"""The SFT stage (RedOne 2.0 stage 2's engine): token cross-entropy on packed samples, on the FSDP2 loop.

    python -m redone_fast.stages.sft --run-dir runs/sft                     # the bundled tiny default
    torchrun --nproc_per_node=8 -m redone_fast.stages.sft --preset paper --model /models/Qwen3-4B \\
        --train-files bucket.jsonl --general-files general.jsonl --general-ratio 0.056 --run-dir runs/s2

Epochs over a mix of task and general samples (`sft_data.py`), batch size in samples or tokens, warmup
ratio then cosine, periodic eval loss on a held-out file, checkpoints every N steps and on SIGTERM/SIGINT,
and at the end a Hugging Face export in `<run-dir>/export`. Re-running with the same `--run-dir` resumes.

Presets: `paper` is the paper's stage-2 settings (2 epochs, batch 64, lr 5e-6, warmup ratio 0.1, cosine,
16k packed); `tiny` (the default) trains the bundled 1.1M-parameter model on CPU in seconds, with a
learning rate suited to a model that small. Where the paper is silent we chose: weight decay 0.1 (as its
RL stages), gradient clipping at 1.0, one 16k-token micro-batch per pack.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from redone_fast.config import check_choices
from redone_fast.data.formatting import encode_sample
from redone_fast.data.packing import OverlongPolicy, PackedBatch, pack
from redone_fast.data.schema import load_jsonl
from redone_fast.errors import ConfigError
from redone_fast.loop import LoopConfig, TokenCrossEntropy, Trainer, evaluate_loss, rank_micro_batches, train
from redone_fast.loop.optim import OptimConfig
from redone_fast.loop.outer import LoopSettings
from redone_fast.parallelize import ParallelConfig, check_parallel_config
from redone_fast.stages.cli import StageCommand, parse_stage_args, stage_main
from redone_fast.stages.result import finish_stage
from redone_fast.stages.setup import start_stage
from redone_fast.stages.sft_data import SFTBatches
from redone_fast.tiny import data_path, model_path

__all__ = ["SFTConfig", "preset", "PRESETS", "check_config", "run_sft", "parse_args", "main"]


@dataclass
class SFTConfig:
    """One SFT stage. The defaults are the paper's stage-2 settings without paths or general data (see the
    presets)."""

    model: str = ""
    """local model folder (HF: config + safetensors)"""
    tokenizer: str | None = None
    """tokenizer folder; None: the model folder"""
    train_files: list[str] = field(default_factory=list)
    """JSONL files of task samples (every sample once per epoch)"""
    general_files: list[str] = field(default_factory=list)
    """JSONL files of general samples"""
    general_ratio: float = 0.0
    """share of general samples in each epoch's mix"""
    eval_files: list[str] = field(default_factory=list)
    """held-out JSONL files for the periodic eval loss"""
    eval_max_samples: int = 256
    """eval on at most this many samples (the first)"""
    eval_every: int = 0
    """eval loss every N steps (0: at the end only)"""
    epochs: int = 2
    """passes over the mix"""
    batch_size: int = 64
    """samples per optimizer step"""
    batch_tokens: int = 0
    """if > 0: tokens per optimizer step instead of samples"""
    micro_batch_tokens: int = 16384
    """token budget of one packed micro-batch"""
    max_length: int = 16384
    """longest sample in tokens (<= micro_batch_tokens)"""
    overlong: OverlongPolicy = "truncate"
    """samples over max_length: truncate or drop"""
    max_steps: int = 0
    """stop after this many steps (0: all epochs)"""
    seed: int = 0
    """data order seed"""
    loop: LoopSettings = field(default_factory=LoopSettings)
    """logging and checkpoints (`loop.checkpoint_every` counts optimizer steps; 0: at the end only)"""
    export: bool = True
    """write a Hugging Face folder <run-dir>/export at the end"""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-6, weight_decay=0.1, schedule="cosine",
                                                                   warmup_ratio=0.1, grad_clip=1.0))
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


def preset(name: str) -> SFTConfig:
    """`paper`: stage 2 of RedOne 2.0 (model and data paths must be given); `tiny`: the bundled CPU default."""
    if name == "paper":
        return SFTConfig(epochs=2, batch_size=64, micro_batch_tokens=16384, max_length=16384, general_ratio=0.056,
                         optim=OptimConfig(lr=5e-6, weight_decay=0.1, schedule="cosine", warmup_ratio=0.1))
    if name == "tiny":
        return SFTConfig(model=str(model_path()), train_files=[str(data_path("sft_pool"))],
                         eval_files=[str(data_path("eval"))], epochs=2, batch_size=32, micro_batch_tokens=2048,
                         max_length=512, eval_every=20, loop=LoopSettings(checkpoint_every=20), eval_max_samples=128,
                         optim=OptimConfig(lr=1e-3, weight_decay=0.1, schedule="cosine", warmup_ratio=0.1),
                         parallel=ParallelConfig(activation_checkpointing=False))
    raise ConfigError(f"unknown SFT preset {name!r} (known: {', '.join(PRESETS)})")


PRESETS = ("tiny", "paper")


def check_config(cfg: SFTConfig) -> None:
    """Reject bad values before anything is built or written (ConfigError naming the field): the pipeline
    checks every stage's settings this way before its first step."""
    check_choices(cfg)  # overlong, optim.schedule, ...: values from code or files, not only from flags
    minimum = {"epochs": 1, "batch_size": 1, "batch_tokens": 0, "micro_batch_tokens": 2, "max_length": 2,
               "max_steps": 0, "eval_max_samples": 0, "eval_every": 0, "loop.log_every": 1,
               "loop.checkpoint_every": 0, "loop.keep_checkpoints": 1}
    for name, least in minimum.items():
        value = getattr(cfg.loop, name[5:]) if name.startswith("loop.") else getattr(cfg, name)
        if value < least:
            raise ConfigError(f"{name}: must be >= {least}, got {value}")
    if cfg.max_length > cfg.micro_batch_tokens:
        raise ConfigError(f"max_length ({cfg.max_length}) must not exceed micro_batch_tokens "
                          f"({cfg.micro_batch_tokens})")
    if not 0.0 <= cfg.general_ratio < 1.0:
        raise ConfigError(f"general_ratio: must be in [0, 1), got {cfg.general_ratio}")
    check_parallel_config(cfg.parallel)


def _encode_files(tokenizer, files: list[str], max_length: int, limit: int | None = None):
    samples = [s for path in files for s in load_jsonl(path)]
    if limit is not None:
        samples = samples[:limit]
    return [encode_sample(tokenizer, s, max_length) for s in samples]


def _eval_loss_fn(model, eval_batches, objective, device):
    def evaluate() -> dict:
        model.eval()
        try:
            return {"eval_loss": float(evaluate_loss(model, eval_batches, objective, device=device))}
        finally:
            model.train()
    return evaluate


def _sft_data(cfg: SFTConfig, ctx, tokenizer) -> tuple[SFTBatches, int]:
    """The stage's batches (this rank's share of each step) and its number of optimizer steps."""
    task = _encode_files(tokenizer, cfg.train_files, cfg.max_length)
    general = _encode_files(tokenizer, cfg.general_files, cfg.max_length) if cfg.general_files else []
    data = SFTBatches(task, general, epochs=cfg.epochs, general_ratio=cfg.general_ratio, batch_size=cfg.batch_size,
                      batch_tokens=cfg.batch_tokens, micro_batch_tokens=cfg.micro_batch_tokens,
                      max_length=cfg.max_length, overlong=cfg.overlong, seed=cfg.seed, rank=ctx.rank,
                      world_size=ctx.world_size)
    return data, data.total_steps if not cfg.max_steps else min(cfg.max_steps, data.total_steps)


def run_sft(cfg: SFTConfig, run_dir, *, stage: str = "sft") -> dict:
    """Train (or resume) the SFT stage in `run_dir`; returns a summary (also written as sft_result.json)."""
    setup = start_stage(cfg, run_dir, stage, check_config=check_config, prepare=_sft_data)
    ctx, model, tokenizer, total_steps = setup.ctx, setup.model, setup.tokenizer, setup.total_steps
    objective = TokenCrossEntropy()
    trainer = Trainer(model, setup.optimizer, setup.scheduler, objective, ctx)

    evaluate = None
    if cfg.eval_files:
        eval_samples = _encode_files(tokenizer, cfg.eval_files, cfg.max_length, cfg.eval_max_samples)
        eval_batches, _ = pack(eval_samples, cfg.micro_batch_tokens, max_length=cfg.max_length, overlong=cfg.overlong)
        eval_batches = rank_micro_batches(eval_batches, ctx.rank, ctx.world_size, PackedBatch.without_targets)
        evaluate = _eval_loss_fn(model, eval_batches, objective, ctx.device)

    loop = LoopConfig(total_steps=total_steps, log_every=cfg.loop.log_every,
                      eval_every=cfg.eval_every or total_steps, checkpoint_every=cfg.loop.checkpoint_every,
                      keep_checkpoints=cfg.loop.keep_checkpoints,
                      grad_clip=cfg.optim.grad_clip)
    outcome = train(trainer, setup.data, loop, run_dir=setup.run_dir, stage=stage, evaluate=evaluate)
    history = outcome.history
    return finish_stage(setup.run_dir, stage, ctx, outcome, model=model, tokenizer=tokenizer, export=cfg.export,
                        total_steps=total_steps, started=setup.started,
                        final_loss=next((r["loss"] for r in reversed(history) if "loss" in r), None),
                        final_eval_loss=next((r["eval_loss"] for r in reversed(history) if "eval_loss" in r), None))


def parse_args(argv) -> StageCommand:
    """The command line as a `StageCommand[SFTConfig]` (tyro; bad input raises ConfigError with one line)."""
    return parse_stage_args(SFTConfig, PRESET_FUNCTIONS, argv, prog=PROG, description=__doc__.split("\n\n")[0])


def main(argv=None) -> int:
    return stage_main(SFTConfig, PRESET_FUNCTIONS, run_sft, argv, prog=PROG, description=__doc__.split("\n\n")[0])


PROG = "python -m redone_fast.stages.sft"
PRESET_FUNCTIONS = {name: (lambda name=name: preset(name)) for name in PRESETS}


if __name__ == "__main__":
    sys.exit(main())
