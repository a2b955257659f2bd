"""PostgreSQL: ``close()`` closes its pool within what is left of ``connect_timeout``,
and closes the pool's connections even when it is cancelled meanwhile.

``close()`` promised ``connect_timeout`` at most in all, then closed its pool with
psycopg_pool's default: the pool waits up to 5 s more for its background workers (one
may be opening a connection to a server gone silent). And a cancellation of ``close()``
while the pool closed cut that short: the pool's idle connections, already taken out of
it, were left open.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool
from psycopg_pool.pool_async import MaintenanceTask

from sagakit import PostgresStore

pytestmark = pytest.mark.asyncio

GIVE_UP = 30.0  # seconds before close() is declared hung (a guard, not a measurement)


class Stuck(MaintenanceTask):
    """A pool worker's task that never ends until ``release`` is set (a connection being
    opened to a server gone silent): the pool's close() waits for its worker."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        super().__init__(pool)
        self.running = asyncio.Event()
        self.release = asyncio.Event()
        self.worker: asyncio.Task[Any] | None = None

    async def _run(self, pool: AsyncConnectionPool[Any]) -> None:
        self.worker = asyncio.current_task()
        self.running.set()
        await self.release.wait()


async def with_a_stuck_worker(store: PostgresStore) -> tuple[AsyncConnectionPool[Any], Stuck]:
    """The store's pool, one of whose workers is stuck."""
    await store.open()
    pool = store._pool
    assert pool is not None
    stuck = Stuck(pool)
    pool.run_task(stuck)
    async with asyncio.timeout(GIVE_UP):
        await stuck.running.wait()
    return pool, stuck


def spied(pool: AsyncConnectionPool[Any], timeouts: list[float], called: asyncio.Event) -> None:
    """Note the timeout each call of ``pool.close()`` is given, then close it."""
    close = pool.close

    async def spy(timeout: float = 5.0) -> None:  # noqa: ASYNC109 (pool.close()'s own)
        timeouts.append(timeout)
        called.set()
        await close(timeout)

    pool.close = spy  # type: ignore[method-assign]


async def unstuck(stuck: Stuck) -> None:
    """Let the stuck worker end (it then takes its stop and returns)."""
    stuck.release.set()
    if stuck.worker is not None:
        async with asyncio.timeout(GIVE_UP):
            await asyncio.gather(stuck.worker, return_exceptions=True)


@asynccontextmanager
async def a_stuck_store(
    dsn: str, schema: str
) -> AsyncIterator[tuple[PostgresStore, AsyncConnectionPool[Any], list[Any]]]:
    """An open store one of whose pool's workers is stuck, its pool, and the (idle)
    connections in that pool; the worker let go and the store closed after."""
    store = PostgresStore(dsn, schema=schema, connect_timeout=1.0, min_size=2)
    pool, stuck = await with_a_stuck_worker(store)
    connections = list(pool._pool)
    assert connections
    try:
        yield store, pool, connections
    finally:
        await unstuck(stuck)
        await store.close()


def assert_all_closed(
    store: PostgresStore, pool: AsyncConnectionPool[Any], connections: Sequence[Any]
) -> None:
    assert pool.closed
    assert store._pool is None
    assert all(connection.closed for connection in connections)


async def test_close_gives_the_pool_what_is_left_of_connect_timeout(dsn: str, schema: str) -> None:
    # Regression: the pool's close() was given its default 5 s, on top of the
    # connect_timeout close() promised in all.
    async with a_stuck_store(dsn, schema) as (store, pool, connections):
        timeouts: list[float] = []
        spied(pool, timeouts, asyncio.Event())
        async with asyncio.timeout(GIVE_UP):
            await store.close()
        [timeout] = timeouts
        assert 0.0 < timeout <= 1.0
        assert_all_closed(store, pool, connections)


async def test_a_close_cancelled_while_its_pool_closes_still_closes_the_connections(
    dsn: str, schema: str
) -> None:
    # Regression: the cancellation cut the pool's close() short as it waited for its
    # workers: the idle connections it had taken out of the pool were never closed.
    async with a_stuck_store(dsn, schema) as (store, pool, connections):
        called = asyncio.Event()
        spied(pool, [], called)
        closing = asyncio.create_task(store.close())
        async with asyncio.timeout(GIVE_UP):
            await called.wait()
        await asyncio.sleep(0)  # the pool's close() now waits for its workers
        closing.cancel()
        async with asyncio.timeout(GIVE_UP):
            with pytest.raises(asyncio.CancelledError):
                await closing
        assert_all_closed(store, pool, connections)
