"""The configuration layer (redone_fast.config): tyro command lines over config dataclasses, presets, config
files and their precedence, one-line errors, and the JSON round trip of a resolved config; CPU only."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Literal

import pytest
import tyro

from redone_fast.config import apply_overrides, check_choices, from_dict, load_config_file, parse_command, to_dict
from redone_fast.errors import ConfigError


@dataclass
class Inner:
    rate: float = 0.5
    """inner rate"""
    mode: Literal["fast", "slow"] = "fast"
    """inner mode"""


@dataclass
class Outer:
    name: str = "base"
    """run name"""
    max_steps: int = 10
    """steps to run"""
    use_cache: bool = False
    """cache things"""
    train_files: list[str] = field(default_factory=lambda: ["x.jsonl"])
    """inputs"""
    tokenizer: str | None = None
    """tokenizer folder"""
    inner: Inner = field(default_factory=Inner)


@dataclass
class Command:
    run_dir: str
    """run folder"""
    cfg: Annotated[Outer, tyro.conf.arg(name="")]
    preset: Literal["small", "big"] = "small"
    """starting settings"""
    config: str | None = None
    """config file"""


PRESETS = {"small": lambda: Outer(name="small", max_steps=5),
           "big": lambda: Outer(name="big", max_steps=500, inner=Inner(rate=0.9))}


def _parse(argv) -> Command:
    return parse_command(Command, argv, prog="prog", description="test", presets=PRESETS, default_preset="small",
                         run_dir=tyro.MISSING)


# ---------------------------------------------------------------- layering: preset < file < flags

def test_no_flags_give_the_default_preset():
    args = _parse(["--run-dir", "r"])
    assert args.run_dir == "r" and args.preset == "small" and args.config is None
    assert args.cfg == PRESETS["small"]()


def test_preset_then_flags():
    args = _parse(["--run-dir", "r", "--max-steps", "7", "--preset", "big", "--inner.rate", "0.25"])
    assert args.preset == "big"
    assert args.cfg == Outer(name="big", max_steps=7, inner=Inner(rate=0.25))  # the rest is big's


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_file_over_the_preset_and_flags_over_the_file(tmp_path, suffix):
    data = {"name": "from-file", "max_steps": 3, "inner": {"mode": "slow"}}
    path = tmp_path / f"c{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(data))
    else:
        path.write_text("name: from-file\nmax_steps: 3\ninner:\n  mode: slow\n")
    args = _parse(["--run-dir", "r", "--preset", "big", "--config", str(path), "--max-steps", "9"])
    assert args.config == str(path)
    assert args.cfg == Outer(name="from-file", max_steps=9, inner=Inner(rate=0.9, mode="slow"))


def test_every_type_parses():
    args = _parse(["--run-dir", "r", "--name", "n", "--max-steps", "42", "--use-cache", "--train-files", "a", "b",
                   "--tokenizer", "tok", "--inner.rate", "1", "--inner.mode", "slow"])
    assert args.cfg == Outer(name="n", max_steps=42, use_cache=True, train_files=["a", "b"], tokenizer="tok",
                             inner=Inner(rate=1.0, mode="slow"))
    assert type(args.cfg.inner.rate) is float
    assert _parse(["--run-dir", "r", "--tokenizer", "None"]).cfg.tokenizer is None
    assert _parse(["--run-dir", "r", "--train-files"]).cfg.train_files == []
    assert _parse(["--run-dir", "r", "--use-cache", "--no-use-cache"]).cfg.use_cache is False


# ---------------------------------------------------------------- errors: one line, at parse time

@pytest.mark.parametrize("argv, words", [
    (["--run-dir", "r", "--inner.mode", "medium"], ["'medium'", "--inner.mode", "fast", "slow"]),
    (["--run-dir", "r", "--preset", "huge"], ["'huge'", "--preset", "small", "big"]),
    (["--run-dir", "r", "--max-steps", "ten"], ["--max-steps", "ten"]),
    (["--run-dir", "r", "--no-such-option", "1"], ["--no-such-option"]),
    (["--max-steps", "1"], ["--run-dir"]),  # a required option missing
])
def test_bad_input_is_one_config_error_line(argv, words):
    with pytest.raises(ConfigError) as excinfo:
        _parse(argv)
    message = str(excinfo.value)
    assert "\n" not in message and "│" not in message
    for word in words:
        assert word in message, (word, message)


def test_help_lists_every_field_with_its_docstring_and_the_preset_default(capsys):
    with pytest.raises(SystemExit) as excinfo:
        _parse(["--preset", "big", "--help"])
    assert excinfo.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for flag, text in [("--name", "run name"), ("--max-steps", "steps to run"), ("--use-cache", "cache things"),
                       ("--train-files", "inputs"), ("--inner.rate", "inner rate"), ("--inner.mode", "inner mode"),
                       ("--preset", "starting settings"), ("--config", "config file"), ("--run-dir", "run folder")]:
        assert flag in out and text in out, flag
    assert "(default: 500)" in out and "(default: 0.9)" in out  # the chosen preset's values


@pytest.mark.parametrize("content, words", [
    ('{"bogus": 1}', ["unknown field 'bogus'"]),
    ('{"inner": {"depth": 3}}', ["unknown field 'inner.depth'"]),
    ('{"inner": {"mode": "medium"}}', ["inner.mode", "fast, slow", "'medium'"]),
    ('{"inner": 3}', ["inner must be a mapping"]),
    ("[1, 2]", ["expected a mapping"]),
    ("{not json", ["not valid JSON"]),
])
def test_bad_config_files_name_the_file_and_field(tmp_path, content, words):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as excinfo:
        _parse(["--run-dir", "r", "--config", str(path)])
    message = str(excinfo.value)
    assert str(path) in message
    for word in words:
        assert word in message, (word, message)


def test_unreadable_and_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_file(str(bad))


# ---------------------------------------------------------------- values that arrive another way

def test_check_choices_names_the_nested_field():
    check_choices(Outer())
    with pytest.raises(ConfigError, match=r"inner\.mode: must be one of fast, slow; got 'medium'"):
        check_choices(Outer(inner=Inner(mode="medium")))


def test_apply_overrides_returns_a_new_object():
    base = Outer()
    out = apply_overrides(base, {"inner": {"rate": 0.1}}, "test")
    assert out.inner.rate == 0.1 and base.inner.rate == 0.5 and out is not base


def test_round_trip_through_json():
    cfg = Outer(name="r", max_steps=1, use_cache=True, train_files=["q"], inner=Inner(rate=0.9, mode="slow"))
    data = json.loads(json.dumps(to_dict(cfg)))
    assert data["inner"] == {"rate": 0.9, "mode": "slow"}
    assert from_dict(Outer, data) == cfg
    with pytest.raises(ConfigError, match="unknown field 'extra'"):
        from_dict(Outer, {"extra": 1})


# ---------------------------------------------------------------- the real configs

def test_every_real_config_holds_valid_choices_in_every_preset():
    from redone_fast.pipeline.config import PRESETS as PIPELINE_PRESETS
    from redone_fast.pipeline.config import preset as pipeline_preset
    from redone_fast.rl.config import preset as rl_preset
    from redone_fast.stages.sft import preset as sft_preset
    for name in PIPELINE_PRESETS:
        check_choices(pipeline_preset(name))
    for name in ("tiny", "paper"):
        check_choices(rl_preset(name))
        check_choices(sft_preset(name))


def test_library_defaults_are_neutral():
    """No library default points at the bundled tiny assets: presets own those paths."""
    from redone_fast.pipeline.config import PipelineConfig
    from redone_fast.rl.config import RLConfig
    from redone_fast.stages.sft import SFTConfig
    for cfg in (RLConfig(), SFTConfig(), PipelineConfig()):
        assert "tiny" not in json.dumps(to_dict(cfg)), type(cfg).__name__


def test_one_tiny_rl_preset():
    """The pipeline's RL stages run the RL stage's own tiny preset (general prompts mixed in; stage 3 at a
    lower learning rate)."""
    from dataclasses import replace

    from redone_fast.pipeline.config import preset
    from redone_fast.rl.config import preset as rl_preset
    tiny, rl = preset("tiny"), rl_preset("tiny")
    assert tiny.rl_from_base == replace(rl, general_ratio=0.15)  # the pipeline's own general split, at 15%
    assert tiny.rl_after_sft == replace(rl, general_ratio=0.15, optim=replace(rl.optim, lr=1e-4))


@pytest.mark.parametrize("module, argv, words", [
    ("redone_fast.stages.rl", ["--run-dir", "r", "--engine", "vlm"], ["--engine", "hf", "vllm"]),
    ("redone_fast.stages.rl", ["--run-dir", "r", "--aggregation", "mean"], ["--aggregation", "token-mean"]),
    ("redone_fast.stages.sft", ["--run-dir", "r", "--overlong", "cut"], ["--overlong", "truncate", "drop"]),
    ("redone_fast.stages.sft", ["--run-dir", "r", "--optim.schedule", "linear"], ["--optim.schedule", "cosine"]),
    ("redone_fast.train", ["--recipe", "rl-only"], ["--recipe", "sft-then-rl"]),
    ("redone_fast.train", ["--rl-after-sft.filter-metric", "reward"], ["--rl-after-sft.filter-metric", "accuracy"]),
    ("redone_fast.eval", ["--model", "m", "--engine", "x"], ["--engine"]),
])
def test_a_bad_choice_fails_at_parse_time(module, argv, words, monkeypatch):
    """Before any model, optimizer or file: the stage's runner is never called."""
    import importlib
    mod = importlib.import_module(module)
    with pytest.raises(ConfigError) as excinfo:
        mod.parse_args(argv)
    for word in words:
        assert word in str(excinfo.value)


def test_pipeline_flags_are_role_named():
    from redone_fast.train import parse_args
    args = parse_args(["--rl-from-base.optim.lr", "0.01", "--sft.epochs", "3", "--rl-after-sft.rollout-steps", "2",
                       "--stages", "stage2,stage3"])
    assert args.cfg.rl_from_base.optim.lr == 0.01 and args.cfg.sft.epochs == 3
    assert args.cfg.rl_after_sft.rollout_steps == 2
    assert args.stages == ["stage2,stage3"]  # split on commas by the CLI (the old spelling still works)
