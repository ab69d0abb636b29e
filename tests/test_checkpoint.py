"""Checkpoints (mesh of one): exact round trip, keep-K, and every way a checkpoint can be bad is reported
with its path while the previous good one is used; non-tensor entries never unpickle arbitrary objects."""
import json

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.tensor import DTensor

from loop_helpers import tiny_micro_batches
from redone_fast.loop import (
    Checkpointer,
    CheckpointError,
    OptimConfig,
    TokenCrossEntropy,
    build_optimizer,
    build_scheduler,
    train_step,
)
from redone_fast.loop.checkpoint import MANIFEST, SafeFileSystemReader, SafeLoadPlanner
from redone_fast.parallelize import ParallelConfig, build_model, clean_name
from redone_fast.tiny import model_path


def _full(t):
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()


def _fresh(dist_ctx):
    cfg = OptimConfig(lr=1e-2)
    model = build_model(model_path(), dist_ctx.mesh, ParallelConfig(activation_checkpointing=False))
    optimizer = build_optimizer(model, cfg)
    return model, optimizer, build_scheduler(optimizer, cfg, total_steps=10)


def _train(model, optimizer, scheduler, steps, start=0):
    for i in range(steps):
        train_step(model, optimizer, scheduler, tiny_micro_batches(12 * (start + i)), TokenCrossEntropy())


def _state(model, optimizer):
    params = {clean_name(n): _full(p) for n, p in model.named_parameters()}
    moments = {clean_name(n): {k: _full(v) for k, v in optimizer.state[p].items()}
               for n, p in model.named_parameters()}
    return params, moments


def _assert_same(a, b):
    for name in a[0]:
        torch.testing.assert_close(a[0][name], b[0][name], rtol=0, atol=0, msg=name)
        for key in a[1][name]:
            torch.testing.assert_close(a[1][name][key], b[1][name][key], rtol=0, atol=0, msg=f"{name} {key}")


@pytest.fixture
def trained(dist_ctx, tmp_path):
    model, optimizer, scheduler = _fresh(dist_ctx)
    checkpointer = Checkpointer(tmp_path / "ckpt", keep=2)
    _train(model, optimizer, scheduler, 2)
    first = checkpointer.save(2, model, optimizer, trainer_state={"data": {"epoch": 0, "i": 2}},
                              rank_state={"cpu_rng": torch.get_rng_state()})
    state_at_2 = _state(model, optimizer)
    _train(model, optimizer, scheduler, 1, start=2)
    second = checkpointer.save(3, model, optimizer, trainer_state={"data": {"epoch": 0, "i": 3}})
    return checkpointer, first, second, state_at_2, _state(model, optimizer)


def test_round_trip_restores_model_and_optimizer_exactly(dist_ctx, trained):
    checkpointer, first, second, _, state_at_3 = trained
    model, optimizer, _ = _fresh(dist_ctx)
    loaded = checkpointer.load_latest(model, optimizer)
    assert loaded.path == second and loaded.step == 3 and checkpointer.rejected == []
    assert loaded.trainer_state["data"] == {"epoch": 0, "i": 3} and loaded.trainer_state["world_size"] == 1
    _assert_same(_state(model, optimizer), state_at_3)
    # The restored optimizer continues like the original.
    scheduler = build_scheduler(optimizer, OptimConfig(lr=1e-2), total_steps=10)
    _train(model, optimizer, scheduler, 1, start=3)


def test_keeps_only_the_newest(dist_ctx, trained, tmp_path):
    checkpointer, first, second, _, _ = trained
    model, optimizer, _ = _fresh(dist_ctx)
    third = checkpointer.save(4, model, optimizer, trainer_state={})
    assert checkpointer.complete() == [third, second]
    assert not first.exists()


def _corrupt_distcp(path):
    data = sorted(path.glob("*.distcp"))[0]
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage, reason", [
    (lambda p: (p / MANIFEST).unlink(), "partial checkpoint"),
    (lambda p: sorted(p.glob("*.distcp"))[0].write_bytes(b"\0" * 10), "bytes, the manifest says"),
    (lambda p: (p / "trainer.json").unlink(), "trainer.json is missing"),
    (_corrupt_distcp, "checksum mismatch"),
    (lambda p: (p / MANIFEST).write_text("{not json"), "unreadable"),
], ids=["no-manifest", "truncated", "missing-file", "bit-flip", "bad-manifest"])
def test_bad_checkpoint_is_reported_and_the_previous_one_used(dist_ctx, trained, damage, reason):
    checkpointer, first, second, state_at_2, _ = trained
    damage(second)
    model, optimizer, _ = _fresh(dist_ctx)
    loaded = checkpointer.load_latest(model, optimizer)
    assert loaded.path == first and loaded.step == 2
    assert len(checkpointer.rejected) == 1
    assert str(second) in str(checkpointer.rejected[0]) and reason in str(checkpointer.rejected[0])
    _assert_same(_state(model, optimizer), state_at_2)


