"""A compensation swallows the caller's cancellation, then the log refuses the start of the
next one: the caller still gets its ``CancelledError``.

Regression: compensating stopped there and the saga ended ``FAILED``, as it should, but
``execute()`` (and ``recover()``, or ``execute()`` of an orphan's id, compensating it)
raised the ``StoreError``: the caller's cancellation was lost. A cancellation that reached
the orchestrator raised the ``CancelledError``, the ``StoreError`` its ``__context__``.

Regression too: a saga recovery resumed, which then failed and was compensated, raised the
``CancelledError`` without the ``StoreError`` chained (only logged); and a saga end the log
refused, after a compensation swallowed the cancellation of a saga that failed, was replaced
as that ``__context__`` by the step's failure (its ``__cause__``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from sagakit import (
    SagaMetadata,
    SagaOrchestrator,
    SagaStatus,
    StepFailed,
    StoreError,
    TransitionKind,
    saga,
    step,
)
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart
from store_helpers.refusing import refuse_record

effects: list[str] = []
undoing: asyncio.Event | None = None
failing = False


@step
async def csu_reserve(order: str) -> str:
    return order


@csu_reserve.compensate
async def csu_release(order: str) -> None:
    effects.append(f"release {order}")


@step
async def csu_charge(order: str) -> str:
    return order


@csu_charge.compensate
async def csu_refund(order: str) -> None:
    assert undoing is not None
    undoing.set()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        effects.append("swallowed")
    effects.append(f"refund {order}")


@step
async def csu_ship(order: str) -> str:
    if failing:
        raise ValueError("no courier")
    return order


@saga(recovery="compensate")
def csu_order(order: str) -> Any:
    yield csu_reserve(order)
    yield csu_charge(order)
    yield csu_ship(order)


async def refused_after_a_swallowed_cancellation(
    durable_store: Callable[[], Any], how: str, order: Any, saga_id: str
) -> tuple[BaseException, SagaMetadata | None]:
    """Run ``order(saga_id)`` (``execute``), or recover it after a crash at its ship step
    (``recover``, or ``adopt``: execute() of its id), cancel the caller while a
    compensation swallows it, with the log refusing the next compensation's start: the
    ``CancelledError`` raised and the saga's metadata then."""
    global undoing, failing
    undoing = asyncio.Event()
    effects.clear()
    failing = False
    if how != "execute":  # an orphan left after its last step started
        store = durable_store()
        with FaultInjector().crash(csu_ship), pytest.raises(SimulatedCrash):
            await SagaOrchestrator(store).execute(order(saga_id), saga_id=saga_id)
        await simulate_restart(store)
        await store.close()
    failing = True
    store = durable_store()
    refuse_record(store, TransitionKind.COMPENSATION_STARTED, 0, after=False)
    try:
        async with SagaOrchestrator(store) as orchestrator:
            running = (
                orchestrator.recover()
                if how == "recover"
                else orchestrator.execute(order(saga_id), saga_id=saga_id)
            )
            task = asyncio.create_task(running)
            await undoing.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError) as raised:
                await task
            meta = await orchestrator.get_saga(saga_id)
    finally:
        failing = False
    return raised.value, meta


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["execute", "recover", "adopt"])
async def test_a_refused_compensation_after_a_swallowed_cancellation_still_raises_it(
    durable_store: Callable[[], Any], how: str
) -> None:
    raised, meta = await refused_after_a_swallowed_cancellation(durable_store, how, csu_order, "o1")
    assert isinstance(raised.__context__, StoreError)
    assert effects == ["swallowed", "refund o1"]  # release never started: not in the log
    assert meta is not None
    assert meta.status is SagaStatus.FAILED


@saga
def csu_resumed_order(order: str) -> Any:
    yield csu_reserve(order)
    yield csu_charge(order)
    yield csu_ship(order)


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["recover", "adopt"])
async def test_a_resumed_saga_that_fails_chains_the_refused_write_to_the_cancellation(
    durable_store: Callable[[], Any], how: str
) -> None:
    # Resumed by recovery, the saga fails and is compensated in the task that resumes it;
    # a compensation swallows the cancellation of the caller, then the log refuses the
    # next one's start. Regression: the StoreError was logged, and the CancelledError
    # raised without it (execute() and a compensating recovery chain it).
    raised, meta = await refused_after_a_swallowed_cancellation(
        durable_store, how, csu_resumed_order, "o2"
    )
    assert isinstance(raised.__context__, StoreError)
    assert effects == ["swallowed", "refund o2"]  # release never started: not in the log
    assert meta is not None
    assert meta.status is SagaStatus.FAILED


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["execute", "recover", "adopt"])
async def test_a_refused_end_after_a_swallowed_cancellation_is_chained_to_it(
    durable_store: Callable[[], Any], how: str
) -> None:
    # A compensation swallows the caller's cancellation and the saga is compensated to its
    # end, which the log refuses. Regression: the CancelledError's __context__ was the
    # step's failure (raising it inside the handler of that failure replaced the chain),
    # and the refused end was only logged.
    global undoing, failing
    undoing = asyncio.Event()
    effects.clear()
    failing = False
    if how != "execute":  # an orphan left after its last step started, resumed and failing
        store = durable_store()
        with FaultInjector().crash(csu_ship), pytest.raises(SimulatedCrash):
            await SagaOrchestrator(store).execute(csu_resumed_order("o3"), saga_id="o3")
        await simulate_restart(store)
        await store.close()
    failing = True
    store = durable_store()
    refuse_record(store, TransitionKind.SAGA_FINISHED, after=False)
    try:
        async with SagaOrchestrator(store) as orchestrator:
            running = (
                orchestrator.recover()
                if how == "recover"
                else orchestrator.execute(csu_resumed_order("o3"), saga_id="o3")
            )
            task = asyncio.create_task(running)
            await undoing.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError) as raised:
                await task
    finally:
        failing = False
    unrecorded = raised.value.__context__
    assert isinstance(unrecorded, StoreError)
    assert "the log cannot be written" in str(unrecorded)
    assert isinstance(raised.value.__cause__, StepFailed)  # what the saga was undone for
    assert effects == ["swallowed", "refund o3", "release o3"]
