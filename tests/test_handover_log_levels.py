"""PostgreSQL: a saga handed over in an orderly way is logged at INFO, not WARNING.

A worker stopping on a deploy releases the leases of the sagas it runs, and the process
exiting hands over its ``execute()`` calls (``release_leases()``): another worker takes
them over at once. That is the normal lifecycle, on every deploy; it used to log a
``WARNING`` for each saga twice over — ``sagakit worker stopped saga ...`` on the stopped
side (already told at ``INFO`` by ``saga_stopped``, now the only record of it) and
``sagakit recovery resumes saga ...`` on the side taking it over — as if a process had
crashed. A lease lost to another worker, and a saga recovered after a crash, still warn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pg_helpers.db import opened
from sagakit import (
    LeaseLost,
    SagaOrchestrator,
    SQLiteStore,
    StoreError,
    TransitionKind,
    saga,
    step,
)
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

pytestmark = pytest.mark.asyncio

STARTED = asyncio.Event()
GO = asyncio.Event()


@step
async def ho_wait(n: int) -> int:
    STARTED.set()
    await GO.wait()
    return n


@saga
def ho_saga(n: int):  # type: ignore[no-untyped-def]
    yield ho_wait(n)


def _sagakit_records(caplog: pytest.LogCaptureFixture, saga_id: str) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "sagakit" and getattr(record, "saga_id", None) == saga_id
    ]


async def test_a_released_saga_is_handed_over_without_warnings(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    STARTED.clear()
    GO.clear()
    caplog.set_level(logging.INFO, logger="sagakit")
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        first = asyncio.create_task(orchestrator.execute(ho_saga(1), saga_id="ho-1"))
        await STARTED.wait()
        STARTED.clear()
        await store.release_leases()  # the process exits: its execute() is handed over
        GO.set()
        with pytest.raises(LeaseLost):
            await first
        GO.clear()
        stop = asyncio.Event()
        worker = asyncio.create_task(
            orchestrator.run_worker(stop=stop, poll_interval=0.01, handle_signals=False)
        )
        await STARTED.wait()  # the worker took it over and runs its step
        STARTED.clear()
        await store.release_leases()  # its process exits in turn
        GO.set()  # the step returns; its end is fenced out, and the worker takes it again
        await asyncio.wait_for(STARTED.wait(), 60)  # (a guard, not a measurement)
        stop.set()
        await worker
        # The same in the middle of recover(), of a saga another process handed over.
        GO.clear()
        STARTED.clear()
        third = asyncio.create_task(orchestrator.execute(ho_saga(3), saga_id="ho-3"))
        await STARTED.wait()
        STARTED.clear()
        await store.release_leases()
        GO.set()
        with pytest.raises(LeaseLost):
            await third
        GO.clear()
        recovering = asyncio.create_task(orchestrator.recover())
        await STARTED.wait()  # recover() took it over and runs its step
        await store.release_leases()  # the process exits in the middle of recover()
        GO.set()
        await recovering
    records = _sagakit_records(caplog, "ho-1") + _sagakit_records(caplog, "ho-3")
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []
    messages = [r.getMessage() for r in records]
    assert any(m.startswith("sagakit recovery resumes saga ho_saga (ho-1)") for m in messages)
    assert any(m.startswith("sagakit recovery resumes saga ho_saga (ho-3)") for m in messages)
    # Each stop told once, by its saga_stopped record (see test_one_record_per_...).
    assert not any(" stopped saga " in m for m in messages), messages
    assert any(m.startswith("saga ho_saga (ho-1) saga_stopped") for m in messages)
    assert any(m.startswith("saga ho_saga (ho-3) saga_stopped") for m in messages)


async def test_a_saga_recovered_after_a_crash_still_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    GO.set()
    caplog.set_level(logging.INFO, logger="sagakit")
    store = SQLiteStore(tmp_path / "s.db")
    with FaultInjector().crash(ho_wait), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).execute(ho_saga(2), saga_id="ho-2")
    await simulate_restart(store)
    await store.close()
    restarted = SagaOrchestrator(SQLiteStore(tmp_path / "s.db"))
    await restarted.recover()
    await restarted.close()
    resumed = [
        r
        for r in _sagakit_records(caplog, "ho-2")
        if r.getMessage().startswith("sagakit recovery resumes")
    ]
    assert [r.levelno for r in resumed] == [logging.WARNING], [r.getMessage() for r in resumed]


HOLD: dict[str, asyncio.Event] = {}


@step
async def ho_hold(n: int) -> int:
    HOLD["started"].set()
    await HOLD["go"].wait()
    return n


@saga
def ho_held(n: int):  # type: ignore[no-untyped-def]
    yield ho_hold(n)


async def test_a_crashed_saga_handed_over_later_is_resumed_at_info(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: whether the claim was a handover was read from the attempt count, so a
    # saga that had crashed once (attempt 1) and was later released by a stopping worker
    # logged "recovery resumes ... (attempt 1)" at WARNING again, as for a second crash.
    HOLD.update(started=asyncio.Event(), go=asyncio.Event())
    caplog.set_level(logging.INFO, logger="sagakit")
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        with FaultInjector().crash(ho_hold), pytest.raises(SimulatedCrash):
            await orchestrator.execute(ho_held(4), saga_id="ho-4")
        await simulate_restart(store)  # its process died: the next claim counts attempt 1
        recovering = asyncio.create_task(orchestrator.recover())
        await HOLD["started"].wait()  # recovered after the crash, it runs its step
        await store.release_leases()  # that process stops in an orderly way
        HOLD["go"].set()  # its end is fenced out; a claim takes it over, released
        outcomes = await recovering
    assert [outcome.saga_id for outcome in outcomes] == ["ho-4"]
    resumed = [
        (r.levelno, r.getMessage())
        for r in _sagakit_records(caplog, "ho-4")
        if r.getMessage().startswith("sagakit recovery resumes")
    ]
    assert [level for level, _ in resumed] == [logging.WARNING, logging.INFO], resumed
    assert all(message.endswith("(attempt 1)") for _, message in resumed), resumed


async def test_one_record_per_orderly_handover(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: a saga whose lease a stopping worker or recover() released was told
    # stopped twice at INFO: its saga_stopped transition and "sagakit worker (recovery)
    # stopped saga ...". The transition's record, with every structured field, is the one.
    HOLD.update(started=asyncio.Event(), go=asyncio.Event())
    caplog.set_level(logging.INFO, logger="sagakit")
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        running = asyncio.create_task(orchestrator.execute(ho_held(6), saga_id="ho-6"))
        await HOLD["started"].wait()
        HOLD["started"].clear()
        await store.release_leases()  # the process exits: its execute() is handed over
        HOLD["go"].set()
        with pytest.raises(LeaseLost):
            await running
        HOLD["go"].clear()
        recovering = asyncio.create_task(orchestrator.recover())
        await HOLD["started"].wait()
        await store.release_leases()  # it exits in the middle of recover() in turn
        HOLD["go"].set()  # fenced out; recover() claims it again and finishes it
        [outcome] = await recovering
    assert outcome.saga_id == "ho-6"
    stopped = [r for r in _sagakit_records(caplog, "ho-6") if "stopped" in r.getMessage()]
    assert [(r.levelno, getattr(r, "transition", None)) for r in stopped] == [
        (logging.INFO, "saga_stopped"),
        (logging.INFO, "saga_stopped"),
    ], [r.getMessage() for r in stopped]


@step
async def gb_step(n: int) -> int:
    return n


@saga
def gb_saga(n: int):  # type: ignore[no-untyped-def]
    yield gb_step(n)


def _resumed(caplog: pytest.LogCaptureFixture, saga_id: str) -> list[tuple[int, str]]:
    return [
        (r.levelno, r.getMessage())
        for r in _sagakit_records(caplog, saga_id)
        if r.getMessage().startswith("sagakit recovery resumes")
    ]


async def test_a_crash_given_back_unrun_still_warns_when_recovered(
    durable_store: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Regression (PostgreSQL): give_back() released the claim as a handover, so the claim
    # of the recovery that ran the saga read it as one and logged it at INFO: the crash
    # was reported at WARNING nowhere.
    caplog.set_level(logging.INFO, logger="sagakit")
    store = durable_store()
    with FaultInjector().crash(gb_step), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).execute(gb_saga(1), saga_id="gb-1")
    await simulate_restart(store)  # its process died
    await store.close()
    claimer = durable_store()
    [orphan] = await claimer.claim_orphans(saga_ids=["gb-1"])
    assert (orphan.recovery_attempts, orphan.released) == (1, False)
    assert await claimer.give_back(["gb-1"]) == 1  # a cancelled recovery, unrun
    await claimer.close()
    async with SagaOrchestrator(durable_store()) as recovering:
        [outcome] = await recovering.recover(max_attempts=1)  # the give-back counted none
    assert outcome.saga_id == "gb-1"
    assert _resumed(caplog, "gb-1") == [
        (
            logging.WARNING,
            "sagakit recovery resumes saga gb_saga (gb-1) after 0 completed steps (attempt 1)",
        )
    ]


async def test_a_handover_given_back_unrun_stays_info(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    HOLD.update(started=asyncio.Event(), go=asyncio.Event())
    caplog.set_level(logging.INFO, logger="sagakit")
    async with opened(dsn, schema) as store:
        running = asyncio.create_task(SagaOrchestrator(store).execute(ho_held(7), saga_id="ho-7"))
        await HOLD["started"].wait()
        await store.release_leases()  # the process exits: its execute() is handed over
        HOLD["go"].set()
        with pytest.raises(LeaseLost):
            await running
    async with opened(dsn, schema) as claimer:
        [orphan] = await claimer.claim_orphans(saga_ids=["ho-7"])
        assert (orphan.recovery_attempts, orphan.released) == (0, True)
        assert await claimer.give_back(["ho-7"]) == 1
    async with opened(dsn, schema) as store:
        [orphan] = await store.claim_orphans(saga_ids=["ho-7"])
        assert (orphan.recovery_attempts, orphan.released) == (0, True)


@step
async def ho_book(n: int) -> int:
    return n


@ho_book.compensate
async def ho_unbook(n: int) -> None:
    pass


@step
async def ho_decline(n: int) -> int:
    raise ValueError("declined")


@saga
def ho_declined(n: int):  # type: ignore[no-untyped-def]
    yield ho_book(n)
    yield ho_decline(n)


async def test_a_refused_compensation_then_handed_over_is_told_as_a_handover(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: the log refused a compensation's start (StoreError), then the process
    # exited releasing the lease, so the run's end was fenced out as released: that was
    # logged at WARNING as "... left for recovery" (and noted so on the LeaseLost), not
    # told as the handover it is, by its saga_stopped record at INFO.
    caplog.set_level(logging.INFO, logger="sagakit")
    async with opened(dsn, schema) as store:
        record = store.record

        async def refusing(run: Any, transition: Any) -> None:
            if transition.kind is TransitionKind.COMPENSATION_STARTED:
                await store.release_leases()  # the process exits meanwhile
                raise StoreError("the log cannot be written")
            await record(run, transition)

        store.record = refusing  # type: ignore[method-assign]
        with pytest.raises(LeaseLost) as raised:
            await SagaOrchestrator(store).execute(ho_declined(8), saga_id="ho-8")
    assert raised.value.released
    notes = getattr(raised.value, "__notes__", ())
    assert not any("left for recovery" in note for note in notes), notes
    records = _sagakit_records(caplog, "ho-8")
    assert not any("left for recovery" in r.getMessage() for r in records)
    warned = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    assert warned == [
        "saga ho_declined (ho-8) step_failed step 1 'ho_decline': ValueError: declined"
    ]
    stopped = [r for r in records if getattr(r, "transition", None) == "saga_stopped"]
    assert [r.levelno for r in stopped] == [logging.INFO]


async def test_a_lease_another_worker_took_is_not_told_released_by_a_later_release(
    dsn: str, schema: str
) -> None:
    # Regression: release_leases() marked every saga this store held as released by it,
    # whether or not its row was still this store's: a lease another worker had taken
    # (this one paused past it) was then told as an orderly handover (released=True,
    # no advice, no warning from a worker) when the process stopped afterwards.
    from pg_helpers.db import query

    HOLD.update(started=asyncio.Event(), go=asyncio.Event())

    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        running = asyncio.create_task(orchestrator.execute(ho_held(9), saga_id="ho-9"))
        await HOLD["started"].wait()
        # Another worker claims it (this one paused past its lease): owner and token move.
        query(
            dsn,
            f'UPDATE "{schema}".sagas SET owner = %s, fence = fence + 1 WHERE saga_id = %s',
            ("another-worker", "ho-9"),
        )
        assert await store.release_leases() == 0  # this process stops: nothing was its own
        HOLD["go"].set()
        with pytest.raises(LeaseLost) as caught:
            await running
    assert caught.value.released is False
    assert "another worker" in str(caught.value)
