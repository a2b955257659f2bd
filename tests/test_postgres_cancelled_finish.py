"""PostgreSQL: a run whose ``finish()`` is cancelled while it gives up the saga's lease,
or before, while it writes what the run left staged or in doubt.

A run that ends without its end in the log (cancelled again while that write was on
its way) has ``finish()`` give the lease up, so any worker's next claim takes the saga
at once. Cancelled during that release (a listener cancelling the saga's task again),
the store forgot the lease all the same: its ``close()`` then had nothing to release,
and the row stayed under the closed store's lease until it ran out (30 s by default),
so a ``recover()`` right after the restart did not take the saga (soak seed 115).
Cancelled earlier, while it wrote what the run had staged (or settled a write in doubt),
it skipped the release altogether, with the same outcome.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pg_helpers import held
from pg_helpers.db import opened, query
from sagakit import PostgresStore, SagaOrchestrator, SagaStatus, StoreError, saga, step
from sagakit._runs import SagaRun
from sagakit.stores._pg_writer import Write
from sagakit.transitions import Transition, TransitionKind


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
        run = await held.begun(store, "cf-released", cf_one(1))
        assert store.owns("cf-released")
        # Hold the release until it is cancelled.
        releasing, gate = held.hold_release(store, monkeypatch)
        finishing = asyncio.create_task(store.finish(run))
        await releasing.wait()
        finishing.cancel()
        await asyncio.sleep(0)
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await finishing  # the caller's cancellation, raised once the release is done
        assert not store.owns("cf-released")
    # Given up: no owner, its lease over, so the next claim takes it at once.
    assert held.given_up(dsn, schema, "cf-released") == [(None, True)]
    async with opened(dsn, schema) as other:
        claimed = await other.claim_orphans()
        assert [orphan.saga_id for orphan in claimed] == ["cf-released"]
        await other.give_back(["cf-released"])


def _step(kind: TransitionKind, saga_id: str, **fields: Any) -> Transition:
    return Transition(kind, saga_id, "cf_one", SagaStatus.EXECUTING, 0, "cf_act", 1, **fields)


async def _started(store: PostgresStore, saga_id: str, n: int) -> SagaRun:
    """A run of ``cf_one(n)`` begun as ``saga_id``, its step's start in the log."""
    run = await held.begun(store, saga_id, cf_one(n))
    await store.record(run, _step(TransitionKind.STEP_STARTED, saga_id))
    return run


async def _released_then_recovered(dsn: str, schema: str, saga_id: str) -> None:
    """The row is given up (no owner, its lease over), holds no write of the cancelled
    run's that came late, and another worker's recovery takes it at once and ends it."""
    rows = query(
        dsn,
        f'SELECT owner, lease_until <= now(), status FROM "{schema}".sagas WHERE saga_id = %s',
        (saga_id,),
    )
    assert rows == [(None, True, "executing")]
    steps = f'SELECT status FROM "{schema}".steps WHERE saga_id = %s'
    assert query(dsn, steps, (saga_id,)) == [("running",)]  # (started; its end never written)
    async with opened(dsn, schema) as other:
        outcomes = await SagaOrchestrator(other).recover()
        assert [(o.saga_id, o.status) for o in outcomes] == [(saga_id, SagaStatus.COMPLETED)]
    assert query(dsn, steps, (saga_id,)) == [("completed",)]


@pytest.mark.asyncio
async def test_a_finish_cancelled_while_it_writes_what_was_staged_releases_the_lease(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with opened(dsn, schema) as store:
        run = await _started(store, "cf-staged", 1)
        # Its end could not be written: the step's completion is still staged.
        store.stage(run, _step(TransitionKind.STEP_COMPLETED, "cf-staged", result=1))
        # On its way (in doubt once its caller is cancelled) until the gate opens.
        sending, gate, late = held.hold_sends(store, monkeypatch)
        await held.cut(store.finish(run), sending)
        assert not store.owns("cf-staged")
        # The release fenced the write out.
        assert await held.sent_late(store, gate, late) == [{"cf-staged": "fenced"}]
    await _released_then_recovered(dsn, schema, "cf-staged")


@pytest.mark.asyncio
async def test_a_finish_cancelled_while_it_settles_a_write_in_doubt_releases_the_lease(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cancelled once the settling moved the fencing token on, before its answer came
    # back: the token the store knows is the one before, and the release must still
    # match the row (the lease is still this run's).
    async with opened(dsn, schema) as store:
        run = await _started(store, "cf-doubt", 2)
        sending, gate, late = held.hold_sends(store, monkeypatch)
        original = store._run
        settles: list[str] = []
        settled, never = asyncio.Event(), asyncio.Event()

        async def run_sql(sql: str, params: Any = None) -> list[tuple[Any, ...]]:
            if sql == store._sql.settle:
                settles.append(sql)
                if len(settles) == 1:  # the cancelled record()'s own try: it stays in doubt
                    raise StoreError("refused (test)")
                found = await original(sql, params)  # committed: the token moved on
                settled.set()
                await never.wait()  # its answer never comes back: cancelled meanwhile
                return found
            return await original(sql, params)

        monkeypatch.setattr(store, "_run", run_sql)
        # The run's end, in doubt: cancelled while it was on its way, not settled.
        ending = _step(TransitionKind.STEP_COMPLETED, "cf-doubt", result=2)
        await held.cut(store.record(run, ending), sending)
        assert "cf-doubt" in store._doubts
        await held.cut(store.finish(run), settled)
        assert not store.owns("cf-doubt")
        assert await held.sent_late(store, gate, late) == [{"cf-doubt": "fenced"}]
    await _released_then_recovered(dsn, schema, "cf-doubt")


@pytest.mark.asyncio
async def test_a_finish_whose_process_dies_while_it_writes_keeps_the_lease(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A simulated crash of the process (crash(..., process=True)) while finish() writes
    # what was staged: a killed process gives nothing up (simulate_restart() does).
    from sagakit.testing import SimulatedCrash

    async with opened(dsn, schema) as store:
        run = await _started(store, "cf-died", 3)
        store.stage(run, _step(TransitionKind.STEP_COMPLETED, "cf-died", result=3))
        sending, gate = asyncio.Event(), asyncio.Event()

        async def unsent(writes: list[Write]) -> dict[str, str]:
            sending.set()
            await gate.wait()  # never sent: the process "dies" meanwhile
            return {}

        monkeypatch.setattr(store._writer, "_send", unsent)
        finishing = asyncio.create_task(store.finish(run))
        await sending.wait()
        store._crash_process("the process died (test)")
        with pytest.raises(SimulatedCrash):
            await finishing
        # Still this "process's", until its lease runs out.
        assert held.still_leased(dsn, schema, store, "cf-died") == [(True, True)]
        gate.set()
