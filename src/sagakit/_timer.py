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

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.task: asyncio.Task[Any] | None = None
        self.base = 0
        self.deadline: float | None = None
        self.fired = False
        self._handle: asyncio.TimerHandle | None = None
        self._resolution: float = getattr(loop, "_clock_resolution", 0.0)

    def arm(self, deadline: float) -> None:
        """Cancel the task at ``deadline`` (loop time) unless disarmed before."""
        self.deadline = deadline
        if self.task is None:
            self.task = asyncio.current_task(self._loop)
            assert self.task is not None, "sagakit runs inside an asyncio task"
            self.base = self.task.cancelling()
        handle = self._handle
        if handle is None or handle.when() > deadline:
            if handle is not None:
                handle.cancel()
            self._handle = self._loop.call_at(deadline, self._fire)

    def disarm(self) -> None:
        self.deadline = None

    def claim_cancellation(self) -> bool:
        """After a ``CancelledError``: True when it was this timer's and is now undone."""
        if not self.fired or self.task is None:
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
        if self.task is not None:
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


async def finish_attempt(
    coro: Coroutine[Any, Any, Any], yielded: Any, timer: StepTimer, deadline: float
) -> Any:
    """Go on with an attempt that suspended: arm the saga's timer and await the rest.

    Raises :class:`AttemptTimedOut` when the timer cancelled it, or when it swallowed
    that cancellation and returned late.
    """
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
    if timer.fired:
        timer.claim_cancellation()
        raise AttemptTimedOut
    return value


async def run_attempt(
    coro: Coroutine[Any, Any, Any], timer: StepTimer, now: Callable[[], float], deadline: float
) -> Any:
    """Await ``coro`` with ``deadline``; raise :class:`AttemptTimedOut` past it.

    A coroutine that finishes without suspending needs no timer at all (nothing could
    interrupt it); one that suspends arms the saga's timer. One that blocks past its
    deadline still counts as timed out. (``SagaOrchestrator._drive`` inlines this.)
    """
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        value = stop.value
    else:
        value = await finish_attempt(coro, yielded, timer, deadline)
    if now() >= deadline:
        raise AttemptTimedOut
    return value


__all__ = ["AttemptTimedOut", "StepTimer", "finish_attempt", "run_attempt"]
