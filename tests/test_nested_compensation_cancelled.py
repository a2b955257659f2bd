"""An inner saga compensating when its outer step is cancelled (its timeout, or the outer
saga's caller) runs each compensation once, to its end.

Regression: the cancellation reached the inner saga's running compensation, which was
interrupted and then run again from its start — a compensation is an external action
(a refund), and the interrupted run may have acted already.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from sagakit import (
    SagaOrchestrator,
    SagaStatus,
    StepStatus,
    StepTimeout,
    current_step,
    saga,
    step,
)

starts: Counter[str] = Counter()
ends: Counter[str] = Counter()
# The outer saga's task: its cancellation (the outer step's timeout, or the caller's) has
# come once it counts one.
outer_task: asyncio.Task[Any] | None = None
voiding = asyncio.Event()


@step
async def ncc_authorize() -> str:
    return "authorized"


@ncc_authorize.compensate
async def ncc_void() -> None:
    starts["void"] += 1
    assert outer_task is not None
    voiding.set()
    # Still running when the outer step is cancelled (no event tells that: its count does).
    while not outer_task.cancelling():  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    ends["void"] += 1


@step
async def ncc_hold() -> str:
    return "held"


@ncc_hold.compensate
async def ncc_release() -> None:
    starts["release"] += 1
    ends["release"] += 1


@step
async def ncc_capture() -> None:
    raise LookupError("card declined")


@saga
def ncc_payment() -> Any:
    yield ncc_authorize()
    yield ncc_hold()
    yield ncc_capture()


# Long enough for the inner saga's steps, on a busy PostgreSQL too: it expires while the
# inner saga compensates (ncc_void waits for it).
@step(timeout=1)
async def ncc_pay_in_time() -> list[Any]:
    context = current_step()
    assert context is not None
    return await context.orchestrator.execute(
        ncc_payment(), saga_id=f"{context.idempotency_key}/payment"
    )


@step(timeout=3600)
async def ncc_pay() -> list[Any]:
    context = current_step()
    assert context is not None
    return await context.orchestrator.execute(
        ncc_payment(), saga_id=f"{context.idempotency_key}/payment"
    )


@saga
def ncc_order_in_time() -> Any:
    yield ncc_pay_in_time()


@saga
def ncc_order() -> Any:
    yield ncc_pay()


@pytest.fixture(autouse=True)
def _clear() -> None:
    global voiding
    starts.clear()
    ends.clear()
    voiding = asyncio.Event()  # one per test: an event is bound to the loop it waits on


async def _inner_compensated_once(orchestrator: SagaOrchestrator, inner_id: str) -> None:
    assert starts == Counter({"void": 1, "release": 1})
    assert ends == starts
    inner = await orchestrator.get_saga(inner_id)
    assert inner is not None
    assert inner.status is SagaStatus.COMPENSATED
    assert [(c.name, c.status) for c in inner.compensations] == [
        ("ncc_hold", StepStatus.COMPLETED),
        ("ncc_authorize", StepStatus.COMPLETED),
    ]


async def _outer_step_timed_out(orchestrator: SagaOrchestrator) -> None:
    global outer_task
    outer_task = asyncio.create_task(orchestrator.execute(ncc_order_in_time(), saga_id="ncc-1"))
    with pytest.raises(StepTimeout) as timeout:
        await outer_task
    assert timeout.value.step_name == "ncc_pay_in_time"
    outer = await orchestrator.get_saga("ncc-1")
    assert outer is not None
    assert outer.steps[0].status is StepStatus.TIMED_OUT
    await _inner_compensated_once(orchestrator, "ncc-1:0/payment")


@pytest.mark.asyncio
async def test_an_outer_step_timing_out_runs_each_inner_compensation_once() -> None:
    async with SagaOrchestrator() as orchestrator:
        await _outer_step_timed_out(orchestrator)


@pytest.mark.asyncio
async def test_an_outer_step_timing_out_runs_each_inner_compensation_once_in_a_log(
    durable_store: Callable[[], Any],
) -> None:
    async with SagaOrchestrator(durable_store()) as orchestrator:
        await _outer_step_timed_out(orchestrator)


@pytest.mark.asyncio
async def test_an_outer_saga_cancelled_runs_each_inner_compensation_once() -> None:
    global outer_task
    async with SagaOrchestrator() as orchestrator:
        outer_task = asyncio.create_task(orchestrator.execute(ncc_order(), saga_id="ncc-2"))
        await voiding.wait()
        outer_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer_task
        await _inner_compensated_once(orchestrator, "ncc-2:0/payment")
        outer = await orchestrator.get_saga("ncc-2")
        assert outer is not None
        assert outer.status is SagaStatus.COMPENSATED


# The outer step's own compensation runs after the inner saga compensated itself (the step
# timed out, by default compensated): it reads the inner saga's outcome in the log and
# undoes only what that left done, as docs/durability.md says (examples/nested_sagas.py).
refunds: list[str] = []


async def _refund_what_is_left(key: str) -> None:
    context = current_step()
    assert context is not None
    assert context.idempotency_key == key  # the step's: it names the inner saga
    payment = await context.orchestrator.get_saga(f"{key}/payment")
    if payment is None or payment.status is SagaStatus.COMPENSATED:
        return  # never began, or undid itself: nothing left to undo
    assert payment.status is SagaStatus.COMPLETED, payment  # else an operator's to settle
    refunds.append(key)


@step(timeout=1)
async def ncc_pay_undone() -> list[Any]:
    context = current_step()
    assert context is not None
    return await context.orchestrator.execute(
        ncc_payment(), saga_id=f"{context.idempotency_key}/payment"
    )


@ncc_pay_undone.compensate
async def ncc_refund() -> None:
    context = current_step()
    assert context is not None
    await _refund_what_is_left(context.idempotency_key)


@saga
def ncc_order_undone() -> Any:
    yield ncc_pay_undone()


@pytest.mark.asyncio
async def test_the_outer_steps_compensation_undoes_nothing_the_inner_saga_undid() -> None:
    global outer_task
    refunds.clear()
    async with SagaOrchestrator() as orchestrator:
        outer_task = asyncio.create_task(orchestrator.execute(ncc_order_undone(), saga_id="ncc-3"))
        with pytest.raises(StepTimeout):
            await outer_task
        outer = await orchestrator.get_saga("ncc-3")
        assert outer is not None
        assert [(c.name, c.status) for c in outer.compensations] == [
            ("ncc_pay_undone", StepStatus.COMPLETED)  # it ran, and found nothing to undo
        ]
        await _inner_compensated_once(orchestrator, "ncc-3:0/payment")
    assert refunds == []
