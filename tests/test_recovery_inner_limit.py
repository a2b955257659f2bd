"""The limit a ``recover(max_attempts=N)`` or ``run_worker(max_attempts=N)`` call was
given holds for the inner sagas its resumed sagas run too, whichever orchestrator runs them.

Regression: N was passed to the claim of the orphaned sagas, but an inner saga that a
resumed step executes again (adopted under its derived id) was claimed with the
orchestrator's ``max_recovery_attempts`` (3 by default): with N=5 it was parked after 3
attempts, its reason saying "max_attempts=3", and the outer saga then failed with
``SagaAlreadyExecuting`` and was compensated; with N=2 it was not parked at all.

The inner saga run on another orchestrator than the recovering one (its own options,
listeners or store): the recovery's limit holds for it too, not that orchestrator's
``max_recovery_attempts``. (Regression: only an inner saga on the recovering orchestrator
got the limit.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from nested_helpers.inner import ELSEWHERE, inner_id, inner_saga_tried
from sagakit import SagaOrchestrator, SagaStatus, Transition, TransitionKind

OUTER = "inner-limit-1"
INNER = inner_id(OUTER)

# Where the resumed step runs its inner saga: on the recovering orchestrator, or on another
# one (max_recovery_attempts 3) on the same store or on a store of its own.
WHERE = ["itself", "same-store", "own-store"]


async def _recover(
    durable_store: Callable[[], Any], how: str, max_attempts: int, where: str
) -> tuple[SagaStatus, SagaStatus, dict[str, str]]:
    """Recover the log with ``recover()`` or a worker (one saga at a time: the inner saga
    is claimed by the resumed step, not by the worker), with ``max_attempts``, the inner
    saga run ``where``: the outer and inner sagas' statuses and the dead letters' reasons
    by id."""
    store = durable_store()
    other_store = durable_store() if where == "own-store" else store
    if where != "itself":
        ELSEWHERE["orchestrator"] = SagaOrchestrator(other_store)
    try:
        async with SagaOrchestrator(store) as orchestrator:  # max_recovery_attempts 3
            if how == "recover":
                await orchestrator.recover(max_attempts=max_attempts)
            else:
                stop = asyncio.Event()

                def heard(transition: Transition) -> None:
                    if (
                        transition.kind is TransitionKind.SAGA_FINISHED
                        and transition.saga_id == OUTER
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
            outer = await store.get(OUTER)
            inner = await store.get(INNER)
            parked = {letter.saga_id: letter.reason for letter in await store.dead_letters()}
    finally:
        ELSEWHERE.clear()
        if other_store is not store:
            await other_store.close()
    assert outer is not None
    assert inner is not None
    return outer.status, inner.status, parked


@pytest.mark.asyncio
@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("how", ["recover", "worker"])
async def test_a_raised_limit_holds_for_an_inner_saga_a_resumed_step_runs(
    durable_store: Callable[[], Any], how: str, where: str
) -> None:
    await inner_saga_tried(durable_store, OUTER, 3)
    outer, inner, parked = await _recover(durable_store, how, 5, where)
    assert (outer, inner, parked) == (SagaStatus.COMPLETED, SagaStatus.COMPLETED, {})


@pytest.mark.asyncio
@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("how", ["recover", "worker"])
async def test_a_lowered_limit_parks_an_inner_saga_a_resumed_step_runs(
    durable_store: Callable[[], Any], how: str, where: str
) -> None:
    await inner_saga_tried(durable_store, OUTER, 2)
    outer, inner, parked = await _recover(durable_store, how, 2, where)
    assert list(parked) == [INNER]
    assert "max_attempts=2" in parked[INNER]
    # The outer saga's step met the parked inner saga (SagaAlreadyExecuting): undone.
    assert (outer, inner) == (SagaStatus.COMPENSATED, SagaStatus.EXECUTING)
