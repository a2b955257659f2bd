"""A step raising KeyboardInterrupt or SystemExit: found by ``tests/test_soak_faults.py``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sagakit import SagaOrchestrator, SagaStatus, SQLiteStore, StepStatus, saga, step

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
    assert meta.error == "KeyboardInterrupt:  (not compensated)"
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
    assert meta.compensations[0].error == "FatalStop:  (not compensated)"
