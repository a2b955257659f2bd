"""The limit a ``recover(max_attempts=N)`` or ``run_worker(max_attempts=N)`` call was
given holds for the inner sagas its resumed sagas run too, whichever orchestrator runs them.

Regression: N was passed to the claim of the orphaned sagas, but an inner saga that a
resumed step executes again (adopted under its derived id) was claimed with the
orchestrator's ``max_recovery_attempts`` (3 by default): with N=5 it was parked after 3
attempts, its reason saying "max_attempts=3", and the outer saga then failed with
``SagaAlreadyExecuting`` and was compensated; with N=2 it was not parked at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from sagakit import (
    SagaOrchestrator,
    SagaStatus,
    Transition,
    TransitionKind,
    current_step,
    saga,
    step,
)
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart


@step
async def inner_limit_capture(item: str) -> str:
    return f"captured-{item}"


@saga
def inner_limit_payment(item: str):  # type: ignore[no-untyped-def]
    yield inner_limit_capture(item)


@step
async def inner_limit_pay_inside(item: str) -> list[Any]:
    context = current_step()
    assert context is not None  # an inner saga under a derived id: recovery adopts it
    inner = f"{context.idempotency_key}/payment"
    return await context.orchestrator.execute(inner_limit_payment(item), saga_id=inner)


@saga
def inner_limit_nested(item: str):  # type: ignore[no-untyped-def]
    yield inner_limit_pay_inside(item)


OUTER = "inner-limit-1"
INNER = "inner-limit-1:0/payment"


async def _inner_saga_tried(durable_store: Callable[[], Any], times: int) -> None:
    """The nested saga dies in its inner saga; then ``times`` recoveries claimed that
    inner saga (each an attempt), and their process died."""
    store = durable_store()
    orchestrator = SagaOrchestrator(store)
    with FaultInjector().crash(inner_limit_capture), pytest.raises(SimulatedCrash):
        await orchestrator.execute(inner_limit_nested("lamp"), saga_id=OUTER)
    await simulate_restart(store)
    await store.close()
    for _ in range(times):
        store = durable_store()
        assert len(await store.claim_orphans(saga_ids=[INNER], max_attempts=10)) == 1
        await simulate_restart(store)
        await store.close()


async def _recover(orchestrator: SagaOrchestrator, how: str, max_attempts: int) -> None:
    """Recover the log with ``recover()`` or a worker (one saga at a time: the inner saga
    is claimed by the resumed step, not by the worker), with ``max_attempts``."""
    if how == "recover":
        await orchestrator.recover(max_attempts=max_attempts)
        return
    stop = asyncio.Event()

    def heard(transition: Transition) -> None:
        if transition.kind is TransitionKind.SAGA_FINISHED and transition.saga_id == OUTER:
            stop.set()

    orchestrator.add_listener(heard)
    await orchestrator.run_worker(
        poll_interval=0.01,
        concurrency=1,
        max_attempts=max_attempts,
        handle_signals=False,
        stop=stop,
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["recover", "worker"])
async def test_a_raised_limit_holds_for_an_inner_saga_a_resumed_step_runs(
    durable_store: Callable[[], Any], how: str
) -> None:
    await _inner_saga_tried(durable_store, 3)
    async with SagaOrchestrator(durable_store()) as orchestrator:  # max_recovery_attempts 3
        await _recover(orchestrator, how, 5)
        outer = await orchestrator.get_saga(OUTER)
        inner = await orchestrator.get_saga(INNER)
        store: Any = orchestrator.store
        parked = await store.dead_letters()
    assert outer is not None
    assert inner is not None
    assert (outer.status, inner.status) == (SagaStatus.COMPLETED, SagaStatus.COMPLETED)
    assert parked == []


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["recover", "worker"])
async def test_a_lowered_limit_parks_an_inner_saga_a_resumed_step_runs(
    durable_store: Callable[[], Any], how: str
) -> None:
    await _inner_saga_tried(durable_store, 2)
    async with SagaOrchestrator(durable_store()) as orchestrator:  # max_recovery_attempts 3
        await _recover(orchestrator, how, 2)
        store: Any = orchestrator.store
        parked = {letter.saga_id: letter.reason for letter in await store.dead_letters()}
        outer = await orchestrator.get_saga(OUTER)
    assert list(parked) == [INNER]
    assert "max_attempts=2" in parked[INNER]
    # The outer saga's step met the parked inner saga (SagaAlreadyExecuting): undone.
    assert outer is not None
    assert outer.status is SagaStatus.COMPENSATED


# The inner saga run on another orchestrator than the recovering one (its own options,
# listeners or store): the recovery's limit holds for it too, not that orchestrator's
# max_recovery_attempts. (Regression: only an inner saga on the recovering orchestrator
# got the limit.)

ELSEWHERE: dict[str, SagaOrchestrator] = {}  # the orchestrator inner_limit_pay_elsewhere uses


@step
async def inner_limit_pay_elsewhere(item: str) -> list[Any]:
    context = current_step()
    assert context is not None
    inner = f"{context.idempotency_key}/payment"
    orchestrator = ELSEWHERE.get("orchestrator", context.orchestrator)
    return await orchestrator.execute(inner_limit_payment(item), saga_id=inner)


@saga
def inner_limit_nested_elsewhere(item: str):  # type: ignore[no-untyped-def]
    yield inner_limit_pay_elsewhere(item)


ELSEWHERE_OUTER = "inner-limit-2"
ELSEWHERE_INNER = "inner-limit-2:0/payment"


async def _inner_saga_tried_elsewhere(durable_store: Callable[[], Any], times: int) -> None:
    """As :func:`_inner_saga_tried`, for ``inner_limit_nested_elsewhere``."""
    store = durable_store()
    with FaultInjector().crash(inner_limit_capture), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).execute(
            inner_limit_nested_elsewhere("desk"), saga_id=ELSEWHERE_OUTER
        )
    await simulate_restart(store)
    await store.close()
    for _ in range(times):
        store = durable_store()
        assert len(await store.claim_orphans(saga_ids=[ELSEWHERE_INNER], max_attempts=10)) == 1
        await simulate_restart(store)
        await store.close()


async def _recover_elsewhere(
    durable_store: Callable[[], Any], how: str, max_attempts: int, own_store: bool
) -> tuple[SagaStatus, SagaStatus, dict[str, str]]:
    """Recover with ``max_attempts`` while the resumed step runs its inner saga on another
    orchestrator (``max_recovery_attempts`` 3), on the same store or on one of its own:
    the outer and inner sagas' statuses and the dead letters' reasons by id."""
    store = durable_store()
    other_store = durable_store() if own_store else store
    ELSEWHERE["orchestrator"] = SagaOrchestrator(other_store)
    try:
        async with SagaOrchestrator(store) as orchestrator:
            if how == "recover":
                await orchestrator.recover(max_attempts=max_attempts)
            else:
                stop = asyncio.Event()

                def heard(transition: Transition) -> None:
                    if (
                        transition.kind is TransitionKind.SAGA_FINISHED
                        and transition.saga_id == ELSEWHERE_OUTER
                    ):
                        stop.set()

                orchestrator.add_listener(heard)
                await orchestrator.run_worker(
                    poll_interval=0.01,
                    concurrency=1,
                    max_attempts=max_attempts,
                    handle_signals=False,
                    stop=stop,
                )
            outer = await store.get(ELSEWHERE_OUTER)
            inner = await store.get(ELSEWHERE_INNER)
            parked = {letter.saga_id: letter.reason for letter in await store.dead_letters()}
    finally:
        del ELSEWHERE["orchestrator"]
        if own_store:
            await other_store.close()
    assert outer is not None
    assert inner is not None
    return outer.status, inner.status, parked


@pytest.mark.asyncio
@pytest.mark.parametrize("own_store", [False, True], ids=["same-store", "own-store"])
@pytest.mark.parametrize("how", ["recover", "worker"])
async def test_a_raised_limit_holds_for_an_inner_saga_on_another_orchestrator(
    durable_store: Callable[[], Any], how: str, own_store: bool
) -> None:
    await _inner_saga_tried_elsewhere(durable_store, 3)
    outer, inner, parked = await _recover_elsewhere(durable_store, how, 5, own_store)
    assert (outer, inner, parked) == (SagaStatus.COMPLETED, SagaStatus.COMPLETED, {})


@pytest.mark.asyncio
@pytest.mark.parametrize("own_store", [False, True], ids=["same-store", "own-store"])
@pytest.mark.parametrize("how", ["recover", "worker"])
async def test_a_lowered_limit_parks_an_inner_saga_on_another_orchestrator(
    durable_store: Callable[[], Any], how: str, own_store: bool
) -> None:
    await _inner_saga_tried_elsewhere(durable_store, 2)
    outer, inner, parked = await _recover_elsewhere(durable_store, how, 2, own_store)
    assert list(parked) == [ELSEWHERE_INNER]
    assert "max_attempts=2" in parked[ELSEWHERE_INNER]
    assert (outer, inner) == (SagaStatus.COMPENSATED, SagaStatus.EXECUTING)
