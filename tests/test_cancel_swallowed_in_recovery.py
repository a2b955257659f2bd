"""A compensation that swallows the cancellation of ``recover()``: recovery stops there.

Regression: the compensation caught the cancellation and returned; the saga ended
compensated (as it should: a compensation runs to its end) but ``recover()`` went on
claiming and finishing the next orphans, and returned as if never cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from sagakit import (
    SagaOrchestrator,
    SagaStatus,
    StoreError,
    Transition,
    TransitionKind,
    saga,
    step,
)
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart
from store_helpers.refusing import refuse_record

effects: list[str] = []
undoing: asyncio.Event | None = None


@step
async def csr_book(order: str) -> str:
    effects.append(f"book {order}")
    return order


@csr_book.compensate
async def csr_unbook(order: str) -> None:
    assert undoing is not None
    undoing.set()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        effects.append(f"swallowed while unbooking {order}")
    effects.append(f"unbook {order}")


@step
async def csr_ship(order: str) -> str:
    return order


@saga(recovery="compensate")
def csr_order(order: str) -> Any:
    yield csr_book(order)
    yield csr_ship(order)


@pytest.mark.asyncio
async def test_recover_stops_when_a_compensation_swallowed_its_cancellation(
    durable_store: Callable[[], Any],
) -> None:
    global undoing
    undoing = asyncio.Event()
    effects.clear()
    store = durable_store()
    for order in ("o1", "o2"):
        with FaultInjector().crash(csr_ship), pytest.raises(SimulatedCrash):
            await SagaOrchestrator(store).execute(csr_order(order), saga_id=order)
    await simulate_restart(store)
    await store.close()

    async with SagaOrchestrator(durable_store()) as recovering:
        task = asyncio.create_task(recovering.recover())
        await undoing.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        first = await recovering.get_saga("o1")
        second = await recovering.get_saga("o2")
    assert first is not None
    assert first.status is SagaStatus.COMPENSATED  # its compensation ran to its end
    assert second is not None
    assert second.status is SagaStatus.EXECUTING  # left for the next recovery
    assert effects == ["book o1", "book o2", "swallowed while unbooking o1", "unbook o1"]


@pytest.mark.asyncio
@pytest.mark.parametrize("on_start", [False, True], ids=["recover", "recover_on_start"])
async def test_recover_cancelled_in_a_claim_that_swallows_it_raises_it(
    durable_store: Callable[[], Any], on_start: bool
) -> None:
    # Regression: recover() cancelled while claiming, by a claim that caught the
    # cancellation and found no orphan, returned an empty list as if never cancelled; so
    # `async with SagaOrchestrator(store, recover_on_start=True)` ran its block.
    store = durable_store()
    claim = store.claim_orphans
    claiming = asyncio.Event()

    async def swallowing_claim(**options: Any) -> Any:
        claiming.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        return await claim(**options)

    store.claim_orphans = swallowing_claim
    went_on: list[str] = []

    async def recovering() -> None:
        orchestrator = SagaOrchestrator(store, recover_on_start=on_start)
        if on_start:
            async with orchestrator:
                went_on.append("the block ran")
        else:
            went_on.append(repr(await orchestrator.recover()))
            await store.close()

    task = asyncio.create_task(recovering())
    await claiming.wait()
    task.cancel()
    await asyncio.wait({task}, timeout=10.0)  # a guard
    assert task.cancelled(), went_on
    assert went_on == []
    await store.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["recover", "adopt"])
async def test_a_swallowed_cancellation_of_a_compensating_recovery_is_raised_if_its_end_is_refused(
    durable_store: Callable[[], Any], how: str
) -> None:
    # Regression: as execute() does, the caller gets its CancelledError (the store's error
    # as its __context__) when the log refuses the end of a saga whose compensation
    # swallowed it; recover() and execute() of the orphan's id raised the StoreError: the
    # caller's cancellation was lost.
    global undoing
    undoing = asyncio.Event()
    effects.clear()
    store = durable_store()
    with FaultInjector().crash(csr_ship), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).execute(csr_order("o1"), saga_id="o1")
    await simulate_restart(store)
    await store.close()

    store = durable_store()
    refuse_record(store, TransitionKind.SAGA_FINISHED, after=False)
    heard: list[TransitionKind] = []

    def listener(transition: Transition) -> None:
        heard.append(transition.kind)

    async with SagaOrchestrator(store, listeners=[listener]) as recovering:
        finishing = (
            recovering.recover()
            if how == "recover"
            else recovering.execute(csr_order("o1"), saga_id="o1")
        )
        task = asyncio.create_task(finishing)
        await undoing.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError) as raised:
            await task
    assert isinstance(raised.value.__context__, StoreError)
    assert effects == ["book o1", "swallowed while unbooking o1", "unbook o1"]
    assert heard[-1] is TransitionKind.SAGA_STOPPED  # left for the next recovery
    assert TransitionKind.SAGA_FINISHED not in heard
