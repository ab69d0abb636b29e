"""The rollout interface (docs/design.md, "Rollouts"): sampling parameters, one rollout, and the engine protocol.

Log-probabilities: `Rollout.logprobs[i]` is the log-probability of `response_ids[i]` under the
temperature-scaled distribution `log_softmax(logits / temperature)` of the policy that sampled it, taken
BEFORE top-p truncation (no renormalisation over the nucleus). That is what the trainer's
`redone_fast.ops.linear_logprobs(hidden, weight, target, temperature=T)` computes, so the engine's numbers
and the trainer's recomputation can be compared token by token (the trainer recomputes old-policy
log-probs itself; the engine's are for metrics and consistency checks). With top_p < 1 the token was drawn
from the truncated, renormalised distribution, whose log-probability is higher by the log of the nucleus'
mass; the reported number is still the untruncated one. Temperature 0 means greedy decoding; its
log-probs are those of the unscaled distribution (`log_softmax(logits)`, as if temperature were 1).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from redone_fast.errors import ConfigError

__all__ = ["SamplingParams", "Rollout", "RolloutEngine", "check_prompts", "EngineKind", "ENGINE_KINDS"]

EngineKind = Literal["hf", "vllm"]  # the rollout engines a config can name
ENGINE_KINDS: tuple[str, ...] = EngineKind.__args__


@dataclass(frozen=True)
class SamplingParams:
    """How responses are sampled.

    n: responses per prompt (the GRPO/DAPO group size).
    temperature: > 0 samples from softmax(logits / temperature); 0 decodes greedily.
    top_p: nucleus sampling (1.0 keeps the whole vocabulary).
    max_new_tokens: a response that reaches this length without a stop token is `truncated`.
    seed: None draws from the process' RNG (each call differs); an int makes `generate` reproducible for
        the same prompts, parameters and engine settings (and leaves the global RNG state untouched).
    stop_token_ids: tokens that end a response besides the tokenizer's eos (the stop token is kept).
    """

    n: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ConfigError(f"SamplingParams.n: expected an int >= 1, got {self.n!r}")
        if not (self.temperature >= 0.0):  # also rejects NaN
            raise ConfigError(f"SamplingParams.temperature: expected >= 0, got {self.temperature!r}")
        if not (0.0 < self.top_p <= 1.0):
            raise ConfigError(f"SamplingParams.top_p: expected in (0, 1], got {self.top_p!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError(f"SamplingParams.max_new_tokens: expected an int >= 1, got {self.max_new_tokens!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise ConfigError(f"SamplingParams.seed: expected an int or None, got {self.seed!r}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Rollout:
    """One sampled response to one prompt.

    prompt_index: the prompt's position in the `generate` call's list.
    prompt_ids: the prompt's token ids (as given).
    response_ids: the generated tokens, ending with the stop token when `finished`; never any padding.
    logprobs: one per response token, each <= 0: see the module docstring for which distribution.
    finished: the response ended with the eos or a stop token.
    truncated: the response hit `max_new_tokens` without one (then `len(response_ids) == max_new_tokens`).
    """

    prompt_index: int
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float] = field(repr=False)
    finished: bool
    truncated: bool

    def __post_init__(self) -> None:
        if len(self.logprobs) != len(self.response_ids):
            raise ValueError(f"Rollout: {len(self.logprobs)} logprobs for {len(self.response_ids)} response tokens")
        if self.finished == self.truncated:
            raise ValueError(f"Rollout: exactly one of finished/truncated must hold, got finished={self.finished}, "
                             f"truncated={self.truncated}")

    @property
    def response_length(self) -> int:
        return len(self.response_ids)


@runtime_checkable
class RolloutEngine(Protocol):
    """What the RL step needs from a sampler (HFEngine on CPU or as the GPU fallback, VLLMEngine on GPUs)."""

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[list[Rollout]]:
        """`sampling.n` rollouts per prompt; the outer list in prompt order."""
        ...

    def load_weights(self, model) -> None:
        """Copy the trainer's current weights (an FSDP2-sharded or plain HF model) into the engine.

        Under FSDP2 this gathers each parameter (a collective): every rank of the model's mesh must call it.
        """
        ...

    def sleep(self) -> None:
        """Free the engine's memory while the trainer runs (a no-op where meaningless)."""
        ...

    def wake(self) -> None:
        """Restore what `sleep` freed before the next `generate`."""
        ...


def check_prompts(prompts) -> list[list[int]]:
    """The prompts as lists of ints; raises on an empty list, an empty prompt or a non-integer token."""
    if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__len__"):
        raise TypeError(f"prompts: expected a list of token-id lists, got {type(prompts).__name__}")
    checked = []
    for index, prompt in enumerate(prompts):
        if isinstance(prompt, (str, bytes)):
            raise TypeError(f"prompts[{index}]: expected token ids, got text (encode it first)")
        ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError(f"prompts[{index}] is empty")
        if min(ids) < 0:
            raise ValueError(f"prompts[{index}] has a negative token id")
        checked.append(ids)
    return checked
