"""FSDP2 parallelize on a mesh of one: the sharded model built on meta computes what transformers' own
model computes, with and without activation checkpointing, and loading names what does not match."""
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor

from loop_helpers import tiny_micro_batches
from redone_fast.loop import TokenCrossEntropy
from redone_fast.model import ModelFolderError, load_model, model_body_and_head, packed_hidden_states
from redone_fast.parallelize import ParallelConfig, build_model, clean_name, decoder_blocks
from redone_fast.tiny import model_path


def _full(t):
    return t.full_tensor() if isinstance(t, DTensor) else t


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    hidden = packed_hidden_states(model, batch.input_ids, batch.position_ids, batch.cu_seqlens)
    loss, _ = TokenCrossEntropy().loss(hidden, model_body_and_head(model)[1], batch)
    loss.backward()
    grads = {clean_name(n): _full(p.grad).clone() for n, p in model.named_parameters()}
    return loss.detach(), grads


@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-ac", "ac"])
def test_sharded_model_matches_transformers(dist_ctx, checkpointing):
    reference = load_model(model_path(), device="cpu").train()
    model = build_model(model_path(), dist_ctx.mesh, ParallelConfig(activation_checkpointing=checkpointing))
    assert all(isinstance(p, DTensor) for p in model.parameters())
    if checkpointing:
        assert all("CheckpointWrapper" in type(b).__name__ for b in decoder_blocks(model))
    # Tied embeddings stay one parameter after sharding.
    assert model.lm_head.weight is model.model.embed_tokens.weight

    ids = torch.randint(0, model.config.vocab_size, (2, 17))
    torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=0)

    batch = tiny_micro_batches()[0]
    loss, grads = _loss_and_grads(model, batch)
    ref_loss, ref_grads = _loss_and_grads(reference, batch)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_rotary_buffers_are_recomputed(dist_ctx):
    reference = load_model(model_path(), device="cpu")
    model = build_model(model_path(), dist_ctx.mesh, ParallelConfig(activation_checkpointing=False))
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, reference.model.rotary_emb.inv_freq, rtol=0, atol=0)


def test_source_dtype_is_kept_for_export_while_masters_are_fp32(dist_ctx):
    config = load_model(model_path(), device="meta").config
    config.dtype = torch.bfloat16
    model = build_model(config, dist_ctx.mesh, ParallelConfig(activation_checkpointing=False))
    assert model.config.dtype == torch.bfloat16
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # Random init: matrices N(0, 0.02), norm scales 1.
    assert float(_full(model.model.norm.weight).detach().min()) == 1.0
    std = float(_full(model.model.layers[0].mlp.up_proj.weight).detach().std())
    assert 0.015 < std < 0.025


def _broken_copy(tmp_path, edit):
    folder = tmp_path / "model"
    shutil.copytree(model_path(), folder)
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_missing_weight_is_named(dist_ctx, tmp_path):
    folder = _broken_copy(tmp_path, lambda t: t.pop("model.layers.2.mlp.down_proj.weight"))
    with pytest.raises(ModelFolderError, match=r"missing from the weights: model\.layers\.2\.mlp\.down_proj\.weight"):
        build_model(folder, dist_ctx.mesh)


def test_shape_mismatch_is_named(dist_ctx, tmp_path):
    def shrink(tensors):
        tensors["model.norm.weight"] = tensors["model.norm.weight"][:-1].clone()
    folder = _broken_copy(tmp_path, shrink)
    with pytest.raises(ModelFolderError, match=r"shape mismatch: model\.norm\.weight"):
        build_model(folder, dist_ctx.mesh)


def test_missing_folder_is_named(dist_ctx, tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        build_model(tmp_path / "nowhere", dist_ctx.mesh)
