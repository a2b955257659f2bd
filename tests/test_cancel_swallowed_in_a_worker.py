"""A saga (a step or a compensation) that swallows a worker's cancellation or stop: the
worker stops all the same, claims nothing more, and a cancelled one raises its
``CancelledError``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from sagakit import SagaOrchestrator, SagaStatus, saga, step
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

effects: list[str] = []
entered: asyncio.Event | None = None


async def _hang_swallowing(what: str) -> None:
    assert entered is not None
    entered.set()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        effects.append(f"swallowed {what}")


@step
async def cw_book(order: str) -> str:
    effects.append(f"book {order}")
    return order


@cw_book.compensate
async def cw_unbook(order: str) -> None:
    if order == "o1":
        await _hang_swallowing(f"unbooking {order}")
    effects.append(f"unbook {order}")


@step
async def cw_ship(order: str) -> str:
    if order == "o1":
        await _hang_swallowing(f"shipping {order}")
    effects.append(f"ship {order}")
    return order


@saga
def cw_order(order: str) -> Any:
    yield cw_book(order)
    yield cw_ship(order)


@saga(recovery="compensate")
def cw_undone_order(order: str) -> Any:
    yield cw_book(order)
    yield cw_ship(order)


async def _orphans(durable_store: Callable[..., Any], definition: Any) -> None:
    store = durable_store()
    for order in ("o1", "o2"):
        with FaultInjector().crash(cw_ship), pytest.raises(SimulatedCrash):
            await SagaOrchestrator(store).execute(definition(order), saga_id=order)
    await simulate_restart(store)
    await store.close()
    effects.clear()


async def _stopped(worker: asyncio.Task[None], cancels: int) -> None:
    for _ in range(cancels):
        worker.cancel()
        done, _ = await asyncio.wait({worker}, timeout=0.5)
        if done:
            break
    done, _ = await asyncio.wait({worker}, timeout=10.0)  # a guard, not a timing check
    if not done:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        pytest.fail(f"the cancelled worker ran on: {effects}")


@pytest.mark.asyncio
@pytest.mark.parametrize("definition", [cw_order, cw_undone_order], ids=["step", "compensation"])
async def test_a_cancelled_worker_stops_when_its_saga_swallows_the_cancellation(
    durable_store: Callable[..., Any], definition: Any
) -> None:
    global entered
    entered = asyncio.Event()
    await _orphans(durable_store, definition)
    async with SagaOrchestrator(durable_store()) as orchestrator:
        worker = asyncio.create_task(
            orchestrator.run_worker(poll_interval=0.01, concurrency=1, handle_signals=False)
        )
        await entered.wait()
        await _stopped(worker, cancels=2)
        assert worker.cancelled()
        second = await orchestrator.get_saga("o2")
    assert second is not None
    assert second.status is SagaStatus.EXECUTING, effects  # left for the next recovery
    assert not any(effect.endswith("o2") for effect in effects), effects


@pytest.mark.asyncio
async def test_a_worker_cancelled_while_it_hands_its_sagas_back_raises_its_cancellation(
    durable_store: Callable[..., Any],
) -> None:
    # Regression: a worker told to stop (stop set) and cancelled while it handed its
    # sagas back, by a store that swallowed that cancellation (Python 3.11's
    # asyncio.wait_for in the driver's connection pool can), returned as if never
    # cancelled: its caller went on.
    global entered
    entered = asyncio.Event()
    await _orphans(durable_store, cw_order)
    store = durable_store()
    handing_back = asyncio.Event()
    release = getattr(store, "release_leases", None)

    async def swallowing_release(**options: Any) -> int:
        handing_back.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            effects.append("release swallowed")
        assert release is not None
        return int(await release(**options))

    if release is not None:
        store.release_leases = swallowing_release
    stop = asyncio.Event()
    async with SagaOrchestrator(store) as orchestrator:
        worker = asyncio.create_task(
            orchestrator.run_worker(poll_interval=0.01, stop=stop, handle_signals=False)
        )
        await entered.wait()
        stop.set()
        if release is not None:
            await handing_back.wait()
        # SQLite: a stopped worker lets its sagas run to their end; a cancel stops them.
        await _stopped(worker, cancels=1 if release is not None else 2)
        assert worker.cancelled(), effects