def test_interrupted_save_keeps_the_last_good_checkpoint(dist_ctx, trained, monkeypatch):
    checkpointer, first, second, _, state_at_3 = trained
    model, optimizer, _ = _fresh(dist_ctx)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")
    monkeypatch.setattr(dcp, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save(3, model, optimizer, trainer_state={})  # the same step: must not destroy step 3
    monkeypatch.undo()
    assert second.is_dir() and (second / MANIFEST).is_file()
    assert checkpointer.partial() == [second.with_name(second.name + ".partial")]
    loaded = checkpointer.load_latest(model, optimizer)
    assert loaded.path == second
    assert any("partial checkpoint" in str(e) for e in checkpointer.rejected)
    _assert_same(_state(model, optimizer), state_at_3)


def test_no_checkpoint_gives_none(dist_ctx, tmp_path):
    model, optimizer, _ = _fresh(dist_ctx)
    assert Checkpointer(tmp_path / "empty").load_latest(model, optimizer) is None


def test_checkpoint_saved_again_at_the_same_step_replaces_it(dist_ctx, trained):
    checkpointer, _, second, _, _ = trained
    model, optimizer, _ = _fresh(dist_ctx)
    again = checkpointer.save(3, model, optimizer, trainer_state={"marker": 1})
    assert again == second
    assert json.loads((second / "trainer.json").read_text())["marker"] == 1
    assert not second.with_name(second.name + ".old").exists()


_SIDE_EFFECT = []


class _Payload:
    """An object whose unpickling has a side effect: what a tampered checkpoint would smuggle in."""

    def __reduce__(self):
        return (_SIDE_EFFECT.append, ("unpickled",))


def test_non_tensor_entries_load_with_weights_only(dist_ctx, tmp_path):
    folder = tmp_path / "tampered"
    dcp.save({"weights": torch.ones(3), "extra": _Payload()}, checkpoint_id=str(folder))
    target = {"weights": torch.zeros(3), "extra": None}
    with pytest.raises(BaseException, match="(?i)weights_only|unpickl|Unsupported global"):
        dcp.load(target, checkpoint_id=str(folder), planner=SafeLoadPlanner())
    assert _SIDE_EFFECT == []
    # Plain values (what optimizer hyperparameters are) still load.
    plain = tmp_path / "plain"
    dcp.save({"weights": torch.ones(3), "extra": {"lr": 0.1, "betas": (0.9, 0.99), "name": "x"}},
             checkpoint_id=str(plain))
    target = {"weights": torch.zeros(3), "extra": {"lr": None, "betas": None, "name": None}}
    dcp.load(target, checkpoint_id=str(plain), planner=SafeLoadPlanner())
    assert target["extra"] == {"lr": 0.1, "betas": (0.9, 0.99), "name": "x"}
    assert torch.equal(target["weights"], torch.ones(3))


def test_metadata_index_is_unpickled_with_an_allowlist(dist_ctx, trained, tmp_path):
    """DCP reads `.metadata` with plain pickle.load: a tampered index would run code without our reader."""
    import pickle
    import zlib
    checkpointer, first, second, state_at_2, _ = trained
    payload = pickle.dumps(_Payload())
    (second / ".metadata").write_bytes(payload)
    manifest = json.loads((second / MANIFEST).read_text())
    manifest["files"][".metadata"] = {"bytes": len(payload), "crc32": zlib.crc32(payload)}
    (second / MANIFEST).write_text(json.dumps(manifest))  # the manifest was rewritten to match, too
    model, optimizer, _ = _fresh(dist_ctx)
    loaded = checkpointer.load_latest(model, optimizer)
    assert _SIDE_EFFECT == []
    assert loaded.path == first
    assert "not allowed" in str(checkpointer.rejected[0]) and str(second) in str(checkpointer.rejected[0])
    _assert_same(_state(model, optimizer), state_at_2)
    # A genuine index still reads through the restricted unpickler.
    assert SafeFileSystemReader(str(first)).read_metadata().state_dict_metadata


def test_unreadable_dcp_data_with_no_fallback_is_an_error(dist_ctx, tmp_path):
    model, optimizer, scheduler = _fresh(dist_ctx)
    checkpointer = Checkpointer(tmp_path / "ckpt")
    path = checkpointer.save(1, model, optimizer, trainer_state={})
    (path / ".metadata").write_bytes(b"garbage")
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"][".metadata"] = {"bytes": 7, "crc32": __import__("zlib").crc32(b"garbage")}
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=str(path)):
        checkpointer.load_latest(model, optimizer)


