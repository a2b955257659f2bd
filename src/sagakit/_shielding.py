"""Waiting for work that a cancellation of the waiter must not cut short."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from ._tracebacks import hide_from_pytest

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest


async def wait_out(work: Awaitable[Any]) -> asyncio.Future[Any]:
    """Wait until ``work`` has ended, whatever cancels the caller meanwhile; return it.

    Its outcome (result, error or cancellation) is left on the returned future; a
    caller that was cancelled meanwhile re-raises its cancellation itself.
    """
    future = asyncio.ensure_future(work)
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            continue
        except Exception:
            break
    return future


async def cancel_firmly(running: asyncio.Future[Any], grace: Awaitable[Any] | None) -> None:
    """Cancel ``running`` and wait for its end, whatever cancels the caller meanwhile.

    With a ``grace`` (a wait of how long its cancellation may take): if ``running`` has
    not ended by the end of it (a driver asking a silent server to cancel a statement),
    it is cancelled once more (psycopg then closes the connection) before it is waited
    out."""
    running.cancel()
    if grace is not None:
        await wait_out(grace)
        if not running.done():
            running.cancel()
    await wait_out(running)


class CancellationWatch:
    """The current task's cancellation requests, counted when made: :meth:`came` says
    whether one has come since — one that code below caught and did not re-raise (a
    driver's pool, a store's ``close()``, a step), which the watcher must raise itself
    rather than go on as if its task had not been cancelled."""

    __slots__ = ("_base", "_task")

    def __init__(self) -> None:
        self._task = asyncio.current_task()
        self._base = self._task.cancelling() if self._task is not None else 0

    def came(self) -> bool:
        """Whether the task has been cancelled since this watch began."""
        return self._task is not None and self._task.cancelling() > self._base


__all__ = ["CancellationWatch", "cancel_firmly", "wait_out"]
