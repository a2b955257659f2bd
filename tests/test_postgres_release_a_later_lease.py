"""PostgreSQL: a run's ``finish()`` giving its lease up leaves a later lease alone.

``finish()`` of a run whose end is not in the log gives the saga's lease up by the
fencing token it knows, or any above it under this store (its own settling may have
moved the token on without the store hearing back). A later lease of the same store
on the saga, taken while that release was on its way (its ``release_leases()`` gave
the saga up, and its recovery claimed it again), is another run's: the late release
must not give that one up, or the new run's writes are all fenced out.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pg_helpers.db import opened, query
from sagakit import SagaOrchestrator, saga, step
from sagakit._runs import SagaRun


@step
async def rl_act(n: int) -> int:
    return n


@saga
def rl_one(n: int):  # type: ignore[no-untyped-def]
    yield rl_act(n)


@pytest.mark.asyncio
async def test_a_late_release_leaves_the_lease_a_later_claim_of_the_store_took(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with opened(dsn, schema) as store:
        run = SagaRun("rl-later", rl_one(1), True, 0.0, SagaOrchestrator()._ref)
        assert await store.begin(run) is None
        releasing, gate = asyncio.Event(), asyncio.Event()
        original = store._run

        async def gated(sql: str, params: Any = None) -> list[tuple[Any, ...]]:
            if sql == store._sql.release_one:  # on its way (waiting for a connection)
                releasing.set()
                await gate.wait()
            return await original(sql, params)

        monkeypatch.setattr(store, "_run", gated)
        finishing = asyncio.create_task(store.finish(run))  # its end never written
        await releasing.wait()
        # Meanwhile the store gives the saga up and its recovery claims it again.
        assert await store.release_leases(saga_ids=["rl-later"]) == 1
        claimed = await store.claim_orphans()
        assert [orphan.saga_id for orphan in claimed] == ["rl-later"]
        gate.set()
        await finishing
        assert store.owns("rl-later")
        rows = query(
            dsn,
            f'SELECT owner = %s, lease_until > now() FROM "{schema}".sagas WHERE saga_id = %s',
            (store.owner, "rl-later"),
        )
        assert rows == [(True, True)]  # still the claim's lease
        assert await store.give_back(["rl-later"]) == 1
