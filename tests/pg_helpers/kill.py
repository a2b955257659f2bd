"""Test helper for PostgreSQL: kill the store's own backend in the middle of a statement."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from pg_helpers.db import GIVE_UP

if TYPE_CHECKING:
    from sagakit import PostgresStore

_WAITING = (
    "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'"
)
_ALIVE = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s"


class KillDuring:
    """Kills the store's backend while it runs the first statement ``sql`` (once)."""

    def __init__(self, store: PostgresStore, dsn: str, schema: str, app: str, sql: str) -> None:
        self.store, self.dsn, self.schema, self.app, self.sql = store, dsn, schema, app, sql
        self.killed = 0
        self._real = store._run
        store._run = self._run  # type: ignore[method-assign]

    async def _run(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        if sql != self.sql or self.killed:
            return await self._real(sql, params)
        psycopg = pytest.importorskip("psycopg")
        tables = ", ".join(f'"{self.schema}".{t}' for t in ("sagas", "steps", "events"))
        async with (
            await psycopg.AsyncConnection.connect(self.dsn) as locker,
            await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as killer,
        ):
            await locker.execute(f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE")
            read = asyncio.ensure_future(self._real(sql, params))
            async with asyncio.timeout(GIVE_UP):
                [(pid,)] = await polled(killer, _WAITING, (self.app,), bool)
                await killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
                # Gone before the tables are let go of (else it might read, then end).
                await polled(killer, _ALIVE, (pid,), lambda found: found == [(0,)])
            self.killed += 1
            await locker.rollback()
        return await read


async def polled(
    conn: Any, sql: str, params: Any, done: Callable[[list[tuple[Any, ...]]], bool]
) -> list[tuple[Any, ...]]:
    """The rows of ``sql``, read again until ``done`` with them."""
    while True:
        found: list[tuple[Any, ...]] = await (await conn.execute(sql, params)).fetchall()
        if done(found):
            return found
        await asyncio.sleep(0.01)
