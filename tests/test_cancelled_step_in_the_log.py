"""A step interrupted by cancellation is recorded FAILED in every store.

Regression: its end was set in memory only (no transition carries it), so durable
stores kept the step RUNNING in a saga that finished COMPENSATED; the run's end now
writes it (docs/concepts/cancellation.md: "recorded as FAILED").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pg_helpers.db import dsn_or_skip, fresh_schema
from sagakit import (
    PostgresStore,
    SagaDefinition,
    SagaMetadata,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StepRecord,
    StepStatus,
    Transition,
    TransitionKind,
    saga,
    step,
)
from sagakit.stores import MemoryStore, SagaStore
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

waiting: asyncio.Event | None = None


async def _cancel_once_waiting(
    orchestrator: SagaOrchestrator, definition: SagaDefinition, saga_id: str
) -> None:
    """Execute ``definition`` and cancel it once it waits (``waiting`` set)."""
    task = asyncio.create_task(orchestrator.execute(definition, saga_id=saga_id))
    assert waiting is not None
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _kept_compensation(
    any_store: Callable[[], SagaStore], metadata: SagaMetadata | None, saga_id: str
) -> StepRecord:
    """The saga's one compensation, which has a duration, kept so by its log."""
    assert metadata is not None
    [compensation] = metadata.compensations
    assert compensation.duration is not None
    assert compensation.duration >= 0
    async with SagaOrchestrator(any_store()) as reopened:  # as the log keeps it
        logged = await reopened.get_saga(saga_id)
    assert logged is not None
    assert logged.compensations[0].duration == pytest.approx(compensation.duration)
    return compensation


@step
async def csl_reserve(item: str) -> str:
    return f"reserved {item}"


@csl_reserve.compensate
async def csl_release(item: str) -> None:
    return None


@step
async def csl_wait(item: str) -> None:
    assert waiting is not None
    waiting.set()
    await asyncio.sleep(10)


@saga
def csl_order(item: str):  # type: ignore[no-untyped-def]
    yield csl_reserve(item)
    yield csl_wait(item)


async def _cancelled_step(store: SagaStore) -> tuple[SagaStatus, StepStatus, str | None]:
    global waiting
    waiting = asyncio.Event()
    orchestrator = SagaOrchestrator(store)
    try:
        await _cancel_once_waiting(orchestrator, csl_order("book"), "cancelled-1")
        metadata = await orchestrator.get_saga("cancelled-1")
        assert metadata is not None
        return metadata.status, metadata.steps[1].status, metadata.steps[1].error
    finally:
        await orchestrator.close()


@pytest.mark.asyncio
async def test_memory_store_records_the_cancelled_step_failed() -> None:
    assert await _cancelled_step(MemoryStore()) == (
        SagaStatus.COMPENSATED,
        StepStatus.FAILED,
        "CancelledError: the saga was cancelled",
    )


@pytest.mark.asyncio
async def test_sqlite_store_records_the_cancelled_step_failed(tmp_path: Path) -> None:
    assert await _cancelled_step(SQLiteStore(tmp_path / "sagas.db")) == (
        SagaStatus.COMPENSATED,
        StepStatus.FAILED,
        "CancelledError: the saga was cancelled",
    )


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    dsn = dsn_or_skip()
    for schema in fresh_schema(dsn):
        yield dsn, schema


@pytest.mark.asyncio
async def test_postgres_store_records_the_cancelled_step_failed(
    pg_schema: tuple[str, str],
) -> None:
    dsn, schema = pg_schema
    assert await _cancelled_step(PostgresStore(dsn, schema=schema)) == (
        SagaStatus.COMPENSATED,
        StepStatus.FAILED,
        "CancelledError: the saga was cancelled",
    )


@pytest.mark.asyncio
async def test_listeners_hear_the_cancelled_step_fail_before_it_is_compensated() -> None:
    # Regression: no transition ended the interrupted step; listeners heard its start,
    # then compensations, then the saga's end.
    global waiting
    waiting = asyncio.Event()
    heard: list[Transition] = []
    orchestrator = SagaOrchestrator(listeners=[heard.append])
    await _cancel_once_waiting(orchestrator, csl_order("book"), "cancelled-2")
    after_start = [
        (t.kind, t.step_name) for t in heard if t.kind is not TransitionKind.SAGA_STARTED
    ]
    assert after_start == [
        (TransitionKind.STEP_STARTED, "csl_reserve"),
        (TransitionKind.STEP_COMPLETED, "csl_reserve"),
        (TransitionKind.STEP_STARTED, "csl_wait"),
        (TransitionKind.STEP_FAILED, "csl_wait"),
        (TransitionKind.COMPENSATION_STARTED, "csl_reserve"),
        (TransitionKind.COMPENSATION_COMPLETED, "csl_reserve"),
        (TransitionKind.SAGA_FINISHED, None),
    ]
    failed = heard[4]
    assert isinstance(failed.error, asyncio.CancelledError)
    assert str(failed.error) == "the saga was cancelled"
    assert failed.step_index == 1