def test_keep_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="keep"):
        Checkpointer(tmp_path, keep=0)


def _reseal(path, name: str, payload: bytes) -> None:
    """Replace one file of a checkpoint and rewrite the manifest to match: what a tamperer would do."""
    import zlib
    (path / name).write_bytes(payload)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"][name] = {"bytes": len(payload), "crc32": zlib.crc32(payload)}
    (path / MANIFEST).write_text(json.dumps(manifest))


def _pickled(obj) -> bytes:
    import io
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("name, payload, reason", [
    ("rank_0.pt", lambda: _pickled({"cpu_rng": _Payload()}), "rank_0.pt does not load with weights_only=True"),
    ("rank_0.pt", lambda: b"not a torch file", "rank_0.pt does not load with weights_only=True"),
    ("rank_0.pt", lambda: _pickled([torch.ones(2)]), "rank_0.pt holds a list, not a dict of tensors"),
    ("trainer.json", lambda: json.dumps({"scheduler": {}, "data": {}}).encode(), "trainer.json has no 'step'"),
    ("trainer.json", lambda: json.dumps({"step": "3"}).encode(), "has step '3', not an integer"),
    ("trainer.json", lambda: json.dumps({"step": 7}).encode(), "says step 7, the folder is step_00000003"),
    ("trainer.json", lambda: b"[1, 2]", "trainer.json holds a JSON list"),
], ids=["forbidden-global", "garbage", "not-a-dict", "no-step", "step-a-string", "step-mismatch", "a-list"])
def test_tampered_small_files_fall_back_to_the_previous_checkpoint(dist_ctx, trained, name, payload, reason):
    """trainer.json and rank_<r>.pt are read inside the fallback, before the model is touched."""
    checkpointer, first, second, state_at_2, _ = trained
    _reseal(second, name, payload())
    model, optimizer, _ = _fresh(dist_ctx)
    loaded = checkpointer.load_latest(model, optimizer)
    assert _SIDE_EFFECT == []
    assert loaded.path == first and loaded.step == 2
    assert reason in str(checkpointer.rejected[0]) and str(second) in str(checkpointer.rejected[0])
    _assert_same(_state(model, optimizer), state_at_2)
    assert torch.equal(loaded.rank_state["cpu_rng"], checkpointer.load(first, model, optimizer).rank_state["cpu_rng"])


def test_required_trainer_keys_are_checked(dist_ctx, trained):
    checkpointer, first, second, _, _ = trained
    model, optimizer, _ = _fresh(dist_ctx)
    with pytest.raises(CheckpointError, match="trainer.json lacks 'marker'"):  # neither checkpoint has it
        checkpointer.load_latest(model, optimizer, required=("marker",))
    assert checkpointer.load_latest(model, optimizer, required=("data",)).path == second


def test_no_usable_complete_checkpoint_is_an_error_not_a_fresh_start(dist_ctx, trained):
    checkpointer, first, second, _, _ = trained
    _reseal(first, "trainer.json", b"{}")
    _reseal(second, "rank_0.pt", b"garbage")
    model, optimizer, _ = _fresh(dist_ctx)
    with pytest.raises(CheckpointError) as error:
        checkpointer.load_latest(model, optimizer)
    text = str(error.value)
    assert str(second) in text and "rank_0.pt" in text and "step_00000002: trainer.json has no 'step'" in text
    assert "move the folder away" in text


def test_rank_state_must_be_tensors_by_name(dist_ctx, tmp_path):
    model, optimizer, _ = _fresh(dist_ctx)
    with pytest.raises(TypeError, match="rank_state"):
        Checkpointer(tmp_path / "c").save(1, model, optimizer, trainer_state={}, rank_state={"rng": [1, 2]})
