"""Training the tiny base model from scratch: a plain single-process torch loop (no FSDP), AdamW, the
loss from the final hidden states through redone_fast.ops.linear_cross_entropy (the [T, V] logits are
never built).

Every sample goes through the chat template (redone_fast.data.formatting.encode_sample). The loss covers
the target tokens (answer, rationale, eos) with weight 1 and the prompt tokens with a small weight
(`prompt_loss_weight`): the prompt tokens teach the note / query vocabulary cheaply, the target tokens
teach the tasks. Batches hold samples of similar length, right-padded: with a causal mask a real token
never attends to the padding after it, so no attention mask is needed and padded positions carry no loss.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import torch

from redone_fast.data.formatting import encode_sample
from redone_fast.data.schema import Sample
from redone_fast.ops import linear_cross_entropy


@dataclass
class PretrainConfig:
    # passes over the pretrain split (fractional: the last pass is cut short). 8, not 3: after 3 the base model
    # was still learning (target loss 0.34) and any fine-tuning cost it 5-8 general points; after 8 (0.06) its
    # general tasks are at 99 and the pipeline's stages move them by 2 at most (tiny/README.md, 'What was
    # tuned')
    epochs: float = 8.0
    batch_tokens: int = 1536  # padded tokens per batch (samples of similar length)
    max_length: int = 128
    lr: float = 5e-3
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio
    warmup_steps: int = 20
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    prompt_loss_weight: float = 0.1
    log_every: int = 200


def _batches(lengths: list[int], batch_tokens: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped by similar length into batches of at most batch_tokens padded tokens, shuffled."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches, current, width = [], [], 0
    for i in order:
        new_width = max(width, lengths[i])
        if current and new_width * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, new_width = [], lengths[i]
        current.append(i)
        width = new_width
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def _collate(encoded, batch: list[int], pad_id: int, prompt_weight: float):
    width = max(len(encoded[i].input_ids) for i in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # [B, L]
    targets = torch.full((len(batch), width), -100, dtype=torch.long)  # [B, L]: token t predicts t + 1
    weights = torch.zeros((len(batch), width))  # [B, L]
    is_target = torch.zeros((len(batch), width), dtype=torch.bool)  # [B, L]
    for row, i in enumerate(batch):
        sample = encoded[i]
        n = len(sample.input_ids)
        ids[row, :n] = torch.tensor(sample.input_ids)
        targets[row, :n - 1] = ids[row, 1:n]
        mask = torch.tensor(sample.loss_mask[1:], dtype=torch.bool)
        weights[row, :n - 1] = torch.where(mask, 1.0, prompt_weight)
        is_target[row, :n - 1] = mask
    return ids, targets, weights, is_target


def lr_at(step: int, total: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def pretrain(model, tokenizer, samples: list[Sample], cfg: PretrainConfig, *, seed: int = 0, log=print) -> list[dict]:
    """Train `model` in place on `samples`; returns the logged metrics (step, loss, lr, elapsed_s)."""
    rng = random.Random(f"redone_fast.tiny.pretrain/{seed}")
    encoded = [encode_sample(tokenizer, s, max_length=cfg.max_length) for s in samples]
    lengths = [len(e.input_ids) for e in encoded]
    pad_id = tokenizer.pad_token_id
    epochs = [_batches(lengths, cfg.batch_tokens, rng) for _ in range(math.ceil(cfg.epochs))]
    steps_per_epoch = len(epochs[0])
    total = int(round(cfg.epochs * steps_per_epoch))
    schedule = [b for epoch in epochs for b in epoch][:total]

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    head_weight = model.get_output_embeddings().weight  # [V, H], tied to the input embedding
    model.train()
    history, running, start = [], [], time.perf_counter()
    for step, batch in enumerate(schedule):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total, cfg)
        ids, targets, weights, is_target = _collate(encoded, batch, pad_id, cfg.prompt_loss_weight)
        hidden = model.model(input_ids=ids).last_hidden_state  # [B, L, H]
        keep = weights.reshape(-1) > 0  # [B * L]
        per_token = linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1])[keep], head_weight,
                                         targets.reshape(-1)[keep], reduction="none")  # [N]
        token_weights = weights.reshape(-1)[keep]
        loss = (per_token * token_weights).sum() / token_weights.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        # the answer-token loss alone, for the log
        running.append(float(per_token.detach()[is_target.reshape(-1)[keep]].mean()))
        if (step + 1) % cfg.log_every == 0 or step + 1 == total:
            record = {"step": step + 1, "steps": total, "target_loss": sum(running) / len(running),
                      "lr": optimizer.param_groups[0]["lr"], "elapsed_s": time.perf_counter() - start}
            history.append(record)
            running = []
            log(f"step {record['step']:5d}/{total}  target loss {record['target_loss']:.4f}  "
                f"lr {record['lr']:.2e}  {record['elapsed_s']:.0f} s")
    model.eval()
    return history
