"""A cancellation that reaches the closing of a store (or of ``async with
SagaOrchestrator(...)``) is raised, never swallowed on the way: the code after it does not
run as if its task had not been cancelled."""

from __future__ import annotations

import asyncio

import pytest

from sagakit import PostgresStore


@pytest.mark.asyncio
async def test_a_postgres_store_cancelled_while_its_heartbeat_stops_raises_it(
    dsn: str, schema: str
) -> None:
    # Regression: close() awaited its cancelled heartbeat under
    # contextlib.suppress(CancelledError), which swallowed the cancellation of close()'s
    # own caller too (it waits for the heartbeat to end): close() returned normally.
    store = PostgresStore(dsn, schema=schema, lease=5.0, heartbeat=0.01)
    await store.open()
    renewing = asyncio.Event()
    gate = asyncio.Event()

    async def slow_renew() -> int:
        renewing.set()
        await asyncio.shield(gate.wait())  # a renewal on its way: it ends when it ends
        return 0

    store.renew = slow_renew  # type: ignore[method-assign]
    await renewing.wait()
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0)  # close() now waits for the heartbeat
    closing.cancel()
    await asyncio.sleep(0)
    gate.set()
    await asyncio.wait({closing}, timeout=10.0)  # a guard, not a timing check
    assert closing.done()
    assert closing.cancelled()  # not swallowed
    assert store._pool is None  # and the store was closed all the same
