"""Step deadlines: one timer per orchestrator and event loop, for all running sagas.

``asyncio.timeout`` schedules and cancels a timer handle for every step it guards.
Here each running saga only writes its current step's deadline onto its run record,
and one watchdog timer, scheduled for the soonest deadline it knows of, cancels the
tasks whose deadline has passed when it fires. A step that never suspends costs two
attribute writes; the timer is rescheduled only when a deadline sooner than the one it
waits for appears (steps with shorter timeouts than the rest).
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._tracebacks import hide_from_pytest
from .exceptions import StepTimeout

if TYPE_CHECKING:
    from ._runs import SagaRun

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest


NO_DEADLINE = math.inf


class Watchdog:
    """Cancels the task of every watched run whose ``deadline`` (loop time) has passed.

    ``loop`` is the event loop it watches on, and ``now`` that loop's clock
    (``time.monotonic`` itself for asyncio's loops).
    """

    __slots__ = ("_context", "_handle", "_resolution", "loop", "now", "runs", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.now: Callable[[], float] = (
            time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time
        )
        self.runs: set[SagaRun] = set()
        self.when = NO_DEADLINE
        self._handle: asyncio.TimerHandle | None = None
        self._resolution: float = getattr(loop, "_clock_resolution", 0.0)
        # The timer runs in an empty context: by default call_at() would copy the context of
        # the step that set it (its run, the caller's context variables) and keep it alive
        # until the timer is due, and every timer set when it fires copies it again.
        self._context = contextvars.Context()

    def wake_at(self, deadline: float) -> None:
        """Fire at ``deadline`` (sooner than the time the watchdog waits for now)."""
        if self._handle is not None:
            self._handle.cancel()
        self.when = deadline
        self._handle = self.loop.call_at(deadline, self._fire, context=self._context)

    def _fire(self) -> None:
        self._handle = None
        self.when = NO_DEADLINE
        limit = self.loop.time() + self._resolution
        soonest = NO_DEADLINE
        for run in self.runs:
            deadline = run.deadline
            if deadline <= limit:
                run.deadline = NO_DEADLINE
                run.timed_out = True
                if run.task is not None:
                    run.task.cancel()
            elif deadline < soonest:
                soonest = deadline
        if soonest != NO_DEADLINE:
            self.wake_at(soonest)


def claim_timeout(run: SagaRun) -> bool:
    """After a ``CancelledError``: True when the watchdog caused it (it is then undone)."""
    if not run.timed_out:
        return False
    run.timed_out = False
    assert run.task is not None
    return run.task.uncancel() <= run.cancel_base


def timeout_error(
    index: int, name: str, elapsed: float, timeout: float, *, compensation: bool = False
) -> StepTimeout:
    """The ``StepTimeout`` of a step (or compensation) that ran ``elapsed`` seconds past
    ``timeout``: its duration never less than the timeout.

    The timer fires once the loop's clock reaches the deadline, yet ``now - started``
    can come out a hair below the timeout: float rounding of ``started + timeout``, or
    a clock read once per loop iteration to the millisecond (uvloop's).
    """
    duration = elapsed if elapsed > timeout else timeout
    return StepTimeout(index, name, duration, timeout, compensation=compensation)


__all__ = ["NO_DEADLINE", "Watchdog", "claim_timeout", "timeout_error"]
