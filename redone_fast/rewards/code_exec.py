"""Code-execution reward: run the program found in a completion and compare its output.

``code_exec(prediction, reference, expected_output=..., stdin=...)`` scores 1.0 when the
program extracted from ``prediction`` (see :func:`extract_code`) runs in the sandbox
(:mod:`redone_fast.rewards.sandbox`: bubblewrap namespaces with a read-only view of the Python
installation and a throwaway tmpfs, seccomp, CPU/memory/time limits, no network, an audit hook),
exits with status 0 and prints ``expected_output`` up to trailing whitespace on each line and
trailing blank lines (:func:`normalize_output`); anything else scores 0.0: wrong output, an
exception, a non-zero exit, a time-out, a limit hit, output beyond the cap, or an operation the
sandbox refused.

Bubblewrap (``bwrap``; Debian/Ubuntu package ``bubblewrap``) is required. Without it (or when it
cannot create namespaces here) ``code_exec`` raises :class:`SandboxUnavailableError` with a one-line
reason and runs nothing, so that a misconfigured machine is not silently trained on rewards of 0;
through the reward router (``redone_fast.rewards.router``) that is a score of 0 whose recorded
error is that line. Setting ``REDONE_SANDBOX_ALLOW_WEAK=1`` accepts the weaker in-process
isolation instead (an audit hook, not a security boundary; see the sandbox's docstring).

The generated code is never run in this process.
"""

from __future__ import annotations

import ast
import math
import re

from redone_fast.data.reward_spec import CODE_EXEC_MAX_TIMEOUT_S
from redone_fast.rewards.sandbox import SandboxLimits, SandboxUnavailableError, run_python

__all__ = ["extract_code", "code_exec", "normalize_output", "SandboxUnavailableError"]

_PYTHON_TAGS = frozenset({"python", "python3", "py", "py3", "pycon", "ipython"})
# An opening fence (``` with an optional info string), its body, the closing fence.
_FENCE = re.compile(r"```[ \t]*([^\n`]*)\n(.*?)```", re.DOTALL)
_OPEN_FENCE = re.compile(r"```[ \t]*([^\n`]*)\n(.*)\Z", re.DOTALL)
_ANSWER = re.compile(r"answer\s*:", re.IGNORECASE)
# Statements that make a snippet "code" rather than a bare value such as ``42`` or ``x``.
_CODE_NODES = (ast.Call, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Import, ast.ImportFrom,
               ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.For, ast.While, ast.If,
               ast.With, ast.Try, ast.Return)


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language tag, body) of every fenced block, in order; an unclosed last fence counts."""
    blocks = []
    end = 0
    for m in _FENCE.finditer(text):
        blocks.append((m.group(1).strip().split(" ")[0].lower(), m.group(2)))
        end = m.end()
    tail = _OPEN_FENCE.search(text, end)
    if tail is not None:  # a completion cut off inside its code block
        blocks.append((tail.group(1).strip().split(" ")[0].lower(), tail.group(2)))
    return blocks


def _looks_like_code(text: str) -> bool:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return any(isinstance(node, _CODE_NODES) for node in ast.walk(tree))


def extract_code(completion: str) -> str | None:
    """The program in a model completion, or ``None`` when there is none.

    In order of preference:

    1. the last non-empty fenced block tagged as Python (```python, ```py, ```python3, ...);
    2. else the last non-empty fenced block of any (or no) language;
    3. else the text after the last ``Answer:`` (case-insensitive) when it parses as Python
       and contains at least one real statement (a call, an assignment, an import, a
       definition, a loop, ...), not just a bare value such as ``42``;
    4. else the whole completion (stripped).

    ``None`` when the completion is empty or all its fenced blocks are empty.

    A fence left open at the end of the completion (a truncated generation) counts as a
    block running to the end of the text.
    """
    if not isinstance(completion, str):
        return None
    all_blocks = _fenced_blocks(completion)
    blocks = [(lang, body) for lang, body in all_blocks if body.strip()]
    for lang, body in reversed(blocks):
        if lang in _PYTHON_TAGS:
            return body
    if blocks:
        return blocks[-1][1]
    if all_blocks:  # fences, but nothing in them
        return None
    answers = list(_ANSWER.finditer(completion))
    if answers:
        after = completion[answers[-1].end():].strip()
        if after and _looks_like_code(after):
            return after
    whole = completion.strip()
    return whole or None


def normalize_output(text: str) -> str:
    """Trailing whitespace removed from every line, trailing blank lines dropped."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def code_exec(prediction: str, reference: str, *, expected_output: str, stdin: str = "",
              timeout_s: float = 5.0) -> float:
    """1.0 when the program in ``prediction`` prints ``expected_output`` (normalised), else 0.0.

    ``reference`` (e.g. the reference solution) is not used: correctness is judged only by
    the program's output on ``stdin``; it is kept so that every reward shares the
    ``(prediction, reference, **kwargs)`` signature. ``timeout_s`` bounds both the wall-clock
    time and the CPU time of the run; it must be in (0, CODE_EXEC_MAX_TIMEOUT_S] = (0, 60] seconds
    (ValueError otherwise: a huge limit would stall training; data files are checked at load). The
    output cap is raised above the default when the expected output needs it. Never raises for
    anything the program does; raises :class:`SandboxUnavailableError` when no accepted isolation
    exists (see the module docstring).
    """
    del reference  # unused by design, see the docstring
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s)
            and 0 < timeout_s <= CODE_EXEC_MAX_TIMEOUT_S):
        raise ValueError(f"timeout_s must be in (0, {CODE_EXEC_MAX_TIMEOUT_S:g}] seconds, got {timeout_s!r}")
    code = extract_code(prediction)
    if code is None:
        return 0.0
    expected_bytes = len(expected_output.encode("utf-8", errors="surrogatepass"))
    limits = SandboxLimits(
        cpu_s=timeout_s,
        wall_s=timeout_s,
        max_output_bytes=max(SandboxLimits.max_output_bytes, 2 * expected_bytes + 4096),
    )
    result = run_python(code, stdin=stdin, limits=limits)
    if result.returncode != 0 or result.timed_out or result.killed:
        return 0.0
    return 1.0 if normalize_output(result.stdout) == normalize_output(expected_output) else 0.0
