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

from pg_helpers import held
from pg_helpers.db import opened
from sagakit import SagaStatus, StoreError, saga, step
from sagakit.transitions import Transition, TransitionKind


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
        run = await held.begun(store, "rl-later", rl_one(1))
        # The release, on its way (waiting for a connection) until the gate opens.
        releasing, gate = held.hold_release(store, monkeypatch)
        finishing = asyncio.create_task(store.finish(run))  # its end never written
        await releasing.wait()
        # Meanwhile the store gives the saga up and its recovery claims it again.
        assert await store.release_leases(saga_ids=["rl-later"]) == 1
        claimed = await store.claim_orphans()
        assert [orphan.saga_id for orphan in claimed] == ["rl-later"]
        gate.set()
        await finishing
        assert store.owns("rl-later")
        # Still the claim's lease.
        assert held.still_leased(dsn, schema, store, "rl-later") == [(True, True)]
        assert await store.give_back(["rl-later"]) == 1


def _started(saga_id: str) -> Transition:
    return Transition(
        TransitionKind.STEP_STARTED, saga_id, "rl_one", SagaStatus.EXECUTING, 0, "rl_act", 1
    )


@pytest.mark.asyncio
async def test_a_finish_cancelled_while_it_settles_a_first_write_in_doubt_releases_its_row(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A generated id's first write carries its row. In doubt (its record() cancelled, and
    # not settled then), then finish() cancelled while it settled it: the write, still on
    # its way, inserted the row after finish()'s release had found none, under a lease
    # that nobody renewed, so no worker took the saga until the lease ran out. The release
    # inserts the row first, as release_leases() does.
    async with opened(dsn, schema) as store:
        # (No row yet: it goes with the first write.)
        run = await held.begun(store, "rl-first", rl_one(2), given=False)
        sending, gate, late = held.hold_sends(store, monkeypatch)
        original = store._run
        inserts: list[Any] = []
        inserting, never = asyncio.Event(), asyncio.Event()

        async def run_sql(sql: str, params: Any = None) -> list[tuple[Any, ...]]:
            if sql == store._sql.begin:  # settling the first write inserts its row first
                inserts.append(params)
                if len(inserts) == 1:  # the cancelled record()'s own try: it stays in doubt
                    raise StoreError("refused (test)")
                if len(inserts) == 2:  # finish()'s settling: cancelled before it is sent
                    inserting.set()
                    await never.wait()
            return await original(sql, params)

        monkeypatch.setattr(store, "_run", run_sql)
        await held.cut(store.record(run, _started("rl-first")), sending)
        assert "rl-first" in store._doubts
        await held.cut(store.finish(run), inserting)
        assert not store.owns("rl-first")
        # The first write, late, does not commit now (refused: its row is there already).
        assert await held.sent_late(store, gate, late) == [{"rl-first": "exists"}]
    # Given up: any worker's next claim takes it at once.
    assert held.given_up(dsn, schema, "rl-first") == [(None, True)]
