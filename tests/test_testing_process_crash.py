"""FaultInjector.crash(..., process=True): a crash of the whole process, every saga of
the store stopping at its next write of the log, then recovered together."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from sagakit import SagaOrchestrator, SagaStatus, saga, step
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

effects: list[str] = []
gates: dict[str, asyncio.Event] = {}  # "step order": the step waits for it
entered: dict[str, asyncio.Event] = {}  # "step order": set once the step waits


async def _act(what: str) -> None:
    effects.append(what)
    gate = gates.get(what)
    if gate is not None:
        entered[what].set()
        await gate.wait()


@step
async def pc_reserve(order: str) -> str:
    await _act(f"reserve {order}")
    return f"r-{order}"


@pc_reserve.compensate
async def pc_release(order: str) -> None:
    effects.append(f"release {order}")


@step
async def pc_charge(order: str) -> str:
    await _act(f"charge {order}")
    return f"c-{order}"


@pc_charge.compensate
async def pc_refund(order: str) -> None:
    effects.append(f"refund {order}")


@step
async def pc_ship(order: str) -> str:
    await _act(f"ship {order}")
    if order.startswith("broken"):
        raise RuntimeError("no courier")
    return f"s-{order}"


@saga(name="process_crash_order")
def pc_order(name: str):  # type: ignore[no-untyped-def]
    yield pc_reserve(name)
    yield pc_charge(name)
    yield pc_ship(name)


@pytest.fixture(autouse=True)
def _clean() -> None:
    effects.clear()
    gates.clear()
    entered.clear()


def _hold(what: str) -> asyncio.Event:
    gates[what] = asyncio.Event()
    entered[what] = asyncio.Event()
    return gates[what]


@pytest.mark.asyncio
async def test_a_process_crash_stops_every_saga_of_the_store_and_recovery_finishes_them(
    durable_store: Callable[[], Any],
) -> None:
    store = durable_store()
    orchestrator = SagaOrchestrator(store)
    # b waits inside its first step, d inside its last one (which then fails).
    hold_b, hold_d = _hold("reserve b"), _hold("ship broken-d")
    b = asyncio.create_task(orchestrator.execute(pc_order("b").with_id("o-b")))
    d = asyncio.create_task(orchestrator.execute(pc_order("broken-d").with_id("o-d")))
    await entered["reserve b"].wait()
    await entered["ship broken-d"].wait()
    faults = FaultInjector().crash(pc_ship, process=True)
    with faults, pytest.raises(SimulatedCrash, match="process crash at step 'pc_ship'"):
        await orchestrator.execute(pc_order("broken-a").with_id("o-a"))
    assert [fired.step_name for fired in faults.fired] == ["pc_ship"]
    hold_b.set()
    hold_d.set()
    # b's step returns, d's raises: each stops at its next write, as after a kill.
    for task in (b, d):
        with pytest.raises(SimulatedCrash, match="process"):
            await task
    # A saga started after the "death" writes nothing either.
    with pytest.raises(SimulatedCrash, match="process"):
        await orchestrator.execute(pc_order("e").with_id("o-e"))
    assert effects == [
        "reserve b",
        "reserve broken-d",
        "charge broken-d",
        "ship broken-d",
        "reserve broken-a",
        "charge broken-a",
    ]

    # The log, read as another process would: nothing was written after the crash.
    reader = durable_store()
    try:
        sagas = {s.id: s for s in await reader.running()}
        assert await reader.get("o-e") is None
    finally:
        await reader.close()
    assert set(sagas) == {"o-a", "o-b", "o-d"}
    steps = {
        saga_id: [(s.name, str(s.status)) for s in meta.steps] for saga_id, meta in sagas.items()
    }
    assert steps["o-b"] == [("pc_reserve", "running")]  # its completion never written
    assert steps["o-d"][-1] == ("pc_ship", "running")  # nor its failure
    assert steps["o-a"][-1] == ("pc_ship", "running")  # crashed as ship started

    await simulate_restart(store)
    await store.close()
    del effects[:]
    async with SagaOrchestrator(durable_store()) as restarted:
        outcomes = {o.saga_id: o.status for o in await restarted.recover()}
    assert outcomes == {
        "o-a": SagaStatus.COMPENSATED,
        "o-b": SagaStatus.COMPLETED,
        "o-d": SagaStatus.COMPENSATED,
    }
    for name in ("broken-a", "broken-d"):  # each compensation ran once
        assert effects.count(f"refund {name}") == 1
        assert effects.count(f"release {name}") == 1
    assert effects.count("reserve b") == 1  # run again: its completion was lost
    assert "release b" not in effects
