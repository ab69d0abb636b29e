"""The model layer: Hugging Face causal decoders, loaded locally, run on packed batches
(docs/design.md, "Model and packing").

- `load_model(path_or_config)`: any `AutoModelForCausalLM` decoder (Qwen3 first; Llama, Qwen2, ...) from a
  local folder (config.json + safetensors) or from a `PretrainedConfig` (random init, deterministic under
  `torch.manual_seed`). Never touches the network (`local_files_only=True`; a path that does not exist is
  an error here, never a hub repository id). A broken folder raises `ModelFolderError` naming the path and
  what is missing or wrong, including weights that do not match the config, which transformers itself
  only reports in a log table (missing / unexpected keys) or raises about without naming the key.
- `load_tokenizer(path)`: `AutoTokenizer`, local only, with the same checks.
- `model_body_and_head(model)`: the decoder body (returns hidden states after the final norm) and the LM
  head's weight `[V, H]` (the embedding matrix when tied). Losses come from
  `redone_fast.ops.linear_cross_entropy(hidden, lm_head_weight, labels)`: no full logits, no patched
  model classes.
- `packed_hidden_states(model, input_ids, position_ids, cu_seqlens)`: the body on one packed micro-batch,
  hidden states `[T, H]`, each sample attending only to itself. Always `use_cache=False`: with a cache,
  transformers skips its detection of packed samples and they attend across boundaries
  (tests/test_model.py pins it). How the samples are kept apart depends on the attention implementation:
  flash_attention_2/3 and `PACKED_SDPA` (redone_fast.attention, the default without flash-attn) get
  `cu_seq_lens_q/k` and `max_length_q/k` and no mask; "sdpa" and "eager" get position ids only where
  transformers detects packing from them (5.x: `masking_utils.find_packed_sequence_indices`), else our
  `block_causal_mask` from `cu_seqlens` (`[1, 1, T, T]`, bool for sdpa, additive for eager; only with
  more than one sample). RoPE reads the position ids, so they must agree with `cu_seqlens` (checked on CPU).
  The root `*ForCausalLM` runs (FSDP2's root hook gathers embedding, final norm and head) with an empty
  `logits_to_keep`; a forward hook takes the body's output.

What transformers does with packed inputs, as read and measured, and why we route as above:
docs/notes.md, "Packed attention in transformers".
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from redone_fast.attention import NO_MASK, PACKED_SDPA, takes_per_sample_route
from redone_fast.errors import ConfigError, RedoneError

try:  # transformers 5.x: packed position ids give a block-diagonal causal mask (module docstring)
    from transformers.masking_utils import find_packed_sequence_indices as _find_packed  # noqa: F401
    TRANSFORMERS_DETECTS_PACKING = True
except ImportError:  # pragma: no cover - older transformers
    TRANSFORMERS_DETECTS_PACKING = False

__all__ = [
    "ModelFolderError", "check_model_folder", "check_tokenizer_folder", "load_model", "load_tokenizer",
    "default_dtype", "default_attn_implementation", "model_body_and_head", "packed_hidden_states",
    "block_causal_mask", "weight_files",
]

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
# Files that carry a vocabulary; tokenizer_config.json alone does not (it names the class and specials).
TOKENIZER_VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                         "sentencepiece.bpe.model", "tekken.json")
_MAX_LISTED_KEYS = 6


class ModelFolderError(RedoneError, ValueError):
    """A model or tokenizer folder that cannot be loaded: `path` and `reason` say which and why."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"model folder {self.path}: {reason}")


# --- defaults ---------------------------------------------------------------------------------------

def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ConfigError(f"dtype: {dtype!r} is not a torch dtype")
    return resolved


