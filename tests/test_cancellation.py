"""Issue 2, point 8: cancelling the task that awaits ``execute`` mid-saga."""

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
    StepStatus,
    Transition,
    TransitionKind,
    step,
)

log: list[str] = []


@pytest.fixture(autouse=True)
def _clear_log() -> None:
    log.clear()


@step
async def a() -> str:
    log.append("a")
    return "A"


@a.compensate
async def undo_a() -> str:
    log.append("undo a")
    return "undid a"


@step
async def b() -> str:
    log.append("b")
    return "B"


@b.compensate
async def undo_b() -> str:
    log.append("undo b")
    return "undid b"


async def settle() -> None:
    """Let the other tasks run until they block."""
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_cancelling_mid_saga_compensates_and_reraises() -> None:
    entered = asyncio.Event()
    seen: list[Any] = []

    @step
    async def wait_forever(order: str) -> str:
        log.append("wait")
        entered.set()
        await asyncio.Event().wait()
        return "never"

    @wait_forever.compensate
    async def undo_wait(result: str | None, order: str) -> None:
        seen.append((result, order))

    @step
    async def never() -> None:
        log.append("never")

    orchestrator = SagaOrchestrator()
    definition = (
        SagaDefinition("c-1").add_step(a()).add_step(b()).add_step(wait_forever("o-1"))
    ).add_step(never())
    task = asyncio.create_task(orchestrator.execute(definition))
    await entered.wait()
    assert await orchestrator.running_count() == 1

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()

    # The interrupted step's effect is unknown, so it is undone first (with no result).
    assert log == ["a", "b", "wait", "undo b", "undo a"]
    assert seen == [(None, "o-1")]
    meta = await orchestrator.get_saga("c-1")
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert meta.error is not None
    assert "CancelledError" in meta.error
    assert meta.steps[2].status is StepStatus.FAILED
    assert meta.compensation_events == ("undid b", "undid a")
    assert meta.finished_at is not None
    assert await orchestrator.running_count() == 0
    assert await orchestrator.history_count() == 1


@pytest.mark.asyncio
async def test_a_step_cancelled_before_it_started_is_not_compensated() -> None:
    # Cancelled while its start was being reported (a slow async listener here; a
    # durable store's write in production): the step never ran, so it is not undone.
    starting = asyncio.Event()

    async def slow_listener(transition: Transition) -> None:
        if transition.kind is TransitionKind.STEP_STARTED and transition.step_name == "b":
            starting.set()
            await asyncio.Event().wait()

    orchestrator = SagaOrchestrator(listeners=[slow_listener])
    definition = SagaDefinition("c-0").add_step(a()).add_step(b())
    task = asyncio.create_task(orchestrator.execute(definition))
    await starting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["a", "undo a"]  # b neither ran nor was undone
    meta = await orchestrator.get_saga("c-0")
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert meta.steps[1].status is StepStatus.FAILED
    assert meta.steps[1].error == "CancelledError: cancelled before the step started"
    assert [c.name for c in meta.compensations] == ["a"]


@pytest.mark.asyncio
async def test_cancelled_again_during_compensation_still_compensates_everything() -> None:
    gate = asyncio.Event()
    entered = asyncio.Event()
    compensating = asyncio.Event()

    @step
    async def slow_undo_step() -> str:
        log.append("slow")
        return "S"

    @slow_undo_step.compensate
    async def slow_undo() -> str:
        log.append("undo slow: start")
        compensating.set()
        await gate.wait()
        log.append("undo slow: end")
        return "undid slow"

    @step
    async def hang() -> None:
        entered.set()
        await asyncio.Event().wait()

    orchestrator = SagaOrchestrator()
    definition = SagaDefinition("c-2").add_step(a()).add_step(slow_undo_step()).add_step(hang())
    task = asyncio.create_task(orchestrator.execute(definition))
    await entered.wait()

    task.cancel()
    await compensating.wait()
    task.cancel()  # again, while compensating
    await settle()
    task.cancel()  # and again
    await settle()
    assert not task.done()  # compensation is shielded: still waiting on the gate
    gate.set()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["a", "slow", "undo slow: start", "undo slow: end", "undo a"]
    meta = await orchestrator.get_saga("c-2")
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert [c.status for c in meta.compensations] == [StepStatus.COMPLETED] * 2


@pytest.mark.asyncio
async def test_cancelled_while_compensating_a_failure_is_recorded_compensated() -> None:
    # Regression: a saga cancelled while compensating a failed step finished its
    # compensations but was recorded FAILED, so its id could never run again.
    gate = asyncio.Event()
    compensating = asyncio.Event()

    @step
    async def charge() -> str:
        return "pay"

    @charge.compensate
    async def refund() -> str:
        log.append("refund: start")
        compensating.set()
        await gate.wait()
        log.append("refund: end")
        return "refunded"

    @step
    async def boom() -> None:
        raise ValueError("declined")

    orchestrator = SagaOrchestrator()
    task = asyncio.create_task(
        orchestrator.execute(SagaDefinition("c-3").add_step(charge()).add_step(boom()))
    )
    await compensating.wait()
    task.cancel()
    await settle()
    gate.set()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert log[-1] == "refund: end"
    meta = await orchestrator.get_saga("c-3")
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert meta.compensations[-1].status is StepStatus.COMPLETED
    assert "ValueError: declined" in (meta.error or "")


