"""An injected StopIteration behaves as a step (or compensation) really raising it.

Python turns a ``StopIteration`` raised in a coroutine into ``RuntimeError("coroutine
raised StopIteration")`` (PEP 479), so that is what the orchestrator sees from a real
step. An injected one used to reach it as is: a ``StepFailed`` whose ``error`` was the
``StopIteration``, retried by a policy retrying ``StopIteration`` that a real one never
was. ``StopAsyncIteration`` raised in a coroutine is left as is, injected or real.
"""

from __future__ import annotations

from typing import Any

import pytest

from sagakit import CompensationFailed, Retry, SagaOrchestrator, StepFailed, saga, step
from sagakit.testing import FaultInjector, InstantSleep, SagaRecorder

pytestmark = pytest.mark.asyncio

raising: dict[str, BaseException] = {}  # "ship" or "release": what it really raises
undone: list[str] = []


class StopShipping(StopIteration):
    """A subclass: Python converts it too."""


@pytest.fixture(autouse=True)
def _reset() -> None:
    raising.clear()
    undone.clear()


@step
async def si_reserve(item: str) -> str:
    return item


@si_reserve.compensate
async def si_release(item: str) -> None:
    if "release" in raising:
        raise raising["release"]
    undone.append("release")


@step(retry=Retry(attempts=3, backoff=0, jitter=0, on=(StopIteration, StopAsyncIteration)))
async def si_ship(item: str) -> None:
    if "ship" in raising:
        raise raising["ship"]


@step
async def si_notify(item: str) -> None:
    raise ValueError("mail down")


@saga(name="stop_iteration.order")
def order(item: str) -> Any:
    yield si_reserve(item)
    yield si_ship(item)


@saga(name="stop_iteration.order_then_notify")
def order_then_notify(item: str) -> Any:
    yield si_reserve(item)
    yield si_notify(item)


def _error(error: BaseException | None) -> tuple[Any, ...] | None:
    """An exception's type, text, and its cause's (what a test can see of it)."""
    if error is None:
        return None
    cause = error.__cause__
    return (
        type(error),
        str(error),
        None if cause is None else (type(cause), str(cause)),
        error.__suppress_context__,
    )


async def _outcome(definition: Any, faults: FaultInjector) -> tuple[Any, ...]:
    recorder = SagaRecorder()
    orchestrator = SagaOrchestrator(listeners=[recorder], sleep=InstantSleep())
    with faults, pytest.raises((StepFailed, CompensationFailed)) as caught:
        await orchestrator.execute(definition, saga_id="o-1")
    raised = caught.value
    meta = await orchestrator.get_saga("o-1")
    assert meta is not None
    return (
        type(raised),
        str(raised),
        _error(raised.error),
        [(i, name, _error(e)) for i, name, e in getattr(raised, "errors", ())],
        meta.status,
        meta.error,
        [(r.index, r.status, r.attempts, r.error) for r in meta.steps],
        [(r.index, r.status, r.attempts, r.error) for r in meta.compensations],
        recorder.last.trail(),
        list(undone),
    )


STOPS = [StopIteration("no more"), StopShipping("no more"), StopAsyncIteration("no more")]


@pytest.mark.parametrize("stop", STOPS, ids=repr)
async def test_an_injected_stop_in_a_step_behaves_as_a_real_one(stop: BaseException) -> None:
    raising["ship"] = stop
    real = await _outcome(order("book"), FaultInjector())
    raising.clear()
    undone.clear()
    injected = await _outcome(order("book"), FaultInjector().fail(si_ship, stop))
    assert injected == real


@pytest.mark.parametrize("stop", STOPS, ids=repr)
async def test_an_injected_stop_in_a_compensation_behaves_as_a_real_one(
    stop: BaseException,
) -> None:
    raising["release"] = stop
    real = await _outcome(order_then_notify("book"), FaultInjector())
    raising.clear()
    faults = FaultInjector().fail_compensation(si_reserve, stop)
    injected = await _outcome(order_then_notify("book"), faults)
    assert injected == real


@pytest.mark.parametrize("stop", [StopIteration("no more"), StopIteration], ids=repr)
async def test_an_injected_stop_iteration_is_a_runtime_error_never_retried_as_such(
    stop: StopIteration | type[StopIteration],
) -> None:
    faults = FaultInjector().fail(si_ship, stop)
    with faults, pytest.raises(StepFailed) as caught:
        await SagaOrchestrator(sleep=InstantSleep()).execute(order("book"))
    error = caught.value.error
    assert type(error) is RuntimeError
    assert str(error) == "coroutine raised StopIteration"
    assert type(error.__cause__) is StopIteration
    assert caught.value.__cause__ is error
    # Retry(on=StopIteration) does not retry it: the step raised a RuntimeError.
    assert [f.attempt for f in faults.fired] == [1]
    assert isinstance(faults.fired[0].fault, StopIteration)  # what was injected
