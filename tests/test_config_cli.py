"""Config dataclasses on the command line (redone_fast.config) and through JSON; CPU only."""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from typing import Optional

import pytest

from redone_fast.config import add_config_arguments, apply_config_arguments, from_dict, parse_bool, to_dict


@dataclass
class Inner:
    rate: float = field(default=0.5, metadata={"help": "inner rate"})
    num_layers: int = field(default=3, metadata={"help": "layer count"})
    flag_on: bool = field(default=True, metadata={"help": "an inner switch"})


@dataclass
class Outer:
    name: str = field(default="base", metadata={"help": "run name"})
    max_steps: int = field(default=10, metadata={"help": "steps to run"})
    learning_rate: float = field(default=1e-3, metadata={"help": "step size"})
    use_cache: bool = field(default=False, metadata={"help": "cache things"})
    train_files: list[str] = field(default_factory=lambda: ["x.jsonl", "y.jsonl"], metadata={"help": "inputs"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer folder"})
    limit: Optional[int] = field(default=None, metadata={"help": "sample cap"})
    no_help: int = 7
    inner: Inner = field(default_factory=Inner)


def _parser(cls=Outer, defaults=None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prog", add_help=True)
    parser.add_argument("--run-dir", default="runs/x")  # a non-config option beside the config ones
    add_config_arguments(parser, cls, defaults=defaults)
    return parser


def _parse(argv, preset=None, cls=Outer):
    preset = preset if preset is not None else cls()
    args = _parser(cls).parse_args(argv)
    return apply_config_arguments(preset, args)


# ---------------------------------------------------------------- parse_bool

@pytest.mark.parametrize("text", ["1", "true", "True", "TRUE", "yes", "on", " true "])
def test_parse_bool_true(text):
    assert parse_bool(text) is True


@pytest.mark.parametrize("text", ["0", "false", "False", "no", "off", "NO "])
def test_parse_bool_false(text):
    assert parse_bool(text) is False


@pytest.mark.parametrize("text", ["", "2", "maybe", "tru", "none"])
def test_parse_bool_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected true/false"):
        parse_bool(text)


# ---------------------------------------------------------------- help text

def _help_entries(text: str) -> dict[str, str]:
    """Option flag (first spelling) -> its help, whitespace collapsed."""
    entries, current = {}, None
    for line in text.splitlines():
        match = re.match(r"^  (--[\w.-]+)(.*)$", line)
        if match:
            current = match.group(1)
            entries[current] = match.group(2)
        elif current is not None and line.startswith("   "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return {k: " ".join(v.split()) for k, v in entries.items()}


def test_help_lists_every_field_with_help_and_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps to the terminal width
    entries = _help_entries(_parser().format_help())
    expected = {
        "--name": ("run name", "base"),
        "--max-steps": ("steps to run", "10"),
        "--learning-rate": ("step size", "0.001"),
        "--use-cache": ("cache things", "False"),
        "--train-files": ("inputs", "x.jsonl,y.jsonl"),
        "--tokenizer": ("tokenizer folder", "None"),
        "--limit": ("sample cap", "None"),
        "--no-help": ("", "7"),
        "--inner.rate": ("inner rate", "0.5"),
        "--inner.num-layers": ("layer count", "3"),
        "--inner.flag-on": ("an inner switch", "True"),
    }
    for flag, (help_text, default) in expected.items():
        assert flag in entries, f"{flag} missing from --help"
        assert f"{help_text} (default: {default})".strip() in entries[flag], (flag, entries[flag])
    # every config option is there, and nothing else besides --run-dir (and -h, --help)
    assert set(entries) == set(expected) | {"--run-dir"}
    # the underscore spelling is listed too
    assert "--max_steps" in entries["--max-steps"]
    assert "--inner.num_layers" in entries["--inner.num-layers"]
    # metavars say the type
    assert "INT" in entries["--max-steps"]
    assert "FLOAT" in entries["--learning-rate"] and "BOOL" in entries["--use-cache"]
    assert "A,B,..." in entries["--train-files"]
    assert "STR" in entries["--tokenizer"] and "INT" in entries["--limit"]


def test_help_shows_the_given_defaults(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    preset = Outer(name="preset-run", max_steps=99, train_files=["p.jsonl"], inner=Inner(rate=0.25))
    entries = _help_entries(_parser(defaults=preset).format_help())
    assert "run name (default: preset-run)" in entries["--name"]
    assert "steps to run (default: 99)" in entries["--max-steps"]
    assert "inputs (default: p.jsonl)" in entries["--train-files"]
    assert "inner rate (default: 0.25)" in entries["--inner.rate"]


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as excinfo:
        _parser().parse_args(["--help"])
    assert excinfo.value.code == 0
    assert "--inner.flag-on" in capsys.readouterr().out


# ---------------------------------------------------------------- parsing and applying

def test_no_options_keep_every_preset_value():
    preset = Outer(name="p", max_steps=5, learning_rate=0.2, use_cache=True, train_files=["a"], tokenizer="tok",
                   limit=4, no_help=1, inner=Inner(rate=0.1, num_layers=9, flag_on=False))
    assert _parse([], preset) == preset


def test_unspecified_options_keep_preset_values_not_class_defaults():
    preset = Outer(name="p", max_steps=5, learning_rate=0.2, use_cache=True, train_files=["a"], tokenizer="tok",
                   limit=4, inner=Inner(rate=0.1, num_layers=9, flag_on=False))
    cfg = _parse(["--max-steps", "50", "--inner.rate", "0.75"], preset)
    assert cfg.max_steps == 50 and cfg.inner.rate == 0.75
    # everything else is the preset's, which differs from the class defaults
    assert (cfg.name, cfg.learning_rate, cfg.use_cache, cfg.train_files, cfg.tokenizer, cfg.limit) == \
        ("p", 0.2, True, ["a"], "tok", 4)
    assert (cfg.inner.num_layers, cfg.inner.flag_on) == (9, False)
    # a new object: the preset is untouched
    assert preset.max_steps == 5 and preset.inner.rate == 0.1
    assert cfg is not preset and cfg.inner is not preset.inner


def test_every_type_parses():
    cfg = _parse(["--name", "run-7", "--max-steps", "42", "--learning-rate", "2.5e-4", "--use-cache", "yes",
                  "--train-files", "a.jsonl, b.jsonl,c.jsonl", "--tokenizer", "tok/dir", "--limit", "12",
                  "--no-help", "-3", "--inner.rate", "1", "--inner.num-layers", "6", "--inner.flag-on", "off"])
    assert cfg == Outer(name="run-7", max_steps=42, learning_rate=2.5e-4, use_cache=True,
                        train_files=["a.jsonl", "b.jsonl", "c.jsonl"], tokenizer="tok/dir", limit=12, no_help=-3,
                        inner=Inner(rate=1.0, num_layers=6, flag_on=False))
    assert type(cfg.max_steps) is int and type(cfg.learning_rate) is float and type(cfg.inner.rate) is float
    assert type(cfg.limit) is int


@pytest.mark.parametrize("argv", [
    ["--max-steps", "3", "--inner.num-layers", "4", "--use-cache", "1"],
    ["--max_steps", "3", "--inner.num_layers", "4", "--use_cache", "1"],
    ["--max_steps=3", "--inner.num-layers=4", "--use-cache=1"],
])
def test_dashes_and_underscores_both_accepted(argv):
    cfg = _parse(argv)
    assert (cfg.max_steps, cfg.inner.num_layers, cfg.use_cache) == (3, 4, True)


def test_none_for_optional_fields():
    preset = Outer(tokenizer="tok", limit=5)
    cfg = _parse(["--tokenizer", "none", "--limit", "None"], preset)
    assert cfg.tokenizer is None and cfg.limit is None
    cfg = _parse(["--tokenizer", "null"], preset)
    assert cfg.tokenizer is None and cfg.limit == 5


def test_lists_comma_separated_repeated_and_empty():
    assert _parse(["--train-files", "one"]).train_files == ["one"]
    assert _parse(["--train-files", ""]).train_files == []
    # repeating a list option adds its items (the module docstring: "comma-separated, or repeated"),
    # starting from nothing, not from the preset's list
    assert _parse(["--train-files", "a,b", "--train_files", "c"]).train_files == ["a", "b", "c"]


def test_last_scalar_option_wins():
    assert _parse(["--max-steps", "3", "--max_steps", "8"]).max_steps == 8


def test_non_config_options_are_ignored_by_apply():
    args = _parser().parse_args(["--run-dir", "elsewhere", "--name", "n"])
    assert args.run_dir == "elsewhere"
    cfg = apply_config_arguments(Outer(), args)
    assert cfg.name == "n" and not hasattr(cfg, "run_dir")


@pytest.mark.parametrize("argv, option", [
    (["--use-cache", "maybe"], "--use-cache"),
    (["--inner.flag-on", "2"], "--inner.flag-on"),
    (["--max-steps", "1.5"], "--max-steps"),
    (["--max-steps", "ten"], "--max-steps"),
    (["--inner.num-layers", "x"], "--inner.num-layers"),
    (["--learning-rate", "fast"], "--learning-rate"),
    (["--limit", "many"], "--limit"),
    (["--max-steps"], "--max-steps"),  # value missing
    (["--no-such-option", "1"], "unrecognized"),
])
def test_bad_values_are_argparse_errors(argv, option, capsys):
    with pytest.raises(SystemExit) as excinfo:
        _parser().parse_args(argv)
    assert excinfo.value.code == 2
    assert option in capsys.readouterr().err


def test_unsupported_field_type_is_refused():
    @dataclass
    class Bad:
        mapping: dict = field(default_factory=dict)

    with pytest.raises(TypeError, match="unsupported config field type"):
        add_config_arguments(argparse.ArgumentParser(), Bad)


# ---------------------------------------------------------------- to_dict / from_dict

def test_round_trip_through_json():
    cfg = Outer(name="r", max_steps=1, learning_rate=0.5, use_cache=True, train_files=["q"], tokenizer=None,
                limit=3, inner=Inner(rate=0.9, num_layers=2, flag_on=False))
    data = to_dict(cfg)
    assert data["inner"] == {"rate": 0.9, "num_layers": 2, "flag_on": False}
    assert data["train_files"] == ["q"] and data["tokenizer"] is None
    back = from_dict(Outer, json.loads(json.dumps(data)))
    assert back == cfg
    assert isinstance(back.inner, Inner)


def test_from_dict_fills_missing_keys_with_defaults():
    cfg = from_dict(Outer, {"max_steps": 4, "inner": {"rate": 0.1}})
    assert cfg.max_steps == 4 and cfg.name == "base"
    assert cfg.inner == Inner(rate=0.1)


def test_from_dict_rejects_unknown_keys_naming_them():
    with pytest.raises(ValueError, match=r"Outer: unknown field\(s\) bogus, extra"):
        from_dict(Outer, {"name": "x", "extra": 1, "bogus": 2})
    with pytest.raises(ValueError, match=r"Inner: unknown field\(s\) depth"):
        from_dict(Outer, {"inner": {"rate": 0.2, "depth": 3}})


# ---------------------------------------------------------------- the real SFT config

def test_sft_config_from_the_command_line():
    from redone_fast.config import to_dict as config_to_dict
    from redone_fast.stages.sft import SFTConfig, preset

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, SFTConfig)
    help_text = parser.format_help()
    for flag in ("--optim.lr", "--optim.warmup-ratio", "--parallel.activation-checkpointing", "--train-files",
                 "--general-ratio", "--micro-batch-tokens"):
        assert flag in help_text

    base = preset("tiny")
    args = parser.parse_args(["--optim.lr", "0.01", "--train-files", "a.jsonl,b.jsonl",
                              "--parallel.activation-checkpointing", "false", "--epochs", "3",
                              "--optim.schedule", "constant", "--tokenizer", "none"])
    cfg = apply_config_arguments(base, args)
    assert cfg.optim.lr == 0.01 and cfg.optim.schedule == "constant"
    assert cfg.train_files == ["a.jsonl", "b.jsonl"]
    assert cfg.parallel.activation_checkpointing is False
    assert cfg.epochs == 3 and cfg.tokenizer is None
    # the rest is the tiny preset's
    assert cfg.batch_size == base.batch_size == 32
    assert cfg.max_length == base.max_length == 512
    assert cfg.optim.weight_decay == base.optim.weight_decay and cfg.optim.warmup_ratio == base.optim.warmup_ratio
    assert cfg.model == base.model and cfg.eval_files == base.eval_files

    # and the resolved config round-trips through JSON
    assert from_dict(SFTConfig, json.loads(json.dumps(config_to_dict(cfg)))) == cfg


def test_sft_config_bad_values_exit():
    from redone_fast.stages.sft import SFTConfig

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, SFTConfig)
    for argv in (["--parallel.activation-checkpointing", "perhaps"], ["--epochs", "2.5"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
