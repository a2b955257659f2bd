"""PostgreSQL: ``close()`` on a connection gone silent returns, within the store's
``connect_timeout`` for all of it (one wait, not one per call), and says what it could
not write.

A statement on a connection that went silent (a partition, a server host gone, with no
reset) waits for the kernel to give up, some 15 minutes, and so may psycopg's request to
cancel it. ``close()`` bounded only the release of the leases still held: stopping a
heartbeat whose renewal was on its way, writing what sagas had staged and waiting for the
log writer's batch in flight each waited without bound. What close() could not write is
left to recovery: the log never shows it written, so the saga is recovered from what the
log holds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from pg_helpers.db import opened
from pg_helpers.proxy import proxied
from pg_helpers.silent import never_answering
from sagakit import PostgresStore, SagaOrchestrator, SagaStatus, StepStatus, saga, step
from sagakit.stores._pg_writer import Write
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

pytestmark = pytest.mark.asyncio

GIVE_UP = 30.0  # seconds before close() is declared hung (a guard, not a measurement)

ran: list[str] = []


@step
async def cs_book(order: str) -> str:
    ran.append(f"book {order}")
    return order


@step
async def cs_ship(order: str) -> str:
    ran.append(f"ship {order}")
    return order


@saga
def cs_order(order: str) -> Any:
    yield cs_book(order)
    yield cs_ship(order)


async def crashed_at_ship(dsn: str, schema: str, saga_id: str) -> None:
    """A saga ``saga_id`` in the log whose worker died as its ship step began."""
    async with opened(dsn, schema) as setup:
        with FaultInjector().crash(cs_ship), pytest.raises(SimulatedCrash):
            await SagaOrchestrator(setup).execute(cs_order("o"), saga_id=saga_id)
        await simulate_restart(setup)


async def closed(store: PostgresStore) -> None:
    """``store.close()``, which must end within the guard."""
    closing = asyncio.create_task(store.close())
    await asyncio.wait((closing,), timeout=GIVE_UP)
    if not closing.done():
        closing.cancel()
        await asyncio.gather(closing, return_exceptions=True)
        pytest.fail(f"close() had not returned after {GIVE_UP} s")
    await closing


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "sagakit" and r.levelname == "WARNING"
    ]


async def test_closing_a_store_whose_lease_renewal_gets_no_answer_returns(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: close() cancelled its heartbeat and waited for it to end: a renewal on
    # a silent connection (and psycopg's request to cancel it) held close() as long.
    await crashed_at_ship(dsn, schema, "cs-beat")
    store = PostgresStore(dsn, schema=schema, connect_timeout=0.2, heartbeat=0.05)
    await store.open()
    assert [o.saga_id for o in await store.claim_orphans()] == ["cs-beat"]
    renewing = asyncio.Event()
    cancelled: list[str] = []
    run = store._run
    silent = never_answering(renewing, cancelled, "renewal", stubborn=True)

    async def silent_renewal(sql: str, params: Any = None) -> Any:
        if sql == store._sql.heartbeat:
            return await silent()
        return await run(sql, params)

    store._run = silent_renewal  # type: ignore[method-assign]
    await renewing.wait()
    await closed(store)
    assert cancelled[:2] == ["renewal", "renewal again"]
    assert store._pool is None


async def test_closing_a_store_whose_staged_writes_get_no_answer_returns_and_says_so(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: close() wrote what sagas had staged, then waited for the log writer's
    # batch, each without bound on a silent connection. It gives up on them within
    # connect_timeout for all of close() (here the first call given up makes it an hour:
    # a call that waited connect_timeout anew would hang), names the sagas whose
    # transitions it could not write, and leaves them to recovery: their log never shows
    # what was not written.
    ran.clear()
    await crashed_at_ship(dsn, schema, "cs-flush")
    store = PostgresStore(dsn, schema=schema, connect_timeout=0.2, lease=0.5)
    await store.open()
    assert [o.saga_id for o in await store.claim_orphans()] == ["cs-flush"]
    # Its recovered run completed ship, and stopped before its next write: the
    # completion is staged, written with that write (here by close()).
    fence = store._held["cs-flush"].fence
    store._staged["cs-flush"] = [
        Write("cs-flush", "cs_order", fence, str(SagaStatus.EXECUTING), index=1,
              step_name="cs_ship", step_status=str(StepStatus.COMPLETED), attempts=2,
              duration=0.001, result='"o"')
    ]  # fmt: skip
    writing = asyncio.Event()
    cancelled: list[str] = []

    def longer() -> None:
        store.connect_timeout = 3600.0

    store._writer._send = never_answering(  # type: ignore[method-assign]
        writing, cancelled, "write", stubborn=True, on_cancel=longer
    )
    store._run = never_answering(asyncio.Event(), cancelled, "statement", stubborn=True)  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING, logger="sagakit")
    await closed(store)
    assert writing.is_set()
    assert cancelled[:2] == ["write", "write again"]
    assert store._pool is None
    [unwritten] = [m for m in warnings(caplog) if "staged" in m]
    assert unwritten == (
        "sagakit could not write the staged transitions of 1 saga on close: no answer "
        "within 0.2 s (connect_timeout); recovery finishes them from what the log holds: "
        "cs_order (cs-flush)"
    )
    # Recovered from the log, which does not show ship completed: ship runs again.
    async with opened(dsn, schema) as other:
        async with asyncio.timeout(GIVE_UP):
            while True:  # until the lease that close() could not release runs out
                outcomes = await SagaOrchestrator(other).recover()
                if outcomes:
                    break
                await asyncio.sleep(0.05)
        assert [(o.saga_id, o.status) for o in outcomes] == [("cs-flush", SagaStatus.COMPLETED)]
    assert ran == ["book o", "ship o"]


async def test_a_close_cancelled_while_its_staged_writes_get_no_answer_ends_and_says_so(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A cancelled close() waits no longer for the server (here an hour): what it could not
    # write is named all the same, the pool is closed, and the cancellation is raised.
    await crashed_at_ship(dsn, schema, "cs-cancel")
    store = PostgresStore(dsn, schema=schema, connect_timeout=3600)
    await store.open()
    assert [o.saga_id for o in await store.claim_orphans()] == ["cs-cancel"]
    fence = store._held["cs-cancel"].fence
    store._staged["cs-cancel"] = [
        Write("cs-cancel", "cs_order", fence, str(SagaStatus.EXECUTING), index=1,
              step_name="cs_ship", step_status=str(StepStatus.COMPLETED), attempts=2,
              duration=0.001, result='"o"')
    ]  # fmt: skip
    writing = asyncio.Event()
    cancelled: list[str] = []
    store._writer._send = never_answering(writing, cancelled, "write", stubborn=True)  # type: ignore[method-assign]
    store._run = never_answering(asyncio.Event(), cancelled, "statement", stubborn=True)  # type: ignore[method-assign]
    closing = asyncio.create_task(store.close())
    await writing.wait()
    closing.cancel()
    await asyncio.wait((closing,), timeout=GIVE_UP)
    assert closing.done()
    assert closing.cancelled()  # not swallowed
    assert store._pool is None  # and the store was closed all the same
    assert cancelled[:2] == ["write", "write again"]
    [unwritten] = [m for m in warnings(caplog) if "staged" in m]
    assert unwritten == (
        "sagakit could not write the staged transitions of 1 saga on close: close() was "
        "cancelled; recovery finishes them from what the log holds: cs_order (cs-cancel)"
    )


def staged_ship(store: PostgresStore, saga_id: str) -> None:
    """As if the recovered run of ``saga_id`` completed ship and stopped before its next
    write: the completion is staged, to go with that write (here close()'s)."""
    fence = store._held[saga_id].fence
    store._staged[saga_id] = [
        Write(saga_id, "cs_order", fence, str(SagaStatus.EXECUTING), index=1,
              step_name="cs_ship", step_status=str(StepStatus.COMPLETED), attempts=2,
              duration=0.001, result='"o"')
    ]  # fmt: skip


async def test_closing_a_store_behind_a_proxy_that_stops_forwarding_returns(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The same with psycopg itself on connections gone silent (a TCP proxy that stops
    # forwarding and drops nothing): a renewal on its way, whose cancellation psycopg
    # asks the server for in vain, a staged write, the release.
    ran.clear()
    await crashed_at_ship(dsn, schema, "cs-proxy")
    with proxied(dsn) as proxy:
        store = PostgresStore(
            proxy.dsn(), schema=schema, connect_timeout=1.0, lease=1.0, heartbeat=0.1, min_size=2
        )
        await store.open()
        assert [o.saga_id for o in await store.claim_orphans()] == ["cs-proxy"]
        staged_ship(store, "cs-proxy")
        renew = store.renew
        renewing = asyncio.Event()

        async def noted_renewal() -> int:
            renewing.set()
            return await renew()

        store.renew = noted_renewal  # type: ignore[method-assign]
        proxy.silence()
        renewing.clear()
        await renewing.wait()  # a renewal on its way, which gets no answer
        await closed(store)
        assert store._pool is None
        [unwritten] = [m for m in warnings(caplog) if "staged" in m]
        assert unwritten.endswith(
            "recovery finishes them from what the log holds: cs_order (cs-proxy)"
        )
    async with opened(dsn, schema) as other:
        async with asyncio.timeout(GIVE_UP):
            while True:  # until the lease that close() could not release runs out
                outcomes = await SagaOrchestrator(other).recover()
                if outcomes:
                    break
                await asyncio.sleep(0.05)
        assert [(o.saga_id, o.status) for o in outcomes] == [("cs-proxy", SagaStatus.COMPLETED)]
    assert ran == ["book o", "ship o"]
