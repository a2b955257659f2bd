"""A cancellation that reaches the closing of a store (or of ``async with
SagaOrchestrator(...)``) is raised, never swallowed on the way: the code after it does not
run as if its task had not been cancelled."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from sagakit import MemoryStore, PostgresStore, SagaOrchestrator, SQLiteStore


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


class _SwallowingClose(MemoryStore):
    """A store whose close() catches its caller's cancellation. (A subclass, not a
    wrapper forwarding through ``__getattr__``: since Python 3.12 ``isinstance`` against
    a runtime-checkable protocol looks attributes up statically, so it would not pass
    for a store.)"""

    def __init__(self, closing: asyncio.Event) -> None:
        super().__init__()
        self._closing = closing

    async def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        await super().close()


@pytest.mark.asyncio
async def test_leaving_an_orchestrator_cancelled_raises_even_if_the_store_swallows_it() -> None:
    # Regression: `async with SagaOrchestrator(store)` whose exit was cancelled while the
    # store closed, by a store that caught the cancellation, left the block normally: the
    # code after it ran in a task that had been cancelled.
    from sagakit import SagaStore

    closing = asyncio.Event()
    store = _SwallowingClose(closing)
    assert isinstance(store, SagaStore)
    after: list[str] = []

    async def use() -> None:
        async with SagaOrchestrator(store):
            pass
        after.append("went on")

    task = asyncio.create_task(use())
    await closing.wait()
    task.cancel()
    await asyncio.wait({task}, timeout=10.0)  # a guard
    assert task.cancelled()
    assert after == []


@pytest.mark.asyncio
async def test_a_sqlite_store_cancelled_while_a_hand_over_is_retried_raises_it(
    tmp_path: Path,
) -> None:
    # Regression: close() waited for the hand-over being retried (of sagas whose end the
    # log had refused) with wait_out(), which leaves raising the caller's cancellation to
    # the caller; close() did not, and returned normally.
    store = SQLiteStore(tmp_path / "s.db")
    gate = asyncio.Event()
    store._retrying = asyncio.create_task(gate.wait())  # a retried hand-over on its way
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0)  # close() now waits for it
    closing.cancel()
    await asyncio.sleep(0)
    gate.set()
    await asyncio.wait({closing}, timeout=10.0)  # a guard, not a timing check
    assert closing.done()
    assert closing.cancelled()  # not swallowed
    assert not store._writer.usable  # and the store was closed all the same
