"""Checkpoints with `torch.distributed.checkpoint` (DCP): saved sharded, reloaded on any number of ranks.

A checkpoint is a folder `step_00000012/` holding
- the DCP files of the model and optimizer state (each rank writes its shards; `.metadata` maps them, so
  a checkpoint written by 2 processes loads in 1 and the other way round: DCP reshards on load);
- `trainer.json`: the step, the scheduler, the data position, the pipeline stage and anything else the
  caller keeps, as JSON;
- `rank_<r>.pt`: per-rank tensors by name (RNG states), loaded with `weights_only=True`;
- `COMPLETE.json`: written last, with every file's size and CRC-32 (the files are hashed in parallel:
  rank r hashes every W-th file, about 1-2 GB/s per rank).

Never overwrite the last good checkpoint before the new one is complete: a save writes into
`step_<n>.partial/` and renames it once every rank has finished and the manifest is on disk; only then are
checkpoints beyond `keep` removed. On load, a folder without its manifest, with a file missing, of the wrong
size or with the wrong checksum, whose `trainer.json` is not an object with an integer `step` matching its
folder (or lacks a key the caller requires), whose `rank_<r>.pt` does not load with `weights_only=True` as
a dict of named tensors, or that DCP cannot read is reported with its path and skipped for the previous
good one. The small files are read before the model is touched, and every rank takes the same decision
(a rank's own `rank_<r>.pt` can be bad alone: the ranks' verdicts are gathered), because what follows is
collective. Complete checkpoints none of which is usable are a CheckpointError naming the newest (or the
one whose failed read may have overwritten part of the model) and its fault, not a silent restart from the initial
weights (a fresh run would keep the broken folders, which sort
after its own); only partial checkpoints (a first save that was killed) give None.

Security: a tampered checkpoint must not run code. DCP unpickles two things without restriction: the
non-tensor entries of a state dict (the optimizer's hyperparameters, `torch.load(weights_only=False)`),
which `SafeLoadPlanner` loads with `weights_only=True` instead, and the `.metadata` index (a plain
`pickle.load`), which `SafeFileSystemReader` reads with an unpickler that only resolves DCP's own metadata
classes, torch sizes, dtypes and layouts, and paths.
"""
from __future__ import annotations

import json
import os
import pathlib
import pickle
import shutil
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from redone_fast.distributed import all_gather_objects

__all__ = ["Checkpointer", "CheckpointError", "SafeLoadPlanner", "SafeFileSystemReader", "LoadedCheckpoint"]

MANIFEST = "COMPLETE.json"
TRAINER_STATE = "trainer.json"
PARTIAL_SUFFIX = ".partial"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: `path` and `reason` say which and why."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"checkpoint {self.path}: {reason}")


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, but non-tensor entries are unpickled with `weights_only=True`."""

    def load_bytes(self, read_item, value) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves only the globals a DCP `.metadata` file legitimately references."""

    _MODULES = ("torch.distributed.checkpoint.metadata",)
    _NAMES = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
              ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
              ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"),
              ("pathlib", "PureWindowsPath")}

    def find_class(self, module: str, name: str):
        if module in self._MODULES or (module, name) in self._NAMES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"checkpoint metadata references {module}.{name}, which is not allowed")


