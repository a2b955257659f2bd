"""The PostgreSQL store's connections: opening its pool (and migrating its schema), one
statement on a pooled connection, and what the server's refusal says.

:class:`Connections` is a base of :class:`~.postgres.PostgresStore`. Every statement
waits ``connect_timeout`` for a connection and ``command_timeout`` for its answer at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from .._budgets import Budget
from .._seconds import timeout_text
from .._shielding import CancellationWatch
from .._tracebacks import hide_from_pytest
from ..exceptions import StoreError, error_text
from ._dsn import redacted
from ._loop_refusal import closed_store
from ._pg_answer import NoAnswer, answer_wait, answered
from ._pg_base import PostgresStoreBase
from ._pg_close import _pool_closed
from ._pg_driver import import_driver
from ._pg_errors import ended_by_server
from ._pg_loop import other_loop
from ._pg_patience import pool_wait
from ._pg_schema import migrate

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

# pytest shows a failing test's line, not this module's code, for an error this store
# raises on purpose (see _tracebacks).
__tracebackhide__ = hide_from_pytest

logger: logging.Logger = logging.getLogger("sagakit")

_T = TypeVar("_T")


async def _wait_for_locks(conn: AsyncConnection[Any]) -> None:
    """Configure a pooled connection: its statements wait for the locks they need,
    whatever the role's ``lock_timeout``. They wait for a batch of another worker (its
    saga rows, the event stream's lock) or a heartbeat, each one short statement; under
    a role's 20 ms, a batch that waited longer was refused and its sagas compensated."""
    await conn.execute("SET lock_timeout = 0")


async def _filled(pool: AsyncConnectionPool[Any], seconds: float) -> None:
    """Wait ``seconds`` at most for ``pool`` (opened) to hold its ``min_size``
    connections; past them, raise :class:`TimeoutError` and leave it to the caller to
    close the pool. psycopg_pool's own ``open(wait=True, timeout=...)`` closes it then
    with its default ``close()`` timeout: 5 s more for its workers (one may be opening a
    connection to a server gone silent). Its wait here is given longer, never to end
    first."""
    async with asyncio.timeout(seconds):
        await pool.wait(timeout=2 * seconds + 60.0)


