"""A step (or compensation) that swallows both its timeout's cancellation and the caller's:
the caller's cancellation must still win, not be turned into a timeout and lost."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sagakit import (
    Retry,
    SagaDefinition,
    SagaOrchestrator,
    SagaStatus,
    StepStatus,
    TransitionKind,
    step,
)

log: list[str] = []


async def _swallow(times: int) -> None:
    """Sleep, swallowing up to ``times`` cancellations."""
    for _ in range(times):
        try:
            await asyncio.sleep(0.2)
        except asyncio.CancelledError:
            log.append("swallowed")


@step
async def sw_first() -> str:
    log.append("first")
    return "first"


@sw_first.compensate
async def sw_undo_first() -> None:
    log.append("undo first")


@step(timeout=0.05)
async def sw_stubborn(how: str) -> str:
    await _swallow(3)
    if how == "raise":
        raise RuntimeError("turned the cancellations into an error")
    return "late"


@step(timeout=0.05, compensation_timeout=0.05)
async def sw_second() -> str:
    log.append("second")
    return "second"


@sw_second.compensate
async def sw_stubborn_undo() -> None:
    if "undo second returned" not in log:  # stubborn the first time only
        await _swallow(3)
    log.append("undo second returned")


@step
async def sw_fail() -> None:
    raise ValueError("boom")


async def _cancel_while_timed_out(run: Any) -> asyncio.Task[Any]:
    """Start ``run``; cancel it once the 0.05 s timeout inside it has fired (at 0.1 s)."""
    task = asyncio.create_task(run)
    await asyncio.sleep(0.1)
    task.cancel()
    return task


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["return", "raise"])
async def test_a_step_swallowing_its_timeout_and_the_callers_cancel_is_cancelled(
    how: str,
) -> None:
    # Regression: the step swallowed the watchdog's cancellation and the caller's, then
    # returned (or raised): it was reported as a StepTimeout (or StepFailed) and the
    # caller's cancellation was lost: the task went on as if never cancelled.
    log.clear()
    orchestrator = SagaOrchestrator()
    definition = SagaDefinition("sw").add_step(sw_first()).add_step(sw_stubborn(how))
    task = await _cancel_while_timed_out(orchestrator.execute(definition))
    with pytest.raises(asyncio.CancelledError):
        await task
    # (Two cancellations landing in one loop iteration are swallowed as one.)
    assert log in (
        ["first", "swallowed", "swallowed", "undo first"],
        ["first", "swallowed", "undo first"],
    )
    (meta,) = await orchestrator.get_history()
    assert meta.status is SagaStatus.COMPENSATED
    assert meta.steps[1].status is StepStatus.FAILED
    assert meta.steps[1].error == "CancelledError: the saga was cancelled"


@pytest.mark.asyncio
async def test_a_compensation_swallowing_its_timeout_and_the_callers_cancel_is_cancelled() -> None:
    log.clear()
    orchestrator = SagaOrchestrator()
    definition = SagaDefinition("sw2").add_step(sw_second()).add_step(sw_fail())
    task = await _cancel_while_timed_out(orchestrator.execute(definition))
    with pytest.raises(asyncio.CancelledError):
        await task
    (meta,) = await orchestrator.get_history()
    # As for any cancellation while compensating: the interrupted compensation is run
    # again to its end, shielded, and the caller gets its CancelledError (it got a
    # CompensationFailed: the late return was taken for a timeout, the cancel lost).
    returned = "undo second returned"
    assert [line for line in log if line != "swallowed"] == ["second", returned, returned]
    assert "swallowed" in log
    assert meta.status is SagaStatus.COMPENSATED
    # The re-run replaces the interrupted run's record (as in a durable log).
    assert [(c.status, c.error) for c in meta.compensations] == [(StepStatus.COMPLETED, None)]


class Shutdown(BaseException):
    """A BaseException a step raises (as SystemExit would be)."""


@step(timeout=0.02)
async def sw_exits() -> None:
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        raise Shutdown from None  # e.g. a library turning cancellation into SystemExit


@pytest.mark.asyncio
async def test_a_step_turning_its_timeout_into_a_base_exception_leaves_no_cancel_count() -> None:
    # Regression: the watchdog's cancellation was never taken back: the caller's task
    # stayed "cancelling" (asyncio.timeout and TaskGroup then misbehave in it).
    orchestrator = SagaOrchestrator()
    with pytest.raises(Shutdown):
        await orchestrator.execute(SagaDefinition("sw3").add_step(sw_exits()))
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    (meta,) = await orchestrator.get_history()
    assert meta.status is SagaStatus.FAILED
    assert meta.error is not None
    assert meta.error.endswith("(not compensated)")


@step(timeout=0.05, retry=Retry(attempts=3, backoff=0))
async def sw_retried(how: str) -> str:
    log.append("ran")
    await _swallow(3)
    if how == "raise":
        raise RuntimeError("turned the cancellations into an error")
    return "late"


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["return", "raise"])
async def test_an_awaited_step_swallowing_its_timeout_and_the_callers_cancel_is_cancelled(
    how: str,
) -> None:
    # Regression: awaited on its own (outside a saga), such a step was taken for a
    # StepTimeout and retried: it ran again after its caller was cancelled, and the
    # caller got a StepTimeout instead of its CancelledError.
    log.clear()

    async def caller() -> str:
        return await sw_retried(how)

    task = await _cancel_while_timed_out(caller())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log.count("ran") == 1


@step(compensation_timeout=0.02)
async def sw_undone_by_an_exit() -> str:
    return "done"


@sw_undone_by_an_exit.compensate
async def sw_undo_exits() -> None:
    if "exit at once" in log:
        raise Shutdown
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        raise Shutdown from None  # its timeout's cancellation turned into a BaseException


@pytest.mark.asyncio
@pytest.mark.parametrize("when", ["on its timeout", "at once"])
async def test_a_compensation_turning_its_timeout_into_a_base_exception_leaves_no_cancel_count(
    when: str,
) -> None:
    # Regression: a compensation's twin of the step's case above. The watchdog's
    # cancellation was never taken back (the caller's task stayed "cancelling"); and one
    # that raised at once left its deadline in force while its end was told, so a slow
    # listener was cancelled by that deadline, which stayed counted too.
    log.clear()
    if when == "at once":
        log.append("exit at once")

    async def slow_listener(transition: Any) -> None:
        if transition.kind is TransitionKind.COMPENSATION_FAILED:
            await asyncio.sleep(0.1)  # past the compensation's 0.02 s deadline
            log.append("told")

    orchestrator = SagaOrchestrator(listeners=[slow_listener])
    definition = SagaDefinition("sw4").add_step(sw_undone_by_an_exit()).add_step(sw_fail())
    with pytest.raises(Shutdown):
        await orchestrator.execute(definition)
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    assert log[-1] == "told"  # the listener heard the compensation's end, not cut short
    (meta,) = await orchestrator.get_history()
    assert meta.status is SagaStatus.FAILED
    (compensation,) = meta.compensations
    assert compensation.status is StepStatus.FAILED
    assert compensation.error is not None
    assert compensation.error.startswith("Shutdown")