@pytest.mark.asyncio
async def test_cancelling_during_a_retry_backoff_compensates_completed_steps() -> None:
    waiting = asyncio.Event()

    async def slow_sleep(seconds: float) -> None:
        waiting.set()
        await asyncio.Event().wait()

    @step(retry=Retry(attempts=3))
    async def flaky() -> None:
        log.append("flaky")
        raise ConnectionError("down")

    orchestrator = SagaOrchestrator(sleep=slow_sleep)
    task = asyncio.create_task(
        orchestrator.execute(SagaDefinition("c-4").add_step(a()).add_step(flaky()))
    )
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["a", "flaky", "undo a"]
    meta = await orchestrator.get_saga("c-4")
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED


@pytest.mark.asyncio
async def test_cancellation_is_reported_to_listeners() -> None:
    seen: list[Transition] = []
    entered = asyncio.Event()

    @step
    async def hang() -> None:
        entered.set()
        await asyncio.Event().wait()

    orchestrator = SagaOrchestrator(listeners=[seen.append])
    task = asyncio.create_task(
        orchestrator.execute(SagaDefinition("c-5").add_step(a()).add_step(hang()))
    )
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    kinds = [t.kind for t in seen]
    assert TransitionKind.COMPENSATION_COMPLETED in kinds
    assert kinds[-1] is TransitionKind.SAGA_FINISHED
    assert seen[-1].status is SagaStatus.COMPENSATED


@pytest.mark.asyncio
async def test_a_cancelled_saga_leaves_the_orchestrator_usable() -> None:
    entered = asyncio.Event()

    @step
    async def hang() -> None:
        entered.set()
        await asyncio.Event().wait()

    orchestrator = SagaOrchestrator()
    task = asyncio.create_task(orchestrator.execute(SagaDefinition("x").add_step(hang())))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await orchestrator.execute(SagaDefinition("y").add_step(a())) == ["A"]
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0


@pytest.mark.asyncio
async def test_cancelled_while_its_end_is_told_the_saga_still_leaves_the_running_sagas() -> None:
    # Regression: cancelled while an async listener heard SAGA_FINISHED of a completed
    # saga, the run stayed among the running sagas for good, its id refused for ever.
    telling = asyncio.Event()

    async def slow_listener(transition: Transition) -> None:
        if transition.kind is TransitionKind.SAGA_FINISHED:
            telling.set()
            await asyncio.Event().wait()

    orchestrator = SagaOrchestrator(listeners=[slow_listener])
    task = asyncio.create_task(orchestrator.execute(SagaDefinition("c-6").add_step(a())))
    await telling.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await orchestrator.running_count() == 0
    assert await orchestrator.get_running_sagas() == []
    assert [m.id for m in await orchestrator.get_history()] == ["c-6"]
    # Completed: the id is idempotent, not "already executing".
    assert await orchestrator.execute(SagaDefinition("c-6").add_step(a())) == ["A"]
    assert log == ["a"]


@pytest.mark.asyncio
async def test_a_step_cancelled_while_its_completion_is_told_is_compensated() -> None:
    # Regression: cancelled while a slow listener heard STEP_COMPLETED, the step that
    # had completed was never undone, yet the saga was recorded COMPENSATED.
    telling = asyncio.Event()

    async def slow_listener(transition: Transition) -> None:
        if transition.kind is TransitionKind.STEP_COMPLETED and transition.step_name == "b":
            telling.set()
            await asyncio.Event().wait()

    orchestrator = SagaOrchestrator(listeners=[slow_listener])
    definition = SagaDefinition("c-7").add_step(a()).add_step(b())
    task = asyncio.create_task(orchestrator.execute(definition))
    await telling.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert log == ["a", "b", "undo b", "undo a"]
    meta = await orchestrator.get_saga("c-7")
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert [s.status for s in meta.steps] == [StepStatus.COMPLETED] * 2
    assert [c.name for c in meta.compensations] == ["b", "a"]
    assert meta.compensation_events == ("undid b", "undid a")


@pytest.mark.asyncio
async def test_a_saga_cancelled_while_its_first_start_is_written_is_told_started(
    tmp_path: Path,
) -> None:
    from sagakit.stores import SQLiteStore

    class SlowStart(SQLiteStore):
        async def record(self, run: Any, transition: Transition) -> None:
            if transition.kind is TransitionKind.STEP_STARTED:
                await asyncio.sleep(10)  # cancelled while the first step's start is written
            await super().record(run, transition)

    told: list[TransitionKind] = []
    store = SlowStart(tmp_path / "log.db")
    async with SagaOrchestrator(store, listeners=[lambda t: told.append(t.kind)]) as o:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(o.execute(SagaDefinition("s-1").add_step(a())), 0.05)
    assert told == [TransitionKind.SAGA_STARTED, TransitionKind.SAGA_FINISHED]
