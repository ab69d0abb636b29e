"""The model layer: packed forwards equal per-sample forwards, losses from hidden states, local loading."""
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from redone_fast import model as M  # noqa: E402
from redone_fast.attention import PACKED_SDPA  # noqa: E402
from redone_fast.model import (  # noqa: E402
    ModelFolderError,
    block_causal_mask,
    check_model_folder,
    default_attn_implementation,
    default_dtype,
    load_model,
    load_tokenizer,
    model_body_and_head,
    packed_hidden_states,
)
from redone_fast.ops import linear_cross_entropy  # noqa: E402

VOCAB = 61
LENGTHS = [5, 1, 9, 3]  # includes a single-token sample


def tiny_config(arch: str, **overrides):
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    if arch == "qwen3":
        config = transformers.Qwen3Config(head_dim=8, tie_word_embeddings=True, **{**common, **overrides})
    elif arch == "llama":
        config = transformers.LlamaConfig(tie_word_embeddings=False, **{**common, **overrides})
    elif arch == "qwen2":
        config = transformers.Qwen2Config(tie_word_embeddings=False, **{**common, **overrides})
    else:
        raise ValueError(arch)
    return config


def packed_batch(lengths, generator=None):
    """input_ids [T], position_ids [T] (0 at each sample start), cu_seqlens [B + 1] int32, shifted labels [T]."""
    samples = [torch.randint(0, VOCAB, (n,), generator=generator) for n in lengths]
    input_ids = torch.cat(samples)
    position_ids = torch.cat([torch.arange(n) for n in lengths])
    cu_seqlens = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    # Position t predicts token t + 1 of the same sample; each sample's last token has no target.
    labels = torch.cat([torch.cat([s[1:], torch.tensor([-100])]) for s in samples])
    return samples, input_ids, position_ids, cu_seqlens, labels


def per_sample_hidden(model, samples):
    body, _ = model_body_and_head(model)
    return torch.cat([body(input_ids=s[None], use_cache=False).last_hidden_state[0] for s in samples])


# --- packed forward ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mask_source", ["transformers", "ours"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["qwen3", "llama", "qwen2"])
def test_packed_forward_equals_per_sample(arch, attn, mask_source, monkeypatch):
    if mask_source == "ours":  # the fallback for transformers without packed-position detection
        monkeypatch.setattr(M, "TRANSFORMERS_DETECTS_PACKING", False)
        # ... emulated: transformers then sees no packing, so only our mask keeps the samples apart.
        monkeypatch.setattr(transformers.masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    else:
        assert M.TRANSFORMERS_DETECTS_PACKING  # true on the 5.x versions this project runs
    model = load_model(tiny_config(arch), attn_implementation=attn)
    samples, input_ids, position_ids, cu_seqlens, _ = packed_batch(LENGTHS)
    with torch.no_grad():
        packed = packed_hidden_states(model, input_ids, position_ids, cu_seqlens)
        expected = per_sample_hidden(model, samples)
    assert packed.shape == (sum(LENGTHS), 32) and packed.dtype == torch.float32
    torch.testing.assert_close(packed, expected, rtol=0, atol=2e-5)


def test_single_sample_micro_batch_needs_no_mask():
    model = load_model(tiny_config("qwen3"))
    samples, input_ids, position_ids, cu_seqlens, _ = packed_batch([7])
    with torch.no_grad():
        torch.testing.assert_close(packed_hidden_states(model, input_ids, position_ids, cu_seqlens),
                                   per_sample_hidden(model, samples), rtol=0, atol=2e-5)


def test_without_the_packing_conditions_samples_attend_across():
    """The pitfall packed_hidden_states avoids (transformers 5.17 / 5.23): a cache, or position ids that do
    not restart, and the second sample attends to the first one without any error."""
    model = load_model(tiny_config("qwen3"))
    body, _ = model_body_and_head(model)
    samples, input_ids, position_ids, _, _ = packed_batch([6, 6])
    with torch.no_grad():
        expected = per_sample_hidden(model, samples)
        with_cache = body(input_ids=input_ids[None], position_ids=position_ids[None],
                          use_cache=True).last_hidden_state[0]
        no_restart = body(input_ids=input_ids[None], use_cache=False).last_hidden_state[0]
    for wrong in (with_cache, no_restart):
        torch.testing.assert_close(wrong[:6], expected[:6], rtol=0, atol=2e-5)  # the first sample is fine
        assert (wrong[6:] - expected[6:]).abs().max() > 1e-2


def test_varlen_attention_gets_cu_seqlens(monkeypatch):
    """The flash-attention route, emulated on CPU: an attention function that, like flash_attn's varlen
    kernel, sees one flat sequence and only the cu_seq_lens / max_length keyword arguments."""
    seen = {}

    def varlen_reference(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        cu, max_len = kwargs["cu_seq_lens_q"], kwargs["max_length_q"]
        seen.update(mask=attention_mask, cu=cu, max_len=max_len)
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
        outs = [F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b],
                                               is_causal=True, scale=scaling)
                for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]
        return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None

    transformers.AttentionInterface.register("varlen_reference", varlen_reference)
    monkeypatch.setattr(M, "_attention_takes_cu_seqlens", lambda attn: attn == "varlen_reference")
    model = load_model(tiny_config("qwen3"), attn_implementation="varlen_reference")
    samples, input_ids, position_ids, cu_seqlens, _ = packed_batch(LENGTHS)
    with torch.no_grad():
        packed = packed_hidden_states(model, input_ids, position_ids, cu_seqlens)
        model.set_attn_implementation("sdpa")
        expected = per_sample_hidden(model, samples)
    assert seen["mask"] is None and seen["cu"].dtype == torch.int32 and seen["max_len"] == max(LENGTHS)
    torch.testing.assert_close(packed, expected, rtol=0, atol=2e-5)


