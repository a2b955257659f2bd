"""A compensation that runs an inner saga (a refund saga undoing a payment saga), under an
id derived from its idempotency key — the step's — and a suffix of its own, as
docs/durability.md says: a crash inside it is finished by recovery, each action once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sagakit import SagaOrchestrator, SagaStatus, StepFailed, current_step, saga, step
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

effects: list[str] = []


@step
async def nc_authorize(order: str) -> str:
    effects.append(f"authorize {order}")
    return f"auth-{order}"


@step
async def nc_refund(order: str) -> str:
    effects.append(f"refund {order}")
    return f"refund-{order}"


@step
async def nc_notify(order: str) -> None:
    effects.append(f"notify {order}")


@saga
def nc_payment(order: str) -> Any:
    yield nc_authorize(order)


@saga
def nc_refunding(order: str) -> Any:
    yield nc_refund(order)
    yield nc_notify(order)


def _key() -> str:
    context = current_step()
    assert context is not None
    return context.idempotency_key


@step
async def nc_pay(order: str) -> list[Any]:
    context = current_step()
    assert context is not None
    return await context.orchestrator.execute(nc_payment(order), saga_id=f"{_key()}/payment")


@nc_pay.compensate
async def nc_pay_back(order: str) -> None:
    # The same key as the step's: the refund saga needs a suffix of its own, or its id
    # is the payment saga's (SagaIdReused).
    context = current_step()
    assert context is not None
    assert context.compensating
    await context.orchestrator.execute(nc_refunding(order), saga_id=f"{_key()}/refund")


@step
async def nc_ship(order: str) -> None:
    raise LookupError("no courier")


@saga
def nc_order(order: str) -> Any:
    yield nc_pay(order)
    yield nc_ship(order)


@pytest.fixture(autouse=True)
def _clear() -> None:
    effects.clear()


@pytest.mark.asyncio
async def test_a_crash_inside_the_inner_saga_of_a_compensation_is_finished_once(
    durable_store: Callable[[], Any],
) -> None:
    store = durable_store()
    orchestrator = SagaOrchestrator(store)
    with FaultInjector().crash(nc_refund, after=True), pytest.raises(SimulatedCrash):
        await orchestrator.execute(nc_order("o1"), saga_id="order-1")
    assert effects == ["authorize o1", "refund o1"]
    await simulate_restart(store)
    await orchestrator.close()

    effects.clear()
    async with SagaOrchestrator(durable_store()) as restarted:
        outcomes = {o.saga_id: (o.action, o.status) for o in await restarted.recover()}
        assert outcomes["order-1"] == ("compensated", SagaStatus.COMPENSATED)
        payment = await restarted.get_saga("order-1:0/payment")
        refund = await restarted.get_saga("order-1:0/refund")
        assert payment is not None
        assert payment.status is SagaStatus.COMPLETED
        assert refund is not None
        assert refund.status is SagaStatus.COMPLETED
        assert await restarted.recover() == []
    # The refund the crash interrupted after it acted runs again (same idempotency key),
    # then the refund saga goes on; nothing is authorized again.
    assert effects == ["refund o1", "notify o1"]


@pytest.mark.asyncio
async def test_a_compensation_running_its_inner_saga_undoes_a_failed_saga() -> None:
    async with SagaOrchestrator() as orchestrator:
        with pytest.raises(StepFailed):
            await orchestrator.execute(nc_order("o2"), saga_id="order-2")
        outer = await orchestrator.get_saga("order-2")
        assert outer is not None
        assert outer.status is SagaStatus.COMPENSATED
    assert effects == ["authorize o2", "refund o2", "notify o2"]
