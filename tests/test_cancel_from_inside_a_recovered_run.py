"""Code in a saga's run (a sync listener, a step) that cancels ``asyncio.current_task()``.

In ``execute()`` that task is the caller's: the caller is cancelled, the saga stops as for
any cancellation (compensated) and ``execute()`` raises ``CancelledError``, its task's
``cancelling()`` count up by one. Recovery resumes a saga in a task of its own (to tell a
cancellation of its caller from a step's timeout), so that code cancels that task.

Regression: ``recover()`` (and ``execute()`` of an orphan's id, adopting it) then raised
``CancelledError`` although its caller had not been cancelled (``cancelling()`` 0): a
``TaskGroup`` or ``asyncio.timeout`` around it, or the caller's own ``uncancel()``, saw a
cancellation no one had asked for. The cancellation is now the caller's, as in
``execute()``: its task is cancelled, and the saga is handed back as by any cancelled
recovery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from sagakit import (
    SagaOrchestrator,
    SagaStatus,
    Transition,
    TransitionKind,
    current_step,
    saga,
    step,
)
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

effects: list[str] = []
armed: set[str] = set()  # where the run cancels its task: "listener", "step"


@step
async def cir_book(order: str) -> str:
    effects.append(f"book {order}")
    return order


@cir_book.compensate
async def cir_unbook(order: str) -> None:
    effects.append(f"unbook {order}")


@step
async def cir_ship(order: str) -> str:
    effects.append(f"ship {order}")
    if "step" in armed:
        armed.discard("step")
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)  # lands here: the step is interrupted
    return order


@saga
def cir_order(order: str) -> Any:
    yield cir_book(order)
    yield cir_ship(order)


def cancelling_listener(transition: Transition) -> None:
    """Cancel the task the saga runs in when step 1 starts (sync: lands at its next await)."""
    started = transition.kind is TransitionKind.STEP_STARTED and transition.step_index == 1
    if started and "listener" in armed:
        armed.discard("listener")
        task = asyncio.current_task()
        assert task is not None
        task.cancel()


async def cancelled_count(running: Any) -> int:
    """Await ``running``; the caller's ``cancelling()`` count once it raised CancelledError."""
    try:
        await running
    except asyncio.CancelledError:
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()
    pytest.fail("it was not cancelled")


@pytest.mark.asyncio
@pytest.mark.parametrize("where", ["listener", "step"])
@pytest.mark.parametrize("how", ["execute", "recover", "adopt"])
async def test_code_in_the_run_cancelling_its_task_cancels_the_caller(
    durable_store: Callable[[], Any], how: str, where: str
) -> None:
    effects.clear()
    armed.clear()
    if how != "execute":  # an orphan whose step 1 had started
        store = durable_store()
        with FaultInjector().crash(cir_ship), pytest.raises(SimulatedCrash):
            await SagaOrchestrator(store).execute(cir_order("o1"), saga_id="o1")
        await simulate_restart(store)
        await store.close()
        effects.clear()
    armed.add(where)
    async with SagaOrchestrator(durable_store(), listeners=[cancelling_listener]) as orchestrator:
        running = (
            orchestrator.recover()
            if how == "recover"
            else orchestrator.execute(cir_order("o1"), saga_id="o1")
        )
        # In a task of its own, as a caller is: its count is that task's.
        count = await asyncio.create_task(cancelled_count(running))
        meta = await orchestrator.get_saga("o1")
    assert count == 1  # the caller's task was cancelled, once
    assert meta is not None
    shipped = ["ship o1"] if where == "step" else []
    if how == "execute":  # the caller gave the saga up: compensated
        assert effects == ["book o1", *shipped, "unbook o1"]
        assert meta.status is SagaStatus.COMPENSATED
        return
    # A cancelled recovery: the saga handed back, unchanged, for the next one to finish.
    assert effects == shipped
    assert meta.status is SagaStatus.EXECUTING
    async with SagaOrchestrator(durable_store()) as orchestrator:
        [outcome] = await orchestrator.recover()
    assert outcome.status is SagaStatus.COMPLETED
    assert effects == [*shipped, "ship o1"]


@step
async def cir_place(order: str) -> str:
    context = current_step()
    assert context is not None
    await context.orchestrator.execute(cir_order(order), saga_id=order)
    return order


@cir_place.compensate
async def cir_unplace(order: str) -> None:
    effects.append(f"unplace {order}")


@saga
def cir_outer(order: str) -> Any:
    yield cir_place(order)


@pytest.mark.asyncio
@pytest.mark.parametrize("orphan", [False, True], ids=["afresh", "orphan"])
async def test_a_saga_a_step_executes_cancelling_its_task_is_undone_with_that_step(
    durable_store: Callable[[], Any], orphan: bool
) -> None:
    # The step of a saga executes the saga "o1" (an orphan's id: adopted, resumed in a
    # task of its own), whose listener cancels its task: as for a saga the step executes
    # afresh, the step's task (its saga's caller's) is cancelled, and both sagas are
    # undone (handed back, the orphan would be resumed later behind its undone step).
    effects.clear()
    armed.clear()
    if orphan:
        store = durable_store()
        with FaultInjector().crash(cir_ship), pytest.raises(SimulatedCrash):
            await SagaOrchestrator(store).execute(cir_order("o1"), saga_id="o1")
        await simulate_restart(store)
        await store.close()
        effects.clear()
    armed.add("listener")
    async with SagaOrchestrator(durable_store(), listeners=[cancelling_listener]) as orchestrator:
        running = orchestrator.execute(cir_outer("o1"), saga_id="outer")
        count = await asyncio.create_task(cancelled_count(running))
        inner = await orchestrator.get_saga("o1")
        outer = await orchestrator.get_saga("outer")
    assert count == 1
    assert inner is not None
    assert outer is not None
    assert (inner.status, outer.status) == (SagaStatus.COMPENSATED, SagaStatus.COMPENSATED)
    assert effects == [*([] if orphan else ["book o1"]), "unbook o1", "unplace o1"]
