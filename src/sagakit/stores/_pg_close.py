"""How a PostgreSQL store closes: ``close()`` stops the heartbeat, writes what sagas
staged, waits for the log writer's batch in flight, releases the leases still held and
closes the pool, within ``connect_timeout`` for all of it (see :mod:`._pg_closing`).

:class:`Shutdown` is a base of :class:`~.postgres.PostgresStore`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .._budgets import Budget
from .._counted import counted
from .._shielding import wait_out
from .._tracebacks import hide_from_pytest
from ._pg_base import PostgresStoreBase
from ._pg_closing import Closing
from ._pg_loop import other_loop
from ._pg_patience import BRIEF, Patience

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

# pytest shows a failing test's line, not this module's code, for an error this store
# raises on purpose (see _tracebacks).
__tracebackhide__ = hide_from_pytest

logger: logging.Logger = logging.getLogger("sagakit")

POOL_STOP = 0.1
"""Seconds the pool's workers get to stop when ``close()``'s budget is already spent
(an idle worker stops within a turn or two of the event loop)."""


class Shutdown(PostgresStoreBase):
    """How :class:`~.postgres.PostgresStore` closes (``close()``)."""

    async def close(self) -> None:
        """Stop the heartbeat, write what sagas staged, release the leases still held and
        close the pool: ``connect_timeout`` at most for all of it (see :class:`Closing`).
        What it could not write is left to recovery (a warning names those sagas); the
        leases it could not release run out by themselves."""
        refused = other_loop(self.schema, self._loop)
        if refused is not None:
            if self._loop_ended():  # its pool cannot be closed from here, nor there
                self._pool, self._heartbeat, self._loop = None, None, None
                self._closed = True
            raise refused
        # A cancellation of close() is not swallowed: the store is closed all the same
        # (its pool would be left open), then it is raised.
        closing = Closing(self.connect_timeout)
        pool = self._pool
        try:
            heartbeat, self._heartbeat = self._heartbeat, None
            if heartbeat is not None:
                await closing.stopped(heartbeat)  # (a renewal may be on its way)
                _retrieved(heartbeat)
            dead = self._writer.dead is not None  # (crash(process=True)): nothing is written
            if dead:
                self._staged.clear()
                self._doubts.clear()
            await self._flush_staged(closing)
            sending = self._writer.sending
            if sending is not None:  # a batch on its way (its caller gone: cancelled)
                await closing.ended(sending)
            if pool is not None and self._held:  # a dead process's, as a crash's
                await self._release_on_close(closing, as_crash=dead)  # (as simulate_restart)
        finally:
            self._closed = True  # opened or not: no implicit opening on the next use
            if pool is not None:
                self._pool = None
                self._loop = None
                await _pool_closed(pool, closing)
        if closing.cancelled():
            raise asyncio.CancelledError

    @property
    def closed(self) -> bool:
        """Whether the store holds no connection pool: not opened yet (it opens on first
        use, or by ``open()``), or closed by :meth:`close` (``open()`` opens it again).
        Read-only."""
        return self._pool is None

    async def _release_on_close(self, closing: Closing, *, as_crash: bool) -> None:
        """:meth:`release_leases`, within what is left of ``closing``: on a connection
        gone silent (a partition that resets nothing), a statement waits some 15 minutes
        for the kernel to give up. Past it, the release is cancelled (again if its
        cancellation gets no answer either: psycopg then closes the connection) and the
        leases run out by themselves (the store no longer renews them)."""
        held = len(self._held)
        releasing = asyncio.ensure_future(self.release_leases(as_crash=as_crash))
        if await closing.ended(releasing):
            releasing.result()  # its error, if any, as ever
            return
        logger.warning(
            "sagakit could not release the leases of %s on close: %s; they run out by themselves",
            counted(held, "saga"),
            closing.why(),
        )

    def _loop_ended(self) -> bool:
        """Whether the loop that opened the store is closed (not just idle: run again, it
        can close the store)."""
        loop = self._loop
        return loop is not None and loop.is_closed()

    async def _flush_staged(self, closing: Closing) -> None:
        """Write what is still staged or in doubt (of sagas stopped mid-flight), within
        what is left of ``closing``; a warning names the sagas it could not write (nor
        find out whether their write in doubt committed): their log shows what it holds,
        from which their recovery goes on, as after a crash."""
        sagas = {*self._staged, *self._doubts}
        if sagas and self._pool is not None:
            names = {saga_id: self._staged_name(saga_id) for saga_id in sagas}
            # Briefly: close() does not wait connect_timeout for a connection.
            brief = asyncio.get_running_loop().time() + BRIEF
            patience = Patience(min(brief, closing.deadline))
            flushes = {
                saga_id: asyncio.ensure_future(self._flush(saga_id, patience=patience))
                for saga_id in sorted(sagas)
            }
            await closing.ended(asyncio.gather(*flushes.values(), return_exceptions=True))
            unwritten = [saga_id for saga_id, flush in flushes.items() if flush.cancelled()]
            if unwritten:
                logger.warning(
                    "sagakit could not write the staged transitions of %s on close: "
                    "%s; recovery finishes them from what the log holds: %s",
                    counted(len(unwritten), "saga"),
                    closing.why(),
                    ", ".join(f"{names[saga_id]} ({saga_id})" for saga_id in unwritten),
                )
        self._staged.clear()
        self._doubts.clear()

    def _staged_name(self, saga_id: str) -> str | None:
        """The name of saga ``saga_id``, from what it staged or has in doubt."""
        doubt = self._doubts.get(saga_id)
        writes = self._staged.get(saga_id) or (doubt.writes if doubt is not None else None)
        return writes[0].saga_name if writes else None


async def _pool_closed(pool: AsyncConnectionPool[Any], closing: Budget) -> None:
    """Close ``pool`` within what is left of ``closing`` (:data:`POOL_STOP` at least):
    ``close()``'s budget, or a failed ``open()``'s.

    What psycopg_pool's ``close()`` waits for, up to its ``timeout`` (5 s unless told),
    is its background workers' end (one may be opening a connection to a server gone
    silent): past it, it leaves them and goes on. Its idle connections are then closed
    without waiting for the server (libpq's ``PQfinish`` on a non-blocking socket), so a
    connection gone silent does not hold it. A cancellation of ``close()`` meanwhile does
    not cut it short (the idle connections, already taken out of the pool, would be left
    open): it is waited out, within that timeout, and ``close()`` raises the cancellation
    after."""
    timeout = max(closing.left() or 0.0, POOL_STOP)
    closed = await wait_out(pool.close(timeout=timeout))
    closed.result()  # its error, if any, as ever


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned task's outcome (else asyncio logs it as never retrieved)."""
    if not task.cancelled():
        task.exception()


__all__ = ["Shutdown"]
