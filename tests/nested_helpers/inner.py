"""A saga whose step runs an inner saga under a derived id (recovery adopts it), and a log
where that inner saga died and was claimed, then left for dead, again and again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sagakit import SagaOrchestrator, current_step, saga, step
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

ELSEWHERE: dict[str, SagaOrchestrator] = {}
"""The orchestrator ``nested_tried_pay`` runs its inner saga on, under "orchestrator";
else the one running the step."""


@step
async def nested_tried_capture(item: str) -> str:
    return f"captured-{item}"


@saga
def nested_tried_payment(item: str):  # type: ignore[no-untyped-def]
    yield nested_tried_capture(item)


@step
async def nested_tried_pay(item: str) -> list[Any]:
    context = current_step()
    assert context is not None  # an inner saga under a derived id: recovery adopts it
    inner = f"{context.idempotency_key}/payment"
    orchestrator = ELSEWHERE.get("orchestrator", context.orchestrator)
    return await orchestrator.execute(nested_tried_payment(item), saga_id=inner)


@saga
def nested_tried_order(item: str):  # type: ignore[no-untyped-def]
    yield nested_tried_pay(item)


def inner_id(outer: str) -> str:
    """The id of the inner saga that the saga ``outer`` of ``nested_tried_order`` runs."""
    return f"{outer}:0/payment"


async def inner_saga_tried(store: Callable[[], Any], outer: str, times: int) -> None:
    """``nested_tried_order`` under the id ``outer`` dies in its inner saga; then ``times``
    recoveries claimed that inner saga (each an attempt), and their process died.
    ``store`` makes a store on the log, one per simulated process."""
    first = store()
    try:
        with FaultInjector().crash(nested_tried_capture), pytest.raises(SimulatedCrash):
            await SagaOrchestrator(first).execute(nested_tried_order("lamp"), saga_id=outer)
        await simulate_restart(first)
    finally:
        await first.close()
    for _ in range(times):
        again = store()
        try:
            claimed = await again.claim_orphans(saga_ids=[inner_id(outer)], max_attempts=10)
            assert len(claimed) == 1
            await simulate_restart(again)
        finally:
            await again.close()
