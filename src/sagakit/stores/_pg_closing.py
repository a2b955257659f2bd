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
from typing import Any

from .._budgets import Budget
from .._seconds import timeout_text
from .._shielding import CancellationWatch


class Closing(Budget):
    """One ``close()``'s wait for the server: ``seconds`` from its start (made in the
    closing task), spent at once when that task is cancelled (the rest is not waited
    for: ``close()`` raises the cancellation once the store is closed)."""

    __slots__ = ()

    seconds: float
    deadline: float

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds, watch=CancellationWatch())

    def cancelled(self) -> bool:
        """Whether the closing task has been cancelled since ``close()`` began."""
        watch = self._watch
        return watch is not None and watch.came()

    def why(self) -> str:
        """Why what was given up on was (for a warning)."""
        if self.cancelled():
            return "close() was cancelled"
        return f"no answer within {timeout_text(self.seconds)} (connect_timeout)"

    async def stopped(self, running: asyncio.Future[Any]) -> None:
        """Cancel ``running`` and wait for its end: what is left for that (one turn of the
        event loop at least), then cancel it again and wait it out (see
        :meth:`~sagakit._budgets.Budget.cancel`)."""
        await self.cancel(running)

    async def ended(self, running: asyncio.Future[Any]) -> bool:
        """Wait for ``running`` to end within what is left; past it, or once the caller
        is cancelled (noted, not raised: ``close()`` raises it once the store is closed),
        cancel it: what is left (one turn of the event loop at least) for that to end
        it, then cancel it again and wait it out. True if it ended by itself (its
        outcome is then left on it, for the caller to retrieve)."""
        return await self.within(running, if_cancelled="note")


__all__ = ["Closing"]
