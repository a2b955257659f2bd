"""PostgreSQL: a running saga's write on a connection gone silent fails within the store's
``connect_timeout``, in doubt, and the saga is left to recovery.

A statement on a connection that went silent (a partition, a fail-over that leaves it
half-open: no reset) waits for the kernel to give up, some 15 minutes, and so may
psycopg's request to cancel it. A running saga's write (the log writer's batch), the
settling of a write in doubt, ``finish()``'s writing of what was staged and its release of
the lease each waited without bound: ``execute()`` hung, the saga stuck in the process.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from pg_helpers.db import opened
from pg_helpers.proxy import Proxy
from pg_helpers.silent import GIVE_UP, behind_a_proxy, never_answering
from sagakit import SagaOrchestrator, SagaStatus, StoreError, saga, step
from sagakit.stores._pg_answer import NoAnswer, answered

pytestmark = pytest.mark.asyncio

ran: list[str] = []
proxies: list[Proxy] = []


@step
async def sw_book(order: str) -> str:
    ran.append(f"book {order}")
    if proxies:  # the first run only: its connections go silent as the step ends
        proxies.pop().silence()
    return order


@step
async def sw_ship(order: str) -> str:
    ran.append(f"ship {order}")
    return order


@saga
def sw_order(order: str) -> Any:
    yield sw_book(order)
    yield sw_ship(order)


async def ended(running: asyncio.Future[Any]) -> None:
    """Wait for ``running``, which must end within the guard."""
    await asyncio.wait((running,), timeout=GIVE_UP)
    if not running.done():
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        pytest.fail(f"execute() had not returned after {GIVE_UP} s")


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "sagakit" and r.levelname == "WARNING"
    ]


async def recovered(dsn: str, schema: str) -> list[tuple[str, SagaStatus]]:
    """Recover the saga from another store, once the lease its run held runs out."""
    async with opened(dsn, schema) as other:
        async with asyncio.timeout(GIVE_UP):
            while True:
                outcomes = await SagaOrchestrator(other).recover()
                if outcomes:
                    return [(o.saga_id, o.status) for o in outcomes]
                await asyncio.sleep(0.05)


async def test_a_write_that_gets_no_answer_fails_in_doubt_and_the_saga_is_recovered(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: the start of ship (carrying book's completion) went out on a connection
    # gone silent and execute() waited for its answer without bound, and so would the
    # settling of it, finish() and its release of the lease (each on an idle connection
    # of the pool, gone silent too: min_size).
    ran.clear()
    caplog.set_level(logging.WARNING, logger="sagakit")
    async with behind_a_proxy(dsn, schema, min_size=8) as (store, proxy):
        proxies.append(proxy)
        running = asyncio.ensure_future(
            SagaOrchestrator(store).execute(sw_order("o"), saga_id="sw-1")
        )
        await ended(running)
        with pytest.raises(StoreError):  # (its end could not be written either)
            running.result()
    [unwritten] = [m for m in warnings(caplog) if "could not record that step 1" in m]
    assert (
        "could not record that step 1 ('sw_ship') started: StoreError: cannot write the saga "
        "log to PostgreSQL: "
    ) in unwritten
    assert (
        "no answer within 0.5 s (command_timeout): the connection went silent (a network "
        "partition, a fail-over that left it half-open) or the statement ran or waited for "
        "a lock that long; given up on, it may have committed or not, which the store finds "
        "out before it writes the saga again (recovery goes on from what the log holds "
        "otherwise); if it is merely slow (a read of a large log), give the store a longer "
        "command_timeout"
    ) in unwritten
    # Nothing was taken for written: recovered from what the log holds, book (whose
    # completion went with the lost write) runs again, then ship.
    assert await recovered(dsn, schema) == [("sw-1", SagaStatus.COMPLETED)]
    assert ran == ["book o", "book o", "ship o"]


async def test_a_cancelled_write_whose_settling_gets_no_answer_ends(dsn: str, schema: str) -> None:
    # Regression: an execute() cancelled while its write was on a silent connection
    # settled that write (whether it committed) on a connection just as silent, waiting
    # for its answer without bound.
    ran.clear()
    async with behind_a_proxy(dsn, schema, connect_timeout=5.0, min_size=2) as (store, proxy):
        await store.open()
        proxies.append(proxy)
        writing = asyncio.Event()
        apply = store._apply

        async def noted(writes: Any) -> Any:
            if proxy.silent:
                writing.set()
            return await apply(writes)

        store._writer._send = noted  # type: ignore[method-assign]
        running = asyncio.ensure_future(
            SagaOrchestrator(store).execute(sw_order("o"), saga_id="sw-2")
        )
        async with asyncio.timeout(GIVE_UP):
            await writing.wait()  # ship's start, on its way to a silent server
        running.cancel()
        await ended(running)
        assert running.cancelled()
    assert await recovered(dsn, schema) == [("sw-2", SagaStatus.COMPLETED)]
    assert ran == ["book o", "book o", "ship o"]


async def test_a_statement_that_gets_no_answer_is_cancelled_twice_and_said_so() -> None:
    # The wait for a statement's answer: past it, the statement is cancelled, and again
    # when its cancellation gets no answer either (psycopg asking the silent server to
    # cancel it); then NoAnswer, which the store takes for a lost connection.
    reached = asyncio.Event()
    cancelled: list[str] = []
    silent = never_answering(reached, cancelled, "statement", stubborn=True)
    answering = asyncio.ensure_future(answered(silent(), 0.05))
    await asyncio.wait((answering,), timeout=GIVE_UP)
    assert answering.done()
    with pytest.raises(NoAnswer):
        answering.result()
    assert cancelled == ["statement", "statement again"]


async def test_a_caller_cancelled_while_a_statement_gets_no_answer_is_cancelled_at_once() -> None:
    reached = asyncio.Event()
    cancelled: list[str] = []
    silent = never_answering(reached, cancelled, "statement", stubborn=True)
    answering = asyncio.ensure_future(answered(silent(), 3600.0))
    await reached.wait()
    answering.cancel()
    await asyncio.wait((answering,), timeout=GIVE_UP)
    assert answering.cancelled()
    assert cancelled == ["statement", "statement again"]


async def test_a_start_that_gets_no_answer_fails_and_runs_nothing(dsn: str, schema: str) -> None:
    # Regression: the start of a saga with an explicit id (its row's INSERT) waited for its
    # answer on a silent connection without bound, and so did taking its row out again
    # once the execute() was cancelled.
    ran.clear()
    async with behind_a_proxy(dsn, schema) as (store, proxy):
        await store.open()
        proxy.silence()
        running = asyncio.ensure_future(
            SagaOrchestrator(store).execute(sw_order("o"), saga_id="sw-3")
        )
        await ended(running)
        with pytest.raises(StoreError) as raised:
            running.result()
        said = str(raised.value)
        assert "no answer within 0.5 s (command_timeout)" in said, said
    assert ran == []


async def test_a_start_cancelled_while_it_gets_no_answer_ends(dsn: str, schema: str) -> None:
    # Regression: cancelled, the start took its row out again (it may have committed)
    # on a connection just as silent, whatever cancelled it meanwhile: without bound.
    ran.clear()
    async with behind_a_proxy(dsn, schema, connect_timeout=5.0) as (store, proxy):
        await store.open()
        proxy.silence()
        running = asyncio.ensure_future(
            SagaOrchestrator(store).execute(sw_order("o"), saga_id="sw-4")
        )
        await asyncio.sleep(0.2)  # (its start on its way, or not yet: ends either way)
        running.cancel()
        await ended(running)
        assert running.cancelled()
    assert ran == []
