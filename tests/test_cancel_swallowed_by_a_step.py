"""Issue 2, point 8, when a step (or a listener, or a compensation) catches the caller's
``CancelledError`` and goes on: the saga must still stop, compensate and re-raise it.

Regression: a step that caught the caller's cancellation and returned let the saga run
its next steps and complete, and ``execute()`` returned as if it had never been
cancelled (one that raised instead was retried, or reported as a ``StepFailed``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    Retry,
    SagaDefinition,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StepFailed,
    StepStatus,
    Transition,
    TransitionKind,
    step,
)
from sagakit.stores import MemoryStore, SagaStore

log: list[str] = []
entered: asyncio.Event | None = None


@pytest.fixture(autouse=True)
def _clear() -> None:
    global entered
    log.clear()
    entered = asyncio.Event()


async def _swallow_once() -> None:
    """Wait until cancelled, and swallow that cancellation."""
    assert entered is not None
    entered.set()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        log.append("swallowed")


@step
async def sc_first() -> str:
    log.append("first")
    return "first"


@sc_first.compensate
async def sc_undo_first() -> None:
    log.append("undo first")


@step
async def sc_swallows() -> str:
    await _swallow_once()
    return "swallowed"


@sc_swallows.compensate
async def sc_undo_swallows(result: str | None) -> None:
    log.append(f"undo swallows ({result})")


@step(retry=Retry(attempts=3, backoff=0))
async def sc_swallows_then_raises() -> str:
    log.append("attempt")
    await _swallow_once()
    raise ConnectionError("turned the cancellation into an error")


@sc_swallows_then_raises.compensate
async def sc_undo_raises() -> None:
    log.append("undo raises")


@step
async def sc_last() -> str:
    log.append("last")
    return "last"


async def _cancel_when_entered(orchestrator: SagaOrchestrator, definition: Any) -> None:
    assert entered is not None
    task = asyncio.create_task(orchestrator.execute(definition))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_step_swallowing_the_callers_cancellation_stops_the_saga(
    kind: str, tmp_path: Path
) -> None:
    store: SagaStore = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "s.db")
    async with SagaOrchestrator(store) as orchestrator:
        definition = SagaDefinition("sc-1", steps=[sc_first(), sc_swallows(), sc_last()])
        await _cancel_when_entered(orchestrator, definition)
        meta = await orchestrator.get_saga("sc-1")
    # It returned: it completed, and is undone with its result; the next step never runs.
    assert log == ["first", "swallowed", "undo swallows (swallowed)", "undo first"]
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert meta.error == "CancelledError: the saga was cancelled"
    assert [(s.name, s.status) for s in meta.steps] == [
        ("sc_first", StepStatus.COMPLETED),
        ("sc_swallows", StepStatus.COMPLETED),
    ]


@pytest.mark.asyncio
async def test_a_step_turning_the_callers_cancellation_into_an_error_is_not_retried() -> None:
    orchestrator = SagaOrchestrator()
    definition = SagaDefinition("sc-2", steps=[sc_first(), sc_swallows_then_raises(), sc_last()])
    await _cancel_when_entered(orchestrator, definition)
    # Interrupted by the cancellation (its effect unknown): undone like a timed-out step.
    assert log == ["first", "attempt", "swallowed", "undo raises", "undo first"]
    meta = await orchestrator.get_saga("sc-2")
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert meta.steps[1].status is StepStatus.FAILED
    assert meta.steps[1].error == "CancelledError: the saga was cancelled"


@pytest.mark.asyncio
async def test_a_listener_swallowing_the_callers_cancellation_stops_the_saga() -> None:
    async def swallowing_listener(transition: Transition) -> None:
        if transition.kind is TransitionKind.STEP_COMPLETED and transition.step_name == "sc_first":
            await _swallow_once()

    orchestrator = SagaOrchestrator(listeners=[swallowing_listener])
    definition = SagaDefinition("sc-3", steps=[sc_first(), sc_last()])
    await _cancel_when_entered(orchestrator, definition)
    assert log == ["first", "swallowed", "undo first"]
    meta = await orchestrator.get_saga("sc-3")
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert [s.name for s in meta.steps] == ["sc_first"]


@pytest.mark.asyncio
async def test_the_last_step_swallowing_the_callers_cancellation_is_compensated() -> None:
    orchestrator = SagaOrchestrator()
    await _cancel_when_entered(
        orchestrator, SagaDefinition("sc-4", steps=[sc_first(), sc_swallows()])
    )
    assert log == ["first", "swallowed", "undo swallows (swallowed)", "undo first"]
    meta = await orchestrator.get_saga("sc-4")
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED


@step
async def sc_fails() -> None:
    raise ValueError("declined")


@step
async def sc_compensated_slowly() -> str:
    return "slow"


@sc_compensated_slowly.compensate
async def sc_undo_slowly() -> None:
    await _swallow_once()
    log.append("undo slowly")


@pytest.mark.asyncio
async def test_a_compensation_swallowing_the_callers_cancellation_still_raises_it() -> None:
    # Compensating a failure, cancelled: the compensation goes on (it always would), but
    # the caller gets its CancelledError, not the StepFailed.
    orchestrator = SagaOrchestrator()
    definition = SagaDefinition("sc-5", steps=[sc_first(), sc_compensated_slowly(), sc_fails()])
    await _cancel_when_entered(orchestrator, definition)
    assert log == ["first", "swallowed", "undo slowly", "undo first"]
    meta = await orchestrator.get_saga("sc-5")
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED


@pytest.mark.asyncio
async def test_a_listener_swallowing_the_callers_cancellation_at_the_end_still_raises_it() -> None:
    # Too late to undo anything (the saga completed), but the cancellation is not lost.
    async def swallowing_listener(transition: Transition) -> None:
        if transition.kind is TransitionKind.SAGA_FINISHED:
            await _swallow_once()

    orchestrator = SagaOrchestrator(listeners=[swallowing_listener])
    await _cancel_when_entered(orchestrator, SagaDefinition("sc-6", steps=[sc_first()]))
    assert log == ["first", "swallowed"]
    meta = await orchestrator.get_saga("sc-6")
    assert meta is not None
    assert meta.status is SagaStatus.COMPLETED


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_listener_swallowing_the_callers_cancellation_at_a_failed_end_still_raises_it(
    kind: str, tmp_path: Path
) -> None:
    # As above for a saga that failed and was compensated: the caller gets its
    # CancelledError, not the StepFailed (which would leave its cancellation lost).
    async def swallowing_listener(transition: Transition) -> None:
        if transition.kind is TransitionKind.SAGA_FINISHED:
            await _swallow_once()

    store: SagaStore = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "s.db")
    async with SagaOrchestrator(store, listeners=[swallowing_listener]) as orchestrator:
        task = asyncio.create_task(
            orchestrator.execute(SagaDefinition("sc-8", steps=[sc_first(), sc_fails()]))
        )
        assert entered is not None
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError) as raised:
            await task
        meta = await orchestrator.get_saga("sc-8")
    assert isinstance(raised.value.__cause__, StepFailed)
    assert log == ["first", "undo first", "swallowed"]
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED


@pytest.mark.asyncio
async def test_the_cancel_count_is_left_to_the_caller() -> None:
    # The orchestrator raises the cancellation; it never takes it back (Task.uncancel):
    # asyncio.timeout around execute() still turns it into its TimeoutError.
    orchestrator = SagaOrchestrator()
    definition = SagaDefinition("sc-7", steps=[sc_first(), sc_swallows(), sc_last()])
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await orchestrator.execute(definition)
    assert log == ["first", "swallowed", "undo swallows (swallowed)", "undo first"]
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0


@pytest.mark.asyncio
async def test_an_awaited_step_turning_the_callers_cancellation_into_an_error_is_not_retried() -> (
    None
):
    # Regression: awaited on its own (outside a saga), such a step was retried as for any
    # ConnectionError: it ran again after its caller was cancelled, and the caller got its
    # result (or the error) instead of its CancelledError.
    async def caller() -> str:
        return await sc_swallows_then_raises()

    assert entered is not None
    task = asyncio.create_task(caller())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError) as raised:
        await task
    assert log == ["attempt", "swallowed"]
    assert isinstance(raised.value.__cause__, ConnectionError)
