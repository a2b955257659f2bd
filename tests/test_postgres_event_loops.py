"""PostgreSQL: a store used from an event loop other than the one that opened it.

Its connection pool's tasks and lease heartbeat run in the loop that opened it. From a
loop running in another thread, a use raised a ``RuntimeError`` about an asyncio lock
"bound to a different event loop", or a write never returned; after an earlier
``asyncio.run()`` ended, sagas ran on with nobody renewing their leases (for other
workers to take over mid-run), and closing raised ``RuntimeError('Event loop is closed')``.
Each now raises a :class:`~sagakit.StoreError` that says so and names the fix.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from sagakit import PostgresStore, SagaOrchestrator, StoreError, saga, step


@step
async def el_step(n: int) -> int:
    return n


@saga
def el_saga(n: int):  # type: ignore[no-untyped-def]
    yield el_step(n)


def test_a_store_used_again_after_its_asyncio_run_ended_says_to_make_a_new_one(
    dsn: str, schema: str
) -> None:
    store = PostgresStore(dsn, schema=schema)
    orchestrator = SagaOrchestrator(store)
    assert asyncio.run(orchestrator.execute(el_saga(1))) == [1]
    with pytest.raises(StoreError, match="opened in an event loop that has ended") as used:
        asyncio.run(orchestrator.execute(el_saga(2)))
    assert "make one in each thread's event loop" in str(used.value)
    with pytest.raises(StoreError, match="opened in an event loop that has ended"):
        asyncio.run(store.close())
    asyncio.run(store.close())  # forgotten by the refused close: closed now

    async def reopened() -> list[Any]:  # open() again, in a loop of its own, is fine
        await store.open()
        try:
            return await SagaOrchestrator(store).execute(el_saga(3))
        finally:
            await store.close()

    assert asyncio.run(reopened()) == [3]


@pytest.mark.asyncio
async def test_a_store_used_from_a_loop_in_another_thread_says_so(dsn: str, schema: str) -> None:
    store = PostgresStore(dsn, schema=schema)
    try:
        await SagaOrchestrator(store).execute(el_saga(1))  # opened in this loop
        errors: list[BaseException] = []

        def other_thread() -> None:
            try:
                asyncio.run(SagaOrchestrator(store).execute(el_saga(2)))
            except BaseException as error:
                errors.append(error)

        thread = threading.Thread(target=other_thread)
        thread.start()
        await asyncio.to_thread(thread.join, 60)  # (a guard, not a timing check)
        assert not thread.is_alive()
        [error] = errors
        assert isinstance(error, StoreError)
        assert "opened in an event loop still running in another thread" in str(error)
        assert await SagaOrchestrator(store).execute(el_saga(3)) == [3]  # unharmed here
    finally:
        await store.close()


def test_a_store_used_while_the_loop_that_opened_it_is_idle_says_so(dsn: str, schema: str) -> None:
    # Regression: a loop neither running nor closed (pytest-asyncio's loop of a fixture of
    # another loop scope than the test's, between uses) was said to have ended, "an
    # earlier asyncio.run()", which named neither the cause nor the fix.
    store = PostgresStore(dsn, schema=schema)
    opened_in = asyncio.new_event_loop()
    try:
        assert opened_in.run_until_complete(SagaOrchestrator(store).execute(el_saga(1))) == [1]
        with pytest.raises(StoreError) as used:
            asyncio.run(SagaOrchestrator(store).execute(el_saga(2)))
        assert "opened in another event loop, not running now" in str(used.value)
        assert "loop_scope" in str(used.value)  # pytest-asyncio's fix
        pool = store._pool
        with pytest.raises(StoreError, match="opened in another event loop, not running now"):
            asyncio.run(store.close())
        assert store._pool is pool  # kept for its loop to close (not forgotten, left open)
        assert opened_in.run_until_complete(SagaOrchestrator(store).execute(el_saga(3))) == [3]
    finally:
        opened_in.run_until_complete(store.close())
        opened_in.close()


def test_a_worker_in_a_later_loop_raises_the_error_rather_than_retry_it(
    dsn: str, schema: str
) -> None:
    # Regression: run_worker() took the refusal for a database away for a while: it
    # logged "could not claim sagas (N in a row)" and tried again, backing off, for good,
    # a worker that never worked and never stopped.
    store = PostgresStore(dsn, schema=schema)
    orchestrator = SagaOrchestrator(store)
    assert asyncio.run(orchestrator.execute(el_saga(1))) == [1]

    async def work() -> None:  # (bounded: fails, not hangs, without the fix)
        await asyncio.wait_for(
            orchestrator.run_worker(poll_interval=0.01, handle_signals=False), 60
        )

    with pytest.raises(StoreError, match="opened in an event loop that has ended"):
        asyncio.run(work())
    with pytest.raises(StoreError):
        asyncio.run(store.close())  # (forgets the pool it cannot close)