def test_block_causal_mask():
    cu = torch.tensor([0, 2, 3, 5], dtype=torch.int32)
    allowed = torch.tensor([[1, 0, 0, 0, 0],
                            [1, 1, 0, 0, 0],
                            [0, 0, 1, 0, 0],
                            [0, 0, 0, 1, 0],
                            [0, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(block_causal_mask(cu, 5), allowed[None, None])
    additive = block_causal_mask(cu, 5, dtype=torch.bfloat16)
    assert additive.dtype == torch.bfloat16 and additive.shape == (1, 1, 5, 5)
    assert torch.equal(additive[0, 0] == 0, allowed)
    assert (additive[0, 0][~allowed] == torch.finfo(torch.bfloat16).min).all()


def test_packed_inputs_are_checked():
    model = load_model(tiny_config("qwen3"))
    _, input_ids, position_ids, cu_seqlens, _ = packed_batch([3, 4])
    with pytest.raises(ValueError, match="position_ids"):
        packed_hidden_states(model, input_ids, torch.arange(7), cu_seqlens)  # boundaries disagree
    with pytest.raises(ValueError, match="cu_seqlens"):
        packed_hidden_states(model, input_ids, position_ids, torch.tensor([0, 3, 6], dtype=torch.int32))
    with pytest.raises(ValueError, match="1-D"):
        packed_hidden_states(model, input_ids[None], position_ids[None], cu_seqlens)


# --- losses from hidden states -----------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["qwen3", "llama", "qwen2"])
def test_packed_loss_equals_model_loss_per_sample(arch):
    model = load_model(tiny_config(arch))
    samples, input_ids, position_ids, cu_seqlens, labels = packed_batch(LENGTHS)
    body, head_weight = model_body_and_head(model)

    hidden = packed_hidden_states(model, input_ids, position_ids, cu_seqlens)  # [T, H]
    ours = linear_cross_entropy(hidden, head_weight, labels)  # mean over the targets of all samples
    per_token = linear_cross_entropy(hidden, head_weight, labels, reduction="none")  # [T]

    # The model's own loss on each sample alone (a mean over its len - 1 targets), weighted by targets.
    own = [(model(input_ids=s[None], labels=s[None], use_cache=False).loss, len(s) - 1)
           for s in samples if len(s) > 1]
    expected = sum(loss * n for loss, n in own) / sum(n for _, n in own)
    assert int((labels != -100).sum()) == sum(n for _, n in own)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)

    # Token by token, against the model's full logits of each sample alone.
    expected_tokens = torch.cat([
        torch.cat([F.cross_entropy(model(input_ids=s[None], use_cache=False).logits[0, :-1].float(), s[1:],
                                   reduction="none"), torch.zeros(1)]) for s in samples])
    torch.testing.assert_close(per_token, expected_tokens, rtol=1e-5, atol=1e-5)

    if arch == "qwen3":  # gradients through the packed path equal those of the per-sample losses
        params = [head_weight, body.layers[0].self_attn.q_proj.weight, body.layers[1].mlp.down_proj.weight]
        grads = torch.autograd.grad(ours, params)
        expected_grads = torch.autograd.grad(expected, params)
        for a, b in zip(grads, expected_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_body_and_head():
    tied = load_model(tiny_config("qwen3"))
    body, weight = model_body_and_head(tied)
    assert body is tied.model and weight is tied.model.embed_tokens.weight and weight.shape == (VOCAB, 32)
    untied = load_model(tiny_config("llama"))
    body, weight = model_body_and_head(untied)
    assert body is untied.model and weight is untied.lm_head.weight
    assert weight is not untied.model.embed_tokens.weight


# --- defaults ----------------------------------------------------------------------------------------

def test_defaults_on_cpu_and_overrides(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU defaults")
    model = load_model(tiny_config("qwen3"))
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert model.config._attn_implementation == PACKED_SDPA and not model.training
    model = load_model(tiny_config("qwen3"), dtype=torch.bfloat16, attn_implementation="eager")
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "eager"
    assert load_model(tiny_config("qwen3"), dtype="float16").dtype == torch.float16
    assert default_dtype("cpu") == torch.float32 and default_dtype("cuda") == torch.bfloat16
    assert default_attn_implementation("cpu") == PACKED_SDPA
    monkeypatch.setattr(M, "_flash_attn_importable", lambda: True)
    assert default_attn_implementation("cuda") == "flash_attention_2"
    assert default_attn_implementation("cuda", torch.float32) == PACKED_SDPA  # flash-attn is 16-bit only
    assert default_attn_implementation("cpu") == PACKED_SDPA
    monkeypatch.setattr(M, "_flash_attn_importable", lambda: False)
    assert default_attn_implementation("cuda") == PACKED_SDPA


def test_random_init_is_seeded():
    torch.manual_seed(7)
    a = load_model(tiny_config("qwen3")).state_dict()
    torch.manual_seed(7)
    b = load_model(tiny_config("qwen3")).state_dict()
    torch.manual_seed(8)
    c = load_model(tiny_config("qwen3")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], c["model.layers.0.mlp.up_proj.weight"])
    meta = load_model(tiny_config("qwen3"), device="meta")
    assert meta.device.type == "meta"


# --- save and load -----------------------------------------------------------------------------------

def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["the note is about travel #travel", "a query and a relevant note",
                             "translate this slang : lol"],
                            trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "<eos>"]))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                                eos_token="<eos>")


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    """A tiny Qwen3 (tied embeddings) and its tokenizer, saved with save_pretrained."""
    torch.manual_seed(0)
    model = load_model(tiny_config("qwen3"))
    path = tmp_path_factory.mktemp("tiny-qwen3")
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path, model


