"""Waiting for running work within a time budget: past it (or once the waiter is
cancelled, as its policy says), the work is cancelled firmly and waited out.

The mechanics live here once; each user states its policy: a PostgreSQL statement's
wait for its answer (``stores._pg_answer.answered``), one ``close()``'s wait for the
server (``stores._pg_closing.Closing``), a stopping worker's wait for its store
(``_worker._Stopping``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Literal

from ._shielding import CancellationWatch, cancel_firmly, wait_out
from ._tracebacks import hide_from_pytest

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest


IfCancelled = Literal["raise", "note", "shield"]
"""What :meth:`Budget.within` does when its caller is cancelled while it waits:
``"raise"``: cancel the work firmly, then raise the cancellation; ``"note"``: stop
waiting, and cancel the work firmly as past the budget (the caller raises the
cancellation later: see :class:`~sagakit._shielding.CancellationWatch`); ``"shield"``:
wait on within the budget as if not cancelled (the caller raises it later). (Strings,
not an enum: a statement's wait for its answer names one, and an enum member's look-up
costs some thousand instructions on Python 3.11.)"""


async def first_of(
    futures: tuple[asyncio.Future[Any], ...],
    events: tuple[asyncio.Event, ...],
    seconds: float | None,
) -> None:
    """Until one of ``futures`` ends or one of ``events`` is set, ``seconds`` at most
    (None: no limit; 0: one turn of the event loop, so that a call just started runs to
    its first wait)."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(
            (*futures, *waiters), timeout=seconds, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for waiter in waiters:
            if not waiter.get_loop().is_closed():  # (closed under the waiter: an abandoned worker)
                waiter.cancel()


class Budget:
    """``seconds`` from the moment it is made (None: no limit), spent at once when
    ``until`` is set (its waits end then too) or, with a ``watch``, once the watched task
    is cancelled."""

    __slots__ = ("_loop", "_until", "_watch", "deadline", "seconds")

    def __init__(
        self,
        seconds: float | None,
        *,
        until: asyncio.Event | None = None,
        watch: CancellationWatch | None = None,
    ) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self.seconds = seconds
        self.deadline = None if seconds is None else loop.time() + seconds
        self._until = until
        self._watch = watch

    def left(self) -> float | None:
        """Seconds left of it (0 once spent; None: no limit)."""
        if self._until is not None and self._until.is_set():
            return 0.0
        if self._watch is not None and self._watch.came():
            return 0.0
        deadline = self.deadline
        if deadline is None:
            return None
        left = deadline - self._loop.time()
        return left if left > 0.0 else 0.0

    def _ended(self, running: asyncio.Future[Any], seconds: float | None) -> Awaitable[Any]:
        """A wait for ``running`` to end (or for ``until``), ``seconds`` at most (None:
        no limit; 0: one turn of the event loop)."""
        if self._until is None:
            return asyncio.wait((running,), timeout=seconds)
        return first_of((running,), (self._until,), seconds)

    async def cancel(self, running: asyncio.Future[Any], grace: float | None = None) -> None:
        """Cancel ``running`` and wait for its end, whatever cancels the caller: ``grace``
        seconds for that (None: what is left then, one turn of the event loop at least,
        so that a call just started runs to its first wait), then cancel it once more and
        wait it out (see :func:`~sagakit._shielding.cancel_firmly`)."""
        await cancel_firmly(running, self._ended(running, self.left() if grace is None else grace))

    async def within(
        self,
        running: asyncio.Future[Any],
        *,
        if_cancelled: IfCancelled,
        grace: float | None = None,
    ) -> bool:
        """Wait for ``running`` to end within what is left; past it, or once the caller
        is cancelled (as ``if_cancelled`` says), :meth:`cancel` it (with ``grace``). True
        if it ended by itself (its outcome is then left on it, for the caller)."""
        ending = self._ended(running, self.left())
        try:
            await (wait_out(ending) if if_cancelled == "shield" else ending)
        except asyncio.CancelledError:
            if if_cancelled == "raise":
                await self.cancel(running, grace)
                raise
            # "note": the caller raises it (its watch, if any, spent the budget)
        except GeneratorExit:
            raise  # its event loop closed under the caller: nothing can be awaited
        except BaseException:
            if if_cancelled == "raise":
                await self.cancel(running, grace)
            raise
        if running.done():
            return True
        await self.cancel(running, grace)
        return False


__all__ = ["Budget", "IfCancelled", "first_of"]
