"""A saga handed back by a cancelled recovery is not left to its process's exit.

A cancelled ``recover()`` (or worker) leaves the saga it was resuming as a crash leaves
it, for the next recovery to finish per its policy. On SQLite the saga stayed owned by
this live process, so no recovery — here or in another process — could take it before
this process exited; on PostgreSQL it waited for its lease to run out. Both stores now
give it up as they forget the run, as for a run whose end could not be written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from sagakit import (
    SagaOrchestrator,
    SagaStatus,
    StoreError,
    TransitionKind,
    saga,
    step,
)
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart
from store_helpers.refusing import refuse_record

pytestmark = pytest.mark.asyncio

CALLS: list[str] = []
HOLDING: dict[str, asyncio.Event] = {}  # set while hb_hold(key) waits to be cancelled


@step
async def hb_take(key: str) -> str:
    CALLS.append(f"take {key}")
    return f"took {key}"


@step
async def hb_hold(key: str) -> str:
    CALLS.append(f"hold {key}")
    held = HOLDING.get(key)
    if held is not None:
        held.set()
        await asyncio.Event().wait()  # until the recovery is cancelled
    return f"held {key}"


@saga
def hb_move(key: str):  # type: ignore[no-untyped-def]
    yield hb_take(key)
    yield hb_hold(key)


async def _orphan(make_store: Callable[[], Any], key: str) -> None:
    """Leave ``key``'s saga running in the log at ``hb_hold``, its process gone."""
    store = make_store()
    async with SagaOrchestrator(store) as orchestrator:
        with FaultInjector().crash(hb_hold), pytest.raises(SimulatedCrash):
            await orchestrator.execute(hb_move(key), saga_id=key)
        await simulate_restart(store)


async def _cancel_recovery(orchestrator: SagaOrchestrator, key: str) -> None:
    HOLDING[key] = asyncio.Event()
    recovering = asyncio.create_task(orchestrator.recover())
    await HOLDING[key].wait()
    del HOLDING[key]
    recovering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await recovering


@pytest.fixture(autouse=True)
def _clear() -> None:
    CALLS.clear()
    HOLDING.clear()


async def test_the_next_recover_of_the_same_process_finishes_a_handed_back_saga(
    durable_store: Callable[[], Any],
) -> None:
    await _orphan(durable_store, "hb-1")
    async with SagaOrchestrator(durable_store()) as orchestrator:
        await _cancel_recovery(orchestrator, "hb-1")
        meta = await orchestrator.get_saga("hb-1")
        assert meta is not None
        assert meta.status is SagaStatus.EXECUTING  # handed back, not compensated
        outcomes = await orchestrator.recover()  # no restart, no lease run out in between
        assert [(o.saga_id, o.action, o.status) for o in outcomes] == [
            ("hb-1", "resumed", SagaStatus.COMPLETED)
        ]
    # take ran once (recorded); hold in the cancelled recovery, and again in this one.
    assert CALLS == ["take hb-1", "hold hb-1", "hold hb-1"]


async def test_another_store_claims_a_handed_back_saga_while_its_process_lives(
    durable_store: Callable[[], Any],
) -> None:
    await _orphan(durable_store, "hb-2")
    async with SagaOrchestrator(durable_store()) as orchestrator:
        await _cancel_recovery(orchestrator, "hb-2")
        other = durable_store()  # another process (on SQLite: of this host)
        try:
            claimed = await other.claim_orphans(saga_ids=["hb-2"])
            assert [orphan.saga_id for orphan in claimed] == ["hb-2"]
            assert claimed[0].recovery_attempts == 2  # the cancelled recovery counted
        finally:
            await other.close()


async def test_another_store_claims_a_saga_whose_end_was_not_written_at_once(
    durable_store: Callable[[], Any],
) -> None:
    store = durable_store()
    refuse_record(store, TransitionKind.SAGA_FINISHED, after=False)
    async with SagaOrchestrator(store) as orchestrator:
        with pytest.raises(StoreError):
            await orchestrator.execute(hb_move("hb-3"), saga_id="hb-3")
        other = durable_store()  # another process, while this one lives on
        try:
            claimed = await other.claim_orphans(saga_ids=["hb-3"])
            assert [orphan.saga_id for orphan in claimed] == ["hb-3"]
            assert [s.name for s in claimed[0].completed_steps] == ["hb_take", "hb_hold"]
        finally:
            await other.close()