def test_save_and_load_round_trip(saved_folder, tmp_path):
    path, original = saved_folder
    tokenizer = load_tokenizer(path)
    ids = tokenizer("a query about travel lol <eos>", return_tensors="pt").input_ids
    assert ids.shape[1] == 6 and (ids < VOCAB).all()
    assert tokenizer.convert_ids_to_tokens(ids[0].tolist())[-1] == "<eos>"

    loaded = load_model(path)
    assert check_model_folder(path, tokenizer=True).model_type == "qwen3"
    assert loaded.dtype == torch.float32 and loaded.config._attn_implementation == PACKED_SDPA
    # The attention choice is the loader's, not the checkpoint's: nothing of it is saved.
    assert PACKED_SDPA not in (path / "config.json").read_text()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, original(input_ids=ids).logits, rtol=0, atol=0)
    _, weight = model_body_and_head(loaded)
    assert weight is loaded.model.embed_tokens.weight  # still tied after loading

    # Sharded weights (an index + shards) load the same, in the dtype asked for.
    original.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    sharded = load_model(tmp_path, dtype=torch.bfloat16)
    assert sharded.dtype == torch.bfloat16
    for name, tensor in original.state_dict().items():
        torch.testing.assert_close(sharded.state_dict()[name], tensor.to(torch.bfloat16), rtol=0, atol=0)


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del config[key]
    (path / "config.json").write_text(json.dumps(config))


