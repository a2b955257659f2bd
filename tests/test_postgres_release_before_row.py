"""PostgreSQL: leases released before a generated-id run has written anything.

A generated id's row goes out with its first step's start. ``release_leases()`` (a
worker stopping) before that fenced the run out: ``execute()`` raised ``LeaseLost``,
which tells the caller to look the outcome up later with ``get_saga(id)`` — but the
saga never got a row, so there was nothing to look up, and no worker to finish it.
A run with no row has nothing to take over: it now goes on, and writes its row.
"""

from __future__ import annotations

from typing import Any

import pytest

from pg_helpers.db import opened, query
from sagakit import (
    LeaseLost,
    PostgresStore,
    SagaOrchestrator,
    SagaStatus,
    Transition,
    TransitionKind,
    saga,
    step,
)

pytestmark = pytest.mark.asyncio

RAN: list[str] = []


@step
async def rb_first(item: str) -> str:
    RAN.append(f"first {item}")
    return f"first {item}"


@step
async def rb_second(item: str) -> str:
    RAN.append(f"second {item}")
    return f"second {item}"


@saga
def rb_pair(item: str):  # type: ignore[no-untyped-def]
    yield rb_first(item)
    yield rb_second(item)


class ReleasedAfterBegin(PostgresStore):
    """Its worker stops (every lease released) just after a run begins."""

    async def begin(self, run: Any) -> Any:
        found = await super().begin(run)
        await self.release_leases()
        return found


async def test_a_run_without_a_row_goes_on_when_leases_are_released(dsn: str, schema: str) -> None:
    RAN.clear()
    heard: list[Transition] = []
    store = ReleasedAfterBegin(dsn, schema=schema)
    async with SagaOrchestrator(store, listeners=[heard.append]) as orchestrator:
        events = await orchestrator.execute(rb_pair("cup"))  # a generated id
        assert events == ["first cup", "second cup"]
        saga_id = heard[0].saga_id
        meta = await orchestrator.get_saga(saga_id)
        assert meta is not None
        assert meta.status is SagaStatus.COMPLETED
        assert not store.owns(saga_id)
    assert RAN == ["first cup", "second cup"]
    assert TransitionKind.SAGA_STOPPED not in [t.kind for t in heard]


async def test_a_run_with_a_row_is_still_fenced_out(dsn: str, schema: str) -> None:
    # An explicit id's row is written by begin(): released, it is another worker's to
    # take over, and the run stops here.
    RAN.clear()
    async with opened(dsn, schema) as other:
        store = ReleasedAfterBegin(dsn, schema=schema)
        async with SagaOrchestrator(store) as orchestrator:
            with pytest.raises(LeaseLost):
                await orchestrator.execute(rb_pair("jar"), saga_id="rb-jar")
            (orphan,) = await other.claim_orphans()
            assert orphan.saga_id == "rb-jar"
            await other.dead_letter("rb-jar", "test over")
    assert RAN == []
    assert query(dsn, f'SELECT status FROM "{schema}".sagas') == [("executing",)]


async def test_a_run_whose_first_write_is_on_its_way_goes_on_when_leases_are_released(
    dsn: str, schema: str
) -> None:
    # Regression: released while its first write (its row with step 0's start) was on
    # its way, the run was fenced out although that write then put the row in the log,
    # owned by this store under a lease nobody renewed: step 0 ran, the next write
    # raised LeaseLost, and no worker could take the saga over before the lease ran out.
    RAN.clear()
    heard: list[Transition] = []
    store = PostgresStore(dsn, schema=schema, lease=60.0, heartbeat=20.0)
    async with SagaOrchestrator(store, listeners=[heard.append]) as orchestrator:
        send = store._writer._send
        released = False

        async def released_on_the_way(writes: Any) -> Any:
            nonlocal released
            if not released:
                released = True
                await store.release_leases()  # the first write is on its way
            return await send(writes)

        store._writer._send = released_on_the_way  # type: ignore[method-assign]
        events = await orchestrator.execute(rb_pair("mug"))
        assert released
        assert events == ["first mug", "second mug"]
        saga_id = heard[0].saga_id
        meta = await orchestrator.get_saga(saga_id)
        assert meta is not None
        assert meta.status is SagaStatus.COMPLETED
    assert RAN == ["first mug", "second mug"]
    assert TransitionKind.SAGA_STOPPED not in [t.kind for t in heard]
