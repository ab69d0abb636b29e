"""The sample schema (docs/design.md, "Data") and its JSONL loader.

One JSON object per line:
    task       str, a key of redone_fast.data.tasks.TASKS (unless the loader is told to accept any)
    prompt     str, or chat messages [{"role": "system" | "user" | "assistant", "content": str}, ...]
    answer     str, the reference answer
    reward     the reward that scores it: a name, or {"name": str, "params": {...}}
               (redone_fast.data.reward_spec lists the names and their parameters)
    rationale  optional str: worked reasoning before the answer (stage 1 and 3 mix samples with them)
    split      optional str: "train", "eval", "heldout", ...
    id         optional str
    meta       optional object: anything else, carried along untouched

Every record is validated when the file is loaded; an error names the file and line and says what is
wrong, so a bad record stops a run before training, not in the middle of it.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from redone_fast.data.reward_spec import check_reward_spec
from redone_fast.data.tasks import TASKS
from redone_fast.errors import RedoneError

ROLES = ("system", "user", "assistant")
FIELDS = ("task", "prompt", "answer", "reward", "rationale", "split", "id", "meta")


class DataError(RedoneError, ValueError):
    """A bad data file or record; the message names the file (and line)."""


@dataclass(frozen=True)
class Sample:
    task: str
    prompt: str | tuple[dict, ...]  # plain text, or chat messages
    answer: str
    reward: dict  # {"name": str, "params": dict}
    rationale: str | None = None
    split: str | None = None
    id: str | None = None
    meta: dict = field(default_factory=dict)

    def messages(self) -> list[dict]:
        """The prompt as chat messages (a plain-text prompt is one user turn)."""
        if isinstance(self.prompt, str):
            return [{"role": "user", "content": self.prompt}]
        return [dict(m) for m in self.prompt]

    def to_json(self) -> dict:
        record = asdict(self)
        if not isinstance(self.prompt, str):
            record["prompt"] = [dict(m) for m in self.prompt]
        return {k: v for k, v in record.items() if v not in (None, {}) or k in ("task", "prompt", "answer", "reward")}


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def parse_sample(record: Any, *, known_tasks: Mapping | None = TASKS) -> Sample:
    """A validated Sample from a decoded JSON record; raises DataError with a message (no location)."""
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, got {_type_name(record)}")
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        raise DataError(f"unknown field(s) {unknown} (allowed: {', '.join(FIELDS)}; put extras under 'meta')")
    for name in ("task", "prompt", "answer", "reward"):
        if name not in record:
            raise DataError(f"missing field {name!r}")
    task = record["task"]
    if not isinstance(task, str) or not task:
        raise DataError(f"field 'task' must be a non-empty string, got {_type_name(task)}")
    if known_tasks is not None and task not in known_tasks:
        raise DataError(f"unknown task {task!r} (not in the task registry, redone_fast/data/tasks.py)")
    prompt = record["prompt"]
    if isinstance(prompt, list):
        if not prompt:
            raise DataError("field 'prompt' is an empty list of messages")
        for i, message in enumerate(prompt):
            if not isinstance(message, dict) or set(message) != {"role", "content"}:
                raise DataError(f"prompt[{i}] must be an object with exactly 'role' and 'content'")
            if message["role"] not in ROLES or not isinstance(message["content"], str):
                raise DataError(f"prompt[{i}] needs a role in {ROLES} and a string content")
        prompt = tuple(dict(m) for m in prompt)
    elif not isinstance(prompt, str):
        raise DataError(f"field 'prompt' must be a string or a list of messages, got {_type_name(prompt)}")
    if not isinstance(record["answer"], str):
        raise DataError(f"field 'answer' must be a string, got {_type_name(record['answer'])}")
    problem = check_reward_spec(record["reward"])
    if problem:
        raise DataError(problem)
    reward = record["reward"]
    if isinstance(reward, str):
        reward = {"name": reward, "params": {}}
    else:
        reward = {"name": reward["name"], "params": dict(reward.get("params", {}))}
    for name in ("rationale", "split", "id"):
        if record.get(name) is not None and not isinstance(record[name], str):
            raise DataError(f"field {name!r} must be a string, got {_type_name(record[name])}")
    if not isinstance(record.get("meta", {}), dict):
        raise DataError(f"field 'meta' must be an object, got {_type_name(record['meta'])}")
    return Sample(task=task, prompt=prompt, answer=record["answer"], reward=reward,
                  rationale=record.get("rationale"), split=record.get("split"), id=record.get("id"),
                  meta=dict(record.get("meta", {})))


_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _decode_line(path: Path, line_number: int, raw: bytes) -> str:
    """One line of a JSONL file as text: UTF-8 (a UTF-8 byte-order mark on line 1 is dropped, as
    editors on Windows write one); anything else is a DataError naming the line and the byte."""
    if line_number == 1:
        if raw.startswith(_UTF16_BOMS):
            raise DataError(f"{path}: the file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8")
        raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}:{line_number}: not UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} "
                        "of the line); save the file as UTF-8") from None


def load_jsonl(path: str | Path, *, known_tasks: Mapping | None = TASKS, split: str | None = None) -> list[Sample]:
    """Every sample of a JSONL file (blank lines skipped), optionally only those of one split."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a data file")
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    samples = []
    with path.open("rb") as lines:
        for line_number, raw in enumerate(lines, start=1):
            line = _decode_line(path, line_number, raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            except RecursionError:  # json's C decoder recurses once per nesting level
                raise DataError(f"{path}:{line_number}: JSON nested too deeply to read") from None
            try:
                sample = parse_sample(record, known_tasks=known_tasks)
            except DataError as exc:
                raise DataError(f"{path}:{line_number}: {exc}") from None
            if split is None or sample.split == split:
                samples.append(sample)
    if not samples:
        raise DataError(f"{path}: no samples" + (f" with split {split!r}" if split else " (empty file)"))
    return samples


def write_jsonl(path: str | Path, samples: Iterable[Sample]) -> int:
    """Write samples one per line (UTF-8, keys in schema order); returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for sample in samples:
            out.write(json.dumps(sample.to_json(), ensure_ascii=False) + "\n")
            count += 1
    return count
