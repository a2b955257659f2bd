"""PostgreSQL: an ``open()`` whose pool fails to fill closes that pool within what is
left of ``connect_timeout`` (a tenth of a second at least), not psycopg_pool's 5 s.

The pool was opened with ``open(wait=True, timeout=connect_timeout)``: when it timed
out, psycopg_pool closed it with its default ``close()`` timeout, 5 s for its background
workers (one opening a connection to a server gone silent), and the store's own
``pool.close()`` after it had the same default: a failed open could take 5 s more than
the ``connect_timeout`` it is documented to fail after.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection

from sagakit import PostgresStore
from sagakit.exceptions import StoreError
from sagakit.stores import _pg_pool

pytestmark = pytest.mark.asyncio

GIVE_UP = 30.0  # seconds before open() is declared hung (a guard, not a measurement)


class Silent(_pg_pool.Pool):
    """A pool whose every new connection waits for a server gone silent (until
    ``release`` is set; ``connecting`` is set meanwhile) and that notes the timeout each
    ``close()`` is given."""

    connecting: asyncio.Event
    release: asyncio.Event
    timeouts: list[float]
    workers: list[asyncio.Task[Any]]

    async def _connect(self, timeout: float | None = None) -> AsyncConnection[Any]:  # noqa: ASYNC109
        task = asyncio.current_task()
        assert task is not None
        self.workers.append(task)
        self.connecting.set()
        await self.release.wait()
        raise psycopg.OperationalError("the server went silent")

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (the pool's own)
        self.timeouts.append(timeout)
        await super().close(timeout)


def silent_pools(
    monkeypatch: pytest.MonkeyPatch, release: asyncio.Event, connecting: asyncio.Event
) -> list[Silent]:
    """The pools the stores open from now on: :class:`Silent` ones (listed as made)."""
    pools: list[Silent] = []

    def silent(*args: Any, **kwargs: Any) -> Silent:
        pool = Silent(*args, **kwargs)  # (open=False: not connecting yet)
        pool.connecting, pool.release = connecting, release
        pool.timeouts, pool.workers = [], []
        pools.append(pool)
        return pool

    monkeypatch.setattr(_pg_pool, "Pool", silent)
    return pools


@asynccontextmanager
async def silent_store(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch, connect_timeout: float
) -> AsyncIterator[tuple[PostgresStore, list[Silent], asyncio.Event]]:
    """A store (not open) whose pools are :class:`Silent`, the pools it makes, and the
    event set once one of them is connecting; its workers let go and the store closed
    after."""
    release = asyncio.Event()
    connecting = asyncio.Event()
    pools = silent_pools(monkeypatch, release, connecting)
    store = PostgresStore(dsn, schema=schema, connect_timeout=connect_timeout, min_size=1)
    try:
        yield store, pools, connecting
    finally:
        release.set()
        for pool in pools:
            async with asyncio.timeout(GIVE_UP):
                await asyncio.gather(*pool.workers, return_exceptions=True)
        await store.close()


async def test_a_failed_open_closes_its_pool_within_connect_timeout(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: the pool that did not fill within connect_timeout was closed with
    # psycopg_pool's default 5 s, by psycopg_pool itself and by the store after it.
    async with silent_store(dsn, schema, monkeypatch, connect_timeout=1.0) as (store, pools, _):
        async with asyncio.timeout(GIVE_UP):
            with pytest.raises(StoreError, match="cannot open the PostgreSQL saga log"):
                await store.open()
        [pool] = pools
        assert pool.workers  # it was trying to connect
        assert pool.timeouts
        assert all(0.0 < timeout <= 1.0 for timeout in pool.timeouts), pool.timeouts
        assert pool.closed
        assert store._pool is None


async def test_an_open_cancelled_while_its_pool_fills_closes_it_within_connect_timeout(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: the pool of an open() cancelled while it waited for connections was
    # closed with psycopg_pool's default 5 s.
    async with silent_store(dsn, schema, monkeypatch, connect_timeout=GIVE_UP) as (
        store,
        pools,
        connecting,
    ):
        opening = asyncio.create_task(store.open())
        async with asyncio.timeout(GIVE_UP):
            await connecting.wait()  # its pool's worker is trying to connect
        opening.cancel()
        async with asyncio.timeout(GIVE_UP):
            with pytest.raises(asyncio.CancelledError):
                await opening
        [pool] = pools
        assert pool.timeouts
        assert all(0.0 < timeout < 5.0 for timeout in pool.timeouts), pool.timeouts
        assert pool.closed
        assert store._pool is None
