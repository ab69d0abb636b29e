"""Every `python -m redone_fast...` command the README shows parses with today's CLIs (flags, choices,
presets), torchrun launches included. The commands that train are run for real elsewhere at a small size
(test_pipeline_run.py, test_stage_cli*.py, test_distributed_faults.py); here each command's whole command
line goes through its module's tyro parser, so a renamed or removed flag fails here."""
from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from redone_fast.errors import ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"
PARSED = {"redone_fast.train", "redone_fast.stages.rl", "redone_fast.stages.sft", "redone_fast.eval",
          "redone_fast.tiny.build", "redone_fast.data.corpus"}


def _commands() -> list[str]:
    """The README's commands: lines of its code blocks (continuations joined) and inline `python -m ...`."""
    text = README.read_text(encoding="utf-8")
    blocks, current = [], None
    for line in text.splitlines():  # fenced blocks, opened and closed line by line
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    found = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if re.search(r"(^python -m |^torchrun .*-m )redone_fast", line):
                found.append(line)
    for inline in re.findall(r"`(python -m redone_fast[^`]*)`", text):
        if " --" in inline:  # a command with options; a bare `python -m redone_fast.x` in prose is its name
            found.append(inline)
        else:
            NAMES.add(inline.split()[-1])
    return sorted(set(found))


def _module_and_args(command: str) -> tuple[str, list[str]]:
    words = shlex.split(command.replace("[", " ").replace("]", " "))
    start = words.index("-m") + 1
    return words[start], [w for w in words[start + 1:] if w != "..." and not w.startswith("$")]


NAMES: set[str] = set()  # modules named in prose
COMMANDS = _commands()


def test_every_command_named_in_prose_exists():
    assert NAMES
    for module in NAMES:
        assert importlib.util.find_spec(module) is not None, module


def test_the_readme_shows_the_main_commands():
    modules = {_module_and_args(c)[0] for c in COMMANDS}
    assert {"redone_fast.train", "redone_fast.stages.sft", "redone_fast.stages.rl", "redone_fast.eval"} <= modules
    assert len(COMMANDS) >= 10


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command, capsys):
    module, argv = _module_and_args(command)
    assert importlib.util.find_spec(module) is not None, f"{module} (from {command!r}) does not exist"
    if module not in PARSED:
        return  # no options: the module existing is what the command needs
    parse_args = importlib.import_module(module).parse_args
    try:
        parse_args(argv)
    except SystemExit as exc:  # --help
        assert exc.code == 0 and "--help" in argv, command
        assert "usage" in capsys.readouterr().out
    except ConfigError as exc:
        pytest.fail(f"{command!r}: {exc}")
