"""PostgreSQL: a worker stopped while a saga it recovers is compensating hands it over quietly.

The stopping worker releases the saga's lease, then cancels its task; the cancelled
compensation restarts (a cancellation never leaves one half done) and its first write is
fenced out. That is the normal lifecycle of a deploy, told once at INFO by its saga_stopped
record like a handover in a step (tests/test_handover_log_levels.py); it used to log two
WARNINGs per saga — its compensation and its end "could not be recorded: LeaseLost" — as if
the log were failing (then the same two at INFO beside saga_stopped).
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from pg_helpers.db import expire, opened
from sagakit import SagaOrchestrator, saga, step
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

pytestmark = pytest.mark.asyncio

UNDOING = asyncio.Event()
undone: list[int] = []


@step
async def hc_book(n: int) -> int:
    return n


@hc_book.compensate
async def hc_unbook(n: int) -> None:
    undone.append(n)
    UNDOING.set()
    await asyncio.Event().wait()  # until the stopping worker cancels it


@step
async def hc_pay(n: int) -> int:
    raise ValueError("declined")


@saga
def hc_saga(n: int):  # type: ignore[no-untyped-def]
    yield hc_book(n)
    yield hc_pay(n)


async def test_a_worker_stopped_mid_compensation_hands_over_without_warnings(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    UNDOING.clear()
    undone.clear()
    caplog.set_level(logging.INFO, logger="sagakit")
    async with opened(dsn, schema) as store:
        with FaultInjector().crash(hc_book, compensation=True), pytest.raises(SimulatedCrash):
            await SagaOrchestrator(store).execute(hc_saga(1), saga_id="hc-1")
        await simulate_restart(store)
    caplog.clear()  # what the worker logs
    async with opened(dsn, schema) as store:
        stop = asyncio.Event()
        worker = asyncio.create_task(
            SagaOrchestrator(store).run_worker(stop=stop, poll_interval=0.01, handle_signals=False)
        )
        await UNDOING.wait()  # the worker compensates the saga
        stop.set()
        await worker
        assert store._lost == {}  # nothing kept of a saga this store no longer runs
    assert undone == [1]  # the fenced-out restart never ran the compensation again
    records = [
        r for r in caplog.records if r.name == "sagakit" and getattr(r, "saga_id", None) == "hc-1"
    ]
    warned = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    assert warned == [  # (a crash left it: its recovery warns, as after any crash)
        "sagakit recovery compensates saga hc_saga (hc-1) after 1 completed step (attempt 1)"
    ]
    # Told once, by its saga_stopped record: what its fenced-out writes could not record
    # (its compensation, its end) is at DEBUG, as the store's refused staged writes are.
    told = [
        r.getMessage()
        for r in records
        if r.levelno >= logging.INFO and "LeaseLost" in r.getMessage()
    ]
    assert len(told) == 1, told
    assert told[0].startswith("saga hc_saga (hc-1) saga_stopped: LeaseLost: gave up the lease")


HOLD: dict[str, asyncio.Event] = {}


@step
async def hc_reserve(n: int) -> int:
    return n


@hc_reserve.compensate
async def hc_unreserve(n: int) -> None:
    HOLD["undoing"].set()
    await HOLD["go"].wait()


@saga
def hc_reserved(n: int):  # type: ignore[no-untyped-def]
    yield hc_reserve(n)
    yield hc_pay(n)


async def test_a_lease_lost_mid_compensation_warns_once(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: an execute() cancelled mid-compensation after another worker took its
    # lease warned twice for that one loss: "cancelled, could not record its compensation:
    # LeaseLost" (the restarted compensation fenced out), then "the end ... could not be
    # recorded: LeaseLost". The first is at DEBUG now: the end's warning tells the loss.
    HOLD.update(undoing=asyncio.Event(), go=asyncio.Event())
    caplog.set_level(logging.INFO, logger="sagakit")
    async with opened(dsn, schema) as store, opened(dsn, schema) as other:
        running = asyncio.create_task(
            SagaOrchestrator(store).execute(hc_reserved(2), saga_id="hc-2")
        )
        await HOLD["undoing"].wait()  # compensating
        expire(dsn, schema, "hc-2")  # this worker was paused past its lease...
        assert [o.saga_id for o in await other.claim_orphans(saga_ids=["hc-2"])] == ["hc-2"]
        running.cancel()  # ...and is cancelled: the compensation restarts, fenced out
        HOLD["go"].set()
        with pytest.raises(asyncio.CancelledError):
            await running
        await other.give_back(["hc-2"])
    records = [
        r for r in caplog.records if r.name == "sagakit" and getattr(r, "saga_id", None) == "hc-2"
    ]
    warned = [
        r.getMessage()
        for r in records
        if r.levelno >= logging.WARNING and "lost the lease" in r.getMessage()
    ]
    assert len(warned) == 1, warned
    assert warned[0].startswith("sagakit: the end of saga hc_reserved (hc-2) could not be")