def default_dtype(device) -> torch.dtype:
    """bf16 on CUDA, fp32 elsewhere (CPU, meta)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


@functools.cache
def _flash_attn_importable() -> bool:
    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        import flash_attn  # noqa: F401  (a broken build fails here, e.g. a CUDA/torch ABI mismatch)
    except Exception:
        return False
    return True


def default_attn_implementation(device, dtype: torch.dtype | None = None) -> str:
    """"flash_attention_2" on CUDA when flash_attn imports (and the dtype is 16-bit), else `PACKED_SDPA`
    (redone_fast.attention: torch SDPA per sample of a packed row; "sdpa" itself everywhere else)."""
    dtype = default_dtype(device) if dtype is None else dtype
    if (torch.device(device).type == "cuda" and dtype in (torch.bfloat16, torch.float16)
            and _flash_attn_importable()):
        return "flash_attention_2"
    return PACKED_SDPA


# --- folder checks ----------------------------------------------------------------------------------

def _list_keys(keys) -> str:
    keys = sorted(str(k) for k in keys)
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _MAX_LISTED_KEYS else "")


def _check_folder_exists(path: Path) -> None:
    if not path.exists():
        raise ModelFolderError(path, "does not exist (only local folders are loaded, never a hub id)")
    if not path.is_dir():
        raise ModelFolderError(path, "is not a directory")


def _read_config(path: Path) -> PretrainedConfig:
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise ModelFolderError(path, f"no {CONFIG_FILE}")
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(path, f"{CONFIG_FILE} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ModelFolderError(path, f"{CONFIG_FILE} is not a JSON object")
    model_type = raw.get("model_type")
    if not model_type:
        raise ModelFolderError(path, f"{CONFIG_FILE} has no model_type")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if model_type not in CONFIG_MAPPING_NAMES:
        raise ModelFolderError(path, f"{CONFIG_FILE}: model_type {model_type!r} is not known to "
                                     f"transformers {transformers.__version__}")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelFolderError(path, f"{CONFIG_FILE}: model_type {model_type!r} has no causal-LM class "
                                     "(AutoModelForCausalLM); a decoder is required")
    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ModelFolderError(path, f"{CONFIG_FILE} cannot be read as a {model_type} config: {e}") from e


def weight_files(path: Path) -> list[Path]:
    """The safetensors files the folder's weights live in; raises when there are none or some are missing."""
    index_file = path / SAFETENSORS_INDEX_FILE
    if index_file.is_file():
        try:
            weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ModelFolderError(path, f"{SAFETENSORS_INDEX_FILE} is not a valid index "
                                         f"(JSON with a weight_map): {e}") from e
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise ModelFolderError(path, f"weight shards named in {SAFETENSORS_INDEX_FILE} are missing: "
                                         f"{_list_keys(missing)}")
        return [path / s for s in shards]
    if (path / SAFETENSORS_FILE).is_file():
        return [path / SAFETENSORS_FILE]
    others = sorted(path.glob("*.safetensors"))
    if len(others) == 1:  # a single file under another name: transformers would not find it
        raise ModelFolderError(path, f"weights file {others[0].name} found, but transformers reads "
                                     f"{SAFETENSORS_FILE} (or shards listed in {SAFETENSORS_INDEX_FILE})")
    if others:
        raise ModelFolderError(path, f"{len(others)} *.safetensors files but no {SAFETENSORS_INDEX_FILE}")
    if list(path.glob("pytorch_model*.bin")) or list(path.glob("*.pt")):
        raise ModelFolderError(path, "no *.safetensors weights (only pickled .bin/.pt weights, which are "
                                     "not loaded: convert them to safetensors)")
    raise ModelFolderError(path, f"no weights ({SAFETENSORS_FILE} or {SAFETENSORS_INDEX_FILE} + shards)")


def _check_safetensors_headers(path: Path, files: list[Path]) -> None:
    from safetensors import safe_open
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()  # reads the header only
        except Exception as e:  # safetensors raises its own SafetensorError (and OSError)
            raise ModelFolderError(path, f"weights file {file.name} is not a readable safetensors file: "
                                         f"{e}") from e


def check_model_folder(path, *, tokenizer: bool = False) -> PretrainedConfig:
    """Check what can be checked without loading the weights; returns the folder's config.

    The folder must exist and hold a config.json whose model_type transformers knows as a causal LM, and
    safetensors weights (one file, or an index and every shard it names) with readable headers; with
    `tokenizer=True`, tokenizer files too. Raises ModelFolderError naming the path and the problem.
    Whether the weights match the config is only known once they are loaded (`load_model`).
    """
    path = Path(os.fspath(path))
    _check_folder_exists(path)
    config = _read_config(path)
    _check_safetensors_headers(path, weight_files(path))
    if tokenizer:
        check_tokenizer_folder(path)
    return config


def check_tokenizer_folder(path) -> None:
    """The folder exists and holds a vocabulary file (tokenizer.json, tokenizer.model, vocab.json, ...)."""
    path = Path(os.fspath(path))
    _check_folder_exists(path)
    if not any((path / name).is_file() for name in TOKENIZER_VOCAB_FILES):
        raise ModelFolderError(path, "no tokenizer files (looked for " + ", ".join(TOKENIZER_VOCAB_FILES) + ")")


# --- loading ----------------------------------------------------------------------------------------

