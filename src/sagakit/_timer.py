"""One re-armable deadline timer per running saga.

``asyncio.timeout`` schedules and cancels a timer handle for every step. A saga's
steps run one after another in one task, so one handle is enough: each step moves
the deadline, and the handle is only re-scheduled when it fires before the deadline
in force. A saga of fast steps arms one handle in all.
"""

from __future__ import annotations

import asyncio


class StepTimer:
    """Cancels ``task`` once the armed deadline passes; ``fired`` says it did."""

    __slots__ = ("_handle", "_loop", "_resolution", "base", "deadline", "fired", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[object]) -> None:
        self._loop = loop
        self.task = task
        self.base = task.cancelling()
        self.deadline: float | None = None
        self.fired = False
        self._handle: asyncio.TimerHandle | None = None
        self._resolution: float = getattr(loop, "_clock_resolution", 0.0)

    def arm(self, deadline: float) -> None:
        """Cancel the task at ``deadline`` (loop time) unless disarmed before."""
        self.deadline = deadline
        handle = self._handle
        if handle is None or handle.when() > deadline:
            if handle is not None:
                handle.cancel()
            self._handle = self._loop.call_at(deadline, self._fire)

    def disarm(self) -> None:
        self.deadline = None

    def claim_cancellation(self) -> bool:
        """After a ``CancelledError``: True when it was this timer's and is now undone."""
        if not self.fired:
            return False
        self.fired = False
        return self.task.uncancel() <= self.base

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        deadline = self.deadline
        if deadline is None:
            return
        loop = self._loop
        if loop.time() + self._resolution < deadline:
            self._handle = loop.call_at(deadline, self._fire)
            return
        self.fired = True
        self.task.cancel()


__all__ = ["StepTimer"]
