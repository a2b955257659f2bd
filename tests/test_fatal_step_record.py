"""A step raising KeyboardInterrupt or SystemExit: found by ``tests/test_soak_faults.py``."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StepStatus,
    StoreError,
    Transition,
    TransitionKind,
    saga,
    step,
)
from sagakit.testing import SagaRecorder

pytestmark = pytest.mark.asyncio


@step
async def fatal_reserve(item: str) -> str:
    return f"reserved {item}"


@fatal_reserve.compensate
async def fatal_release(item: str) -> None:
    raise AssertionError("a saga stopped by KeyboardInterrupt is not compensated")


@step
async def fatal_ship(item: str) -> None:
    raise KeyboardInterrupt


@saga(name="fatal_order")
def fatal_order(item: str):  # type: ignore[no-untyped-def]
    yield fatal_reserve(item)
    yield fatal_ship(item)


@pytest.mark.parametrize("durable", [False, True])
async def test_a_step_raising_keyboard_interrupt_is_not_left_running(
    tmp_path: Path, durable: bool
) -> None:
    # The saga ended FAILED "(not compensated)", but the step that raised stayed
    # "running" in its metadata and its log.
    store = SQLiteStore(tmp_path / "sagas.db") if durable else None
    orchestrator = SagaOrchestrator(store)
    with pytest.raises(KeyboardInterrupt):
        await orchestrator.execute(fatal_order("book"), saga_id="fatal-1")
    meta = await orchestrator.get_saga("fatal-1")
    await orchestrator.close()
    assert meta is not None
    assert meta.status is SagaStatus.FAILED
    assert meta.error == "KeyboardInterrupt (not compensated)"
    assert [(r.index, r.status) for r in meta.steps] == [
        (0, StepStatus.COMPLETED),
        (1, StepStatus.FAILED),
    ]
    assert meta.steps[1].error is not None
    assert meta.steps[1].error.startswith("KeyboardInterrupt")
    assert meta.compensations == ()


@step
async def fatal_book(item: str) -> str:
    return f"booked {item}"


@fatal_book.compensate
async def fatal_unbook(item: str) -> None:
    raise SystemExit(2)


@step
async def fatal_pay(item: str) -> None:
    raise ValueError("card declined")


@saga(name="fatal_trip")
def fatal_trip(item: str):  # type: ignore[no-untyped-def]
    yield fatal_book(item)
    yield fatal_pay(item)


@pytest.mark.parametrize("durable", [False, True])
async def test_a_compensation_raising_system_exit_is_not_left_running(
    durable_store: Any, durable: bool
) -> None:
    # The saga ended FAILED, but the compensation that raised stayed "running" in its
    # metadata and its log, as if it were still undoing the booking.
    orchestrator = SagaOrchestrator(durable_store() if durable else None)
    with pytest.raises(SystemExit):
        await orchestrator.execute(fatal_trip("room"), saga_id="fatal-2")
    meta = await orchestrator.get_saga("fatal-2")
    await orchestrator.close()
    assert meta is not None
    assert meta.status is SagaStatus.FAILED
    assert [(r.index, r.status) for r in meta.compensations] == [(0, StepStatus.FAILED)]
    assert meta.compensations[0].error == "SystemExit: 2 (not compensated)"


class FatalStop(BaseException):
    """Raised as KeyboardInterrupt or SystemExit would be (which, raised in a task of its
    own, asyncio also re-raises out of the event loop: pytest's)."""


@step
async def fatal_hold(item: str) -> str:
    return f"held {item}"


@fatal_hold.compensate
async def fatal_unhold(item: str) -> None:
    raise FatalStop


waiting: list[asyncio.Event] = []


@step
async def fatal_wait(item: str) -> None:
    waiting[-1].set()
    await asyncio.sleep(10)


@saga(name="fatal_wait_order")
def fatal_wait_order(item: str):  # type: ignore[no-untyped-def]
    yield fatal_hold(item)
    yield fatal_wait(item)


@pytest.mark.parametrize("durable", [False, True])
async def test_a_compensation_raising_a_base_exception_after_a_cancel_ends_the_saga(
    durable_store: Any, durable: bool
) -> None:
    # Regression: compensating after execute() was cancelled, a compensation raising
    # KeyboardInterrupt or SystemExit left the saga COMPENSATING among the running sagas
    # for good (and unended in its log).
    orchestrator = SagaOrchestrator(durable_store() if durable else None)
    waiting.append(asyncio.Event())
    task = asyncio.create_task(orchestrator.execute(fatal_wait_order("pen"), saga_id="fatal-3"))
    await waiting[-1].wait()
    task.cancel()
    with pytest.raises(FatalStop):
        await task
    running = await orchestrator.get_running_sagas()
    meta = await orchestrator.get_saga("fatal-3")
    await orchestrator.close()
    assert running == []
    assert meta is not None
    assert meta.status is SagaStatus.FAILED
    assert [(r.index, r.status) for r in meta.compensations] == [(0, StepStatus.FAILED)]
    assert meta.compensations[0].error == "FatalStop (not compensated)"


@pytest.mark.parametrize("durable", [False, True])
async def test_a_step_raising_keyboard_interrupt_tells_its_failure(
    tmp_path: Path, durable: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # The step that raised KeyboardInterrupt ended FAILED in the metadata only: no
    # STEP_FAILED told it (listeners heard the saga end FAILED, a tracer ended the step's
    # span "interrupted" without the exception), and no log record had its error.
    caplog.set_level(logging.WARNING, logger="sagakit")
    recorder = SagaRecorder()
    store = SQLiteStore(tmp_path / "sagas.db") if durable else None
    orchestrator = SagaOrchestrator(store, listeners=[recorder])
    with pytest.raises(KeyboardInterrupt) as raised:
        await orchestrator.execute(fatal_order("book"), saga_id="fatal-4")
    await orchestrator.close()
    run = recorder.run("fatal-4")
    assert run.trail() == [
        "saga_started",
        "step_started fatal_reserve",
        "step_completed fatal_reserve",
        "step_started fatal_ship",
        "step_failed fatal_ship",
        "saga_finished failed",
    ]
    told = run.transitions[-2]
    assert told.error is raised.value  # the very exception, as execute() raises it
    assert (told.step_index, told.attempt) == (1, 1)
    assert told.duration is not None
    [record] = [r for r in caplog.records if getattr(r, "transition", None) == "step_failed"]
    assert record.getMessage() == (
        "saga fatal_order (fatal-4) step_failed step 1 'fatal_ship': KeyboardInterrupt"
    )
    assert record.levelno == logging.WARNING


@pytest.mark.parametrize("durable", [False, True])
async def test_a_compensation_raising_system_exit_tells_its_failure(
    durable_store: Any, durable: bool
) -> None:
    # The compensation that raised SystemExit ended FAILED in the metadata only: no
    # COMPENSATION_FAILED told it.
    recorder = SagaRecorder()
    orchestrator = SagaOrchestrator(durable_store() if durable else None, listeners=[recorder])
    with pytest.raises(SystemExit) as raised:
        await orchestrator.execute(fatal_trip("room"), saga_id="fatal-5")
    await orchestrator.close()
    run = recorder.run("fatal-5")
    assert run.trail()[-3:] == [
        "compensation_started fatal_book",
        "compensation_failed fatal_book",
        "saga_finished failed",
    ]
    assert run.transitions[-2].error is raised.value
    assert run.status is SagaStatus.FAILED


async def test_a_fatal_failure_is_told_once_the_log_has_the_saga_end(
    tmp_path: Path,
) -> None:
    # The step's failure is written with the saga's end (one commit: nothing delays the
    # interrupt, no crash can fall between two): a listener hears it only once that
    # commits, and not at all if it cannot be (SAGA_STOPPED, the interrupt still raised).
    store = SQLiteStore(tmp_path / "sagas.db")
    record = store.record

    async def failing(run: Any, transition: Transition) -> None:
        if transition.kind is TransitionKind.SAGA_FINISHED:
            raise StoreError("the disk is full")
        await record(run, transition)

    store.record = failing  # type: ignore[method-assign]
    recorder = SagaRecorder()
    orchestrator = SagaOrchestrator(store, listeners=[recorder])
    with pytest.raises(KeyboardInterrupt) as raised:
        await orchestrator.execute(fatal_order("book"), saga_id="fatal-6")
    await orchestrator.close()
    assert isinstance(raised.value.__context__, StoreError)
    assert recorder.run("fatal-6").trail()[-2:] == ["step_started fatal_ship", "saga_stopped"]
    assert not orchestrator._held


async def test_a_compensation_raising_system_exit_is_raised_when_the_end_is_not_recorded(
    tmp_path: Path,
) -> None:
    # The StoreError of the run's end replaced the SystemExit a compensation raised: the
    # process did not exit, and nothing said why the saga stopped compensating.
    store = SQLiteStore(tmp_path / "sagas.db")
    record = store.record

    async def failing(run: Any, transition: Transition) -> None:
        if transition.kind is TransitionKind.SAGA_FINISHED:
            raise StoreError("the disk is full")
        await record(run, transition)

    store.record = failing  # type: ignore[method-assign]
    orchestrator = SagaOrchestrator(store)
    with pytest.raises(SystemExit) as raised:
        await orchestrator.execute(fatal_trip("room"), saga_id="fatal-7")
    await orchestrator.close()
    assert isinstance(raised.value.__context__, StoreError)
