"""A step's timeout told apart from the timeouts of what it awaits (docs/concepts/timeouts.md,
"Timeouts inside a step"): its own ``asyncio.timeout``, a step awaited in it, a saga it
executes, work it shields. Short timeouts beside long ones: outcomes, never durations."""

from __future__ import annotations

import asyncio

import pytest

from sagakit import (
    SagaDefinition,
    SagaOrchestrator,
    SagaStatus,
    StepFailed,
    StepTimeout,
    saga,
    step,
)

log: list[str] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    log.clear()


@step(timeout=5)
async def own_timeout_first() -> None:
    async with asyncio.timeout(0.02):
        await asyncio.sleep(10)


@step(timeout=0.02)
async def step_timeout_first() -> None:
    async with asyncio.timeout(10):
        await asyncio.sleep(10)


@pytest.mark.asyncio
async def test_the_steps_own_asyncio_timeout_is_a_failure_and_the_steps_a_step_timeout() -> None:
    orchestrator = SagaOrchestrator()
    with pytest.raises(StepFailed) as failed:
        await orchestrator.execute(SagaDefinition().add_step(own_timeout_first()))
    assert not isinstance(failed.value, StepTimeout)
    assert isinstance(failed.value.error, TimeoutError)
    with pytest.raises(StepTimeout) as timed_out:
        await orchestrator.execute(SagaDefinition().add_step(step_timeout_first()))
    assert timed_out.value.step_name == "step_timeout_first"


@step(timeout=0.02)
async def inner_short() -> None:
    await asyncio.sleep(10)


@step(timeout=10)
async def inner_long() -> None:
    await asyncio.sleep(10)


@step(timeout=5)
async def awaits_a_shorter_step() -> None:
    await inner_short()


@step(timeout=0.02)
async def awaits_a_longer_step() -> None:
    await inner_long()


@pytest.mark.asyncio
async def test_a_step_awaited_in_a_step_times_out_by_whichever_deadline_comes_first() -> None:
    orchestrator = SagaOrchestrator()
    with pytest.raises(StepFailed) as failed:
        await orchestrator.execute(SagaDefinition().add_step(awaits_a_shorter_step()))
    assert not isinstance(failed.value, StepTimeout)
    inner = failed.value.error
    assert isinstance(inner, StepTimeout)
    assert (inner.step_index, inner.step_name) == (-1, "inner_short")
    with pytest.raises(StepTimeout) as timed_out:
        await orchestrator.execute(SagaDefinition().add_step(awaits_a_longer_step()))
    assert timed_out.value.step_name == "awaits_a_longer_step"


@step(timeout=10)
async def inner_booked() -> None:
    log.append("inner booked")


@inner_booked.compensate
async def inner_unbooked() -> None:
    await asyncio.sleep(0)  # it suspends: the outer step still waits for it
    log.append("inner unbooked")


@saga
def inner_saga():  # type: ignore[no-untyped-def]
    yield inner_booked()
    yield inner_long()


orchestrator_of_both = SagaOrchestrator()


@step(timeout=0.05)
async def executes_a_longer_saga() -> None:
    await orchestrator_of_both.execute(inner_saga(), saga_id="inner-1")


@pytest.mark.asyncio
async def test_an_inner_saga_cut_short_by_the_steps_timeout_is_compensated_first() -> None:
    with pytest.raises(StepTimeout) as timed_out:
        await orchestrator_of_both.execute(SagaDefinition().add_step(executes_a_longer_saga()))
    assert timed_out.value.step_name == "executes_a_longer_saga"
    # Undone before the outer step's StepTimeout was raised.
    assert log == ["inner booked", "inner unbooked"]
    inner = await orchestrator_of_both.get_saga("inner-1")
    assert inner is not None
    assert inner.status is SagaStatus.COMPENSATED


@pytest.mark.asyncio
async def test_work_the_step_shields_goes_on_after_its_timeout() -> None:
    release = asyncio.Event()

    async def protected() -> None:
        await release.wait()
        log.append("protected work done")

    @step(timeout=0.02)
    async def shields() -> None:
        await asyncio.shield(shielded)

    shielded = asyncio.ensure_future(protected())
    with pytest.raises(StepTimeout):
        await SagaOrchestrator().execute(SagaDefinition().add_step(shields()))
    assert not shielded.done()  # the StepTimeout did not wait for it
    release.set()
    await asyncio.wait_for(shielded, 5)
    assert log == ["protected work done"]
