"""Configuration dataclasses on the command line: every field becomes `--name value` (nested: `--a.b value`;
underscores may be written as dashes).

Field help comes from `field(metadata={"help": ...})`, followed by the default. Values parse by the field's annotation: int, float, str, bool
(true/false/1/0/yes/no), `list[str]` (comma-separated, or repeated), and `X | None` ("none" gives None).
`to_dict` / `from_dict` round-trip a config through JSON (the run folder's resolved config).
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from redone_fast.errors import ConfigError

__all__ = ["add_config_arguments", "apply_config_arguments", "to_dict", "from_dict", "parse_bool"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _unwrap_optional(tp) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)) and \
            type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else str), True
    return tp, False


def _parser_for(tp):
    base, optional = _unwrap_optional(tp)
    origin = typing.get_origin(base)
    if origin in (list, tuple):
        (item,) = typing.get_args(base)[:1] or (str,)
        item_parse = _parser_for(item)

        def parse_list(text: str):
            if text.strip() == "":
                return []
            return [item_parse(part.strip()) for part in text.split(",")]
        parse = parse_list
    elif base is bool:
        parse = parse_bool
    elif base in (int, float, str):
        parse = base
    else:
        raise TypeError(f"unsupported config field type {tp!r}")
    if not optional:
        return parse
    return lambda text: None if str(text).strip().lower() in ("none", "null") else parse(text)


def _fields(cls):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.init:
            yield f, hints[f.name]


def add_config_arguments(parser: argparse.ArgumentParser, cls, *, prefix: str = "", defaults=None) -> None:
    """Add one option per (nested) field of dataclass `cls`; defaults shown from `defaults` (an instance)."""
    defaults = defaults if defaults is not None else cls()
    for f, tp in _fields(cls):
        name = prefix + f.name
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(tp):
            add_config_arguments(parser, tp, prefix=name + ".", defaults=value)
            continue
        text = f.metadata.get("help", "")
        shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        flags = ["--" + name.replace("_", "-")] + (["--" + name] if "_" in name else [])
        base, optional = _unwrap_optional(tp)
        is_list = not optional and typing.get_origin(base) in (list, tuple)
        parser.add_argument(*flags, dest=name, type=_parser_for(tp), default=argparse.SUPPRESS,
                            action="extend" if is_list else "store",  # a repeated list option adds its items
                            metavar=_metavar(tp), help=f"{text} (default: {shown})".strip())


def _metavar(tp) -> str:
    base, _ = _unwrap_optional(tp)
    if typing.get_origin(base) in (list, tuple):
        return "A,B,..."
    return getattr(base, "__name__", "VALUE").upper()


def apply_config_arguments(config, namespace: argparse.Namespace):
    """`config` with every option given on the command line set (nested by dots); returns a new object."""
    overrides = {k: v for k, v in vars(namespace).items() if "." in k or hasattr(config, k)}
    return _replace(config, overrides, "")


def _replace(config, overrides: dict, prefix: str):
    changes = {}
    for f, tp in _fields(type(config)):
        name = prefix + f.name
        if dataclasses.is_dataclass(tp):
            changes[f.name] = _replace(getattr(config, f.name), overrides, name + ".")
        elif name in overrides:
            changes[f.name] = overrides[name]
    return dataclasses.replace(config, **changes)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def from_dict(cls, data: dict):
    """Build `cls` from a dict (unknown keys raise ValueError naming them)."""
    known = {f.name: tp for f, tp in _fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
    values = {}
    for name, value in data.items():
        tp = known[name]
        values[name] = from_dict(tp, value) if dataclasses.is_dataclass(tp) and isinstance(value, dict) else value
    return cls(**values)
