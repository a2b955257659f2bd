"""One re-armable deadline timer per running saga.

``asyncio.timeout`` schedules and cancels a timer handle for every step. A saga's
steps run one after another in one task, so one handle is enough: each step moves
the deadline, and the handle is only re-scheduled when it fires before the deadline
in force. A saga of fast steps arms one handle in all.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any


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




class AttemptTimedOut(Exception):
    """Internal: an attempt ran past its deadline."""


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    """Go on awaiting ``coro`` after its first suspension yielded ``yielded``."""
    while True:
        try:
            sent = yield yielded
        except BaseException as thrown:  # a cancellation thrown in by the task
            try:
                yielded = coro.throw(thrown)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


async def run_attempt(
    coro: Coroutine[Any, Any, Any], timer: StepTimer, now: Callable[[], float], deadline: float
) -> Any:
    """Await ``coro`` with ``deadline``; raise :class:`AttemptTimedOut` past it.

    A coroutine that finishes without suspending needs no timer at all (nothing could
    interrupt it); one that suspends arms the saga's timer. A step that swallows the
    cancellation, or blocks past the deadline, still counts as timed out.
    """
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        value = stop.value
    else:
        timer.arm(deadline)
        try:
            value = await _resume(coro, yielded)
        except asyncio.CancelledError:
            timer.deadline = None
            if timer.claim_cancellation():
                raise AttemptTimedOut from None
            raise
        finally:
            timer.deadline = None
        if timer.fired:  # it swallowed the cancellation and returned late
            timer.claim_cancellation()
            raise AttemptTimedOut
    if now() >= deadline:  # it blocked past its deadline
        raise AttemptTimedOut
    return value


__all__ = ["AttemptTimedOut", "StepTimer", "run_attempt"]
