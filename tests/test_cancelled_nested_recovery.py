"""A cancelled ``recover()`` while the step it resumes runs an inner saga."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from sagakit import SagaOrchestrator, SagaStatus, current_step, saga, step
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

effects: list[str] = []
gates: dict[str, asyncio.Event] = {}


@step
async def cnr_authorize(order: str) -> str:
    effects.append(f"authorize {order}")
    return f"auth-{order}"


@cnr_authorize.compensate
async def cnr_void(order: str) -> None:
    effects.append(f"void {order}")


@step
async def cnr_capture(order: str) -> str:
    effects.append(f"capture {order}")
    gate = gates.get("capture")
    if gate is not None:
        gates["capturing"].set()
        await gate.wait()
    return f"captured-{order}"


@saga
def cnr_payment(order: str) -> Any:
    yield cnr_authorize(order)
    yield cnr_capture(order)


@step
async def cnr_pay(order: str) -> list[Any]:
    context = current_step()
    assert context is not None
    inner = f"{context.idempotency_key}/payment"
    return await context.orchestrator.execute(cnr_payment(order), saga_id=inner)


@cnr_pay.compensate
async def cnr_refund(order: str) -> None:
    effects.append(f"refund {order}")


@step
async def cnr_ship(order: str) -> str:
    effects.append(f"ship {order}")
    return f"shipped-{order}"


@saga
def cnr_order(order: str) -> Any:
    yield cnr_pay(order)
    yield cnr_ship(order)


@pytest.fixture(autouse=True)
def _clear() -> None:
    effects.clear()
    gates.clear()


async def _crashed_in(durable_store: Callable[[], Any], saga: Any, step: Any) -> None:
    """``saga`` ("order-1") started, and its process died as ``step`` began."""
    store = durable_store()
    with FaultInjector().crash(step), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).execute(saga, saga_id="order-1")
    await simulate_restart(store)
    await store.close()


async def _crashed_before_paying(
    durable_store: Callable[[], Any], saga: Any, pay: Any = cnr_pay
) -> None:
    """``saga`` ("order-1") started, and its process died as its ``pay`` step began."""
    await _crashed_in(durable_store, saga, pay)
    assert effects == []


@pytest.mark.asyncio
async def test_a_cancelled_recovery_hands_back_the_inner_saga_of_its_step_too(
    durable_store: Callable[[], Any],
) -> None:
    # Regression: recovery resumed the order at its payment step, which executed the
    # payment saga afresh; cancelling recover() while it captured compensated the payment
    # (voided), and the next recovery ran the step again: the payment was authorized a
    # second time. The inner saga is now handed back with the outer one, as a crash would
    # leave both, and the step's rerun resumes it where it stopped.
    await _crashed_before_paying(durable_store, cnr_order("o1"))
    gates["capture"] = asyncio.Event()
    gates["capturing"] = asyncio.Event()
    async with SagaOrchestrator(durable_store()) as recovering:
        task = asyncio.create_task(recovering.recover())
        await gates["capturing"].wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        inner = await recovering.get_saga("order-1:0/payment")
        assert inner is not None
        assert inner.status is SagaStatus.EXECUTING  # as a crash leaves it: not compensated
    assert effects == ["authorize o1", "capture o1"]

    gates.clear()
    async with SagaOrchestrator(durable_store()) as restarted:
        outcomes = await restarted.recover()
        assert [(o.saga_id, o.status) for o in outcomes] == [("order-1", SagaStatus.COMPLETED)]
        inner = await restarted.get_saga("order-1:0/payment")
        assert inner is not None
        assert inner.status is SagaStatus.COMPLETED
        assert await restarted.recover() == []
    # The interrupted capture runs again (same idempotency key); authorize does not.
    assert effects == ["authorize o1", "capture o1", "capture o1", "ship o1"]


@step(timeout=0.2)
async def cnr_pay_briefly(order: str) -> list[Any]:
    context = current_step()
    assert context is not None
    inner = f"{context.idempotency_key}/payment"
    return await context.orchestrator.execute(cnr_payment(order), saga_id=inner)


@saga
def cnr_brief_order(order: str) -> Any:
    yield cnr_pay_briefly(order)
    yield cnr_ship(order)


@pytest.mark.asyncio
async def test_a_recovered_step_timing_out_still_compensates_its_inner_saga(
    durable_store: Callable[[], Any],
) -> None:
    # The inner saga is handed back only when the recovery's caller cancelled it: cut
    # short by its step's own timeout, it is compensated as in any run, and the order
    # with it (handed back, it would be resumed later and capture for a compensated order).
    await _crashed_before_paying(durable_store, cnr_brief_order("o2"), cnr_pay_briefly)
    gates["capture"] = asyncio.Event()  # never set: the capture outlasts the step's timeout
    gates["capturing"] = asyncio.Event()
    async with SagaOrchestrator(durable_store()) as recovering:
        outcomes = await recovering.recover()
        assert [(o.saga_id, o.status) for o in outcomes] == [("order-1", SagaStatus.COMPENSATED)]
        inner = await recovering.get_saga("order-1:0/payment")
        assert inner is not None
        assert inner.status is SagaStatus.COMPENSATED
        assert await recovering.recover() == []
    assert effects == ["authorize o2", "capture o2", "void o2"]


@pytest.mark.asyncio
async def test_an_adopted_inner_saga_cut_short_by_its_steps_timeout_is_compensated(
    durable_store: Callable[[], Any],
) -> None:
    # Regression: the process died inside the inner saga; recovery resumed the order,
    # whose step executed the inner id and so recovered it (adopt). That step timed out:
    # the inner saga's recovery took the timeout's cancellation for its caller's and
    # handed the inner saga back, while the order was compensated; the next recovery
    # then resumed the inner saga and captured the payment of a compensated order.
    await _crashed_in(durable_store, cnr_brief_order("o3"), cnr_capture)
    gates["capture"] = asyncio.Event()  # never set: the capture outlasts the step's timeout
    gates["capturing"] = asyncio.Event()
    async with SagaOrchestrator(durable_store()) as recovering:
        outcomes = await recovering.recover()
        assert [(o.saga_id, o.status) for o in outcomes] == [("order-1", SagaStatus.COMPENSATED)]
        inner = await recovering.get_saga("order-1:0/payment")
        assert inner is not None
        assert inner.status is SagaStatus.COMPENSATED
    gates.clear()
    async with SagaOrchestrator(durable_store()) as restarted:
        assert await restarted.recover() == []  # nothing left to capture later
    assert effects == ["authorize o3", "capture o3", "void o3"]


@pytest.mark.asyncio
async def test_an_inner_orphan_claimed_as_its_step_timed_out_is_not_left_for_later(
    durable_store: Callable[[], Any],
) -> None:
    # The step's timeout cancels it while its execute() claims the inner orphan, and the
    # claim swallows that cancellation. Handed back unrun (as for the recovery's caller's
    # cancellation), the inner saga would be resumed by a later recovery, capturing the
    # payment of an order compensated meanwhile: it is finished now, as the step's
    # execute() would have (the order is compensated after it, by the step's timeout).
    import contextlib

    await _crashed_in(durable_store, cnr_brief_order("o4"), cnr_capture)

    recovering_store = durable_store()
    claim = recovering_store.claim_orphans

    async def swallowing_the_timeout(**options: Any) -> Any:
        if options.get("saga_ids") is not None:  # the step's execute() of the inner id
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()  # until the step's timeout cancels it
        return await claim(**options)

    recovering_store.claim_orphans = swallowing_the_timeout
    async with SagaOrchestrator(recovering_store) as recovering:
        outcomes = await recovering.recover()
        assert [(o.saga_id, o.status) for o in outcomes] == [("order-1", SagaStatus.COMPENSATED)]
        inner = await recovering.get_saga("order-1:0/payment")
        assert inner is not None
        assert inner.status is SagaStatus.COMPLETED
    async with SagaOrchestrator(durable_store()) as restarted:
        assert await restarted.recover() == []  # nothing left to capture later
    assert effects == ["authorize o4", "capture o4"]  # captured once; the order then undone


@pytest.mark.asyncio
async def test_an_inner_orphan_claimed_as_the_recovery_is_cancelled_is_handed_back_unrun(
    durable_store: Callable[[], Any],
) -> None:
    # Regression: recover() cancelled while the resumed order's step claimed the inner
    # orphan, by a claim that swallowed the cancellation: the inner saga was run to its
    # end (captured) while its order was handed back. It is given back unrun with it.
    import contextlib

    await _crashed_in(durable_store, cnr_order("o5"), cnr_capture)

    recovering_store = durable_store()
    claim = recovering_store.claim_orphans
    claiming = asyncio.Event()

    async def swallowing(**options: Any) -> Any:
        if options.get("saga_ids") is not None:  # the step's execute() of the inner id
            claiming.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()  # until the recovery is cancelled
        return await claim(**options)

    recovering_store.claim_orphans = swallowing
    async with SagaOrchestrator(recovering_store) as recovering:
        task = asyncio.create_task(recovering.recover())
        await claiming.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert effects == ["authorize o5"]  # the inner saga did not go on

    async with SagaOrchestrator(durable_store()) as restarted:
        outcomes = await restarted.recover()
        assert [(o.saga_id, o.status) for o in outcomes] == [("order-1", SagaStatus.COMPLETED)]
        inner = await restarted.get_saga("order-1:0/payment")
        assert inner is not None
        assert inner.status is SagaStatus.COMPLETED
    assert effects == ["authorize o5", "capture o5", "ship o5"]


@pytest.mark.asyncio
async def test_a_cancelled_first_run_compensates_the_inner_saga_of_its_step(
    durable_store: Callable[[], Any],
) -> None:
    # Not a recovery: nothing is handed back. The cancellation undoes the inner saga
    # (voided), then the outer step (refunded), as it undoes any saga its caller cancels.
    gates["capture"] = asyncio.Event()
    gates["capturing"] = asyncio.Event()
    async with SagaOrchestrator(durable_store()) as orchestrator:
        task = asyncio.create_task(orchestrator.execute(cnr_order("o1"), saga_id="order-1"))
        await gates["capturing"].wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        inner = await orchestrator.get_saga("order-1:0/payment")
        assert inner is not None
        assert inner.status is SagaStatus.COMPENSATED
        assert await orchestrator.recover() == []
    assert effects == ["authorize o1", "capture o1", "void o1", "refund o1"]


left_running: list[asyncio.Task[Any]] = []


@step
async def cnr_pay_in_the_background(order: str) -> None:
    context = current_step()
    assert context is not None
    inner = f"{context.idempotency_key}/payment"
    paying = context.orchestrator.execute(cnr_payment(order), saga_id=inner)
    left_running.append(asyncio.create_task(paying))  # not awaited: it outlives the step


@step
async def cnr_hold(order: str) -> None:
    gates["holding"].set()
    await asyncio.Event().wait()  # until the recovery is cancelled


@saga
def cnr_background_order(order: str) -> Any:
    yield cnr_pay_in_the_background(order)
    yield cnr_hold(order)


@pytest.mark.asyncio
async def test_an_inner_saga_a_task_left_running_executes_is_not_handed_back_with_the_outer(
    durable_store: Callable[[], Any],
) -> None:
    # Regression: the inner saga, executed by a task the payment step created and did not
    # await, was linked to the outer saga for good; once the outer one was handed back (its
    # recovery cancelled in a later step), cancelling that task left the inner saga
    # EXECUTING, as a crash leaves it, though no rerun of the completed step would finish
    # it. Its caller's cancellation undoes it, as for any saga not run inside the step.
    await _crashed_in(durable_store, cnr_background_order("o6"), cnr_pay_in_the_background)
    gates["capture"] = asyncio.Event()
    gates["capturing"] = asyncio.Event()
    gates["holding"] = asyncio.Event()
    left_running.clear()
    async with SagaOrchestrator(durable_store()) as recovering:
        task = asyncio.create_task(recovering.recover())
        await gates["capturing"].wait()
        await gates["holding"].wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (paying,) = left_running
        paying.cancel()
        with pytest.raises(asyncio.CancelledError):
            await paying
        inner = await recovering.get_saga("order-1:0/payment")
        assert inner is not None
        assert inner.status is SagaStatus.COMPENSATED
    assert effects == ["authorize o6", "capture o6", "void o6"]


@step
async def cnr_resume_payment_in_the_background(order: str) -> None:
    context = current_step()
    assert context is not None
    paying = context.orchestrator.execute(cnr_payment(order), saga_id="order-1")
    left_running.append(asyncio.create_task(paying))  # not awaited: it outlives the step


@saga
def cnr_resuming_order(order: str) -> Any:
    yield cnr_resume_payment_in_the_background(order)


@pytest.mark.asyncio
async def test_an_orphan_a_task_left_running_adopts_is_handed_back_when_that_task_is_cancelled(
    durable_store: Callable[[], Any],
) -> None:
    # Regression: the orphan's recovery, run by a task a finished saga's step created,
    # took that saga for the step it was started in: cancelling the task compensated the
    # orphan (voided) against its recovery policy, as a timeout inside that step would.
    # The step had ended: the task's cancellation is its caller's, as at the top level,
    # and hands the orphan back for the next recovery to finish.
    await _crashed_in(durable_store, cnr_payment("o7"), cnr_capture)
    gates["capture"] = asyncio.Event()
    gates["capturing"] = asyncio.Event()
    left_running.clear()
    async with SagaOrchestrator(durable_store()) as orchestrator:
        await orchestrator.execute(cnr_resuming_order("o7"))
        await gates["capturing"].wait()
        (paying,) = left_running
        paying.cancel()
        with pytest.raises(asyncio.CancelledError):
            await paying
        inner = await orchestrator.get_saga("order-1")
        assert inner is not None
        assert inner.status is SagaStatus.EXECUTING  # handed back: not compensated
    gates.clear()
    async with SagaOrchestrator(durable_store()) as restarted:
        outcomes = await restarted.recover()
        assert [(o.saga_id, o.status) for o in outcomes] == [("order-1", SagaStatus.COMPLETED)]
    assert effects == ["authorize o7", "capture o7", "capture o7"]
