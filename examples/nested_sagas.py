"""Nested sagas: a step runs an inner saga, and a crash inside it is recovered consistently.

An order saga reserves stock, pays, then ships. Paying is a saga of its own
(authorize, then capture), run by the ``pay`` step with the orchestrator running
it (``current_step().orchestrator``: the application's, a worker's, or that of
``sagakit recover``) under an id derived from the step's idempotency key:
``f"{current_step().idempotency_key}/payment"``, so ``order-2:1/payment`` for step 1
of ``order-2``. When recovery runs ``pay`` again,
it executes the *same* inner saga id, which is an idempotency key too: the inner
saga's recorded events come back, or — if the crash left it half done — it is
finished first. Nothing is authorized or captured twice.

The crash is simulated with ``sagakit.testing`` (no pytest needed): the saga stops
exactly as a killed process would leave it in the SQLite log.

Run it with ``python examples/nested_sagas.py``.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from sagakit import (
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StepCall,
    StepFailed,
    current_step,
    saga,
    step,
)
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart


@dataclass(frozen=True)
class Authorized:
    order: str
    amount: int


@dataclass(frozen=True)
class Captured:
    order: str
    amount: int


# What the outside world saw, in order: the payment provider's and the warehouse's calls.
calls: list[str] = []


def key() -> str:
    context = current_step()
    assert context is not None
    return context.idempotency_key


@step
async def reserve(order: str, amount: int) -> str:
    calls.append(f"reserve {order}")
    return f"reservation-{order}"


@reserve.compensate
async def unreserve(order: str, amount: int) -> None:
    calls.append(f"unreserve {order}")


@step
async def authorize(order: str, amount: int) -> Authorized:
    calls.append(f"authorize {amount} ({key()})")
    return Authorized(order, amount)


@authorize.compensate
async def void(order: str, amount: int) -> None:
    calls.append(f"void ({key()})")


@step
async def capture(order: str, amount: int) -> Captured:
    calls.append(f"capture {amount} ({key()})")
    return Captured(order, amount)


@saga
def payment(order: str, amount: int) -> Generator[StepCall[Any], Any, None]:
    yield authorize(order, amount)
    yield capture(order, amount)


@step
async def pay(order: str, amount: int) -> list[Any]:
    """Run the payment saga, with the orchestrator running this step, under an id derived
    from this step's idempotency key."""
    context = current_step()
    assert context is not None
    inner_id = f"{context.idempotency_key}/payment"
    return await context.orchestrator.execute(payment(order, amount), saga_id=inner_id)


@pay.compensate
async def refund(order: str, amount: int) -> None:
    """Undo what the payment saga left done: it may have undone itself already (it failed,
    or ``pay`` timed out while it ran: its completed steps were compensated then)."""
    context = current_step()
    assert context is not None
    inner_id = f"{context.idempotency_key}/payment"  # the step's key: the same inner id
    payment_saga = await context.orchestrator.get_saga(inner_id)
    if payment_saga is None or payment_saga.status is SagaStatus.COMPENSATED:
        return  # never began, or undid itself: refunding would pay out twice
    if payment_saga.status is not SagaStatus.COMPLETED:
        raise RuntimeError(f"payment {inner_id} is {payment_saga.status}: settle it by hand")
    calls.append(f"refund {amount} ({key()})")


@step
async def ship(order: str, amount: int) -> str:
    if order == "order-3":
        raise LookupError("no courier today")
    calls.append(f"ship {order}")
    return f"tracking-{order}"


@saga
def place_order(order: str, amount: int) -> Generator[StepCall[Any], Any, None]:
    yield reserve(order, amount)
    yield pay(order, amount)
    yield ship(order, amount)


def show_calls() -> None:
    for call in calls:
        print(f"    {call}")
    calls.clear()


async def show_sagas(orchestrator: SagaOrchestrator, ids: list[str]) -> None:
    for saga_id in ids:
        meta = await orchestrator.get_saga(saga_id)
        assert meta is not None
        steps = ", ".join(f"{record.name}={record.status}" for record in meta.steps)
        print(f"  {saga_id} ({meta.name}): {meta.status} [{steps}]")


async def main(directory: str) -> None:
    log = os.path.join(directory, "sagas.db")

    print("1. order-1: the pay step runs the payment saga as order-1:1/payment")
    orchestrator = SagaOrchestrator(SQLiteStore(log))
    events = await orchestrator.execute(place_order("order-1", 30), saga_id="order-1")
    print(f"  events: {events}")
    show_calls()
    await show_sagas(orchestrator, ["order-1", "order-1:1/payment"])

    print("2. order-2: the process dies inside the payment saga, before 'capture'")
    store = orchestrator.store
    with FaultInjector().crash(capture):
        try:
            await orchestrator.execute(place_order("order-2", 40), saga_id="order-2")
        except SimulatedCrash as crash:
            print(f"  {crash}")
    show_calls()
    await show_sagas(orchestrator, ["order-2", "order-2:1/payment"])
    await simulate_restart(store)  # this "process" is gone: its sagas are up for recovery
    await orchestrator.close()

    print("3. a restarted process recovers order-2")
    async with SagaOrchestrator(SQLiteStore(log)) as restarted:
        for outcome in await restarted.recover():
            print(f"  recovered {outcome.saga_id}: {outcome.action}, now {outcome.status}")
        # pay ran again and executed order-2:1/payment again: that finished the inner saga
        # (authorize recorded as completed, so only capture ran), then returned its events.
        show_calls()
        await show_sagas(restarted, ["order-2", "order-2:1/payment"])
        print(f"  a second recover() finds: {await restarted.recover()}")

        print("4. order-3: shipping fails; the outer saga refunds what the inner one captured")
        try:
            await restarted.execute(place_order("order-3", 50), saga_id="order-3")
        except StepFailed as failure:
            print(f"  failed at {failure.step_name!r}: {failure.error}")
        show_calls()
        await show_sagas(restarted, ["order-3", "order-3:1/payment"])
        # The payment saga stays completed: undoing it is the job of pay's compensation.


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(main(directory))