effects: list[str] = []


@step
async def csl_charge(order: str) -> str:
    effects.append("charge")
    return "charged"


@csl_charge.compensate
async def csl_refund(order: str) -> None:
    effects.append("refund")


@step
async def csl_hold(order: str) -> None:
    assert waiting is not None
    waiting.set()
    await asyncio.sleep(10)  # the caller cancels the saga here


@csl_hold.compensate
async def csl_release_hold(order: str) -> None:
    effects.append("release hold")


@saga
def csl_checkout(order: str):  # type: ignore[no-untyped-def]
    yield csl_charge(order)
    yield csl_hold(order)


@pytest.mark.asyncio
async def test_the_cancelled_step_is_in_the_log_before_its_compensations(
    durable_store: Callable[[], Any],
) -> None:
    # Regression: the log had the interrupted step RUNNING until the run's end; a process
    # dying while compensating left it so, and recovery recorded it "interrupted by a
    # crash of its process", though the saga had been cancelled.
    global waiting
    waiting = asyncio.Event()
    effects.clear()
    store = durable_store()
    orchestrator = SagaOrchestrator(store)
    with FaultInjector().crash(csl_charge, compensation=True):
        task = asyncio.create_task(orchestrator.execute(csl_checkout("o"), saga_id="co-1"))
        await waiting.wait()
        task.cancel()  # compensates; "the process dies" as it refunds
        with pytest.raises(SimulatedCrash):
            await task
    await simulate_restart(store)
    await store.close()

    async with SagaOrchestrator(durable_store()) as restarted:
        logged = await restarted.get_saga("co-1")
        assert logged is not None
        assert logged.status is SagaStatus.COMPENSATING
        assert (logged.steps[1].status, logged.steps[1].error) == (
            StepStatus.FAILED,
            "CancelledError: the saga was cancelled",
        )
        outcomes = await restarted.recover()
        assert [(o.saga_id, o.status) for o in outcomes] == [("co-1", SagaStatus.COMPENSATED)]
        recovered = await restarted.get_saga("co-1")
    assert recovered is not None
    assert recovered.steps[1].error == "CancelledError: the saga was cancelled"
    # The interrupted step was undone before the crash, and not again; the refund the
    # crash interrupted runs again.
    assert effects == ["charge", "release hold", "refund"]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], SagaStore]]:
    """Makes a store of each kind on one fresh log."""
    if request.param == "memory":
        memory = MemoryStore()
        yield lambda: memory
    elif request.param == "sqlite":
        yield lambda: SQLiteStore(tmp_path / "sagas.db")
    else:
        dsn = dsn_or_skip()
        schemas = fresh_schema(dsn)
        schema = next(schemas)
        yield lambda: PostgresStore(dsn, schema=schema)
        for _ in schemas:  # drops the schema
            pass


@pytest.mark.asyncio
async def test_the_cancelled_step_has_a_duration(any_store: Callable[[], SagaStore]) -> None:
    # Regression: a step ended by a timeout or a KeyboardInterrupt had its duration (in
    # its record and its STEP_FAILED transition), one interrupted by cancellation none.
    global waiting
    waiting = asyncio.Event()
    heard: list[Transition] = []
    async with SagaOrchestrator(any_store(), listeners=[heard.append]) as orchestrator:
        await _cancel_once_waiting(orchestrator, csl_order("book"), "timed-1")
        metadata = await orchestrator.get_saga("timed-1")
    failed = next(t for t in heard if t.kind is TransitionKind.STEP_FAILED)
    assert failed.duration is not None
    assert failed.duration >= 0
    assert metadata is not None
    assert metadata.steps[1].duration == failed.duration
    async with SagaOrchestrator(any_store()) as reopened:  # as the log keeps it
        logged = await reopened.get_saga("timed-1")
    assert logged is not None
    assert logged.steps[1].duration == pytest.approx(failed.duration)


undoings: list[str] = []


@step
async def csl_book(item: str) -> str:
    return f"booked {item}"


@csl_book.compensate
async def csl_unbook(item: str) -> None:
    undoings.append(item)
    if len(undoings) == 1:
        assert waiting is not None
        waiting.set()
        await asyncio.sleep(10)  # the caller cancels the saga here
    raise asyncio.CancelledError  # its restart is cancelled too (as its own code does)


@step
async def csl_pay(item: str) -> None:
    raise ValueError("card declined")


