"""PostgreSQL: a saga begun anew by a store whose earlier claim of it was lost.

A store claims a saga, its lease runs out before it runs it, and the saga is settled
elsewhere (resolved by an operator). Executing it again on that store begins it anew:
that lease is the new run's, not the lost claim's.
"""

from __future__ import annotations

import asyncio

import pytest

from pg_helpers.db import expire, opened
from sagakit import SagaOrchestrator, saga, step

pytestmark = pytest.mark.asyncio

GATES: dict[str, asyncio.Event] = {}


@step
async def lc_held(n: int) -> int:
    GATES["started"].set()
    await GATES["go"].wait()
    return n


@saga
def lc_saga(n: int):  # type: ignore[no-untyped-def]
    yield lc_held(n)


async def test_a_saga_begun_after_its_claim_was_lost_is_not_given_back(
    dsn: str, schema: str
) -> None:
    # Regression: the store forgot a lost claim only in part, so the saga's next begin on
    # it still counted as that claim: give_back() (a cancelled recovery's) gave up the
    # running saga's lease, for any worker to take it over while it ran.
    GATES.update(started=asyncio.Event(), go=asyncio.Event())
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        first = asyncio.create_task(orchestrator.execute(lc_saga(1), saga_id="lc"))
        await GATES["started"].wait()
        await store.release_leases()  # handed over ...
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        [orphan] = await store.claim_orphans(saga_ids=["lc"])  # ... and claimed back
        expire(dsn, schema, "lc")  # the claim's lease runs out before the saga runs
        await store.resolve("lc", "settled by hand")
        GATES.update(started=asyncio.Event(), go=asyncio.Event())
        again = asyncio.create_task(orchestrator.execute(lc_saga(2), saga_id="lc"))
        await GATES["started"].wait()
        assert await store.give_back(["lc"]) == 0  # no claim of it here now
        assert store.owns("lc")
        GATES["go"].set()
        assert await again == [2]
        assert orphan.saga_id == "lc"
