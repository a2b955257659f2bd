"""A cancellation lost while waiting for a pooled connection is raised all the same.

Python 3.11's ``asyncio.wait_for`` (which ``psycopg_pool`` waits for a connection with)
returns the connection when the cancellation arrives just as it is handed over: the
store's operation then ran as if its caller had not been cancelled. The worker loop,
``recover()`` and the heartbeat each checked for it; every other operation did not.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from sagakit import PostgresStore


@pytest.mark.asyncio
async def test_an_operation_cancelled_while_the_pool_loses_it_raises_it(
    dsn: str, schema: str
) -> None:
    store = PostgresStore(dsn, schema=schema)
    await store.open()
    pool = store._pool
    assert pool is not None
    getconn = pool.getconn
    waiting = asyncio.Event()
    calls: list[str] = []

    async def losing_getconn(*args: Any, **kwargs: Any) -> Any:
        waiting.set()
        with contextlib.suppress(asyncio.CancelledError):  # lost on the way
            await asyncio.Event().wait()
        return await getconn(*args, **kwargs)

    pool.getconn = losing_getconn  # type: ignore[method-assign]

    async def read() -> None:
        await store.get("nobody")
        calls.append("went on")

    task = asyncio.create_task(read())
    await waiting.wait()
    task.cancel()
    await asyncio.wait({task}, timeout=10.0)  # a guard, not a timing check
    assert task.cancelled(), calls
    assert calls == []
    pool.getconn = getconn  # type: ignore[method-assign]
    assert await store.get("nobody") is None  # the connection went back to the pool
    await store.close()
