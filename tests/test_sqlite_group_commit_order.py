"""Group commit must keep each saga's statements in order.

``_run_jobs`` groups the statements of a batch by SQL text. A saga whose body fails
before its first step (with a generated id) writes its staged row and its end in one
job: ``[INSERT_SAGA, FINISHED]``. When an earlier job of the same batch held a
``FINISHED`` (another saga completing), the groups used to run ``FINISHED`` first: the
failed saga's end updated no row, then its row was inserted as ``executing`` — and
stayed so.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sagakit import SagaOrchestrator, SagaStatus, SQLiteStore, saga, step

GATE: dict[str, asyncio.Event] = {}


@step
async def order_hold(key: str) -> str:
    await GATE[key].wait()
    return key


@saga
def order_held(key: str):  # type: ignore[no-untyped-def]
    yield order_hold(key)


@saga
def order_invalid(amount: int):  # type: ignore[no-untyped-def]
    if amount <= 0:
        raise ValueError("amount must be positive")  # the body refuses before any step
    yield order_hold("never")


@pytest.mark.asyncio
async def test_a_saga_failing_before_its_first_step_is_not_left_executing(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "sagas.db")
    async with SagaOrchestrator(store) as orchestrator:
        GATE["other"] = asyncio.Event()  # keeps a third saga in flight: group commit
        GATE["done"] = asyncio.Event()
        other = asyncio.create_task(orchestrator.execute(order_held("other")))
        done = asyncio.create_task(orchestrator.execute(order_held("done")))
        for _ in range(20):
            await asyncio.sleep(0)
        assert await orchestrator.running_count() == 2
        # In one loop iteration: 'done' completes (its end is queued first), then the
        # invalid saga fails in its body (its row and end are queued next).
        GATE["done"].set()
        invalid = asyncio.create_task(orchestrator.execute(order_invalid(0)))
        with pytest.raises(ValueError, match="amount must be positive"):
            await invalid
        await done
        GATE["other"].set()
        await other
        assert await orchestrator.running_count() == 0
        (ended,) = [m for m in await orchestrator.get_history() if m.name == "order_invalid"]
        # As when it runs alone: it ends (nothing to compensate), its error recorded.
        assert ended.status in (SagaStatus.COMPENSATED, SagaStatus.FAILED)
        assert ended.error is not None
        assert "amount must be positive" in ended.error
