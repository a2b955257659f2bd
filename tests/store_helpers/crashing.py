"""A SQLite store that 'dies' at a transition, leaving its log for another to recover."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable

from sagakit import SQLiteStore, Transition
from sagakit._runs import SagaRun


class Crash(BaseException):
    """The process 'dies': nothing after it reaches the log."""


def dead_owner() -> str:
    """An owner id naming a process of this host that has exited (so its sagas are orphans)."""
    probe = subprocess.Popen([sys.executable, "-c", "pass"])
    probe.wait()
    return f"{socket.gethostname()}/{probe.pid}/0"


class CrashingStore(SQLiteStore):
    """Records normally until ``crash_at(transition)``; then records nothing, ever."""

    def __init__(self, path: str, crash_at: Callable[[Transition], bool]) -> None:
        super().__init__(path, owner=dead_owner())
        self.crash_at = crash_at
        self.crashed = False

    async def record(self, run: SagaRun, transition: Transition) -> None:
        if self.crashed or self.crash_at(transition):
            self.crashed = True
            raise Crash
        await super().record(run, transition)

    def stage(self, run: SagaRun, transition: Transition) -> None:
        if self.crashed or self.crash_at(transition):
            self.crashed = True
            raise Crash
        super().stage(run, transition)