def load_model(path_or_config, *, dtype=None, device=None, attn_implementation: str | None = None
               ) -> PreTrainedModel:
    """A causal decoder from a local folder or a config, in eval mode, on `device`, in `dtype`.

    path_or_config: a folder (str or PathLike) with config.json + safetensors weights, or a
        `PretrainedConfig` (random initialisation from torch's RNG: the same `torch.manual_seed` gives the
        same weights on the same device). device="meta" builds a config's model without memory.
    dtype: None picks bf16 on CUDA, fp32 elsewhere (never the checkpoint's own dtype by accident).
    device: None picks CUDA when available, else CPU.
    attn_implementation: None picks "flash_attention_2" on CUDA when flash_attn imports and the dtype is
        16-bit, else "sdpa"; any value transformers accepts ("eager", "sdpa", "flex_attention", ...).
    """
    device = _resolve_device(device)
    dtype = _resolve_dtype(dtype) or default_dtype(device)
    attn_implementation = attn_implementation or default_attn_implementation(device, dtype)

    if isinstance(path_or_config, PretrainedConfig):
        # Built directly on the device (random init there): no CPU copy of a large model.
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(path_or_config, dtype=dtype,
                                                     attn_implementation=attn_implementation)
        return model.eval()

    if not isinstance(path_or_config, (str, os.PathLike)):
        raise TypeError(f"path_or_config: expected a folder path or a PretrainedConfig, "
                        f"got {type(path_or_config).__name__}")
    path = Path(os.fspath(path_or_config))
    config = check_model_folder(path)
    try:
        # ignore_mismatched_sizes=True: transformers then reports shape mismatches in loading_info
        # instead of raising a RuntimeError that points at a log table; we raise with the keys below.
        # device_map is not used: it needs `accelerate`; the model is loaded on CPU and moved.
        model, info = AutoModelForCausalLM.from_pretrained(
            str(path), config=config, dtype=dtype, attn_implementation=attn_implementation,
            local_files_only=True, use_safetensors=True, trust_remote_code=False,
            output_loading_info=True, ignore_mismatched_sizes=True)
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # broad: safetensors raises its own SafetensorError (an Exception) on bad data
        raise ModelFolderError(path, f"loading the weights failed: {type(e).__name__}: {e}") from e

    problems = []
    if info.get("missing_keys"):
        problems.append(f"missing from the weights: {_list_keys(info['missing_keys'])}")
    if info.get("unexpected_keys"):
        problems.append(f"in the weights but not in the model: {_list_keys(info['unexpected_keys'])}")
    if info.get("mismatched_keys"):
        shapes = [f"{key} (weights {tuple(ckpt)} vs model {tuple(expected)})"
                  for key, ckpt, expected in sorted(info["mismatched_keys"])]
        problems.append(f"shape mismatch: {_list_keys(shapes)}")
    if info.get("error_msgs"):
        problems.append("errors: " + "; ".join(str(m) for m in info["error_msgs"]))
    if problems:
        raise ModelFolderError(path, f"weights do not match the {config.model_type} config: "
                                     + "; ".join(problems))
    if device.type != "cpu":
        model = model.to(device)
    return model.eval()


def load_tokenizer(path):
    """`AutoTokenizer` from a local folder (never the network); ModelFolderError when it cannot be loaded."""
    path = Path(os.fspath(path))
    check_tokenizer_folder(path)
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # broad: the tokenizers library raises a bare Exception for a bad tokenizer.json
        raise ModelFolderError(path, f"loading the tokenizer failed: {type(e).__name__}: {e}") from e


# --- forward on packed micro-batches ----------------------------------------------------------------

def model_body_and_head(model: PreTrainedModel) -> tuple[torch.nn.Module, torch.Tensor]:
    """(decoder body, lm_head weight [V, H]) of a `*ForCausalLM` model.

    The body returns `last_hidden_state` after the final norm; the weight is the embedding matrix itself
    when the embeddings are tied (the same Parameter, so gradients accumulate in one place).
    """
    head = model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        raise ValueError(f"model: {type(model).__name__} has no LM head (output embeddings); "
                         "pass a *ForCausalLM model")
    body = model.get_decoder()
    if body is model:
        raise ValueError(f"model: could not find the decoder body of {type(model).__name__}")
    return body, head.weight


def block_causal_mask(cu_seqlens: torch.Tensor, num_tokens: int, *, dtype: torch.dtype = torch.bool,
                      device=None) -> torch.Tensor:
    """[1, 1, T, T] causal mask that keeps each packed sample to itself.

    bool: True where query t may attend to key s (same sample, s <= t), the convention of torch SDPA.
    A floating dtype gives the additive form (0 where allowed, the dtype's minimum elsewhere), the one
    transformers' eager attention adds to the scores. Costs T^2 elements: only built when needed.
    """
    device = cu_seqlens.device if device is None else device
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]  # [B]
    sample = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths.to(device),
                                     output_size=num_tokens)  # [T]
    index = torch.arange(num_tokens, device=device)
    allowed = (sample[:, None] == sample[None, :]) & (index[None, :] <= index[:, None])  # [T, T]
    if dtype == torch.bool:
        return allowed[None, None]
    additive = torch.zeros((num_tokens, num_tokens), dtype=dtype, device=device)
    return additive.masked_fill_(~allowed, torch.finfo(dtype).min)[None, None]


