"""FaultInjector: a fault with ``index=N`` hits the saga under test, not a nested saga.

Regression: ``fail(step, index=N)`` also hit a saga run by a step of the saga under test
(or by a task such a step started) that had the same step at position ``N``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest

from sagakit import (
    CompensationFailed,
    SagaOrchestrator,
    SagaStatus,
    StepFailed,
    StepTimeout,
    saga,
    step,
)
from sagakit.testing import FaultInjector, InstantSleep, SagaRecorder

pytestmark = pytest.mark.asyncio

ran: list[str] = []
inner_recorder = SagaRecorder()


@pytest.fixture(autouse=True)
def _reset() -> None:
    ran.clear()
    inner_recorder.clear()


@step
async def fi_open(where: str) -> None:
    ran.append(f"open {where}")


@fi_open.compensate
async def fi_close(where: str) -> None:
    ran.append(f"close {where}")


@step
async def fi_book(where: str) -> None:
    ran.append(f"book {where}")


@step
async def fi_fail(where: str) -> None:
    raise ValueError(f"{where} fails")


@saga(name="fault_index.inner")
def inner(where: str) -> Any:
    yield fi_open(where)
    yield fi_book(where)  # index 1, as in outer()


async def _run_inner() -> None:
    await SagaOrchestrator(listeners=[inner_recorder]).execute(inner("inner"))


@step
async def fi_nest(where: str) -> None:
    await _run_inner()


@step
async def fi_nest_in_a_task(where: str) -> None:
    await asyncio.create_task(_run_inner())


@saga(name="fault_index.outer")
def outer(where: str) -> Any:
    yield fi_nest(where)
    yield fi_book(where)  # index 1, as in inner()


@saga(name="fault_index.outer_in_a_task")
def outer_in_a_task(where: str) -> Any:
    yield fi_nest_in_a_task(where)
    yield fi_book(where)


@saga(name="fault_index.nesting_only")
def nesting_only(where: str) -> Any:
    yield fi_open(where)
    yield fi_nest(where)  # its nested saga has fi_book at index 1; this saga has none


@pytest.mark.parametrize("definition", [outer, outer_in_a_task], ids=["step", "task"])
@pytest.mark.parametrize("mode", ["fail", "timeout"])
async def test_an_index_fault_hits_the_saga_under_test_not_the_nested_one(
    definition: Any, mode: str
) -> None:
    faults = FaultInjector()
    if mode == "fail":
        faults.fail(fi_book, index=1)
    else:
        faults.timeout(fi_book, index=1)
    with faults, pytest.raises(StepFailed) as caught:
        await SagaOrchestrator().execute(definition("outer"))
    assert (caught.value.step_index, caught.value.step_name) == (1, "fi_book")
    assert isinstance(caught.value, StepTimeout) is (mode == "timeout")
    # The nested saga ran its fi_book at index 1 untouched, and completed.
    assert ran == ["open inner", "book inner"]
    inner_recorder.assert_status(SagaStatus.COMPLETED)
    assert [(f.step_name, f.step_index) for f in faults.fired] == [("fi_book", 1)]


async def test_an_index_fault_the_saga_under_test_does_not_reach_hits_nothing() -> None:
    with FaultInjector().fail(fi_book, index=1) as faults:
        await SagaOrchestrator().execute(nesting_only("outer"))
    assert ran == ["open outer", "open inner", "book inner"]
    assert faults.fired == []


async def test_a_fault_without_index_still_hits_the_step_in_a_nested_saga() -> None:
    with FaultInjector().fail(fi_book, RuntimeError("down")), pytest.raises(StepFailed) as caught:
        await SagaOrchestrator().execute(nesting_only("outer"))
    # The nested saga's fi_book failed, so did the step running it.
    assert (caught.value.step_index, caught.value.step_name) == (1, "fi_nest")
    inner_recorder.assert_status(SagaStatus.COMPENSATED)
    assert ran == ["open outer", "open inner", "close inner", "close outer"]


@saga(name="fault_index.failing_inner")
def failing_inner(where: str) -> Any:
    yield fi_open(where)  # index 0, as in undo_outer(); compensated
    yield fi_fail(where)


@step
async def fi_nest_failing(where: str) -> None:
    with pytest.raises(StepFailed):
        await SagaOrchestrator(listeners=[inner_recorder]).execute(failing_inner("inner"))


@saga(name="fault_index.undo_outer")
def undo_outer(where: str) -> Any:
    yield fi_open(where)  # index 0, as in failing_inner()
    yield fi_nest_failing(where)
    yield fi_fail(where)


async def test_an_index_compensation_fault_hits_the_saga_under_test_only() -> None:
    faults = FaultInjector().fail_compensation(fi_open, OSError("stuck"), index=0)
    orchestrator = SagaOrchestrator(sleep=InstantSleep())
    with faults, pytest.raises(CompensationFailed) as caught:
        await orchestrator.execute(undo_outer("outer"))
    assert caught.value.uncompensated == ("fi_open",)
    # The nested saga's compensation at index 0 ran; the outer one's was faulted.
    assert ran == ["open outer", "open inner", "close inner"]
    inner_recorder.assert_status(SagaStatus.COMPENSATED)
    assert {(f.step_index, f.compensation) for f in faults.fired} == {(0, True)}


async def test_a_block_entered_in_a_step_aims_at_the_sagas_it_runs() -> None:
    @step
    async def fi_nest_with_faults(where: str) -> None:
        with FaultInjector().fail(fi_book, index=1):
            await _run_inner()

    @saga(name="fault_index.faults_in_a_step")
    def faults_in_a_step(where: str) -> Any:
        yield fi_nest_with_faults(where)

    with pytest.raises(StepFailed) as caught:
        await SagaOrchestrator().execute(faults_in_a_step("outer"))
    inner_error = caught.value.error
    assert isinstance(inner_error, StepFailed)
    assert (inner_error.step_index, inner_error.step_name) == (1, "fi_book")
    inner_recorder.assert_status(SagaStatus.COMPENSATED)


async def _expect_a_fault(run: Awaitable[Any]) -> None:
    """What ``pytest.raises`` does when nothing is raised: fail."""
    await run
    raise AssertionError("expected the fault to stop it")


async def _fails_noted(faults: FaultInjector, definition: Any) -> list[str]:
    """The notes on the failure of a block whose saga was expected to fail but did not."""
    with pytest.raises(AssertionError) as caught, faults:
        await _expect_a_fault(SagaOrchestrator().execute(definition))
    return getattr(caught.value, "__notes__", [])


async def test_an_index_fault_that_never_fired_is_noted_on_the_failing_block() -> None:
    # Regression: the test failed ("DID NOT RAISE StepFailed") with nothing saying that
    # the step had run, only not at that index of the saga under test.
    nested = await _fails_noted(FaultInjector().fail(fi_book, index=1), nesting_only("outer"))
    assert nested == [
        "FaultInjector: the fault on step 'fi_book' with index=1 never fired: it ran at "
        "index 1 of a nested saga, which index= does not aim at (leave index out to fault "
        "it there)"
    ]
    elsewhere = await _fails_noted(FaultInjector().fail(fi_book, index=0), outer("outer"))
    assert elsewhere == [
        "FaultInjector: the fault on step 'fi_book' with index=0 never fired: it ran at "
        "index 1 of the saga under test and at index 1 of a nested saga, which index= does "
        "not aim at (leave index out to fault it there)"
    ]
    # One that fired (in the saga under test; it missed in the nested one) is not noted.
    with pytest.raises(StepFailed) as caught, FaultInjector().fail(fi_book, index=1):
        await SagaOrchestrator().execute(outer("outer"))
    assert getattr(caught.value, "__notes__", []) == []


async def test_an_index_fault_on_a_step_awaited_alone_is_noted() -> None:
    faults = FaultInjector().fail(fi_book, index=0)
    with pytest.raises(AssertionError) as caught, faults:
        await _expect_a_fault(fi_book("alone"))
    assert caught.value.__notes__ == [
        "FaultInjector: the fault on step 'fi_book' with index=0 never fired: it ran "
        "outside any saga, where index= never hits"
    ]
    with faults:  # a block that does not fail: no error for it
        await fi_book("alone")
