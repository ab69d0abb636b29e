"""Configuration: each component's dataclass declared once, turned into a command line by tyro.

Every configurable component is one dataclass (`OptimConfig`, `ParallelConfig`, `LoopSettings`, `RLConfig`,
`SFTConfig`, `EvalConfig`, the pipeline's sections), nested in the config that uses it, never copied into it.
A field's docstring is its `--help` text; a choice is a `Literal`, so a bad value fails while the command
line is parsed, with the choices listed. Library defaults are neutral (no bundled paths); presets are
functions returning a whole config (`tiny` owns the bundled model and data).

A command line is built in three layers, later ones winning (torchtitan's order):

    --preset NAME       the preset's config (each CLI's default preset when absent)
    --config FILE       a JSON or YAML file of (nested) fields applied over it: {"optim": {"lr": 1e-4}}
    --field value ...   flags, nested with dots: --optim.lr 1e-4; lists as --train-files a.jsonl b.jsonl;
                        booleans as --export / --no-export; optional values take None

`parse_command` does this for any command dataclass; bad input raises `ConfigError` with one line (the CLIs
print it through `redone_fast.errors.run_cli`). `to_dict` / `from_dict` round-trip a config through JSON
(the run folder's resolved config).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tyro
import yaml

from redone_fast.errors import ConfigError

__all__ = ["parse_command", "load_config_file", "apply_overrides", "check_choices", "to_dict", "from_dict"]


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def from_dict(cls, data: dict):
    """Build `cls` from a dict over its defaults (unknown keys and bad choices raise ConfigError naming them)."""
    return apply_overrides(cls(), data, cls.__name__)


def load_config_file(path: str) -> dict:
    """The fields of a JSON (`.json`) or YAML (any other suffix) config file, as a dict."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        data = json.loads(text) if file.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:  # json.JSONDecodeError is a ValueError; both name the position
        kind = "JSON" if file.suffix.lower() == ".json" else "YAML"
        raise ConfigError(f"--config {path}: not valid {kind} ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of field names to values, got {type(data).__name__}")
    return data


def _init_fields(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=False)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _literal_choices(tp) -> tuple | None:
    """The allowed values of a `Literal[...]` annotation (or `Literal[...] | None`), else None."""
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if typing.get_origin(arg) is typing.Literal:
                return typing.get_args(arg) + ((None,) if type(None) in typing.get_args(tp) else ())
    return None


def check_choices(config, where: str = "") -> None:
    """Every `Literal` field of `config` (nested) holds one of its choices; else ConfigError naming the field.

    tyro checks flags; this checks values that arrive another way (a config file, code, a resumed run)."""
    for name, tp in _init_fields(type(config)).items():
        value = getattr(config, name)
        dotted = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(value):
            check_choices(value, dotted)
            continue
        choices = _literal_choices(tp)
        if choices is not None and value not in choices:
            shown = ", ".join(map(str, choices))
            raise ConfigError(f"{dotted}: must be one of {shown}; got {value!r}")


def apply_overrides(config, data: Mapping, source: str, where: str = ""):
    """`config` with the (nested) fields in `data` replaced; a new object. Unknown fields and bad choices
    raise ConfigError naming `source` and the dotted field."""
    fields = _init_fields(type(config))
    changes = {}
    for name, value in data.items():
        dotted = f"{where}.{name}" if where else str(name)
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: unknown field {dotted!r} (known here: {known})")
        current = getattr(config, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: {dotted} must be a mapping of its fields, got {value!r}")
            changes[name] = apply_overrides(current, value, source, dotted)
        else:
            changes[name] = value
    updated = dataclasses.replace(config, **changes)
    if not where:
        try:
            check_choices(updated)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return updated


def parse_command(command_cls, argv: Sequence[str], *, prog: str, description: str,
                  presets: Mapping[str, Callable[[], Any]] | None = None, default_preset: str | None = None,
                  config_field: str = "cfg", **defaults):
    """Parse `argv` into a `command_cls` instance with tyro (see the module docstring).

    `command_cls` is a dataclass whose `config_field` holds the component config (flattened onto the command
    line with `tyro.conf.arg(name="")`); when `presets` is given it also has `preset` (a Literal of their
    names) and `config` (a file path or None). `defaults` fill the command's other fields (`tyro.MISSING`:
    required). Bad input raises ConfigError with one line."""
    if presets is not None:
        pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        pre.add_argument("--preset", default=default_preset)
        pre.add_argument("--config", default=None)
        known, _ = pre.parse_known_args(list(argv))
        name = known.preset if known.preset in presets else default_preset  # an unknown name: tyro says so
        base = presets[name]()
        if known.config is not None:
            base = apply_overrides(base, load_config_file(known.config), f"--config {known.config}")
        defaults = {**defaults, config_field: base, "preset": name, "config": known.config}
    default = command_cls(**defaults)
    return _tyro_cli(command_cls, default, list(argv), prog, description)


_BOX_CHARS = re.compile(r"[\u2500-\u257f]")


def _tyro_cli(command_cls, default, argv: list[str], prog: str, description: str):
    """tyro.cli, with its boxed error message turned into one ConfigError line (help goes to stdout as usual)."""
    captured = io.StringIO()
    width = os.environ.get("COLUMNS")
    if not {"-h", "--help"} & set(argv):
        os.environ["COLUMNS"] = "400"  # rich wraps errors at the terminal width: a wide one keeps them whole
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.cli(command_cls, default=default, args=argv, prog=prog, description=description)
    except SystemExit as exc:
        if exc.code in (0, None):
            raise
        raise ConfigError(_one_line(captured.getvalue()) or f"bad command line: {' '.join(argv)}") from None
    finally:
        if width is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = width


def _one_line(text: str) -> str:
    """tyro's error box as one line: the message, without the frame, the box title or the --help hint."""
    lines = [" ".join(_BOX_CHARS.sub(" ", line).split()) for line in text.splitlines()]
    lines = [line for line in lines if line.strip("-") and not line.startswith("For full helptext") and
             not line.endswith("--help")]
    if len(lines) > 1:
        lines = lines[1:]  # the box title ("Invalid choice", "Required options", ...) repeats the message
    return " ".join(lines).replace(" .", ".") + (" (--help lists every option)" if lines else "")
