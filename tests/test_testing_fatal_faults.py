"""Injected KeyboardInterrupt, SystemExit and CancelledError behave as the real ones do.

An injected ``BaseException`` used to become a ``StepFailed`` (or, in a compensation, a
``CompensationFailed``) and the saga was compensated, while a step that really raises
``KeyboardInterrupt`` stops the saga uncompensated: a test passed for behaviour that
production never shows.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sagakit import SagaOrchestrator, SagaStatus, SQLiteStore, StepStatus, saga, step
from sagakit.testing import FaultInjector, SagaRecorder, run_fault_matrix

pytestmark = pytest.mark.asyncio

FATAL = [KeyboardInterrupt, SystemExit, asyncio.CancelledError]
raising: dict[str, type[BaseException]] = {}  # "ship" or "release": what it really raises
undone: list[str] = []


@step
async def reserve(item: str) -> str:
    return item


@reserve.compensate
async def release(item: str) -> None:
    if "release" in raising:
        raise raising["release"]
    undone.append("release")


@step(compensate_on_timeout=True)
async def ship(item: str) -> None:
    if "ship" in raising:
        raise raising["ship"]


@ship.compensate
async def recall(item: str) -> None:
    undone.append("recall")


@step
async def notify(item: str) -> None:
    raise ValueError("mail down")


@saga(name="testing_fatal_faults.order")
def order(item: str) -> Any:
    yield reserve(item)
    yield ship(item)


@saga
def order_then_notify(item: str) -> Any:
    yield reserve(item)
    yield notify(item)


@pytest.fixture(autouse=True)
def _reset() -> None:
    raising.clear()
    undone.clear()


async def _outcome(
    definition: Any, faults: FaultInjector, tmp_path: Path, saga_id: str
) -> tuple[type[BaseException] | None, Any, list[str], list[str]]:
    recorder = SagaRecorder()
    orchestrator = SagaOrchestrator(SQLiteStore(tmp_path / "sagas.db"), listeners=[recorder])
    raised: type[BaseException] | None = None
    try:
        with faults:
            await orchestrator.execute(definition, saga_id=saga_id)
    except BaseException as error:  # what it raised is the point
        raised = type(error)
    meta = await orchestrator.get_saga(saga_id)
    await orchestrator.close()
    assert meta is not None
    shape = (
        meta.status,
        [(r.index, r.status) for r in meta.steps],
        [(r.index, r.status) for r in meta.compensations],
    )
    return raised, shape, recorder.last.trail(), list(undone)


@pytest.mark.parametrize("fatal", FATAL, ids=lambda e: e.__name__)
async def test_an_injected_fatal_step_error_behaves_as_a_real_one(
    tmp_path: Path, fatal: type[BaseException]
) -> None:
    raising["ship"] = fatal
    real = await _outcome(order("book"), FaultInjector(), tmp_path, "real")
    raising.clear()
    undone.clear()
    injected = await _outcome(order("book"), FaultInjector().fail(ship, fatal), tmp_path, "fake")
    assert injected == real
    assert injected[0] is fatal  # not StepFailed


async def test_an_injected_keyboard_interrupt_stops_the_saga_uncompensated(
    tmp_path: Path,
) -> None:
    faults = FaultInjector().fail(ship, KeyboardInterrupt, times=1)
    raised, (status, steps, compensations), trail, ran = await _outcome(
        order("book"), faults, tmp_path, "o-1"
    )
    assert raised is KeyboardInterrupt
    assert status is SagaStatus.FAILED
    assert steps == [(0, StepStatus.COMPLETED), (1, StepStatus.FAILED)]
    assert compensations == []
    assert ran == []
    assert trail[-1] == "saga_finished failed"
    assert [fired.step_name for fired in faults.fired] == ["ship"]


@pytest.mark.parametrize("fatal", [KeyboardInterrupt, SystemExit], ids=lambda e: e.__name__)
async def test_an_injected_fatal_compensation_error_behaves_as_a_real_one(
    tmp_path: Path, fatal: type[BaseException]
) -> None:
    raising["release"] = fatal
    real = await _outcome(order_then_notify("book"), FaultInjector(), tmp_path, "real")
    raising.clear()
    faults = FaultInjector().fail_compensation(reserve, fatal)
    injected = await _outcome(order_then_notify("book"), faults, tmp_path, "fake")
    assert injected == real
    assert injected[0] is fatal  # not CompensationFailed


@pytest.mark.parametrize("fatal", [KeyboardInterrupt, SystemExit(3)], ids=repr)
async def test_the_fault_matrix_refuses_a_fault_that_is_never_compensated(
    fatal: BaseException | type[BaseException],
) -> None:
    with pytest.raises(TypeError, match=r"error=.*Exception.*never compensated"):
        await run_fault_matrix(order("book"), error=fatal)
