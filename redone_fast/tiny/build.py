"""Rebuild the bundled tiny default from nothing: corpus -> tokenizer -> base model -> eval report.

    python -m redone_fast.tiny.build                      # writes redone_fast/tiny/assets/
    python -m redone_fast.tiny.build --out /tmp/tiny      # somewhere else (then point the pipeline there)

Deterministic under --seed on a given machine and thread count (the data, the tokenizer and the
initialisation and batch order are; CPU kernels give the same result run to run for a fixed thread
count). Writes:
    assets/data/{rl,sft_pool,eval,heldout}.jsonl      the corpus (pretrain is regenerated, not shipped)
    assets/model/                                     config.json, generation_config.json,
                                                      model.safetensors (fp32), tokenizer.json,
                                                      tokenizer_config.json (with the chat template),
                                                      special_tokens_map.json, build_report.json
build_report.json records the seed, the timings, the parameter count, the training loss curve and the
greedy per-task scores on the eval split.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import torch
import tyro

from redone_fast.config import parse_command
from redone_fast.data.corpus import generate_corpus
from redone_fast.data.schema import write_jsonl
from redone_fast.errors import run_cli
from redone_fast.tiny import ASSETS, BUILD_SEED, SHIPPED_SPLITS
from redone_fast.tiny.evaluate import evaluate
from redone_fast.tiny.pretrain import PretrainConfig, pretrain
from redone_fast.tiny.tokenizer import CHAT_TEMPLATE, IM_START, chat_texts, train_tokenizer


@dataclass
class ModelShape:
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0


@dataclass
class BuildConfig:
    seed: int = BUILD_SEED
    world: Literal["plain", "slips"] = "slips"
    """slips: the pretrain SNS targets slip often (redone_fast/data/slips.py); plain: they never do"""
    vocab_size: int = 3072  # BPE target; the trainer stops earlier when merges run out (min frequency 2)
    threads: int = 2
    model: ModelShape = field(default_factory=ModelShape)
    train: PretrainConfig = field(default_factory=PretrainConfig)


def save_tokenizer(tokenizer, folder: Path) -> None:
    """save_pretrained, then tokenizer_config.json / special_tokens_map.json rewritten in the plain
    PreTrainedTokenizerFast layout (chat template inside), which transformers 4.51+ and 5 both read."""
    tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "additional_special_tokens": [IM_START],
        "model_max_length": tokenizer.model_max_length,
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    special = {"eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token,
               "additional_special_tokens": [IM_START]}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def make_model(shape: ModelShape, tokenizer, seed: int):
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    vocab = -(-len(tokenizer) // 64) * 64  # a multiple of 64 (ids past len(tokenizer) are never produced)
    config = Qwen3Config(
        vocab_size=vocab, tie_word_embeddings=True, attention_bias=False, rms_norm_eps=1e-6,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        hidden_act="silu", use_cache=True, initializer_range=0.02, **asdict(shape))
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        do_sample=False, max_new_tokens=64)
    return model


def count_parameters(model) -> int:
    """Distinct parameters (the tied embedding / LM head counted once)."""
    return sum(p.numel() for p in model.parameters())


def build(out: str | Path = ASSETS, cfg: BuildConfig | None = None, *, evaluate_eval: bool = True, log=print) -> dict:
    cfg = cfg or BuildConfig()
    out = Path(out)
    torch.set_num_threads(cfg.threads)
    times = {}
    t = time.perf_counter()
    corpus = generate_corpus(cfg.seed, world=cfg.world)
    for split in SHIPPED_SPLITS:
        write_jsonl(out / "data" / f"{split}.jsonl", corpus[split])
    times["corpus_s"] = time.perf_counter() - t
    log(f"corpus: {', '.join(f'{s} {len(v)}' for s, v in corpus.items())} ({times['corpus_s']:.1f} s)")

    t = time.perf_counter()
    tokenizer = train_tokenizer(chat_texts(corpus["pretrain"]), cfg.vocab_size)
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tokenizer, model_dir)
    times["tokenizer_s"] = time.perf_counter() - t
    log(f"tokenizer: {len(tokenizer)} tokens ({times['tokenizer_s']:.1f} s)")

    model = make_model(cfg.model, tokenizer, cfg.seed)
    params = count_parameters(model)
    log(f"model: Qwen3, {params:,} parameters")
    t = time.perf_counter()
    history = pretrain(model, tokenizer, corpus["pretrain"], cfg.train, seed=cfg.seed, log=log)
    times["pretrain_s"] = time.perf_counter() - t
    model.save_pretrained(model_dir, safe_serialization=True)

    report = {"seed": cfg.seed, "config": asdict(cfg), "parameters": params, "vocab": len(tokenizer),
              "torch": torch.__version__, "threads": cfg.threads, "history": history}
    if evaluate_eval:
        t = time.perf_counter()
        report["eval"] = evaluate(model, tokenizer, corpus["eval"])
        report["heldout"] = evaluate(model, tokenizer, corpus["heldout"])
        times["eval_s"] = time.perf_counter() - t
        for task, row in {**report["eval"], **report["heldout"]}.items():
            extra = f"  set F1 {row['set_f1']:.2f}" if "set_f1" in row else ""
            log(f"  {task:18s} exact match {row['exact_match']:.2f}{extra}  "
                f"(n={int(row['n'])}, one line {row['single_line']:.2f})")
    report["times"] = times
    (model_dir / "build_report.json").write_text(json.dumps(report, indent=1) + "\n")
    log(f"done: {', '.join(f'{k} {v:.0f}' for k, v in times.items())}")
    return report


def main(argv=None) -> int:
    """The build CLI; bad input ends in one `error:` line and status 2 (redone_fast.errors.run_cli)."""
    return run_cli(_main, argv)


@dataclass
class BuildCommand:
    """Rebuild the bundled tiny default from nothing: corpus -> tokenizer -> base model -> eval report."""

    cfg: Annotated[BuildConfig, tyro.conf.arg(name="")]
    out: str = str(ASSETS)
    """output folder"""
    eval: bool = True
    """greedy eval on the eval and held-out splits at the end (--no-eval skips it)"""


def parse_args(argv) -> BuildCommand:
    """The command line as a BuildCommand (tyro; bad input raises ConfigError with one line)."""
    return parse_command(BuildCommand, argv, prog="python -m redone_fast.tiny.build",
                         description=__doc__.split("\n\n")[0], cfg=BuildConfig())


def _main(argv) -> int:
    args = parse_args(argv)
    build(args.out, args.cfg, evaluate_eval=args.eval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
