"""The transformers-based rollout engine: the CPU default and the GPU fallback (docs/design.md, "Rollouts").

`HFEngine` keeps its own unsharded inference copy of the policy and samples with `model.generate`
(KV cache, left padding, `num_return_sequences=n`, transformers' own temperature and top-p warpers).

Log-probs (the contract is in `redone_fast.rollout.base`): `generate`'s `output_scores` are the processed
scores (after the temperature and top-p warpers), and `output_logits` (the raw logits) would keep
steps x rows x vocab floats alive until the end of generation (about 5 GB for 16 x 512 tokens of a
150k vocabulary). Instead a small logits processor is passed to `generate`: transformers runs the
processors given to `generate` before its sampling warpers (`_get_logits_processor` merges them in before
temperature, top-k and top-p), so the processor sees the raw logits of each step, the same values
`output_logits` returns. It keeps `log_softmax(logits / temperature)` of the current step only, and at the
next step, when the sampled token is known, gathers that token's log-prob. Memory stays at one
rows x vocab row block. tests/test_rollout_hf.py checks the numbers against a teacher-forced recomputation.

The model's own `generation_config` (which for released checkpoints sets top_k, top_p, temperature,
suppressed tokens...) is set aside during `generate`: only what `SamplingParams` says applies.

Sampling is ours, not transformers': a second processor draws each row's token from softmax(logits / T)
(restricted to the top-p nucleus) by inverse-CDF sampling, one uniform number per row, and returns scores
whose argmax is that token, so `generate` runs in its greedy mode on the n-times repeated prompts.
transformers samples with `torch.multinomial`, which on CPU draws a random number per vocabulary entry:
26% of a tiny-model rollout's generation time (cProfile, 16 prompts x 8 answers, V = 4096); the
inverse-CDF draw costs a softmax and a cumulative sum. The distribution is the same (tests/test_rollout_hf.py
compares sampled frequencies with the model's probabilities).

Greedy decoding (temperature 0) decodes one row per prompt and copies it n times.

Sampling prefills each prompt once: the KV cache of all its tokens but the last is computed for the prompt
and repeated for its n rows before `generate` runs (which would otherwise prefill every copy: the prefill
was 9% of a tiny-model RL run, and 128 rollouts of 16 prompts now take about a quarter of the time).

Seeds: with `SamplingParams.seed` each micro-batch of prompts is sampled from its own generator seeded with
`seed + index of its first prompt`, so the same seed, prompts and `max_batch_prompts` give the same
rollouts and the process' RNG state is left as it was; without a seed the draws come from the global RNG.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedModel

from redone_fast.errors import ConfigError
from redone_fast.parallelize import clean_name
from redone_fast.rollout.base import Rollout, SamplingParams, check_prompts
from redone_fast.rollout.weights import iter_full_parameters

__all__ = ["HFEngine"]


def _as_ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _dedupe(ids) -> tuple[int, ...]:
    return tuple(dict.fromkeys(int(i) for i in ids))


class _LogprobRecorder(LogitsProcessor):
    """Records log_softmax(raw logits / temperature) of each sampled token; passes the scores through."""

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.pending: torch.Tensor | None = None  # [rows, V] log-probs of the step whose token is not known yet
        self.steps: list[torch.Tensor] = []  # [rows] log-prob of each step's sampled token

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.pending is not None:  # input_ids[:, -1] is the token sampled from `pending`
            self.steps.append(self.pending.gather(1, input_ids[:, -1:]).squeeze(1))
        self.pending = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """[rows, steps] log-probs, given the last step's sampled tokens."""
        if self.pending is None:
            raise RuntimeError("HFEngine: generate produced no tokens (the log-prob recorder was never called)")
        self.steps.append(self.pending.gather(1, last_tokens[:, None]).squeeze(1))
        self.pending = None
        return torch.stack(self.steps, dim=1)


class _InverseCdfSampler(LogitsProcessor):
    """Draws each row's next token from softmax(raw logits / temperature), cut to the top-p nucleus, and
    returns scores that are 0 at that token and -inf elsewhere (the greedy step of `generate` then picks it).

    Nucleus as transformers' top-p warper: a token is dropped when the probability of the tokens ranked
    above it already reaches top_p (the most likely token always stays). The draw is inverse-CDF: the first
    token whose cumulative probability exceeds a uniform number in [0, total). The sum is fp32 (a float64
    one would hold rows x 151936 x 8 bytes, 1.2 GB for 1024 rows, on a GPU fallback): its rounding moves
    each token's interval by about 1e-7 of the total, far below any sampling noise.
    """

    def __init__(self, temperature: float, top_p: float, generator: torch.Generator | None):
        self.temperature, self.top_p, self.generator = temperature, top_p, generator

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            ranked, order = probs.sort(dim=-1, descending=True)
            above = ranked.cumsum(dim=-1) - ranked
            probs = torch.zeros_like(probs).scatter_(1, order, ranked.masked_fill(above >= self.top_p, 0.0))
        cdf = probs.cumsum(dim=-1)
        uniform = torch.rand((probs.shape[0], 1), generator=self.generator, device=probs.device)
        total = cdf[:, -1:]
        # below the total even after rounding, so the chosen token is never one the nucleus dropped
        point = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
        tokens = torch.searchsorted(cdf, point, right=True)
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens, 0.0)


