"""Issue 2, point 10: thousands of sagas on one event loop, each with its own state."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import pytest

from sagakit import (
    SagaOrchestrator,
    SagaStatus,
    StepCall,
    StepFailed,
    StepTimeout,
    current_step,
    saga,
    step,
)

SAGAS = 2_000

undone: defaultdict[int, list[str]] = defaultdict(list)


@dataclass(frozen=True)
class Reserved:
    order: int


@dataclass(frozen=True)
class Charged:
    order: int
    payment: str


@dataclass(frozen=True)
class Released:
    order: int


@dataclass(frozen=True)
class Refunded:
    payment: str


@step(timeout=10)
async def reserve(order: int) -> Reserved:
    await asyncio.sleep(0)
    return Reserved(order)


@reserve.compensate
async def release(order: int) -> Released:
    await asyncio.sleep(0)
    undone[order].append("release")
    return Released(order)


@step(timeout=10)
async def charge(order: int) -> list[Charged]:
    await asyncio.sleep(0)
    ctx = current_step()
    assert ctx is not None
    return [Charged(order, f"pay-{ctx.saga_id}")]


@charge.compensate
async def refund(charged: list[Charged], order: int) -> Refunded:
    await asyncio.sleep(0)
    undone[order].append("refund")
    return Refunded(charged[0].payment)


@step(timeout=10)
async def ship(order: int) -> str:
    await asyncio.sleep(0)
    if order % 5 == 0:
        raise RuntimeError(f"no courier for {order}")
    return f"shipped {order}"


@step(timeout=0.05, compensate_on_timeout=False)
async def ship_stuck(order: int) -> str:
    await asyncio.sleep(10)  # always times out
    return f"shipped {order}"


@saga
def order_flow(order: int) -> Generator[StepCall[Any], Any, None]:
    yield reserve(order)
    charged = yield charge(order)
    assert charged[0].order == order  # results never cross sagas
    yield ship_stuck(order) if order % 7 == 0 else ship(order)


@pytest.mark.asyncio
async def test_thousands_of_sagas_on_one_loop_keep_their_own_state() -> None:
    undone.clear()
    orchestrator = SagaOrchestrator()

    results = await asyncio.gather(
        *(orchestrator.execute(order_flow(n), saga_id=f"o-{n}") for n in range(SAGAS)),
        return_exceptions=True,
    )

    outcomes: defaultdict[str, int] = defaultdict(int)
    for n, result in enumerate(results):
        payment = f"pay-o-{n}"
        if n % 7 == 0:
            assert isinstance(result, StepTimeout), (n, result)
            assert result.step_name == "ship_stuck"
        elif n % 5 == 0:
            assert isinstance(result, StepFailed), (n, result)
            assert not isinstance(result, StepTimeout)
            assert str(result.error) == f"no courier for {n}"
        else:
            assert result == [Reserved(n), Charged(n, payment), f"shipped {n}"], n
            assert n not in undone
            outcomes["completed"] += 1
            continue
        assert result.saga_id == f"o-{n}"
        assert result.events == [Reserved(n), Charged(n, payment)]
        assert result.compensation_events == [Refunded(payment), Released(n)]
        assert undone[n] == ["refund", "release"]
        outcomes["compensated"] += 1

    expected_failures = sum(1 for n in range(SAGAS) if n % 7 == 0 or n % 5 == 0)
    assert outcomes == {"completed": SAGAS - expected_failures, "compensated": expected_failures}
    assert await orchestrator.running_count() == 0
    assert await orchestrator.history_count() == SAGAS

    history = await orchestrator.get_history()
    by_id = {m.id: m for m in history}
    for n in (1, 5, 7, 35, SAGAS - 1):
        meta = by_id[f"o-{n}"]
        failed = n % 7 == 0 or n % 5 == 0
        assert meta.status is (SagaStatus.COMPENSATED if failed else SagaStatus.COMPLETED)
        assert meta.events[0] == Reserved(n)
        assert meta.steps_executed == (2 if failed else 3)


@pytest.mark.asyncio
async def test_id_less_definitions_run_concurrently_under_distinct_ids() -> None:
    @step
    async def who() -> str:
        await asyncio.sleep(0)
        ctx = current_step()
        assert ctx is not None
        return ctx.saga_id

    @saga
    def flow() -> list[StepCall[Any]]:
        return [who(), who()]

    definition = flow()
    orchestrator = SagaOrchestrator()
    results = await asyncio.gather(*(orchestrator.execute(definition) for _ in range(SAGAS)))

    assert all(first == second for first, second in results)
    assert len({first for first, _ in results}) == SAGAS
    assert await orchestrator.history_count() == SAGAS
