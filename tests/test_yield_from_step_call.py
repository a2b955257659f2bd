"""``result = yield from call`` in a generator saga: the step's result, typed (issue 2, point 3)."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StepCall,
    StepFailed,
    saga,
    step,
)
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

effects: list[str] = []


@pytest.fixture(autouse=True)
def _clean() -> None:
    effects.clear()


@step
async def charge(order: str, amount: float) -> str:
    effects.append(f"charge {order} {amount}")
    return f"pay-{order}"


@charge.compensate
async def refund(payment: str, order: str, amount: float) -> str:
    effects.append(f"refund {payment}")
    return f"refunded {payment}"


@step
async def receipt(payment: str) -> list[str]:
    effects.append(f"receipt {payment}")
    if payment.startswith("pay-broken"):
        raise RuntimeError("printer jammed")
    return [f"receipt for {payment}"]


@saga(name="yield_from_checkout")
def checkout(order: str, amount: float) -> Generator[StepCall[Any], Any, None]:
    payment = yield from charge(order, amount)
    effects.append(f"saga got {payment}")
    yield from receipt(payment)


@pytest.mark.asyncio
async def test_yield_from_a_step_call_gives_the_saga_the_steps_result() -> None:
    events = await SagaOrchestrator().execute(checkout("o1", 5.0))

    assert events == ["pay-o1", "receipt for pay-o1"]
    assert effects == ["charge o1 5.0", "saga got pay-o1", "receipt pay-o1"]


@pytest.mark.asyncio
async def test_a_step_failing_under_yield_from_compensates_the_completed_steps() -> None:
    orchestrator = SagaOrchestrator()

    with pytest.raises(StepFailed) as raised:
        await orchestrator.execute(checkout("broken", 1.0).with_id("yf-broken"))

    assert raised.value.step_name == "receipt"
    assert effects == [
        "charge broken 1.0",
        "saga got pay-broken",
        "receipt pay-broken",
        "refund pay-broken",
    ]
    record = await orchestrator.get_saga("yf-broken")
    assert record is not None
    assert record.status is SagaStatus.COMPENSATED


@pytest.mark.asyncio
async def test_recovery_replays_recorded_results_through_yield_from(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "log.db")
    with FaultInjector().crash(receipt), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).execute(checkout("o2", 7.0).with_id("yf-crash"))
    await simulate_restart(store)
    await store.close()
    effects.clear()

    restarted = SagaOrchestrator(SQLiteStore(tmp_path / "log.db"))
    try:
        await restarted.recover()
        record = await restarted.get_saga("yf-crash")
    finally:
        await restarted.close()

    assert record is not None
    assert record.status is SagaStatus.COMPLETED
    # charge is not run again: its recorded result is sent back through `yield from`.
    assert effects == ["saga got pay-o2", "receipt pay-o2"]