def _edit_weights(path, edit):
    from safetensors.torch import load_file, save_file
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def _break_shard_index(path):
    shutil.rmtree(path)
    path.mkdir()
    torch.manual_seed(0)
    load_model(tiny_config("qwen3")).save_pretrained(path, max_shard_size="20KB")
    next(path.glob("model-00002-*.safetensors")).unlink()


BROKEN_FOLDERS = {  # case: (break the folder, what the error says)
    "missing": (lambda p: shutil.rmtree(p), "does not exist"),
    "a file": (lambda p: (shutil.rmtree(p), p.write_text("x")), "is not a directory"),
    "no config": (lambda p: (p / "config.json").unlink(), "no config.json"),
    "config not JSON": (lambda p: (p / "config.json").write_text("{model_type"), "not valid JSON"),
    "no model_type": (lambda p: _edit_config(p, model_type=None), "has no model_type"),
    "unknown model_type": (lambda p: _edit_config(p, model_type="no_such_model"), "'no_such_model' is not known"),
    "not a decoder": (lambda p: _edit_config(p, model_type="vit"), "no causal-LM class"),
    "no weights": (lambda p: (p / "model.safetensors").unlink(), "no weights"),
    "pickled weights": (lambda p: (p / "model.safetensors").rename(p / "pytorch_model.bin"), "only pickled"),
    "garbage weights": (lambda p: (p / "model.safetensors").write_bytes(b"\x00not safetensors" * 8),
                        "model.safetensors is not a readable safetensors file"),
    "missing shard": (_break_shard_index, "shards named in model.safetensors.index.json are missing: "
                                          "model-00002-of-"),
    "missing key": (lambda p: _edit_weights(p, lambda t: t.pop("model.layers.1.mlp.up_proj.weight")),
                    "missing from the weights: model.layers.1.mlp.up_proj.weight"),
    "unexpected key": (lambda p: _edit_weights(p, lambda t: t.update({"model.extra.weight": torch.ones(3)})),
                       "in the weights but not in the model: model.extra.weight"),
    "shape mismatch": (lambda p: _edit_config(p, intermediate_size=48),
                       "shape mismatch: model.layers.0.mlp.down_proj.weight (weights (32, 64) vs model (32, 48))"),
}


@pytest.mark.parametrize("case", list(BROKEN_FOLDERS))
def test_broken_model_folder(case, saved_folder, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(saved_folder[0], path)
    breaker, reason = BROKEN_FOLDERS[case]
    breaker(path)
    with pytest.raises(ModelFolderError) as info:
        load_model(path)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value) and reason in str(info.value), str(info.value)
    assert info.value.path == str(path)


def test_broken_tokenizer_folder(saved_folder, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(saved_folder[0], path)
    (path / "tokenizer.json").unlink()
    with pytest.raises(ModelFolderError, match="no tokenizer files") as info:
        load_tokenizer(path)
    assert str(path) in str(info.value)
    with pytest.raises(ModelFolderError, match="no tokenizer files"):
        check_model_folder(path, tokenizer=True)
    load_model(path)  # the model itself needs no tokenizer

    (path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="loading the tokenizer failed") as info:
        load_tokenizer(path)
    assert str(path) in str(info.value)
    with pytest.raises(ModelFolderError, match="does not exist"):
        load_tokenizer(tmp_path / "nowhere")