class SafeFileSystemReader(dcp.FileSystemReader):
    """DCP's file reader, but `.metadata` is unpickled with `_MetadataUnpickler`."""

    def read_metadata(self, *args, **kwargs):
        rank = kwargs.get("rank")
        name = ".metadata" if rank is None else f"__{rank}.metadata"
        with open(pathlib.Path(self.path) / name, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = getattr(self, "load_id", None)
        return metadata


@dataclass
class LoadedCheckpoint:
    path: Path
    step: int
    trainer_state: dict
    rank_state: dict = field(default_factory=dict)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _describe(error: BaseException) -> str:
    """The root cause of a DCP failure (CheckpointException carries each rank's exception and traceback)."""
    failures = getattr(error, "failures", None)
    if isinstance(failures, dict) and failures:
        rank, failure = sorted(failures.items())[0]
        cause = failure[0] if isinstance(failure, tuple) else failure
        return f"{type(cause).__name__}: {str(cause)[:300]} (rank {rank})"
    return f"{type(error).__name__}: {str(error)[:300]}"


def _crc32(path: Path, block: int = 16 << 20) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(block):
            crc = zlib.crc32(chunk, crc)
    return crc


def _checksums(folder: Path, names: list[str]) -> dict[str, int]:
    """CRC-32 of each named file, the work split over the ranks (a collective when there are several)."""
    mine = {name: _crc32(folder / name) for name in names[_rank()::_world()]}
    if _world() == 1:
        return mine
    gathered: list = [None] * _world()
    dist.all_gather_object(gathered, mine)
    return {name: crc for part in gathered for name, crc in part.items()}


def _fsync_write(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


class Checkpointer:
    """Saves and finds checkpoints under `folder` (shared by all ranks: one filesystem for every node)."""

    def __init__(self, folder, *, keep: int = 2):
        if keep < 1:
            raise ValueError(f"keep: at least 1 checkpoint must be kept, got {keep}")
        self.folder = Path(os.fspath(folder))
        self.keep = keep
        self.rejected: list[CheckpointError] = []  # checkpoints found unusable by the last load

    @staticmethod
    def step_folder_name(step: int) -> str:
        return f"step_{step:08d}"

    def complete(self) -> list[Path]:
        """Folders that finished saving (a manifest is present), newest first; validity is checked on load."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in self.folder.iterdir():
            if path.is_dir() and path.name.startswith("step_") and not path.name.endswith(PARTIAL_SUFFIX):
                try:
                    step = int(path.name[len("step_"):])
                except ValueError:
                    continue
                found.append((step, path))
        return [path for _, path in sorted(found, reverse=True)]

    def partial(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.is_dir() and p.name.endswith(PARTIAL_SUFFIX))

    # --- save ---------------------------------------------------------------------------------------

    def save(self, step: int, model, optimizer, *, trainer_state: dict, rank_state: dict | None = None) -> Path:
        """Save on every rank (a collective); returns the final folder. `trainer_state` must be JSON,
        `rank_state` a dict of this rank's tensors by name."""
        rank_state = dict(rank_state or {})
        if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in rank_state.items()):
            raise TypeError("rank_state: expected a dict of tensors by name")
        final = self.folder / self.step_folder_name(step)
        tmp = final.with_name(final.name + PARTIAL_SUFFIX)
        text = json.dumps({**trainer_state, "step": step, "world_size": _world()}, indent=1, sort_keys=True)
        if _rank() == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            if tmp.exists():  # left by a save that was killed: never a good checkpoint
                shutil.rmtree(tmp)
            tmp.mkdir()
        _barrier()
        model_state, optim_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp))
        torch.save(rank_state, tmp / f"rank_{_rank()}.pt")
        if _rank() == 0:
            _fsync_write(tmp / TRAINER_STATE, text)
        _barrier()
        names = sorted(p.name for p in tmp.iterdir() if p.is_file())
        crcs = _checksums(tmp, names)
        if _rank() == 0:
            files = {name: {"bytes": (tmp / name).stat().st_size, "crc32": crcs[name]} for name in names}
            _fsync_write(tmp / MANIFEST, json.dumps({"step": step, "world_size": _world(), "files": files},
                                                    indent=1, sort_keys=True))
            if final.exists():  # the same step saved again (a resumed run): replace it only now
                old = final.with_name(final.name + ".old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old)
            else:
                os.replace(tmp, final)
            for stale in self.complete()[self.keep:]:
                shutil.rmtree(stale, ignore_errors=True)
        _barrier()
        return final

    # --- load ---------------------------------------------------------------------------------------

    def validate(self, path: Path) -> dict:
        """The manifest of a complete, intact-looking checkpoint; CheckpointError otherwise."""
        manifest_file = path / MANIFEST
        if not manifest_file.is_file():
            raise CheckpointError(path, f"no {MANIFEST}: the save did not finish (partial checkpoint)")
        try:
            manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
            files = manifest["files"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(path, f"{MANIFEST} is unreadable: {e}") from e
        try:
            expected = {name: (int(entry["bytes"]), int(entry["crc32"])) for name, entry in files.items()}
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(path, f"{MANIFEST} is malformed: {e}") from e
        for name, (size, _) in expected.items():
            file = path / name
            if not file.is_file():
                raise CheckpointError(path, f"{name} is missing")
            if file.stat().st_size != size:
                raise CheckpointError(path, f"{name} has {file.stat().st_size} bytes, the manifest says {size} "
                                            "(truncated or overwritten)")
        actual = _checksums(path, sorted(expected))
        bad = [name for name in sorted(expected) if actual[name] != expected[name][1]]
        if bad:
            raise CheckpointError(path, f"checksum mismatch in {', '.join(bad)} (corrupted)")
        return manifest

    @staticmethod
    def _folder_step(path: Path) -> int | None:
        try:
            return int(path.name[len("step_"):]) if path.name.startswith("step_") else None
        except ValueError:
            return None

    def _read_trainer_state(self, path: Path, required: tuple[str, ...]) -> dict:
        try:
            state = json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(path, f"{TRAINER_STATE} is unreadable: {e}") from e
        if not isinstance(state, dict):
            raise CheckpointError(path, f"{TRAINER_STATE} holds a JSON {type(state).__name__}, not an object")
        step = state.get("step")
        if type(step) is not int:  # bool is an int subclass: excluded too
            found = "has no 'step'" if "step" not in state else f"has step {step!r}, not an integer"
            raise CheckpointError(path, f"{TRAINER_STATE} {found}")
        folder_step = self._folder_step(path)
        if folder_step is not None and step != folder_step:
            raise CheckpointError(path, f"{TRAINER_STATE} says step {step}, the folder is {path.name}")
        missing = [key for key in required if key not in state]
        if missing:
            raise CheckpointError(path, f"{TRAINER_STATE} lacks {', '.join(map(repr, missing))}")
        return state

    @staticmethod
    def _read_rank_state(path: Path) -> dict:
        file = path / f"rank_{_rank()}.pt"
        if not file.is_file():  # a rank the saving run did not have (resharded resume): nothing to restore
            return {}
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError (a forbidden global), RuntimeError (not a torch file), EOFError...
            raise CheckpointError(path, f"{file.name} does not load with weights_only=True: "
                                        f"{type(e).__name__}: {str(e)[:300]}") from e
        if not (isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in state.items())):
            raise CheckpointError(path, f"{file.name} holds a {type(state).__name__}, not a dict of tensors by name")
        return state

    def _read_small_files(self, path: Path, required: tuple[str, ...]) -> tuple[dict, dict]:
        """trainer.json and this rank's file, or the first rank's CheckpointError on every rank (a collective)."""
        reason = None
        try:
            trainer_state = self._read_trainer_state(path, required)
            rank_state = self._read_rank_state(path)
        except CheckpointError as e:
            reason = e.reason
        verdicts = all_gather_objects(reason)
        for rank, verdict in enumerate(verdicts):
            if verdict is not None:
                raise CheckpointError(path, verdict if len(verdicts) == 1 else f"{verdict} (rank {rank})")
        return trainer_state, rank_state

    def load(self, path: Path, model, optimizer, *, required: tuple[str, ...] = ()) -> LoadedCheckpoint:
        """Load one checkpoint into `model` and `optimizer` (a collective); CheckpointError if unusable.

        `required`: keys `trainer.json` must have besides `step` (checked before the model is touched)."""
        path = Path(path)
        self.validate(path)
        trainer_state, rank_state = self._read_small_files(path, tuple(required))
        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optim": optim_state}
        try:
            dcp.load(state, storage_reader=SafeFileSystemReader(str(path)), planner=SafeLoadPlanner())
        except (Exception, CheckpointException) as e:  # DCP's CheckpointException is a BaseException
            raise CheckpointError(path, f"the model/optimizer state cannot be read: {_describe(e)}") from e
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        return LoadedCheckpoint(path=path, step=trainer_state["step"], trainer_state=trainer_state,
                                rank_state=rank_state)

    def load_latest(self, model, optimizer, *, required: tuple[str, ...] = ()) -> LoadedCheckpoint | None:
        """The newest usable checkpoint, loaded; unusable ones are reported (warning + `rejected`) and skipped.

        None when there is no complete checkpoint (none yet, or only partial ones); CheckpointError, naming
        a checkpoint and its fault, when there are complete ones and none is usable."""
        self.rejected = []
        for path in self.partial():
            self.rejected.append(CheckpointError(path, "partial checkpoint (the save was interrupted); ignored"))
        unusable: list[CheckpointError] = []
        touched = None  # a checkpoint whose DCP read failed midway may have overwritten part of the model
        for path in self.complete():
            try:
                return self.load(path, model, optimizer, required=required)
            except CheckpointError as e:
                self.rejected.append(e)
                unusable.append(e)
                if "cannot be read" in e.reason:
                    touched = touched or e
        if not unusable:
            return None
        named = touched or unusable[0]
        others = [f"{Path(e.path).name}: {e.reason}" for e in unusable if e is not named]
        hint = ("the model may be partly overwritten; " if touched else "") + (
            "move the folder away to start from the initial weights")
        raise CheckpointError(named.path, f"{named.reason}; no other checkpoint is usable"
                                           f"{' (' + '; '.join(others) + ')' if others else ''}: {hint}")

    def report_rejected(self) -> None:
        if _rank() == 0:
            for error in self.rejected:
                warnings.warn(str(error), RuntimeWarning, stacklevel=2)
