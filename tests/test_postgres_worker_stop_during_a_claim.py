"""PostgreSQL: a worker told to stop while its claim gets no answer stops: it gives the
claim up after the store's ``connect_timeout``.

A claim on a connection that went silent (a network partition or a server host gone,
with no reset: a pooled PostgreSQL connection then waits for the kernel to give up,
some 15 minutes) used to hold the worker: ``stop`` and ``SIGTERM`` were looked at only
between two claims, so a worker told to stop went on waiting, and a platform's grace
period ended in ``SIGKILL``. The claim is now given up as a cancelled worker gives it
up: what it claimed is given back, unrun, for the next claim. The whole stop waits
``connect_timeout`` for the store once, not per call (the hand-back included: what it
could not give back stays claimed until its lease expires); and ``close()``, releasing what
the store still holds, waits that long at most too.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from pg_helpers.db import expire, opened
from pg_helpers.silent import never_answering
from sagakit import PostgresStore, SagaOrchestrator, saga, step
from sagakit.stores import OrphanedSaga
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

pytestmark = pytest.mark.asyncio

GIVE_UP = 30.0  # seconds before the worker is declared hung (a guard, not a measurement)

ran: list[str] = []


@step
async def sc_book(order: str) -> str:
    ran.append(f"book {order}")
    return order


@step
async def sc_ship(order: str) -> str:
    ran.append(f"ship {order}")
    return order


@saga
def sc_order(order: str) -> Any:
    yield sc_book(order)
    yield sc_ship(order)


@step
async def sc_hold(order: str) -> str:
    ran.append(f"hold {order}")
    await asyncio.Event().wait()  # runs until its worker, stopping, cancels it
    return order


@saga
def sc_held(order: str) -> Any:
    yield sc_book(order)
    yield sc_hold(order)


async def stop_once(orchestrator: SagaOrchestrator, reached: asyncio.Event) -> None:
    """Run a worker until ``reached`` is set, then tell it to stop: it returns, as told."""
    stop = asyncio.Event()
    worker = asyncio.create_task(
        orchestrator.run_worker(poll_interval=0.01, stop=stop, handle_signals=False)
    )
    await reached.wait()
    stop.set()
    await asyncio.wait_for(worker, GIVE_UP)


async def test_a_worker_stopped_while_its_claim_gets_no_answer_returns(
    dsn: str, schema: str
) -> None:
    async with opened(dsn, schema, connect_timeout=0.2) as store:
        orchestrator = SagaOrchestrator(store)
        claiming = asyncio.Event()
        cancelled: list[str] = []

        store.claim_orphans = never_answering(claiming, cancelled, "claim")  # type: ignore[method-assign]
        await stop_once(orchestrator, claiming)
        assert cancelled == ["claim"]


async def test_a_claim_answered_after_the_worker_was_told_to_stop_is_given_back_unrun(
    dsn: str, schema: str
) -> None:
    ran.clear()
    async with opened(dsn, schema, connect_timeout=0.2) as store:
        orchestrator = SagaOrchestrator(store)
        with FaultInjector().crash(sc_ship), pytest.raises(SimulatedCrash):
            await orchestrator.execute(sc_order("o1"), saga_id="sc-1")
        await simulate_restart(store)
        claim = store.claim_orphans
        claiming = asyncio.Event()

        async def late_claim(**options: Any) -> list[OrphanedSaga]:
            claimed: list[OrphanedSaga] = await claim(**options)
            claiming.set()
            # Its answer on the way, slowly; answered all the same when cancelled (a
            # driver can swallow the cancellation).
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
            return claimed

        store.claim_orphans = late_claim  # type: ignore[method-assign]
        await stop_once(orchestrator, claiming)
        assert ran == ["book o1"]  # the saga claimed as the worker stopped was not run
        store.claim_orphans = claim  # type: ignore[method-assign]
        # Answered as the budget ran out, the hand-back had none left (one turn of the
        # event loop): given back, or left until its lease expires, as here.
        expire(dsn, schema, "sc-1")
        outcomes = await orchestrator.recover()
        assert [outcome.saga_id for outcome in outcomes] == ["sc-1"]
        assert ran == ["book o1", "ship o1"]


async def test_a_worker_stopped_while_its_look_for_unregistered_names_gets_no_answer_returns(
    dsn: str, schema: str
) -> None:
    # The look for sagas of names no @saga here declares (once a minute) waited on the
    # same silent connection as a claim can, stop or not.
    async with opened(dsn, schema, connect_timeout=0.2) as store:
        orchestrator = SagaOrchestrator(store)
        looking = asyncio.Event()
        cancelled: list[str] = []

        store._running_names = never_answering(looking, cancelled, "look")  # type: ignore[method-assign]
        await stop_once(orchestrator, looking)
        assert cancelled == ["look"]


async def test_a_claim_whose_cancellation_gets_no_answer_is_cancelled_again(
    dsn: str, schema: str
) -> None:
    # Regression: a claim given up was cancelled, then awaited until it ended: a driver
    # asking a silent server to cancel the statement (psycopg: up to 10 s) held the
    # worker that long again. Cancelled a second time, psycopg drops the connection.
    async with opened(dsn, schema, connect_timeout=0.2) as store:
        orchestrator = SagaOrchestrator(store)
        claiming = asyncio.Event()
        cancelled: list[str] = []

        store.claim_orphans = never_answering(claiming, cancelled, "claim", stubborn=True)  # type: ignore[method-assign]
        await stop_once(orchestrator, claiming)
        assert cancelled == ["claim", "claim again"]


async def test_a_cancelled_worker_whose_claims_cancellation_gets_no_answer_ends(
    dsn: str, schema: str
) -> None:
    async with opened(dsn, schema, connect_timeout=0.2) as store:
        orchestrator = SagaOrchestrator(store)
        claiming = asyncio.Event()
        cancelled: list[str] = []

        store.claim_orphans = never_answering(claiming, cancelled, "claim", stubborn=True)  # type: ignore[method-assign]
        worker = asyncio.create_task(
            orchestrator.run_worker(poll_interval=0.01, handle_signals=False)
        )
        await claiming.wait()
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(worker, GIVE_UP)
        assert cancelled == ["claim", "claim again"]


async def test_a_stopping_worker_waits_for_its_store_connect_timeout_once_not_per_call(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: a worker stopped while its claim got no answer waited connect_timeout
    # for the claim, then connect_timeout again for its release (30 s by default with
    # the claim's cancellation): past a platform's grace period. The stop has one
    # budget: what the claim used up, the release does not get again (here the budget
    # would be an hour from the claim's end on).
    async with opened(dsn, schema, connect_timeout=0.2) as store:
        orchestrator = SagaOrchestrator(store)
        # A saga in flight, whose lease the stopping worker releases: an orphan it claims
        # first (its run then waits in sc_hold), before a claim that gets no answer.
        with FaultInjector().crash(sc_hold), pytest.raises(SimulatedCrash):
            await orchestrator.execute(sc_held("o3"), saga_id="sc-held")
        await simulate_restart(store)
        claiming = asyncio.Event()
        releasing = asyncio.Event()
        cancelled: list[str] = []

        def longer() -> None:
            store.connect_timeout = 3600.0

        claim = store.claim_orphans
        silent = never_answering(claiming, cancelled, "claim", on_cancel=longer)
        claimed: list[OrphanedSaga] = []

        async def answered_once_then_silent(**options: Any) -> list[OrphanedSaga]:
            if claimed:
                return await silent(**options)  # type: ignore[no-any-return]
            claimed.extend(await claim(**options))
            return list(claimed)

        store.claim_orphans = answered_once_then_silent  # type: ignore[method-assign]
        store.release_leases = never_answering(releasing, cancelled, "release")  # type: ignore[method-assign]
        await stop_once(orchestrator, claiming)
        assert [orphan.saga_id for orphan in claimed] == ["sc-held"]
        assert cancelled == ["claim", "release"]
        worker_said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert [m for m in worker_said if m.startswith("sagakit worker")] == [
            "sagakit worker could not release its saga leases: no answer within 0.2 s of "
            "being told to stop (connect_timeout); they run out by themselves"
        ]


async def test_a_worker_stopped_with_no_sagas_in_flight_releases_no_leases_nor_warns_of_them(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: a worker running no saga still called release_leases(saga_ids=[]) as it
    # stopped; with the stop's budget spent (here by a claim that got no answer), that
    # warned "could not release its saga leases" of no lease at all.
    async with opened(dsn, schema, connect_timeout=0.2) as store:
        orchestrator = SagaOrchestrator(store)
        claiming = asyncio.Event()
        cancelled: list[str] = []
        released: list[dict[str, Any]] = []
        release = store.release_leases

        async def recorded_release(**options: Any) -> int:
            released.append(options)
            return await release(**options)

        store.claim_orphans = never_answering(claiming, cancelled, "claim")  # type: ignore[method-assign]
        store.release_leases = recorded_release  # type: ignore[method-assign]
        await stop_once(orchestrator, claiming)
        assert cancelled == ["claim"]
        assert released == []
        assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []


async def test_closing_a_store_whose_release_gets_no_answer_returns(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: close() releases the leases its store still holds (a worker stopped
    # without releasing them, its release given up): on a connection gone silent, that
    # release waited for the kernel to give up, some 15 minutes, and close() with it. It
    # waits connect_timeout at most; the leases then run out by themselves.
    async with opened(dsn, schema) as setup:
        with FaultInjector().crash(sc_ship), pytest.raises(SimulatedCrash):
            await SagaOrchestrator(setup).execute(sc_order("o2"), saga_id="sc-close")
        await simulate_restart(setup)
    store = PostgresStore(dsn, schema=schema, connect_timeout=0.2)
    await store.open()
    try:
        assert [o.saga_id for o in await store.claim_orphans()] == ["sc-close"]
        releasing = asyncio.Event()
        cancelled: list[str] = []
        run = store._run

        async def silent_release(sql: str, params: Any = None) -> Any:
            if sql == store._sql.release:
                return await never_answering(releasing, cancelled, "release", stubborn=True)()
            return await run(sql, params)

        store._run = silent_release  # type: ignore[method-assign]
        closing = asyncio.create_task(store.close())
        await asyncio.wait((closing,), timeout=GIVE_UP)
        assert closing.done()
        await closing
        assert releasing.is_set()
        assert cancelled == ["release", "release again"]
        assert [r.getMessage() for r in caplog.records if r.name == "sagakit"] == [
            "sagakit could not release the leases of 1 saga on close: no answer within "
            "0.2 s (connect_timeout); they run out by themselves"
        ]
    finally:
        if not closing.done():
            closing.cancel()
            await asyncio.gather(closing, return_exceptions=True)


@pytest.mark.parametrize("how", ["stopped", "cancelled"])
async def test_a_hand_back_that_gets_no_answer_stays_within_the_stops_budget(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    # Regression: a claim answered after the worker was told to stop (or cancelled)
    # hands its sagas back, unrun; that hand-back waited outside the stop's budget
    # (connect_timeout), so on a connection gone silent it held the stop until the
    # kernel gave up, some 15 minutes. It now shares the budget; what it could not hand
    # back stays claimed until its lease expires, then any worker claims it.
    ran.clear()
    async with opened(dsn, schema, connect_timeout=0.2) as store:
        orchestrator = SagaOrchestrator(store)
        with FaultInjector().crash(sc_ship), pytest.raises(SimulatedCrash):
            await orchestrator.execute(sc_order("o3"), saga_id="sc-hand-back")
        await simulate_restart(store)
        claim = store.claim_orphans
        claiming = asyncio.Event()

        async def late_claim(**options: Any) -> list[OrphanedSaga]:
            claimed: list[OrphanedSaga] = await claim(**options)
            claiming.set()
            # Answered only when cancelled (a driver can swallow the cancellation).
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
            return claimed

        giving_back = asyncio.Event()
        cancelled: list[str] = []
        run = store._run

        async def silent_give_back(sql: str, params: Any = None) -> Any:
            if sql == store._sql.give_back:
                return await never_answering(giving_back, cancelled, "give back", stubborn=True)()
            return await run(sql, params)

        store.claim_orphans = late_claim  # type: ignore[method-assign]
        store._run = silent_give_back  # type: ignore[method-assign]
        stop = asyncio.Event()
        worker = asyncio.create_task(
            orchestrator.run_worker(poll_interval=0.01, stop=stop, handle_signals=False)
        )
        await claiming.wait()
        if how == "stopped":
            stop.set()
        else:
            worker.cancel()
        await asyncio.wait((worker,), timeout=GIVE_UP)
        assert worker.done()
        assert worker.cancelled() is (how == "cancelled")
        assert giving_back.is_set()
        assert cancelled == ["give back", "give back again"]
        assert ran == ["book o3"]  # claimed as the worker stopped: not run
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        # (then its release of the leases, which has no budget left either)
        assert warned[0] == (
            "sagakit worker could not hand back sagas ['sc-hand-back'] it claimed and did "
            "not run: no answer within 0.2 s of being told to stop (connect_timeout); "
            "they stay claimed until their leases expire, then any worker claims them"
        )
        store._run = run  # type: ignore[method-assign]
        async with opened(dsn, schema) as other:
            assert await other.claim_orphans() == []  # its lease still runs
            expire(dsn, schema, "sc-hand-back")
            assert [o.saga_id for o in await other.claim_orphans()] == ["sc-hand-back"]
