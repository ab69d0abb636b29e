"""Stop requests: SIGTERM or SIGINT finish the current step, save a checkpoint and exit 0.

Schedulers (SLURM, Kubernetes) send SIGTERM before killing a job, and torchrun forwards it to every rank.
A second SIGINT raises KeyboardInterrupt at once, for a person who does not want to wait for the save.

`REDONE_FAST_CRASH_AFTER_STEP=N` (tests only) makes every rank SIGKILL itself right after step N, the
unclean death that resume must survive; `STAGE:N` does so only in the stage of that name (the pipeline
runs several stages in one process).
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


def maybe_crash_for_test(step: int, stage: str | None = None) -> None:
    value = os.environ.get(CRASH_ENV)
    if not value:
        return
    wanted_stage, _, wanted_step = value.rpartition(":")
    if int(wanted_step) == step and (not wanted_stage or wanted_stage == stage):
        os.kill(os.getpid(), signal.SIGKILL)
