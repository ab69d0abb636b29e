"""The errors a user fixes by changing an input, and the command-line wrapper that reports them.

Every CLI (`train`, `stages.sft`, `stages.rl`, `eval`, `tiny.build`, `data.corpus`, `data.sns_bench`)
runs its `main` through :func:`run_cli`, which turns a :class:`RedoneError` (bad data, model folder,
config value, checkpoint, pipeline state, missing sandbox) or an operating-system error (a run folder
that is a file, a read-only folder, a full disk) into one line on stderr, ``error: <what and where>``,
and exit status 2, with no traceback (``--debug`` or ``REDONE_DEBUG=1`` re-raises it). Anything else is
a bug and keeps its traceback.

SIGTERM outside the training loop (model loading, data checks, export) ends the command with status 0
and a line saying so: everything on disk is either complete or written atomically (checkpoints,
exports, results), so re-running the same command resumes. Inside the loop its own handler
(`redone_fast.loop.signals.StopRequest`) finishes the step and saves a checkpoint first.
"""
from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import traceback
from typing import Callable, Sequence

__all__ = ["RedoneError", "ConfigError", "Stopped", "describe_os_error", "run_cli", "DEBUG_ENV"]

DEBUG_ENV = "REDONE_DEBUG"


class RedoneError(Exception):
    """Base of the errors whose message alone tells the user what to fix (file:line, field or path)."""


class ConfigError(RedoneError, ValueError):
    """A configuration value out of range or not among the choices; the message names the field."""


class Stopped(BaseException):
    """SIGTERM arrived outside the training loop (a BaseException: no `except Exception` swallows it)."""


_OS_HINTS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a path component is a file, not a folder",
    errno.EEXIST: "exists and is not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOENT: "no such file or folder",
}


def describe_os_error(exc: OSError) -> str:
    """One line naming what failed and on which path, e.g. "no space left on device: runs/a/metrics.jsonl"."""
    what = _OS_HINTS.get(exc.errno, exc.strerror or type(exc).__name__)
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    text = f"{what}: {' -> '.join(paths)}" if paths else what
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # file.write() errors carry no file name
        text += " (free some space and re-run the same command: finished checkpoints are kept)"
    return text


def _raise_stopped(signum, frame) -> None:
    raise Stopped(signal.Signals(signum).name)


def run_cli(main: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` (argv without ``--debug``) and return its status; see the module docstring."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    group_before = _has_process_group()  # a caller's own group is theirs to destroy, not ours
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        return main(argv)
    except Stopped as exc:
        print(f"stopped by {exc} before finishing; what was saved is complete: re-run the same command to "
              "resume", file=sys.stderr, flush=True)
        return 0
    except (RedoneError, OSError, *_late_error_types()) as exc:
        if debug:
            raise
        message = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
        print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if not group_before:
            _destroy_process_group()


def _late_error_types() -> tuple[type, ...]:
    """User-facing errors of modules that cannot import this one at import time without a cycle."""
    from redone_fast.loop.checkpoint import CheckpointError
    from redone_fast.rewards.sandbox import SandboxUnavailableError
    return CheckpointError, SandboxUnavailableError


def _has_process_group() -> bool:
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized()


def _destroy_process_group() -> None:
    try:
        from redone_fast.distributed import destroy_distributed
        destroy_distributed()
    except Exception as exc:  # tearing down after an error must not hide that error
        traceback.print_exception(exc, file=sys.stderr)