def _check_packed(input_ids, position_ids, cu_seqlens, validate: bool) -> None:
    if input_ids.ndim != 1 or position_ids.ndim != 1 or cu_seqlens.ndim != 1:
        raise ValueError("input_ids, position_ids and cu_seqlens must be 1-D ([T], [T], [B + 1]); got shapes "
                         f"{tuple(input_ids.shape)}, {tuple(position_ids.shape)}, {tuple(cu_seqlens.shape)}")
    if input_ids.numel() == 0:
        raise ValueError("input_ids: empty micro-batch")
    if position_ids.shape != input_ids.shape:
        raise ValueError(f"position_ids: shape {tuple(position_ids.shape)} != input_ids {tuple(input_ids.shape)}")
    if cu_seqlens.numel() < 2:
        raise ValueError("cu_seqlens: needs at least 2 entries ([0, T] for one sample)")
    if input_ids.dtype != torch.long or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"input_ids must be int64 and cu_seqlens int32/int64; got {input_ids.dtype}, "
                         f"{cu_seqlens.dtype}")
    if not validate:
        return
    cu = cu_seqlens.to("cpu", torch.int64)
    lengths = cu[1:] - cu[:-1]
    if cu[0] != 0 or cu[-1] != input_ids.numel() or (lengths <= 0).any():
        raise ValueError(f"cu_seqlens: must start at 0, increase strictly and end at T={input_ids.numel()}; "
                         f"got {cu.tolist()}")
    expected = torch.arange(input_ids.numel()) - torch.repeat_interleave(cu[:-1], lengths)
    if not torch.equal(position_ids.to("cpu", torch.int64), expected):
        raise ValueError("position_ids: must count 0, 1, ... within each sample of cu_seqlens "
                         "(transformers finds the sample boundaries from the position ids)")


def _attention_takes_cu_seqlens(attn_implementation: str) -> bool:
    """flash_attention_2/3 (and hub flash kernels): varlen kernels fed with cu_seqlens, no mask; and
    `PACKED_SDPA`, which runs SDPA per sample from them."""
    return "flash" in attn_implementation or attn_implementation == PACKED_SDPA


def packed_hidden_states(model: PreTrainedModel, input_ids: torch.Tensor, position_ids: torch.Tensor,
                         cu_seqlens: torch.Tensor, *, max_seqlen: int | None = None,
                         validate: bool | None = None) -> torch.Tensor:
    """Last hidden state [T, H] (after the final norm) of a packed micro-batch; each sample sees only itself.

    input_ids [T] int64, position_ids [T] restarting at 0 per sample, cu_seqlens [B + 1] (int32 as
    flash-attn takes it) with the samples' boundaries; no padding anywhere. Runs the body with
    use_cache=False (see the module docstring for how the samples are kept apart on each attention
    backend). max_seqlen: the longest sample, for flash attention and packed_sdpa (computed
    from cu_seqlens when None: one host synchronisation). validate: check cu_seqlens / position_ids
    values (default: on CPU only; on CUDA it would synchronise).
    """
    body, _ = model_body_and_head(model)
    validate = input_ids.device.type == "cpu" if validate is None else validate
    _check_packed(input_ids, position_ids, cu_seqlens, validate)
    num_tokens = input_ids.numel()
    attn = body.config._attn_implementation or "eager"
    kwargs = {}
    attention_mask = None
    if _attention_takes_cu_seqlens(attn):
        cu = cu_seqlens.to(torch.int32)
        if max_seqlen is None:
            max_seqlen = int((cu[1:] - cu[:-1]).max())
        kwargs = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max_seqlen, max_length_k=max_seqlen)
        if attn == PACKED_SDPA and takes_per_sample_route(getattr(body.config, "sliding_window", None), max_seqlen):
            attention_mask = NO_MASK  # no layer would read a mask: skip building one
    elif attn in ("sdpa", "eager") and not TRANSFORMERS_DETECTS_PACKING and cu_seqlens.numel() > 2:
        mask_dtype = torch.bool if attn == "sdpa" else body.dtype
        attention_mask = block_causal_mask(cu_seqlens, num_tokens, dtype=mask_dtype, device=input_ids.device)
    # Through the root module, not the body: FSDP2 gathers the root's weights (embedding, final norm, LM
    # head) in the root's forward hook. An empty logits_to_keep makes the head compute no logits; a hook on
    # the body takes its output (after the final norm) on the way.
    captured = []
    handle = body.register_forward_hook(lambda module, args, output: captured.append(output.last_hidden_state))
    try:
        model(input_ids=input_ids[None], position_ids=position_ids[None], attention_mask=attention_mask,
              use_cache=False, logits_to_keep=torch.empty(0, dtype=torch.long, device=input_ids.device), **kwargs)
    finally:
        handle.remove()
    return captured[-1][0]
