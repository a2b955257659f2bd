"""Issue 2, points 4, 5 and 6: running steps in order, events, compensation, errors, timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, NamedTuple

import pytest

from sagakit import (
    CompensationFailed,
    Retry,
    SagaDefinition,
    SagaError,
    SagaOrchestrator,
    SagaRunError,
    SagaStatus,
    StepCall,
    StepFailed,
    StepStatus,
    StepTimeout,
    Transition,
    TransitionKind,
    saga,
    step,
)

log: list[str] = []


@pytest.fixture(autouse=True)
def _clear_log() -> None:
    log.clear()


@dataclass(frozen=True)
class Done:
    name: str


class Reserved(NamedTuple):
    sku: str
    quantity: int


def tracked(name: str, result: Any = "unset", *, compensation_result: Any = None) -> Any:
    """A step named ``name`` that logs itself, with a logging compensation."""

    async def run() -> Any:
        log.append(name)
        return [Done(name)] if result == "unset" else result

    run.__name__ = run.__qualname__ = name
    the_step = step(run)

    @the_step.compensate
    async def undo() -> Any:
        log.append(f"undo {name}")
        return compensation_result

    return the_step


@step
async def boom() -> None:
    log.append("boom")
    raise ValueError("boom")


# ------------------------------------------------------------------ order and events


@pytest.mark.asyncio
async def test_steps_run_in_order_and_events_are_returned_in_order() -> None:
    a, b, c = tracked("a"), tracked("b"), tracked("c")
    definition = SagaDefinition("o-1").add_step(a()).add_step(b()).add_step(c())

    events = await SagaOrchestrator().execute(definition)

    assert log == ["a", "b", "c"]
    assert events == [Done("a"), Done("b"), Done("c")]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("result", "events"),
    [
        pytest.param([1, 2], [1, 2], id="list-extends"),
        pytest.param((1, 2), [1, 2], id="tuple-extends"),
        pytest.param([], [], id="empty-list"),
        pytest.param(None, [], id="none-adds-nothing"),
        pytest.param({"k": 1}, [{"k": 1}], id="dict-is-one-event"),
        pytest.param("text", ["text"], id="string-is-one-event"),
        pytest.param(Done("x"), [Done("x")], id="object-is-one-event"),
        pytest.param(0, [0], id="falsy-value-is-one-event"),
        # A named tuple is one value (an event, like a dataclass), not a tuple of events:
        # its fields were the events.
        pytest.param(Reserved("pen", 2), [Reserved("pen", 2)], id="named-tuple-is-one-event"),
        pytest.param([Reserved("pen", 2)], [Reserved("pen", 2)], id="list-of-named-tuples"),
    ],
)
async def test_a_steps_events_follow_its_result(result: Any, events: list[Any]) -> None:
    first = tracked("first", result)
    last = tracked("last", "end")
    definition = SagaDefinition("e").add_step(first()).add_step(last())

    assert await SagaOrchestrator().execute(definition) == [*events, "end"]


@pytest.mark.asyncio
async def test_a_compensations_named_tuple_is_one_event() -> None:
    orchestrator = SagaOrchestrator()
    first = tracked("first", Reserved("pen", 2), compensation_result=Reserved("pen", -2))
    with pytest.raises(StepFailed) as info:
        await orchestrator.execute(SagaDefinition("nt").add_step(first()).add_step(boom()))
    assert info.value.events == [Reserved("pen", 2)]
    assert info.value.compensation_events == [Reserved("pen", -2)]
    meta = await orchestrator.get_saga("nt")
    assert meta is not None
    assert meta.steps[0].events == (Reserved("pen", 2),)
    assert meta.compensations[0].events == (Reserved("pen", -2),)


@pytest.mark.asyncio
async def test_returned_events_are_a_copy() -> None:
    orchestrator = SagaOrchestrator()
    definition = SagaDefinition("copy").add_step(tracked("a")())
    events = await orchestrator.execute(definition)
    events.append("mutated")

    meta = await orchestrator.get_saga("copy")
    assert meta is not None
    assert meta.events == (Done("a"),)
    assert await orchestrator.execute(definition) == [Done("a")]


@pytest.mark.asyncio
async def test_the_generator_gets_the_full_result_not_the_events() -> None:
    seen: list[Any] = []

    @saga
    def flow() -> Generator[StepCall[Any], Any, None]:
        seen.append((yield tracked("a", (1, 2))()))
        seen.append((yield tracked("b", None)()))

    assert await SagaOrchestrator().execute(flow()) == [1, 2]
    assert seen == [(1, 2), None]


# ------------------------------------------------------------------ compensation


@pytest.mark.asyncio
async def test_failure_compensates_completed_steps_in_reverse_order() -> None:
    a, b, c = (tracked(n, compensation_result=[f"undid {n}"]) for n in "abc")
    definition = SagaDefinition("rev").add_step(a()).add_step(b()).add_step(c()).add_step(boom())
    orchestrator = SagaOrchestrator()

    with pytest.raises(StepFailed) as info:
        await orchestrator.execute(definition)

    assert log == ["a", "b", "c", "boom", "undo c", "undo b", "undo a"]
    error = info.value
    assert error.events == [Done("a"), Done("b"), Done("c")]
    assert error.compensation_events == ["undid c", "undid b", "undid a"]
    assert error.saga_id == "rev"

    meta = await orchestrator.get_saga("rev")
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert meta.compensation_events == ("undid c", "undid b", "undid a")
    assert [c.name for c in meta.compensations] == ["c", "b", "a"]
    assert all(c.status is StepStatus.COMPLETED for c in meta.compensations)
    assert [c.events for c in meta.compensations] == [("undid c",), ("undid b",), ("undid a",)]
    assert "ValueError: boom" in (meta.error or "")


@pytest.mark.asyncio
async def test_steps_after_the_failure_never_run() -> None:
    definition = SagaDefinition("stop").add_step(boom()).add_step(tracked("later")())
    with pytest.raises(StepFailed):
        await SagaOrchestrator().execute(definition)
    assert log == ["boom"]


@pytest.mark.asyncio
async def test_step_failed_fields_and_cause() -> None:
    definition = SagaDefinition("f").add_step(tracked("a")()).add_step(boom())

    with pytest.raises(StepFailed) as info:
        await SagaOrchestrator().execute(definition)

    error = info.value
    assert isinstance(error, SagaRunError)
    assert isinstance(error, SagaError)
    assert not isinstance(error, StepTimeout)
    assert (error.step_index, error.step_name) == (1, "boom")
    assert isinstance(error.error, ValueError)
    assert str(error.error) == "boom"
    assert error.__cause__ is error.error
    assert "step 1 ('boom') failed: ValueError: boom" in str(error)


@pytest.mark.asyncio
async def test_a_raising_step_is_not_compensated_itself_by_default() -> None:
    @step
    async def charge() -> None:
        log.append("charge")
        raise ConnectionError("gateway")

    @charge.compensate
    async def refund() -> None:
        log.append("refund")

    with pytest.raises(StepFailed):
        await SagaOrchestrator().execute(SagaDefinition("x").add_step(charge()))
    assert log == ["charge"]


@pytest.mark.asyncio
async def test_compensate_on_failure_compensates_the_raising_step_with_no_result() -> None:
    seen: list[Any] = []

    @step(compensate_on_failure=True)
    async def charge(order: str) -> str:
        log.append("charge")
        raise ConnectionError("gateway")

    @charge.compensate
    async def refund(payment: str | None, order: str) -> None:
        seen.append((payment, order))

    first = tracked("first")
    definition = SagaDefinition("x").add_step(first()).add_step(charge("o-1"))
    with pytest.raises(StepFailed):
        await SagaOrchestrator().execute(definition)
    assert seen == [(None, "o-1")]
    assert log == ["first", "charge", "undo first"]


# ------------------------------------------------------------------ timeouts


@pytest.mark.asyncio
async def test_step_timeout_fields() -> None:
    @step(timeout=0.02)
    async def slow() -> None:
        await asyncio.sleep(10)

    orchestrator = SagaOrchestrator()
    definition = SagaDefinition("t").add_step(tracked("a")()).add_step(slow())

    with pytest.raises(StepTimeout) as info:
        await orchestrator.execute(definition)

    error = info.value
    assert isinstance(error, StepFailed)
    assert isinstance(error, TimeoutError)
    assert (error.step_index, error.step_name, error.timeout) == (1, "slow", 0.02)
    assert error.duration >= 0.02
    assert isinstance(error.error, TimeoutError)
    assert "timed out" in str(error)
    assert log == ["a", "undo a"]

    meta = await orchestrator.get_saga("t")
    assert meta is not None
    assert meta.steps[1].status is StepStatus.TIMED_OUT
    assert meta.steps[1].duration is not None
    assert meta.steps[1].duration >= 0.02


@pytest.mark.asyncio
async def test_a_step_that_swallows_cancellation_and_returns_late_is_a_timeout() -> None:
    finished: list[str] = []

    @step(timeout=0.02)
    async def stubborn() -> str:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)
        await asyncio.sleep(0.01)  # and keeps going after swallowing it
        finished.append("returned")
        return "late result"

    orchestrator = SagaOrchestrator()
    definition = SagaDefinition("s").add_step(tracked("a")()).add_step(stubborn())
    with pytest.raises(StepTimeout) as info:
        await orchestrator.execute(definition)

    assert finished == ["returned"]
    assert info.value.step_name == "stubborn"
    assert info.value.events == [Done("a")]  # the late result is not an event
    assert log == ["a", "undo a"]
    # The orchestrator's own cancellation was taken back: this task is not cancelling.
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0


@pytest.mark.asyncio
async def test_a_step_that_blocks_past_its_deadline_is_a_timeout() -> None:
    @step(timeout=0.01)
    async def blocking() -> str:
        time.sleep(0.03)  # noqa: ASYNC251 - never gives the loop a chance to cancel it
        return "late"

    with pytest.raises(StepTimeout) as info:
        await SagaOrchestrator().execute(SagaDefinition("b").add_step(blocking()))
    assert info.value.duration >= 0.01


@pytest.mark.asyncio
async def test_a_step_that_suspends_then_blocks_past_its_deadline_is_a_timeout() -> None:
    @step(timeout=0.01)
    async def blocking() -> str:
        await asyncio.sleep(0)
        time.sleep(0.03)  # noqa: ASYNC251
        return "late"

    with pytest.raises(StepTimeout):
        await SagaOrchestrator().execute(SagaDefinition("b").add_step(blocking()))


class _Abort(BaseException):
    """Not an ``Exception``: ends a saga without compensation, like ``SystemExit``."""


async def _slow_to_hear_the_end(transition: Transition) -> None:
    if transition.kind is TransitionKind.SAGA_FINISHED:
        await asyncio.sleep(0.1)  # well past the deadline of the step or compensation


@pytest.mark.asyncio
async def test_a_step_raising_a_base_exception_leaves_no_deadline_armed() -> None:
    @step(timeout=0.01)
    async def aborts() -> None:
        raise _Abort

    orchestrator = SagaOrchestrator(listeners=[_slow_to_hear_the_end])
    # Its deadline must not cancel the saga's task while its end is recorded and told.
    with pytest.raises(_Abort):
        await orchestrator.execute(SagaDefinition("a").add_step(aborts()))
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0


@pytest.mark.asyncio
async def test_a_compensation_raising_a_base_exception_leaves_no_deadline_armed() -> None:
    @step(compensation_timeout=0.01)
    async def reserve() -> None:
        pass

    @reserve.compensate
    async def release() -> None:
        raise _Abort

    @step
    async def fail() -> None:
        raise ValueError("no")

    orchestrator = SagaOrchestrator(listeners=[_slow_to_hear_the_end])
    definition = SagaDefinition("c").add_step(reserve()).add_step(fail())
    with pytest.raises(_Abort):
        await orchestrator.execute(definition)
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0


@pytest.mark.asyncio
async def test_a_timed_out_steps_own_compensation_runs_by_default() -> None:
    seen: list[Any] = []

    @step(timeout=0.01)
    async def charge(order: str) -> str:
        await asyncio.sleep(10)
        return "pay"

    @charge.compensate
    async def refund(payment: str | None, order: str) -> str:
        seen.append((payment, order))
        return "refunded"

    definition = SagaDefinition("t").add_step(tracked("a")()).add_step(charge("o-9"))
    with pytest.raises(StepTimeout) as info:
        await SagaOrchestrator().execute(definition)

    assert seen == [(None, "o-9")]  # its effect is unknown: the result is None
    assert log == ["a", "undo a"]  # and it ran before undoing earlier steps
    assert info.value.compensation_events == ["refunded"]


@pytest.mark.asyncio
async def test_compensate_on_timeout_false_skips_the_timed_out_steps_compensation() -> None:
    @step(timeout=0.01, compensate_on_timeout=False)
    async def charge() -> None:
        await asyncio.sleep(10)

    @charge.compensate
    async def refund() -> None:
        log.append("refund")

    definition = SagaDefinition("t").add_step(tracked("a")()).add_step(charge())
    with pytest.raises(StepTimeout):
        await SagaOrchestrator().execute(definition)
    assert log == ["a", "undo a"]


@pytest.mark.asyncio
async def test_each_step_has_its_own_timeout() -> None:
    @step(timeout=5)
    async def patient() -> str:
        await asyncio.sleep(0.03)
        return "patient"

    @step(timeout=0.01)
    async def hasty() -> str:
        await asyncio.sleep(0.03)
        return "hasty"

    orchestrator = SagaOrchestrator()
    assert await orchestrator.execute(SagaDefinition("p").add_step(patient())) == ["patient"]
    with pytest.raises(StepTimeout) as info:
        await orchestrator.execute(SagaDefinition("h").add_step(patient()).add_step(hasty()))
    assert info.value.step_name == "hasty"


@pytest.mark.asyncio
async def test_a_slow_compensation_times_out_under_its_timeout() -> None:
    @step(timeout=5, compensation_timeout=0.01)
    async def charge() -> str:
        return "pay"

    @charge.compensate
    async def refund() -> None:
        await asyncio.sleep(10)

    orchestrator = SagaOrchestrator(compensation_retry=Retry(attempts=1))
    with pytest.raises(CompensationFailed) as info:
        await orchestrator.execute(SagaDefinition("ct").add_step(charge()).add_step(boom()))
    assert isinstance(info.value.error, StepTimeout)
    meta = await orchestrator.get_saga("ct")
    assert meta is not None
    assert meta.compensations[0].status is StepStatus.TIMED_OUT


@pytest.mark.asyncio
async def test_a_step_raising_timeout_error_itself_is_a_failure_not_a_timeout() -> None:
    @step(timeout=5)
    async def remote() -> None:
        raise TimeoutError("remote side timed out")

    with pytest.raises(StepFailed) as info:
        await SagaOrchestrator().execute(SagaDefinition("r").add_step(remote()))
    assert not isinstance(info.value, StepTimeout)
    assert isinstance(info.value.error, TimeoutError)


@pytest.mark.asyncio
async def test_an_orchestrator_is_reusable_after_failures() -> None:
    orchestrator = SagaOrchestrator()
    with pytest.raises(StepFailed):
        await orchestrator.execute(SagaDefinition("1").add_step(boom()))
    assert await orchestrator.execute(SagaDefinition("2").add_step(tracked("ok")())) == [Done("ok")]
    assert await orchestrator.running_count() == 0
    assert await orchestrator.history_count() == 2


@pytest.mark.asyncio
async def test_a_step_that_turns_its_timeout_into_another_error_is_a_timeout() -> None:
    # Regression: it was a StepFailed and left the task with a pending cancel request.
    @step(timeout=0.01)
    async def converts() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ConnectionError("cleanup failed") from None

    orchestrator = SagaOrchestrator()
    with pytest.raises(StepTimeout) as info:
        await orchestrator.execute(
            SagaDefinition("c").add_step(tracked("a")()).add_step(converts())
        )

    assert isinstance(info.value.__cause__, ConnectionError)
    assert log == ["a", "undo a"]
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0
    meta = await orchestrator.get_saga("c")
    assert meta is not None
    assert meta.steps[1].status is StepStatus.TIMED_OUT
    # The task can still be timed out normally afterwards.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await asyncio.sleep(10)


@pytest.mark.asyncio
async def test_a_compensation_that_turns_its_timeout_into_another_error_is_a_timeout() -> None:
    @step(compensation_timeout=0.01)
    async def charge() -> str:
        return "pay"

    @charge.compensate
    async def refund() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ConnectionError("cleanup failed") from None

    orchestrator = SagaOrchestrator(compensation_retry=Retry(attempts=1))
    with pytest.raises(CompensationFailed) as info:
        await orchestrator.execute(SagaDefinition("ct").add_step(charge()).add_step(boom()))

    assert isinstance(info.value.error, StepTimeout)
    assert isinstance(info.value.error.__cause__, ConnectionError)
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0
    meta = await orchestrator.get_saga("ct")
    assert meta is not None
    assert meta.compensations[0].status is StepStatus.TIMED_OUT


@pytest.mark.asyncio
async def test_a_compensation_that_swallows_its_timeout_is_timed_out_and_retried() -> None:
    attempts: list[int] = []

    @step(compensation_timeout=0.01, compensation_retry=Retry(attempts=2, backoff=0))
    async def charge() -> str:
        return "pay"

    @charge.compensate
    async def refund() -> str:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10)
            return "late refund"
        return "refunded"

    orchestrator = SagaOrchestrator()
    with pytest.raises(StepFailed) as info:
        await orchestrator.execute(SagaDefinition("cs").add_step(charge()).add_step(boom()))

    assert attempts == [1, 2]
    assert info.value.compensation_events == ["refunded"]  # not the late result
    meta = await orchestrator.get_saga("cs")
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert meta.compensations[0].attempts == 2


@pytest.mark.asyncio
async def test_a_compensation_that_blocks_past_its_deadline_is_timed_out() -> None:
    @step(compensation_timeout=0.01)
    async def charge() -> str:
        return "pay"

    @charge.compensate
    async def refund() -> str:
        time.sleep(0.03)  # noqa: ASYNC251
        return "refunded"

    orchestrator = SagaOrchestrator(compensation_retry=Retry(attempts=1))
    with pytest.raises(CompensationFailed) as info:
        await orchestrator.execute(SagaDefinition("cb").add_step(charge()).add_step(boom()))
    assert isinstance(info.value.error, StepTimeout)
    assert info.value.uncompensated == ("charge",)


@pytest.mark.asyncio
async def test_a_saga_run_inside_a_step_keeps_both_deadlines_apart() -> None:
    orchestrator = SagaOrchestrator()

    @step(timeout=5)
    async def inner_slow() -> str:
        await asyncio.sleep(10)
        return "never"

    @inner_slow.compensate
    async def undo_inner() -> None:
        log.append("undo inner")

    @step(timeout=0.01)
    async def inner_hasty() -> None:
        await asyncio.sleep(10)

    @step(timeout=0.05)
    async def outer_times_out() -> list[Any]:
        return await orchestrator.execute(SagaDefinition("inner-1").add_step(inner_slow()))

    @step(timeout=5)
    async def outer_catches() -> str:
        with contextlib.suppress(StepTimeout):
            await orchestrator.execute(SagaDefinition("inner-2").add_step(inner_hasty()))
        return "outer went on"

    # The inner step's own timeout is the inner saga's failure, not the outer step's.
    assert await orchestrator.execute(SagaDefinition("outer-2").add_step(outer_catches())) == [
        "outer went on"
    ]
    # The outer step's deadline interrupts the inner saga, which compensates.
    with pytest.raises(StepTimeout) as info:
        await orchestrator.execute(SagaDefinition("outer-1").add_step(outer_times_out()))
    assert info.value.step_name == "outer_times_out"
    assert log == ["undo inner"]

    statuses = {m.id: m.status for m in await orchestrator.get_history()}
    assert statuses == {
        "inner-2": SagaStatus.COMPENSATED,
        "outer-2": SagaStatus.COMPLETED,
        "inner-1": SagaStatus.COMPENSATED,
        "outer-1": SagaStatus.COMPENSATED,
    }
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0
