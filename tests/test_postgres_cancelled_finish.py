"""PostgreSQL: a run whose ``finish()`` is cancelled while it gives up the saga's lease.

A run that ends without its end in the log (cancelled again while that write was on
its way) has ``finish()`` give the lease up, so any worker's next claim takes the saga
at once. Cancelled during that release (a listener cancelling the saga's task again),
the store forgot the lease all the same: its ``close()`` then had nothing to release,
and the row stayed under the closed store's lease until it ran out (30 s by default),
so a ``recover()`` right after the restart did not take the saga (soak seed 115).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pg_helpers.db import opened, query
from sagakit import SagaOrchestrator, saga, step
from sagakit._runs import SagaRun


@step
async def cf_act(n: int) -> int:
    return n


@saga
def cf_one(n: int):  # type: ignore[no-untyped-def]
    yield cf_act(n)


@pytest.mark.asyncio
async def test_a_finish_cancelled_while_it_releases_the_lease_still_releases_it(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with opened(dsn, schema) as store:
        run = SagaRun("cf-released", cf_one(1), True, 0.0, SagaOrchestrator()._ref)
        assert await store.begin(run) is None
        assert store.owns("cf-released")
        releasing, gate = asyncio.Event(), asyncio.Event()
        original = store._run

        async def gated(sql: str, params: Any = None) -> list[tuple[Any, ...]]:
            if sql == store._sql.release_one:  # hold the release until it is cancelled
                releasing.set()
                await gate.wait()
            return await original(sql, params)

        monkeypatch.setattr(store, "_run", gated)
        finishing = asyncio.create_task(store.finish(run))
        await releasing.wait()
        finishing.cancel()
        await asyncio.sleep(0)
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await finishing  # the caller's cancellation, raised once the release is done
        assert not store.owns("cf-released")
    # Given up: no owner, its lease over, so the next claim takes it at once.
    rows = query(
        dsn,
        f'SELECT owner, lease_until <= now() FROM "{schema}".sagas WHERE saga_id = %s',
        ("cf-released",),
    )
    assert rows == [(None, True)]
    async with opened(dsn, schema) as other:
        claimed = await other.claim_orphans()
        assert [orphan.saga_id for orphan in claimed] == ["cf-released"]
        await other.give_back(["cf-released"])
