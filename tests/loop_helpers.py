"""Shared pieces of the loop tests: the tiny model's tokenizer and packed micro-batches of its SFT data."""
from __future__ import annotations

import functools

from redone_fast.data.formatting import encode_sample
from redone_fast.data.packing import pack
from redone_fast.data.schema import load_jsonl
from redone_fast.model import load_tokenizer
from redone_fast.tiny import data_path, model_path


@functools.cache
def tiny_model_tokenizer():
    return load_tokenizer(model_path())


@functools.cache
def tiny_encoded(split: str = "sft_pool", count: int = 64):
    tokenizer = tiny_model_tokenizer()
    return tuple(encode_sample(tokenizer, s, 256) for s in load_jsonl(data_path(split))[:count])


def tiny_micro_batches(start: int = 0, count: int = 12, budget: int = 300):
    """Packed micro-batches of `count` tiny SFT samples (several per batch, uneven token counts)."""
    batches, _ = pack(list(tiny_encoded()[start:start + count]), budget)
    return batches
