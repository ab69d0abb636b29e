"""Stop requests: SIGTERM or SIGINT finish the current step, save a checkpoint and exit 0.

Schedulers (SLURM, Kubernetes) send SIGTERM before killing a job, and torchrun forwards it to every rank.
A second SIGINT raises KeyboardInterrupt at once, for a person who does not want to wait for the save.

`REDONE_FAST_CRASH_AFTER_STEP=N` (tests only) makes every rank SIGKILL itself right after step N, the
unclean death that resume must survive.
"""
from __future__ import annotations

import os
import signal
import threading

__all__ = ["StopRequest", "maybe_crash_for_test"]

CRASH_ENV = "REDONE_FAST_CRASH_AFTER_STEP"


class StopRequest:
    """Context manager installing SIGTERM/SIGINT handlers that only record the request."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def maybe_crash_for_test(step: int) -> None:
    value = os.environ.get(CRASH_ENV)
    if value and int(value) == step:
        os.kill(os.getpid(), signal.SIGKILL)
