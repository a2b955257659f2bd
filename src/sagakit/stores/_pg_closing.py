"""How long a closing PostgreSQL store waits for the server: ``connect_timeout`` for all
of ``close()``, not per call.

A statement on a connection that went silent (a partition, a server host gone, with no
reset) waits until the kernel gives up, some 15 minutes, and so may psycopg's request
to cancel it. Stopping the heartbeat (a renewal on its way), writing what sagas staged,
waiting for the log writer's batch in flight and releasing the leases share this one
wait, as a stopping worker's calls share theirs. Past it, each is cancelled, again if
its cancellation gets no answer either (psycopg then closes the connection).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any

from .._seconds import timeout_text
from .._shielding import CancellationWatch, cancel_firmly


class Closing:
    """One ``close()``'s wait for the server: ``seconds`` from its start (made in the
    closing task), spent at once when that task is cancelled (the rest is not waited
    for: ``close()`` raises the cancellation once the store is closed)."""

    __slots__ = ("_watch", "deadline", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = asyncio.get_running_loop().time() + seconds
        self._watch = CancellationWatch()

    def cancelled(self) -> bool:
        """Whether the closing task has been cancelled since ``close()`` began."""
        return self._watch.came()

    def left(self) -> float:
        """Seconds left of it (0 once spent, or once ``close()`` was cancelled)."""
        if self.cancelled():
            return 0.0
        return max(0.0, self.deadline - asyncio.get_running_loop().time())

    def why(self) -> str:
        """Why what was given up on was (for a warning)."""
        if self.cancelled():
            return "close() was cancelled"
        return f"no answer within {timeout_text(self.seconds)} (connect_timeout)"

    def grace(self, running: asyncio.Future[Any]) -> Awaitable[Any]:
        """A wait for ``running`` to end, what is left at most (one turn of the event loop
        at least, so that a call just started runs to its first wait)."""
        return asyncio.wait((running,), timeout=self.left())

    async def stopped(self, running: asyncio.Future[Any]) -> None:
        """Cancel ``running`` and wait for its end: what is left for that, then cancel it
        again and wait it out (see :func:`~sagakit._shielding.cancel_firmly`)."""
        await cancel_firmly(running, self.grace(running))

    async def ended(self, running: asyncio.Future[Any]) -> bool:
        """Wait for ``running`` to end within what is left; past it, or once the caller
        is cancelled (noted, not raised: ``close()`` raises it once the store is closed),
        cancel it: what is left (one turn of the event loop at least) for that to end
        it, then cancel it again and wait it out. True if it ended by itself (its
        outcome is then left on it, for the caller to retrieve)."""
        with contextlib.suppress(asyncio.CancelledError):  # (noted: see cancelled())
            await self.grace(running)
        if running.done():
            return True
        await self.stopped(running)
        return False


__all__ = ["Closing"]
