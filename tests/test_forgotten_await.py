"""A step or compensation returning an awaitable (a forgotten ``await``) fails clearly."""

from __future__ import annotations

import asyncio
import gc
import warnings
from typing import Any

import pytest

from sagakit import (
    CompensationFailed,
    Retry,
    SagaDefinition,
    SagaDefinitionError,
    SagaOrchestrator,
    SagaStatus,
    StepStatus,
    step,
)
from sagakit.testing import SagaRecorder

undone: list[str] = []


@step
async def reserve(item: str) -> list[str]:
    return [f"reserved {item}"]


@reserve.compensate
async def release(item: str) -> list[str]:
    undone.append(item)
    return [f"released {item}"]


async def _charge(item: str) -> list[str]:
    return [f"charged {item}"]


@step
async def charge(item: str) -> list[str]:
    return [f"charged {item}"]


@step
async def returns_coroutine(item: str) -> Any:
    return _charge(item)  # the mistake: no await


@step
async def returns_step_call(item: str) -> Any:
    return charge(item)  # the mistake: no await


@step
async def returns_future(item: str) -> Any:
    future = asyncio.get_running_loop().create_future()
    future.set_result([f"charged {item}"])
    return future


# Each step above that forgets its ``await``, and what the error calls what it returned.
FORGOTTEN = [
    (returns_coroutine, "a coroutine of _charge"),
    (returns_step_call, "an awaitable, <StepCall charge('x')>,"),
    (returns_future, "a Future"),
]


@pytest.fixture(autouse=True)
def _clear() -> None:
    undone.clear()


@pytest.mark.asyncio
@pytest.mark.parametrize(("bad", "what"), FORGOTTEN)
async def test_a_step_returning_an_awaitable_fails_and_earlier_steps_are_undone(
    bad: Any, what: str
) -> None:
    # Regression: the awaitable was recorded as the step's event, and a coroutine was
    # later reported by Python as "never awaited".
    recorder = SagaRecorder()
    orchestrator = SagaOrchestrator(listeners=[recorder])
    definition = SagaDefinition(steps=[reserve("x"), bad("x")], saga_id="forgot")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a "coroutine was never awaited" RuntimeWarning too
        with pytest.raises(SagaDefinitionError) as raised:
            await orchestrator.execute(definition)
        gc.collect()
    message = str(raised.value)
    assert f"step 1 ({bad.name!r}) returned {what}" in message
    assert "did you forget `await`?" in message
    assert undone == ["x"]
    metadata = await orchestrator.get_saga("forgot")
    assert metadata is not None
    assert metadata.status is SagaStatus.COMPENSATED
    assert metadata.events == ("reserved x",)  # the awaitable is no event
    assert metadata.compensation_events == ("released x",)
    failed = metadata.steps[1]
    assert failed.status is StepStatus.FAILED
    assert failed.events == ()
    assert failed.error is not None
    assert "did you forget `await`?" in failed.error
    recorder.assert_completed(reserve)
    recorder.assert_compensated(reserve)


@step
async def ship(item: str) -> list[str]:
    return [f"shipped {item}"]


@ship.compensate
async def unship(item: str) -> Any:
    return _charge(item)  # the mistake: no await


@step
async def fail(item: str) -> None:
    raise LookupError(item)


@pytest.mark.asyncio
async def test_a_compensation_returning_an_awaitable_fails_that_compensation() -> None:
    recorder = SagaRecorder()
    orchestrator = SagaOrchestrator(listeners=[recorder], continue_on_compensation_failure=True)
    definition = SagaDefinition(steps=[reserve("x"), ship("x"), fail("x")], saga_id="undo")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CompensationFailed) as raised:
            await orchestrator.execute(definition)
        gc.collect()
    failure = raised.value
    assert isinstance(failure.error, SagaDefinitionError)
    assert "the compensation of step 1 ('ship') returned a coroutine of _charge" in str(failure)
    assert "did you forget `await`?" in str(failure)
    assert failure.uncompensated == ("ship",)
    assert failure.compensation_events == ["released x"]
    assert undone == ["x"]  # the compensations before and after it still ran
    metadata = await orchestrator.get_saga("undo")
    assert metadata is not None
    assert metadata.status is SagaStatus.FAILED
    assert [c.status for c in metadata.compensations] == [StepStatus.FAILED, StepStatus.COMPLETED]
    assert metadata.compensations[0].events == ()
    recorder.assert_compensated(reserve)
    assert recorder.last.compensation_failures == ["ship"]


@pytest.mark.asyncio
@pytest.mark.parametrize(("bad", "what"), FORGOTTEN)
async def test_a_step_awaited_on_its_own_returning_an_awaitable_fails_as_in_a_saga(
    bad: Any, what: str
) -> None:
    calls: list[int] = []

    @step(retry=Retry(attempts=3, backoff=0, jitter=0))
    async def counted(item: str) -> Any:
        calls.append(1)
        return await bad.__wrapped__(item)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the coroutine is closed: no "never awaited"
        with pytest.raises(SagaDefinitionError) as raised:
            await counted("x")
        gc.collect()
    assert f"step 'counted' returned {what} instead of its result" in str(raised.value)
    assert "did you forget `await`?" in str(raised.value)
    assert calls == [1]  # a mistake in the step: not retried