class Connections(PostgresStoreBase):
    """How :class:`~.postgres.PostgresStore` opens its pool and sends a statement."""

    async def open(self) -> None:
        """Connect, migrate the schema and start the heartbeat (done on first use;
        after :meth:`close` only when called again)."""
        self._check_loop()
        self._closed = False
        if self._pool is not None:
            return
        self._loop = asyncio.get_running_loop()  # (refused to others while it opens)
        try:
            await self._open()
        except BaseException:
            if self._pool is None:
                self._loop = None
            raise

    def _check_loop(self) -> None:
        """Refuse use from a loop other than the one that opened the store (see _pg_loop)."""
        refused = other_loop(self.schema, self._loop)
        if refused is not None:
            raise refused

    async def _open(self) -> None:
        async with self._opening:
            if self._pool is not None:
                return
            psycopg, psycopg_pool = import_driver()
            from ._pg_pool import Pool  # (imports psycopg_pool)

            pool = Pool(
                self.dsn,
                min_size=self.min_size,
                max_size=self.max_size,
                # A statement waits connect_timeout for a connection, not the pool's 30 s.
                timeout=self.connect_timeout,
                kwargs={"autocommit": True},
                configure=_wait_for_locks,
                open=False,
                name=f"sagakit-{self.schema}",
            )
            hidden: StoreError | None = None
            # A pool that fails to open closes within what is left of connect_timeout.
            watch = CancellationWatch()
            opening = Budget(self.connect_timeout, watch=watch)
            try:
                # One connection of our own first: the pool retries a failing connection
                # until its timeout and then says only that it timed out, whereas this
                # fails at once with the reason (a bad DSN, an unknown database, ...).
                async with asyncio.timeout(self.connect_timeout):
                    first = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
                async with first:
                    await migrate(first, self.schema, wait=self.connect_timeout)
                await pool.open()
                await _filled(pool, self.connect_timeout)
            except (psycopg.Error, psycopg_pool.PoolTimeout, TimeoutError) as error:
                await _pool_closed(pool, opening)
                if watch.came():  # while the pool closed: raised, not the failure
                    raise asyncio.CancelledError from None
                said = error_text(error)
                if isinstance(error, TimeoutError):
                    said = f"no connection after {timeout_text(self.connect_timeout)}"
                # libpq repeats a piece of a DSN it cannot parse, which may be the password.
                reason = redacted(said, self.dsn)
                failure = StoreError(
                    f"cannot open the PostgreSQL saga log (schema {self.schema!r}): "
                    f"{reason}; check the DSN and that the server is up"
                )
                if reason == said:
                    raise failure from error
                hidden = failure  # raised below, where no traceback chains the driver's error
            except BaseException:
                await _pool_closed(pool, opening)
                raise
            if hidden is not None:
                raise hidden
            self._pool = pool
            self._heartbeat = asyncio.create_task(self._beat(), name="sagakit-pg-heartbeat")

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[AsyncConnection[Any]]:
        self._check_loop()
        if self._pool is None:
            if self._closed:
                raise closed_store(
                    f"the PostgreSQL saga log (schema {self.schema!r}) is closed; "
                    "call open() to use this store again"
                )
            await self.open()
        pool = self._pool
        assert pool is not None
        psycopg, psycopg_pool = import_driver()
        used: AsyncConnection[Any] | None = None
        watch = CancellationWatch()
        try:
            for tries_left in reversed(range(pool.max_size + 1)):
                async with pool.connection(pool_wait(self._patience())) as conn:
                    if watch.came():
                        # Cancelled while waiting for the connection, and the cancellation
                        # was lost on the way (Python 3.11's asyncio.wait_for, in the pool,
                        # returns the connection when it arrives just as it is handed over):
                        # raise it here, before anything is sent, or the caller runs on as if
                        # not cancelled. (The connection goes back to the pool.)
                        raise asyncio.CancelledError
                    if tries_left and ended_by_server(conn):
                        await conn.close()  # the pool drops it; take another
                        continue
                    used = conn
                    yield conn
                    self._down = False  # the server answered
                    if self._outage.since is not None:
                        self._outage.back()
                    break
        except psycopg_pool.PoolTimeout as error:
            # The server is down or unreachable (or every connection stayed busy: then
            # the next statement to get one ends the down state at once).
            if self._down:  # waited KNOWN_DOWN
                waited = (
                    "no connection: the server is still unreachable (an earlier call "
                    f"waited {timeout_text(self.connect_timeout)} for one, connect_timeout)"
                )
            else:
                self._down = True
                waited = (
                    f"no connection within {timeout_text(self.connect_timeout)} (connect_timeout)"
                )
            raise StoreError(
                f"PostgreSQL saga log (schema {self.schema!r}): {waited}: check that the "
                "server is up and reachable (or that max_size connections are enough), "
                "or give the store a longer connect_timeout to ride out longer outages"
            ) from error
        except psycopg.Error as error:
            if used is not None and used.broken:
                await self._check_pool(pool)
            raise StoreError(self._refused(error)) from error

    def _refused(self, error: Exception) -> str:
        """What the server's ``error`` says, on one line (not the PL/pgSQL context of the
        statement it stopped in), with the grants to add when the role lacks a right."""
        reason = str(error).strip().partition("\n")[0]
        text = f"PostgreSQL saga log (schema {self.schema!r}): {type(error).__name__}: {reason}"
        state = getattr(error, "sqlstate", None)
        if state == "42501":  # insufficient privilege
            text += (
                f"; the store's role needs USAGE on schema {self.schema} and SELECT, INSERT, "
                f"UPDATE, DELETE on its tables (GRANT ... ON ALL TABLES IN SCHEMA "
                f"{self.schema} TO <role>)"
            )
        elif state == "57014" and "statement timeout" in reason:  # query_canceled
            text += (
                "; the connection's statement_timeout cancelled it (a write waits for the "
                "saga rows another session holds: another worker's write, a migration, an "
                "open transaction): give the store's role a longer one, or none "
                "(ALTER ROLE <role> SET statement_timeout = 0, or options=-c "
                "statement_timeout=0 in the DSN)"
            )
        return text

    async def _check_pool(self, pool: AsyncConnectionPool[Any]) -> None:
        """A connection died (a server restart, a fail-over): test the idle ones now, so
        the next writes do not meet the other dead ones one at a time."""
        try:
            async with asyncio.timeout(self.connect_timeout):
                await pool.check()
        except Exception as error:  # best effort: the error being raised says what happened
            logger.debug("sagakit: checking the PostgreSQL pool failed: %r", error)

    async def _run(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """One statement in its own transaction: one round trip, given up on when its
        answer does not come within ``command_timeout`` (see :meth:`_answered`)."""
        async with self._conn() as conn:
            found = await self._answered(self._statement(conn, sql, params))
            self._statements += 1
            self._round_trips += 1
            return found

    @staticmethod
    async def _statement(
        conn: AsyncConnection[Any], sql: str, params: Any
    ) -> list[tuple[Any, ...]]:
        # ``sql`` is one of the store's Statements (LiteralStrings) passed on as the
        # ``str`` the mixins declare ``_run()`` with; no cast() on every statement's path.
        cursor = await conn.execute(sql, params)  # pyright: ignore[reportArgumentType]
        return await cursor.fetchall() if cursor.description is not None else []

    async def _answered(self, statement: Coroutine[Any, Any, _T]) -> _T:
        """The outcome of ``statement`` (on one connection), whose answer must come within
        ``command_timeout`` (less near the deadline of the tries it is part of): else
        :class:`~sagakit.StoreError`, as a lost connection (see :mod:`._pg_answer`).
        Every statement of the store waits so: on a connection gone silent (a partition
        that resets nothing), one waited some 15 minutes for the kernel to give up."""
        seconds = answer_wait(self.command_timeout)
        try:
            return await answered(statement, seconds)
        except NoAnswer as silent:
            raise StoreError(
                f"PostgreSQL saga log (schema {self.schema!r}): no answer within "
                f"{timeout_text(seconds)} (command_timeout): the connection went silent (a "
                "network partition, a fail-over that left it half-open) or the statement "
                "ran or waited for a lock that long; given up on, it may have committed or "
                "not, which the store finds out before it writes the saga again (recovery "
                "goes on from what the log holds otherwise); if it is merely slow (a read "
                "of a large log), give the store a longer command_timeout"
            ) from silent

    async def _read(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """One statement that writes nothing, again on a new connection while the one it
        used is lost (see :meth:`_again`): reading twice is safe, unlike an ``UPDATE``
        whose commit is in doubt. Each try waits ``command_timeout`` for its answer at
        most (on a silent connection: given up on, as a lost one)."""
        return await self._again(lambda: self._run(sql, params), "reading the saga log")


__all__ = ["Connections"]
