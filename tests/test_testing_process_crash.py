"""FaultInjector.crash(..., process=True): a crash of the whole process, every saga of
the store stopping at its next write of the log, then recovered together."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    MemoryStore,
    SagaDefinitionError,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    saga,
    step,
)
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

effects: list[str] = []
gates: dict[str, asyncio.Event] = {}  # "step order": the step waits for it
entered: dict[str, asyncio.Event] = {}  # "step order": set once the step waits


async def _act(what: str) -> None:
    effects.append(what)
    await asyncio.sleep(0)  # as a real step awaits: the sagas in flight interleave
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
    crashed_at.clear()
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
        with pytest.raises(SimulatedCrash, match="the process is dead"):
            await task
    # A saga started after the "death" writes nothing either.
    with pytest.raises(SimulatedCrash, match="the process is dead"):
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


crashed_at: list[int] = []  # len(effects) when pc_die returned, the process dying then


@step
async def pc_die(order: str) -> None:
    await _act(f"die {order}")
    crashed_at.append(len(effects))


@saga(name="process_crash_victim")
def pc_victim(name: str):  # type: ignore[no-untyped-def]
    yield pc_reserve(name)
    yield pc_die(name)


@pytest.mark.asyncio
async def test_sagas_writing_together_all_stop_and_the_restarted_store_recovers_them(
    durable_store: Callable[[], Any],
) -> None:
    # Sagas whose writes share commits: the crash comes while some are queued.
    store = durable_store()
    orchestrator = SagaOrchestrator(store)
    names = [f"n{i}" for i in range(7)]
    runs = [orchestrator.execute(pc_order(name).with_id(f"o-{name}")) for name in names]
    runs.insert(3, orchestrator.execute(pc_victim("v").with_id("o-v")))
    with FaultInjector().crash(pc_die, after=True, process=True):
        outcomes = await asyncio.gather(*runs, return_exceptions=True)
    ids = ["o-v", *(f"o-{name}" for name in names)]
    ids.insert(3, ids.pop(0))  # in the order of `runs`
    # A saga whose end was written before the crash is done; every other one stopped.
    crashed = {i for i, out in zip(ids, outcomes, strict=True) if isinstance(out, SimulatedCrash)}
    assert all(isinstance(out, SimulatedCrash | list) for out in outcomes), outcomes
    assert "o-v" in crashed
    assert len(crashed) >= 4, outcomes  # with it, those in flight
    assert effects[crashed_at[0] :] == []  # no step started after the crash
    await simulate_restart(store)  # the same store object, "restarted", writes again
    try:
        recovered = await SagaOrchestrator(store).recover()
        assert {o.saga_id: o.status for o in recovered} == dict.fromkeys(
            crashed, SagaStatus.COMPLETED
        )
        assert await store.running() == []
        for saga_id in ids:
            finished = await store.get(saga_id)
            assert finished is not None
            assert finished.status is SagaStatus.COMPLETED
    finally:
        await store.close()
    assert not any(effect.startswith(("release", "refund")) for effect in effects)


@pytest.mark.asyncio
async def test_a_crash_of_one_saga_leaves_the_others_running_by_default(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    orchestrator = SagaOrchestrator(store)
    hold = _hold("reserve b")
    b = asyncio.create_task(orchestrator.execute(pc_order("b").with_id("o-b")))
    await entered["reserve b"].wait()
    try:
        with FaultInjector().crash(pc_ship), pytest.raises(SimulatedCrash):
            await orchestrator.execute(pc_order("a").with_id("o-a"))
        hold.set()
        await b  # its process lives on
        finished = await store.get("o-b")
        assert finished is not None
        assert finished.status is SagaStatus.COMPLETED
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_a_process_crash_on_an_in_memory_store_says_it_stopped_only_its_saga() -> None:
    orchestrator = SagaOrchestrator(MemoryStore())
    hold = _hold("reserve b")
    b = asyncio.create_task(orchestrator.execute(pc_order("b").with_id("o-b")))
    await entered["reserve b"].wait()
    with FaultInjector().crash(pc_ship, process=True), pytest.raises(SimulatedCrash) as crashed:
        await orchestrator.execute(pc_order("a").with_id("o-a"))
    assert any("MemoryStore kept running its other sagas" in n for n in crashed.value.__notes__)
    hold.set()
    await b


def test_crash_process_takes_true_or_false_only() -> None:
    with pytest.raises(SagaDefinitionError, match=r"crash\(process=...\) must be True or False"):
        FaultInjector().crash(pc_ship, process="yes")  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_saga_outliving_the_async_with_its_process_crash_left_stops_uncompensated(
    durable_store: Callable[[], Any],
) -> None:
    # Leaving `async with SagaOrchestrator(store)` on the crash closes the store: a saga
    # still running then stops at its next write all the same, running no compensation
    # (the store being closed is no failure to undo: its process is dead).
    store = durable_store()
    hold = _hold("charge b")
    running: list[asyncio.Task[list[Any]]] = []

    async def crash_inside() -> None:
        async with SagaOrchestrator(store) as orchestrator:
            running.append(asyncio.create_task(orchestrator.execute(pc_order("b").with_id("o-b"))))
            await entered["charge b"].wait()
            with FaultInjector().crash(pc_charge, process=True):
                await orchestrator.execute(pc_order("a").with_id("o-a"))

    with pytest.raises(SimulatedCrash, match="process crash at step 'pc_charge'"):
        await crash_inside()
    [b] = running
    hold.set()
    with pytest.raises(SimulatedCrash, match="the process is dead") as stopped:
        await b
    assert stopped.value.__context__ is None  # at its first write: no closed store's error
    assert effects == ["reserve b", "charge b", "reserve a"]
    await simulate_restart(store)
    async with SagaOrchestrator(durable_store()) as restarted:
        outcomes = {o.saga_id: o.status for o in await restarted.recover()}
    assert outcomes == {"o-a": SagaStatus.COMPLETED, "o-b": SagaStatus.COMPLETED}
    assert not any(effect.startswith(("release", "refund")) for effect in effects)