class HFEngine:
    """Rollouts with transformers' `generate` on an unsharded copy of the policy.

    model_path_or_model: a local model folder or a `PretrainedConfig` (loaded with
        `redone_fast.model.load_model`), or a `PreTrainedModel`, which the engine then uses as its own
        inference copy as is (moved to `device` / `dtype` when those are given) and overwrites on
        `load_weights`.
    tokenizer: a tokenizer, a tokenizer folder, or None (the model folder's tokenizer when the model came
        from a folder; otherwise the model config's eos id). Responses end at its eos token, at any other
        eos the model's generation_config names (as vLLM does) and at `SamplingParams.stop_token_ids`; its
        pad token (or eos) pads the batch.
    device, dtype: None picks as `load_model` does (CUDA and bf16 when available, else CPU and fp32).
    max_batch_prompts: prompts per `generate` call (each with `n` rows): bounds the KV cache's memory.
    attn_implementation: passed to `load_model` (None: its default).
    """

    def __init__(self, model_path_or_model, tokenizer=None, device=None, dtype=None, *,
                 max_batch_prompts: int = 8, attn_implementation: str | None = None):
        from redone_fast.model import load_model, load_tokenizer

        if max_batch_prompts < 1:
            raise ConfigError(f"max_batch_prompts: expected >= 1, got {max_batch_prompts}")
        self.max_batch_prompts = max_batch_prompts
        folder = None
        if isinstance(model_path_or_model, PreTrainedModel):
            model = model_path_or_model
            if any(isinstance(p, DTensor) for p in model.parameters()):
                raise ValueError("HFEngine: the model has sharded (DTensor) parameters; pass a folder or a plain "
                                 "model and copy a sharded trainer model's weights in with load_weights")
            if device is not None or dtype is not None:
                model.to(device=device, dtype=dtype)
        else:
            if isinstance(model_path_or_model, (str, os.PathLike)):
                folder = Path(os.fspath(model_path_or_model))
            model = load_model(model_path_or_model, dtype=dtype, device=device,
                               attn_implementation=attn_implementation)
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.device = next(self.model.parameters()).device
        self._asleep = False

        if tokenizer is None and folder is not None:
            tokenizer = load_tokenizer(folder)
        elif isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        eos = tokenizer.eos_token_id if tokenizer is not None else self.model.config.eos_token_id
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else None
        if eos is None:
            raise ValueError("HFEngine: no eos token id (neither the tokenizer nor the model config has one)")
        self.eos_token_id = int(eos)
        # Stop tokens: the tokenizer's eos, then any other eos the checkpoint's generation config names
        # (Qwen3 instruct: <|im_end|> and <|endoftext|>), as vLLM does.
        self.stop_token_ids = _dedupe((self.eos_token_id, *_as_ids(getattr(self.model.generation_config,
                                                                           "eos_token_id", None))))
        pad = tokenizer.pad_token_id if tokenizer is not None else getattr(self.model.config, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else self.eos_token_id

    # --- sampling -----------------------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[list[Rollout]]:
        """`sampling.n` rollouts per prompt, in prompt order (see `redone_fast.rollout.base`)."""
        if self._asleep:
            raise RuntimeError("HFEngine.generate: the engine is asleep; call wake() first")
        prompts = check_prompts(prompts)
        stop_ids = _dedupe((*self.stop_token_ids, *sampling.stop_token_ids))
        results: list[list[Rollout]] = []
        for start in range(0, len(prompts), self.max_batch_prompts):
            batch = prompts[start:start + self.max_batch_prompts]
            seed = None if sampling.seed is None else sampling.seed + start
            results.extend(self._generate_batch(batch, start, sampling, stop_ids, seed))
        return results

    def _generate_batch(self, batch: list[list[int]], first_index: int, sampling: SamplingParams,
                        stop_ids: tuple[int, ...], seed: int | None) -> list[list[Rollout]]:
        width = max(len(p) for p in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, prompt in enumerate(batch):  # left padding: every prompt ends at the last column
            input_ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            attention_mask[row, width - len(prompt):] = 1

        # Greedy decoding gives n identical responses: one row per prompt is decoded and copied n times.
        # Sampling repeats each prompt n times (consecutively, as num_return_sequences would) and lets
        # _InverseCdfSampler choose every token; generate itself runs greedy (do_sample=False: none of
        # transformers' warpers apply, and the empty model config below keeps the checkpoint's out).
        per_prompt = 1 if sampling.greedy else sampling.n
        if per_prompt > 1:
            input_ids = input_ids.repeat_interleave(per_prompt, dim=0)
            attention_mask = attention_mask.repeat_interleave(per_prompt, dim=0)
        config = GenerationConfig(
            do_sample=False, repetition_penalty=1.0, num_return_sequences=1,
            max_new_tokens=sampling.max_new_tokens, min_new_tokens=0,
            eos_token_id=list(stop_ids), pad_token_id=self.pad_token_id, use_cache=True,
            return_dict_in_generate=False)
        recorder = _LogprobRecorder(1.0 if sampling.greedy else sampling.temperature)
        processors = [recorder]  # first: it must see the raw logits
        if not sampling.greedy:
            generator = None
            if seed is not None:
                generator = torch.Generator(device=self.device).manual_seed(seed)
            processors.append(_InverseCdfSampler(sampling.temperature, sampling.top_p, generator))

        extra = {}
        if per_prompt > 1 and width > 1:
            extra[self._cache_kwarg()] = self._shared_prefix_cache(input_ids[::per_prompt],
                                                                 attention_mask[::per_prompt], per_prompt)
        own_config = self.model.generation_config
        self.model.generation_config = GenerationConfig()  # the checkpoint's defaults must not apply
        try:
            sequences = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                generation_config=config, logits_processor=LogitsProcessorList(processors), **extra)
        finally:
            self.model.generation_config = own_config

        generated = sequences[:, width:]
        logprobs = recorder.finish(generated[:, -1]) if generated.shape[1] else None
        if logprobs is None or logprobs.shape != generated.shape:
            raise RuntimeError(f"HFEngine: {0 if logprobs is None else logprobs.shape[1]} recorded log-prob steps "
                               f"for {generated.shape[1]} generated tokens")
        tokens, values = generated.tolist(), logprobs.tolist()
        stops = set(stop_ids)
        out: list[list[Rollout]] = []
        for p, prompt in enumerate(batch):
            group = []
            for s in range(sampling.n):
                row = p * per_prompt + min(s, per_prompt - 1)  # generate repeats each prompt, consecutively
                ids = tokens[row]
                end = next((i + 1 for i, t in enumerate(ids) if t in stops), None)
                finished = end is not None
                if not finished:  # rows that did not stop run to max_new_tokens (no padding after them)
                    end = len(ids)
                    if end != sampling.max_new_tokens:
                        raise RuntimeError(f"HFEngine: a response ended after {end} tokens without a stop token "
                                           f"(max_new_tokens={sampling.max_new_tokens})")
                group.append(Rollout(prompt_index=first_index + p, prompt_ids=list(prompt), response_ids=ids[:end],
                                     logprobs=values[row][:end], finished=finished, truncated=not finished))
            out.append(group)
        return out

    @torch.no_grad()
    def _shared_prefix_cache(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, repeats: int):
        """KV cache of every prompt token but the last, computed once per prompt and repeated for its `repeats`
        rows. `generate` would prefill each of the n copies of a prompt (n times the prompt's work: 9% of a
        tiny-model RL run, py-spy); given this cache it runs only the last prompt token and the new ones.
        Position ids as `generate` derives them from the left-padded mask (cumulative count, 0 on padding)."""
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        out = self.model(input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1],
                         position_ids=position_ids[:, :-1], use_cache=True, logits_to_keep=1)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        cache.batch_repeat_interleave(repeats)
        return cache

    def _cache_kwarg(self) -> str:
        """transformers renamed `past_key_values` to `cache` (5.2x; 5.17, the GPU machines', has the old name)."""
        return "cache" if "cache" in inspect.signature(type(self.model).forward).parameters else "past_key_values"

    # --- weights and memory -------------------------------------------------------------------------

    @torch.no_grad()
    def load_weights(self, model) -> None:
        """Copy `model`'s current weights (FSDP2-sharded or plain, same architecture) into the engine's copy.

        Names and (global) shapes are checked first, without gathering anything: a model that does not match
        raises ValueError and leaves the engine unchanged. Then one parameter at a time
        (`iter_full_parameters`: a gather per parameter under FSDP2, so every rank of the trainer's mesh
        must call this).
        """
        own = dict(self.model.named_parameters())
        theirs = {clean_name(name): tuple(param.shape) for name, param in model.named_parameters()}
        unexpected = sorted(set(theirs) - set(own))
        missing = sorted(set(own) - set(theirs))
        mismatched = [f"{name} ({theirs[name]} vs {tuple(own[name].shape)})" for name in own
                      if name in theirs and theirs[name] != tuple(own[name].shape)]
        if unexpected or missing or mismatched:
            problems = [f"{label}: {', '.join(items[:6])}" + (f" ... ({len(items)} in all)" if len(items) > 6 else "")
                        for label, items in (("not in the engine's model", unexpected),
                                             ("not in the trainer's model", missing),
                                             ("shape mismatch (trainer vs engine)", mismatched)) if items]
            raise ValueError("HFEngine.load_weights: the models differ; " + "; ".join(problems))
        for name, tensor in iter_full_parameters(model):
            own[name].copy_(tensor)

    def close(self) -> None:
        """Nothing to release (the inference copy is freed with the engine); for symmetry with VLLMEngine."""

    def sleep(self) -> None:
        """On CUDA: move the inference copy to host memory and release the cached blocks. Elsewhere a no-op."""
        if self.device.type == "cuda" and not self._asleep:
            self.model.to("cpu")
            torch.cuda.empty_cache()
            self._asleep = True

    def wake(self) -> None:
        if self._asleep:
            self.model.to(self.device)
            self._asleep = False
