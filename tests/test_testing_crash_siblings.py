"""A simulated crash stops the whole "process": the sagas running beside the crashed one
on the same store (inner sagas gathered by one step, or sagas run at once) stop
unrecorded where they are, as after a kill, and recovery finishes them all."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from sagakit import MemoryStore, SagaOrchestrator, SagaStatus, current_step, saga, step
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

effects: list[str] = []
# "gate": the crashing saga lets the sibling go on, then crashes; "waiting": the sibling
# is running, and the crashing saga goes on (new events per test: one binds to its loop).
events: dict[str, asyncio.Event] = {}
siblings: list[asyncio.Task[Any]] = []


@step
async def cs_signal(item: str) -> str:
    effects.append(f"signal {item}")
    await events["waiting"].wait()
    events["gate"].set()  # the sibling goes on from here: then this step's crash fires
    return f"signalled-{item}"


@step
async def cs_wait(item: str) -> str:
    effects.append(f"wait {item}")
    events["waiting"].set()
    await events["gate"].wait()
    return f"waited-{item}"


@step
async def cs_after(item: str) -> str:
    effects.append(f"after {item}")
    return f"after-{item}"


@saga
def cs_crashing(item: str) -> Any:
    yield cs_signal(item)


@saga
def cs_sibling(item: str) -> Any:
    yield cs_wait(item)
    yield cs_after(item)


@step
async def cs_fan_out(items: list[str]) -> list[Any]:
    """The fan-out docs/durability.md shows: inner sagas gathered at once."""
    context = current_step()
    assert context is not None
    key = context.idempotency_key
    tasks = [
        asyncio.ensure_future(context.orchestrator.execute(cs_crashing("a"), saga_id=f"{key}/a")),
        asyncio.ensure_future(context.orchestrator.execute(cs_sibling("b"), saga_id=f"{key}/b")),
    ]
    siblings.extend(tasks)
    return list(await asyncio.gather(*tasks))


@saga
def cs_order(items: list[str]) -> Any:
    yield cs_fan_out(items)


@pytest.fixture(autouse=True)
def _clear() -> None:
    effects.clear()
    events.update(gate=asyncio.Event(), waiting=asyncio.Event())
    siblings.clear()


@pytest.mark.asyncio
async def test_a_crash_in_one_gathered_inner_saga_stops_its_siblings_unrecorded(
    durable_store: Callable[[], Any],
) -> None:
    # Regression: the crash stopped the inner saga and the outer one, but the sibling
    # inner saga, which asyncio.gather does not cancel, went on running and recording
    # after "the process died": its log showed it completed, which no killed process
    # could have written.
    store = durable_store()
    orchestrator = SagaOrchestrator(store)
    with FaultInjector().crash(cs_signal, after=True), pytest.raises(SimulatedCrash):
        await orchestrator.execute(cs_order(["a", "b"]), saga_id="g-1")
    results = await asyncio.gather(*siblings, return_exceptions=True)
    assert [type(result) for result in results] == [SimulatedCrash, SimulatedCrash]
    assert "after b" not in effects  # nothing more of the dead process ran
    sibling = await orchestrator.get_saga("g-1:0/b")
    assert sibling is not None
    assert sibling.status is SagaStatus.EXECUTING  # as the kill left it
    assert [record.status for record in sibling.steps] == ["running"]
    await simulate_restart(store)
    await orchestrator.close()

    effects.clear()
    async with SagaOrchestrator(durable_store()) as restarted:
        outcomes = {o.saga_id: o.status for o in await restarted.recover()}
        assert outcomes["g-1"] is SagaStatus.COMPLETED
        outer = await restarted.get_saga("g-1")
        assert outer is not None
        assert outer.steps[0].events == (["signalled-a"], ["waited-b", "after-b"])
        assert await restarted.recover() == []
    assert effects.count("after b") == 1


@pytest.mark.asyncio
async def test_a_crash_stops_the_sagas_run_at_once_beside_it_unrecorded(
    durable_store: Callable[[], Any],
) -> None:
    # Regression: a saga run at the same time on the same orchestrator went on after
    # another one's simulated crash, recording its steps and its end.
    store = durable_store()
    orchestrator = SagaOrchestrator(store)
    with FaultInjector().crash(cs_signal, after=True):
        results = await asyncio.gather(
            orchestrator.execute(cs_crashing("a"), saga_id="t-a"),
            orchestrator.execute(cs_sibling("b"), saga_id="t-b"),
            return_exceptions=True,
        )
    assert [type(result) for result in results] == [SimulatedCrash, SimulatedCrash]
    assert "after b" not in effects
    sibling = await orchestrator.get_saga("t-b")
    assert sibling is not None
    assert sibling.status is SagaStatus.EXECUTING
    assert [record.status for record in sibling.steps] == ["running"]
    # A saga started after the crash (the test going on, as a new process would) runs.
    assert await orchestrator.execute(cs_sibling("c"), saga_id="t-c") == ["waited-c", "after-c"]
    await simulate_restart(store)
    await orchestrator.close()

    async with SagaOrchestrator(durable_store()) as restarted:
        outcomes = {o.saga_id: o.status for o in await restarted.recover()}
    assert outcomes == {"t-a": SagaStatus.COMPLETED, "t-b": SagaStatus.COMPLETED}


@pytest.mark.asyncio
async def test_a_crash_on_a_memory_store_stops_the_sagas_beside_it_too() -> None:
    async with SagaOrchestrator(MemoryStore()) as orchestrator:
        with FaultInjector().crash(cs_signal, after=True):
            results = await asyncio.gather(
                orchestrator.execute(cs_crashing("a"), saga_id="m-a"),
                orchestrator.execute(cs_sibling("b"), saga_id="m-b"),
                return_exceptions=True,
            )
        assert [type(result) for result in results] == [SimulatedCrash, SimulatedCrash]
        assert "after b" not in effects
        sibling = await orchestrator.get_saga("m-b")
        assert sibling is not None
        assert sibling.status is SagaStatus.EXECUTING


@saga
def cs_last(item: str) -> Any:
    yield cs_after(item)


@step
async def cs_nest(item: str) -> list[Any]:
    """Runs an inner saga once the crashing saga let it go on: after the crash."""
    context = current_step()
    assert context is not None
    events["waiting"].set()
    await events["gate"].wait()
    inner = f"{context.idempotency_key}/inner"
    return await context.orchestrator.execute(cs_last(item), saga_id=inner)


@saga
def cs_nesting(item: str) -> Any:
    yield cs_nest(item)


@pytest.mark.asyncio
async def test_an_inner_saga_a_stopped_saga_starts_after_the_crash_does_not_run(
    durable_store: Callable[[], Any],
) -> None:
    # Regression: the step of a saga running beside the crashed one ran to its end (as
    # after a kill just after it acted), and an inner saga it started then ran and was
    # recorded, as if the dead process had begun it.
    store = durable_store()
    orchestrator = SagaOrchestrator(store)
    with FaultInjector().crash(cs_signal, after=True):
        results = await asyncio.gather(
            orchestrator.execute(cs_crashing("a"), saga_id="n-a"),
            orchestrator.execute(cs_nesting("b"), saga_id="n-b"),
            return_exceptions=True,
        )
    assert [type(result) for result in results] == [SimulatedCrash, SimulatedCrash]
    assert "after b" not in effects
    assert await orchestrator.get_saga("n-b:0/inner") is None  # never begun
    await simulate_restart(store)
    await orchestrator.close()

    async with SagaOrchestrator(durable_store()) as restarted:
        outcomes = {o.saga_id: o.status for o in await restarted.recover()}
        assert outcomes == {"n-a": SagaStatus.COMPLETED, "n-b": SagaStatus.COMPLETED}
        inner = await restarted.get_saga("n-b:0/inner")
        assert inner is not None
        assert inner.status is SagaStatus.COMPLETED
    assert effects.count("after b") == 1
