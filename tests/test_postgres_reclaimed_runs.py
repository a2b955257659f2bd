"""PostgreSQL: a run that this store fenced out itself, winding down beside its saga's next run.

``release_leases()`` (a stopping worker, a process handing its ``execute()`` calls over)
fences out the runs in flight: their writes on the way are refused, and what they had
staged cannot be written any more. That is an orderly handover, told once by the run's
``saga_stopped`` record, and the same store may take the saga over again at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import pytest

from pg_helpers.db import opened
from sagakit import LeaseLost, SagaOrchestrator, SagaStatus, StepStatus, saga, step
from sagakit._recovery import DEFAULT_MAX_ATTEMPTS, _recover_one
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

pytestmark = pytest.mark.asyncio


@step
async def rr_quick(n: int) -> int:
    return n


@saga
def rr_saga(n: int):  # type: ignore[no-untyped-def]
    yield rr_quick(n)


def _warnings(caplog: pytest.LogCaptureFixture, saga_id: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING and getattr(record, "saga_id", None) == saga_id
    ]


async def test_an_end_fenced_out_by_this_stores_release_is_not_a_lost_lease(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: a stopping worker releases its leases, then cancels its runs. A run whose
    # end was on its way had it refused (and staged its step's completion again); its
    # finish() sent that again, fenced out, and warned "lost the lease ... another worker
    # owns it now", as for a worker cut off past its lease: about 1 run in 10 of
    # test_a_released_saga_is_handed_over_without_warnings.
    caplog.set_level(logging.INFO, logger="sagakit")
    async with opened(dsn, schema) as store:
        send = store._writer._send
        held, go = asyncio.Event(), asyncio.Event()

        async def hold_the_end(writes: Sequence[Any]) -> dict[str, str]:
            if any(write.final for write in writes) and not go.is_set():
                held.set()
                await go.wait()
            return await send(list(writes))

        store._writer._send = hold_the_end  # type: ignore[method-assign]
        running = asyncio.create_task(SagaOrchestrator(store).execute(rr_saga(1), saga_id="rr-1"))
        await held.wait()  # the saga's end is on its way
        assert await store.release_leases() == 1  # the process stops: it hands the saga over
        running.cancel()  # ... and then cancels what it ran
        go.set()
        with pytest.raises(asyncio.CancelledError):
            await running
    assert _warnings(caplog, "rr-1") == []


GATES: dict[str, asyncio.Event] = {}


@step
async def rr_held(n: int) -> int:
    GATES["started"].set()
    await GATES["go"].wait()
    return n


@saga
def rr_held_saga(n: int):  # type: ignore[no-untyped-def]
    yield rr_held(n)


async def test_a_run_fenced_out_writes_nothing_under_its_sagas_next_claim(
    dsn: str, schema: str
) -> None:
    # Regression: the store kept its leases by saga id only, so a run it had released
    # whose step was still running when this same store claimed the saga again (its
    # worker, recover()) found the new claim's fencing token and wrote with it: its end
    # went into the log under the new owner's lease, and ended that lease.
    GATES.update(started=asyncio.Event(), go=asyncio.Event())
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        old = asyncio.create_task(orchestrator.execute(rr_held_saga(2), saga_id="rr-2"))
        await GATES["started"].wait()
        await store.release_leases()  # the old run is fenced out ...
        [orphan] = await store.claim_orphans(saga_ids=["rr-2"])  # ... and its saga taken anew
        GATES["go"].set()  # the old run's step returns
        with pytest.raises(LeaseLost) as lost:
            await old
        assert lost.value.released
        assert store.owns("rr-2")  # the claim's lease is untouched
        meta = await store.get("rr-2")
        assert meta is not None
        assert meta.status == SagaStatus.EXECUTING  # for the claim's run to finish
        assert orphan.saga_id == "rr-2"


async def test_a_fenced_out_runs_finish_leaves_its_sagas_next_claim_alone(
    dsn: str, schema: str
) -> None:
    # Regression: finish() of a run fenced out by release_leases() still wrote what the
    # run had staged when the same store claimed its saga again meanwhile: refused, it was
    # sent again with the new claim's fencing token (see _send), and then finish() gave up
    # that claim's lease and forgot it, as if it were the old run's.
    async with opened(dsn, schema) as store:
        send = store._writer._send
        holds = [asyncio.Event(), asyncio.Event()]  # the run's end, then its finish()'s write
        held = [asyncio.Event(), asyncio.Event()]

        async def hold(writes: Sequence[Any]) -> dict[str, str]:
            stage = 1 if held[0].is_set() else 0 if any(w.final for w in writes) else None
            if stage is not None and not held[stage].is_set():
                held[stage].set()
                await holds[stage].wait()
            return await send(list(writes))

        store._writer._send = hold  # type: ignore[method-assign]
        old = asyncio.create_task(SagaOrchestrator(store).execute(rr_saga(3), saga_id="rr-3"))
        await held[0].wait()  # the run's end is on its way
        await store.release_leases()
        old.cancel()  # (a stopping worker) its end is refused, staged again for finish()
        holds[0].set()
        await held[1].wait()  # finish() writes what the run staged
        [orphan] = await store.claim_orphans(saga_ids=["rr-3"])  # the saga taken anew
        holds[1].set()
        with pytest.raises(asyncio.CancelledError):
            await old
        assert store.owns("rr-3")  # the claim's lease is untouched
        meta = await store.get("rr-3")
        assert meta is not None
        # The old run's step started under its own lease; its completion is not written
        # under the new one (the claim's run runs that step again).
        assert [step.status for step in meta.steps] == [StepStatus.RUNNING]
        assert orphan.saga_id == "rr-3"


async def test_a_claim_released_before_its_run_began_leaves_the_next_claim_alone(
    dsn: str, schema: str
) -> None:
    # Regression: a claim was bound to its run only at that run's first write. A saga a
    # worker claimed and released (stopping) before the task finishing it began, then
    # claimed again by this same store, had that task's run bind to the new claim: it
    # wrote under the new claim's lease and ran the saga to its end behind its run.
    GATES.update(started=asyncio.Event(), go=asyncio.Event())
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        first = asyncio.create_task(orchestrator.execute(rr_held_saga(4), saga_id="rr-4"))
        await GATES["started"].wait()
        await store.release_leases()  # handed over with its step running: an orphan
        GATES["go"].set()
        with pytest.raises(LeaseLost):
            await first
        [stale] = await store.claim_orphans(saga_ids=["rr-4"])  # a worker's claim ...
        assert await store.release_leases() == 1  # ... that stops before running it
        [orphan] = await store.claim_orphans(saga_ids=["rr-4"])  # taken anew
        with pytest.raises(LeaseLost) as lost:  # the stopped worker's task begins late
            await _recover_one(orchestrator, store, stale, DEFAULT_MAX_ATTEMPTS)
        assert lost.value.released
        assert store.owns("rr-4")  # the claim's lease is untouched
        meta = await store.get("rr-4")
        assert meta is not None
        assert meta.status == SagaStatus.EXECUTING  # for the claim's run to finish
        assert [step.status for step in meta.steps] == [StepStatus.RUNNING]
        assert orphan.saga_id == "rr-4"


async def test_a_run_a_simulated_crash_stopped_is_forgotten_by_the_restart(
    dsn: str, schema: str
) -> None:
    # Regression: a run stopped by FaultInjector.crash() never calls finish(), so the
    # store kept it as its saga's run; recovered by this same store after
    # simulate_restart(), it was retired, and kept (steps, results) for good.
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        with FaultInjector().crash(rr_quick), pytest.raises(SimulatedCrash):
            await orchestrator.execute(rr_saga(5), saga_id="rr-5")
        await simulate_restart(store)
        [outcome] = await orchestrator.recover()
        assert outcome.status is SagaStatus.COMPLETED
        assert store._runs == {}
        assert store._retired == {}
