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