@saga
def csl_booking(item: str):  # type: ignore[no-untyped-def]
    yield csl_book(item)
    yield csl_pay(item)


@pytest.mark.asyncio
async def test_the_cancelled_compensation_has_a_duration(
    any_store: Callable[[], SagaStore],
) -> None:
    # Regression: as a cancelled step, a compensation ended by cancellation had none.
    global waiting
    waiting = asyncio.Event()
    undoings.clear()
    async with SagaOrchestrator(any_store()) as orchestrator:
        await _cancel_once_waiting(orchestrator, csl_booking("room"), "timed-2")
        metadata = await orchestrator.get_saga("timed-2")
    compensation = await _kept_compensation(any_store, metadata, "timed-2")
    assert compensation.status is StepStatus.FAILED


@pytest.mark.asyncio
async def test_a_compensation_cancelled_in_its_crash_after_call_has_a_duration(
    any_store: Callable[[], SagaStore],
) -> None:
    # Regression: cancelled in a crash-after fault's call of it (its restart here, the
    # first run of it let through), as a step is there, it had no duration.
    global waiting
    waiting = asyncio.Event()
    undoings.clear()
    async with SagaOrchestrator(any_store()) as orchestrator:
        with FaultInjector().crash(csl_book, compensation=True, after=True, skip=1) as faults:
            await _cancel_once_waiting(orchestrator, csl_booking("room"), "t-3")
        metadata = await orchestrator.get_saga("t-3")
    assert [f.compensation for f in faults.fired] == [True]  # in the restart
    assert metadata is not None
    compensation = await _kept_compensation(any_store, metadata, "t-3")
    assert compensation.error == "CancelledError: interrupted (not compensated)"


pauses: list[float] = []


async def csl_pause(seconds: float) -> None:
    """The orchestrator's sleep: the caller cancels the first wait, the second is
    cancelled too (the restart's)."""
    pauses.append(seconds)
    if len(pauses) == 1:
        assert waiting is not None
        waiting.set()
        await asyncio.sleep(10)
    raise asyncio.CancelledError


@pytest.mark.parametrize("fault", ["fail_compensation", "timeout_compensation"])
@pytest.mark.asyncio
async def test_a_compensation_cancelled_waiting_to_retry_has_a_duration(
    any_store: Callable[[], SagaStore], fault: str
) -> None:
    # Regression: cancelled while waiting to retry it after an injected failure, as a
    # step waiting to retry is, it had no duration (how long since its last attempt began).
    global waiting
    waiting = asyncio.Event()
    pauses.clear()
    async with SagaOrchestrator(any_store(), sleep=csl_pause) as orchestrator:
        faults = FaultInjector()
        if fault == "fail_compensation":
            faults.fail_compensation(csl_book, ValueError("busy"))
        else:
            faults.timeout_compensation(csl_book)
        with faults:
            await _cancel_once_waiting(orchestrator, csl_booking("room"), "t-4")
        metadata = await orchestrator.get_saga("t-4")
    assert len(pauses) == 2  # the first run's wait, then its restart's
    assert metadata is not None
    compensation = await _kept_compensation(any_store, metadata, "t-4")
    assert compensation.error == "CancelledError: interrupted (not compensated)"


untried: list[str] = []


@step(retry=2)
async def csl_try(item: str) -> str:
    return f"tried {item}"


@csl_try.compensate
async def csl_untry(item: str) -> None:
    untried.append(item)


@saga
def csl_trying(item: str):  # type: ignore[no-untyped-def]
    yield csl_try(item)


@pytest.mark.parametrize("fault", ["fail", "timeout"])
@pytest.mark.asyncio
async def test_a_step_cancelled_waiting_to_retry_after_a_fault_is_interrupted(fault: str) -> None:
    # Regression: cancelled while waiting to retry it after an injected failure or
    # timeout, a step was recorded "cancelled before the step started", with no duration,
    # and not compensated; after a real failure or timeout it is interrupted, lasted, and
    # undone (compensate_on_timeout). A faulted attempt stands for a call of the step.
    global waiting
    waiting = asyncio.Event()
    pauses.clear()
    untried.clear()
    faults = FaultInjector()
    if fault == "fail":
        faults.fail(csl_try, ValueError("busy"))
    else:
        faults.timeout(csl_try)
    async with SagaOrchestrator(sleep=csl_pause) as orchestrator:
        with faults:
            await _cancel_once_waiting(orchestrator, csl_trying("seat"), "t-5")
        metadata = await orchestrator.get_saga("t-5")
    assert len(pauses) == 1  # cancelled in its one wait to retry
    assert metadata is not None
    [interrupted] = metadata.steps
    assert interrupted.error == "CancelledError: the saga was cancelled"
    assert interrupted.duration is not None
    assert untried == ["seat"]
