"""PostgreSQL leases and the worker loop: a process never reclaims its own running
saga, and a lost database connection does not end the worker. The SIGTERM handling of
the worker loop (which needs no server) is checked here too, with SQLite logs."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pg_helpers.db import GIVE_UP, expire, opened, query
from sagakit import (
    SagaDefinitionError,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StoreError,
    current_step,
    saga,
    step,
)
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

RAN: Counter[tuple[str, int]] = Counter()
GATES: dict[str, asyncio.Event] = {}
ENTERED: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    RAN.clear()
    GATES.clear()
    ENTERED.clear()
    UNDONE.clear()
    yield
    for gate in GATES.values():
        gate.set()


UNDONE: Counter[tuple[str, int]] = Counter()


@step
async def pl_gated(n: int) -> int:
    """Like pl_act, but the first entry of step 1 and of step 2 wait on gates."""
    ctx = current_step()
    assert ctx is not None
    RAN[(ctx.saga_id, ctx.step_index)] += 1
    key = f"{ctx.saga_id}:{ctx.step_index}"
    gate = GATES.get(key)
    if gate is not None and RAN[(ctx.saga_id, ctx.step_index)] == 1:
        ENTERED[key].set()
        await gate.wait()
    return n


@pl_gated.compensate
async def pl_ungated(result: int, n: int) -> None:
    ctx = current_step()
    assert ctx is not None
    UNDONE[(ctx.saga_id, ctx.step_index)] += 1


@saga
def pl_gated_three():  # type: ignore[no-untyped-def]
    for n in range(3):
        yield pl_gated(n)


@pytest.mark.asyncio
async def test_a_worker_never_claims_a_saga_its_own_process_is_running(
    dsn: str, schema: str
) -> None:
    # Regression: once the lease ran out (the heartbeat could not reach the database
    # for longer than the lease), the same process's worker claimed the saga, and its
    # recovery ran beside the original run, whose writes took the new token.
    async with opened(dsn, schema, lease=60.0, heartbeat=20.0) as store:
        orchestrator = SagaOrchestrator(store)
        GATES["own:1"] = asyncio.Event()
        ENTERED["own:1"] = asyncio.Event()
        original = asyncio.create_task(orchestrator.execute(pl_gated_three(), saga_id="own"))
        await ENTERED["own:1"].wait()
        expire(dsn, schema, "own")
        stop = asyncio.Event()
        worker = asyncio.create_task(
            orchestrator.run_worker(poll_interval=0.02, stop=stop, handle_signals=False)
        )
        await asyncio.sleep(0.3)  # many polls
        fence = query(dsn, f'SELECT fence FROM "{schema}".sagas WHERE saga_id = %s', ("own",))
        assert fence == [(1,)]  # never claimed
        GATES["own:1"].set()
        assert await original == [0, 1, 2]
        stop.set()
        await worker
        assert dict(RAN) == {("own", 0): 1, ("own", 1): 1, ("own", 2): 1}
        assert not UNDONE


@pytest.mark.asyncio
async def test_a_claim_sent_before_its_own_process_began_the_saga_does_not_take_it_over(
    dsn: str, schema: str
) -> None:
    # Regression: the claim lists the sagas the store runs ("mine") when it is sent. An
    # execute() begun after that, whose lease ran out before the claim ran (a claim
    # held up that long), was claimed by its own process: recovery ran it beside the
    # original run, which was fenced out.
    async with opened(dsn, schema, lease=60.0, heartbeat=20.0) as store:
        orchestrator = SagaOrchestrator(store)
        GATES["late:1"] = asyncio.Event()
        ENTERED["late:1"] = asyncio.Event()
        run = store._run
        original: list[asyncio.Task[Any]] = []

        async def held_up_claim(sql: str, params: Any = None) -> Any:
            if sql == store._sql.claim and not original:
                # Sent: now the saga begins here, and its lease runs out.
                original.append(
                    asyncio.create_task(orchestrator.execute(pl_gated_three(), saga_id="late"))
                )
                await ENTERED["late:1"].wait()
                expire(dsn, schema, "late")
            return await run(sql, params)

        store._run = held_up_claim  # type: ignore[method-assign]
        assert await store.claim_orphans() == []  # not an orphan: its run is here
        assert store.owns("late")
        GATES["late:1"].set()
        assert await original[0] == [0, 1, 2]  # not fenced out
        assert dict(RAN) == {("late", 0): 1, ("late", 1): 1, ("late", 2): 1}
        meta = await store.get("late")
        assert meta is not None
        assert meta.status is SagaStatus.COMPLETED


@pytest.mark.asyncio
async def test_a_write_on_its_way_when_a_claim_only_renews_the_lease_is_not_fenced_out(
    dsn: str, schema: str
) -> None:
    # Regression: a claim that only renews the lease of a saga its own store runs (see
    # the test above) moves the saga's fencing token on. The saga's write on its way to
    # the server at that moment still carried the former token: it was refused, and the
    # run stopped with LeaseLost although no other worker had taken the saga over.
    async with opened(dsn, schema, lease=60.0, heartbeat=20.0) as store:
        orchestrator = SagaOrchestrator(store)
        GATES["renew:0"] = asyncio.Event()
        ENTERED["renew:0"] = asyncio.Event()
        running = asyncio.create_task(orchestrator.execute(pl_gated_three(), saga_id="renew"))
        await ENTERED["renew:0"].wait()
        expire(dsn, schema, "renew")
        send = store._writer._send
        held = asyncio.Event()
        on_its_way = asyncio.Event()

        async def held_send(writes: Any) -> Any:
            on_its_way.set()
            await held.wait()
            return await send(writes)

        store._writer._send = held_send
        GATES["renew:0"].set()
        await on_its_way.wait()  # step 1's start (with step 0's completion), token 1
        run = store._run

        async def claim_sent_before_begin(sql: str, params: Any = None) -> Any:
            if sql == store._sql.claim:
                params = {**params, "mine": []}  # as listed before the saga began here
            return await run(sql, params)

        store._run = claim_sent_before_begin  # type: ignore[method-assign]
        assert await store.claim_orphans() == []  # only renewed the lease: token 2
        store._run = run  # type: ignore[method-assign]
        held.set()
        assert await running == [0, 1, 2]  # not fenced out
        assert dict(RAN) == {("renew", 0): 1, ("renew", 1): 1, ("renew", 2): 1}
        assert not UNDONE
        meta = await store.get("renew")
        assert meta is not None
        assert meta.status is SagaStatus.COMPLETED
        # Not a claim after a crash: no recovery attempt is counted (one was, and a saga
        # whose worker then died was parked a crash early).
        attempts = f'SELECT recovery_attempts FROM "{schema}".sagas WHERE saga_id = %s'
        assert query(dsn, attempts, ("renew",)) == [(0,)]


@pytest.mark.asyncio
async def test_a_lost_database_connection_does_not_end_the_worker_loop(
    dsn: str, schema: str
) -> None:
    """run_worker promises to claim and finish orphans 'until stopped' (stop, SIGTERM,
    cancellation), and the heartbeat keeps beating through errors. But a failed
    claim_orphans() (here: the server dropped the pool's connection, as in a
    restart or a fail-over) propagates out of the loop in _worker.py: the worker
    returns with a StoreError after releasing its leases, and finishes nothing more."""
    async with opened(dsn, schema, lease=60.0, heartbeat=20.0, max_size=1) as store:
        orchestrator = SagaOrchestrator(store)
        stop = asyncio.Event()
        worker = asyncio.create_task(
            orchestrator.run_worker(poll_interval=0.05, stop=stop, handle_signals=False)
        )
        await asyncio.sleep(0.2)  # a few empty polls
        query(
            dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND query LIKE %s",
            (f'%"{schema}"%',),
        )
        await asyncio.sleep(0.5)
        try:
            assert not worker.done(), (
                f"the worker loop ended on a connection error: {worker.exception()!r}"
            )
        finally:
            stop.set()
            await asyncio.gather(worker, return_exceptions=True)


@saga(recovery="compensate")
def pl_careful_three():  # type: ignore[no-untyped-def]
    for n in range(3):
        yield pl_gated(n)


@pytest.mark.asyncio
async def test_a_store_error_while_recovery_compensates_does_not_strand_the_saga(
    dsn: str, schema: str
) -> None:
    # Regression: when recording failed while recovery compensated a saga (a database
    # blip), the run was never ended: its worker kept renewing the lease of a saga
    # nobody ran (and never claimed it again: it is "its own"), until it stopped.
    async with opened(dsn, schema) as a, opened(dsn, schema) as b:
        GATES["careful:1"] = asyncio.Event()
        ENTERED["careful:1"] = asyncio.Event()
        original = asyncio.create_task(
            SagaOrchestrator(a).execute(pl_careful_three(), saga_id="careful")
        )
        await ENTERED["careful:1"].wait()
        expire(dsn, schema, "careful")
        record = b.record
        blips = []

        async def flaky_record(run: Any, transition: Any) -> None:
            if transition.kind == "compensation_started" and not blips:
                blips.append(transition)
                raise StoreError("the database went away")
            await record(run, transition)

        b.record = flaky_record  # type: ignore[method-assign]
        stop = asyncio.Event()
        worker = asyncio.create_task(
            SagaOrchestrator(b).run_worker(poll_interval=0.02, stop=stop, handle_signals=False)
        )
        try:
            for _ in range(200):
                await asyncio.sleep(0.02)
                if blips and not b.owns("careful"):
                    break
            assert blips
            assert not b.owns("careful")  # no lease renewed for a saga nobody runs
            meta = await b.get("careful")
            assert meta is not None
            # Ended as execute() ends a run whose compensation could not be recorded.
            assert meta.status == "failed"
            assert meta.finished_at is not None
        finally:
            stop.set()
            await worker
            GATES["careful:1"].set()
            await asyncio.gather(original, return_exceptions=True)


@pytest.mark.asyncio
async def test_a_store_error_while_parking_a_saga_does_not_strand_it(dsn: str, schema: str) -> None:
    # Regression: when parking an orphan failed (a database blip), the store kept its
    # lease, and the heartbeat renewed it for as long as the worker lived.
    async with opened(dsn, schema) as a, opened(dsn, schema) as b:
        GATES["parking:1"] = asyncio.Event()
        ENTERED["parking:1"] = asyncio.Event()
        original = asyncio.create_task(
            SagaOrchestrator(a).execute(pl_careful_three(), saga_id="parking")
        )
        await ENTERED["parking:1"].wait()
        expire(dsn, schema, "parking")
        # As if the saga's code changed: its replay no longer matches, so it is parked.
        query(
            dsn,
            f"UPDATE \"{schema}\".steps SET name = 'renamed' "
            "WHERE saga_id = 'parking' AND step_index = 0",
        )
        run = b._run
        blips: list[Any] = []

        async def flaky_run(sql: str, params: Any = None) -> Any:
            if sql == b._sql.dead_letter and not blips:
                blips.append(params)
                raise StoreError("the database went away")
            return await run(sql, params)

        b._run = flaky_run  # type: ignore[method-assign]
        with pytest.raises(StoreError, match="went away"):
            await SagaOrchestrator(b).recover()
        assert blips
        assert not b.owns("parking")  # no lease kept alive for a saga nobody runs
        expire(dsn, schema, "parking")
        outcomes = await SagaOrchestrator(b).recover()  # claimed again, and parked this time
        assert [(o.saga_id, o.action) for o in outcomes] == [("parking", "dead_lettered")]
        original.cancel()
        await asyncio.gather(original, return_exceptions=True)


@pytest.mark.asyncio
async def test_sigterm_stops_every_worker_of_the_process(tmp_path: Path) -> None:
    # Regression: each worker put its own SIGTERM handler in place of the one before,
    # so SIGTERM stopped only the worker started last; the others ran on (and, once
    # that one had put the default back, were killed without releasing their leases).
    before = signal.getsignal(signal.SIGTERM)
    orchestrators = [SagaOrchestrator(SQLiteStore(str(tmp_path / f"{n}.db"))) for n in range(3)]
    workers = [asyncio.create_task(o.run_worker(poll_interval=0.05)) for o in orchestrators]
    try:
        await asyncio.sleep(0)  # each worker has started: its handler is in place
        assert not any(worker.done() for worker in workers)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*workers), GIVE_UP)
        assert signal.getsignal(signal.SIGTERM) == before
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for orchestrator in orchestrators:
            await orchestrator.close()


@pytest.mark.asyncio
async def test_a_worker_gives_the_sigterm_handler_of_the_loop_back(tmp_path: Path) -> None:
    # Regression: a SIGTERM handler the application had set on the event loop was
    # dropped when the worker stopped; SIGTERM was then ignored for good.
    loop = asyncio.get_running_loop()
    told = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, told.set)
    try:
        stop = asyncio.Event()
        stop.set()
        async with SagaOrchestrator(SQLiteStore(str(tmp_path / "log.db"))) as orchestrator:
            await orchestrator.run_worker(stop=stop)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(told.wait(), GIVE_UP)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def _worker_running(store: Any, saga_id: str) -> tuple[asyncio.Task[None], asyncio.Event]:
    """A worker on ``store`` running ``saga_id``, an orphan it claimed, which waits in its
    first step: a saga in flight, whose lease the worker releases as it stops (one with
    none releases nothing). Returns the worker and its ``stop``."""
    with FaultInjector().crash(pl_gated), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).execute(pl_gated_three(), saga_id=saga_id)
    await simulate_restart(store)
    GATES[f"{saga_id}:0"] = asyncio.Event()
    ENTERED[f"{saga_id}:0"] = asyncio.Event()
    stop = asyncio.Event()
    worker = asyncio.create_task(
        SagaOrchestrator(store).run_worker(poll_interval=0.02, stop=stop, handle_signals=False)
    )
    await asyncio.wait_for(ENTERED[f"{saga_id}:0"].wait(), GIVE_UP)
    return worker, stop


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["cancelled", "stopped"])
async def test_a_worker_that_cannot_release_its_leases_still_stops_as_told(
    dsn: str, schema: str, how: str
) -> None:
    # Regression: when the database was away as the worker stopped, the StoreError of
    # release_leases() escaped run_worker, in place of the CancelledError of a cancelled
    # worker (a TaskGroup or asyncio.timeout then saw a failure, not a cancellation).
    # The leases run out by themselves, as after a crash.
    async with opened(dsn, schema) as store:
        worker, stop = await _worker_running(store, "unreleased")
        run = store._run
        refused: list[Any] = []

        async def flaky_run(sql: str, params: Any = None) -> Any:
            if sql == store._sql.release:
                refused.append(params)
                raise StoreError("the database went away")
            return await run(sql, params)

        store._run = flaky_run  # type: ignore[method-assign]
        if how == "cancelled":
            worker.cancel()
            with pytest.raises(asyncio.CancelledError):
                await worker
        else:
            stop.set()
            await worker  # returns
        assert refused


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["cancelled", "stopped"])
async def test_a_worker_whose_release_gets_no_answer_still_stops_as_told(
    dsn: str, schema: str, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: a release sent on a pooled connection gone silent (a partition that
    # resets nothing) waited for the kernel to give up, some 15 minutes, and the worker
    # with it, past the platform's grace period. It waits connect_timeout at most: the
    # leases run out by themselves, as when the database cannot be reached.
    async with opened(dsn, schema, connect_timeout=0.2) as store:
        worker, stop = await _worker_running(store, "unanswered")
        run = store._run
        sent: list[Any] = []

        async def silent_run(sql: str, params: Any = None) -> Any:
            if sql == store._sql.release:
                sent.append(params)
                await asyncio.Event().wait()  # no answer, ever
            return await run(sql, params)

        store._run = silent_run  # type: ignore[method-assign]
        if how == "cancelled":
            worker.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(worker, GIVE_UP)
        else:
            stop.set()
            await asyncio.wait_for(worker, GIVE_UP)  # returns
        assert sent
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert [message for message in warned if message.startswith("sagakit worker")] == [
            "sagakit worker could not release its saga leases: no answer within 0.2 s of "
            "being told to stop (connect_timeout); they run out by themselves"
        ]


@pytest.mark.asyncio
async def test_a_store_error_after_a_claim_does_not_strand_the_claimed_sagas(
    dsn: str, schema: str
) -> None:
    # Regression: when reading the claimed sagas' steps failed (a database blip just
    # after the claim committed), claim_orphans() raised, but the store kept their
    # leases: the heartbeat renewed them and the worker never claimed them again (they
    # were "its own"), so nobody finished them while it lived.
    async with opened(dsn, schema) as a, opened(dsn, schema) as b:
        GATES["blip:1"] = asyncio.Event()
        ENTERED["blip:1"] = asyncio.Event()
        original = asyncio.create_task(
            SagaOrchestrator(a).execute(pl_gated_three(), saga_id="blip")
        )
        await ENTERED["blip:1"].wait()
        expire(dsn, schema, "blip")
        run = b._run
        blips: list[Any] = []

        async def flaky_run(sql: str, params: Any = None) -> Any:
            if sql == b._sql.claimed_steps and not blips:
                blips.append(params)
                raise StoreError("the database went away")
            return await run(sql, params)

        b._run = flaky_run  # type: ignore[method-assign]
        orchestrator = SagaOrchestrator(b)
        with pytest.raises(StoreError, match="went away"):
            await orchestrator.recover()
        assert not b.owns("blip")  # no lease kept alive for a saga nobody runs
        expire(dsn, schema, "blip")
        outcomes = await orchestrator.recover()  # claimed again, and finished
        assert [(o.saga_id, o.action, str(o.status)) for o in outcomes] == [
            ("blip", "resumed", "completed")
        ]
        original.cancel()
        await asyncio.gather(original, return_exceptions=True)


HELD: dict[str, asyncio.Event] = {}  # saga id -> set to let step 1 of pl_held_three go
HOLDING: Counter[str] = Counter()  # saga id -> entries of its step 1


@step
async def pl_held(n: int) -> int:
    """Step 1 waits (every entry) until its saga's HELD event is set."""
    ctx = current_step()
    assert ctx is not None
    if n == 1:
        HOLDING[ctx.saga_id] += 1
        await HELD[ctx.saga_id].wait()
    return n


@saga
def pl_held_three():  # type: ignore[no-untyped-def]
    for n in range(3):
        yield pl_held(n)


async def _until_held(saga_id: str, entries: int) -> None:
    for _ in range(int(GIVE_UP / 0.01)):
        if HOLDING[saga_id] >= entries:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"step 1 of {saga_id} was never entered {entries} times")


@pytest.mark.asyncio
async def test_a_stopping_worker_hands_over_its_own_sagas_not_the_execute_calls_beside_it(
    dsn: str, schema: str
) -> None:
    # Regression: a stopping worker released every lease its store held, so an
    # execute() of the same process on that store (a web request, say, while the
    # process lives on) was fenced out mid-run with LeaseLost.
    HELD.clear()
    HOLDING.clear()
    HELD.update(mine=asyncio.Event(), beside=asyncio.Event())
    async with opened(dsn, schema) as a, opened(dsn, schema, lease=60.0) as b:
        # "mine": a's run, its lease run out: b's worker claims it and runs it on.
        orphaned = asyncio.create_task(SagaOrchestrator(a).execute(pl_held_three(), saga_id="mine"))
        try:
            await _until_held("mine", 1)
            expire(dsn, schema, "mine")
            orchestrator = SagaOrchestrator(b)
            beside = asyncio.create_task(orchestrator.execute(pl_held_three(), saga_id="beside"))
            await _until_held("beside", 1)
            stop = asyncio.Event()
            worker = asyncio.create_task(
                orchestrator.run_worker(poll_interval=0.02, stop=stop, handle_signals=False)
            )
            await _until_held("mine", 2)  # the worker's recovery is in step 1
            stop.set()
            await worker
            # Its own saga: handed over (no owner, lease expired, fence moved on).
            row = query(
                dsn,
                f'SELECT owner, lease_until <= now(), released, fence FROM "{schema}".sagas '
                "WHERE saga_id = 'mine'",
            )
            assert row == [(None, True, True, 3)]
            # The execute() beside it goes on, under its own lease, to its end.
            HELD["beside"].set()
            assert await beside == [0, 1, 2]
            done = query(
                dsn, f"SELECT fence, status FROM \"{schema}\".sagas WHERE saga_id = 'beside'"
            )
            assert done == [(1, "completed")]
        finally:
            for event in HELD.values():
                event.set()
            orphaned.cancel()
            await asyncio.gather(orphaned, return_exceptions=True)


@step
async def pl_nest() -> int:
    """Runs ``pl_gated_three`` as an inner saga, on the orchestrator running this step."""
    ctx = current_step()
    assert ctx is not None
    inner = pl_gated_three()
    return len(await ctx.orchestrator.execute(inner, saga_id=f"{ctx.idempotency_key}/inner"))


@saga
def pl_nesting():  # type: ignore[no-untyped-def]
    yield pl_gated(0)
    yield pl_nest()


async def _entered(key: str) -> None:
    await asyncio.wait_for(ENTERED[key].wait(), GIVE_UP)


@pytest.mark.asyncio
async def test_a_stopping_worker_hands_over_the_inner_saga_of_its_saga_not_compensating_it(
    dsn: str, schema: str
) -> None:
    # Regression: a worker stopping (SIGTERM, a rolling deploy) released the saga it was
    # running, but not the inner saga a step of it had started with
    # current_step().orchestrator.execute(): cancelled, that inner saga compensated its
    # completed steps, and the worker that took the outer saga over ran it all again.
    inner = "outer:1/inner"
    for key in ("outer:0", f"{inner}:1"):
        GATES[key], ENTERED[key] = asyncio.Event(), asyncio.Event()
    async with opened(dsn, schema) as a, opened(dsn, schema) as b, opened(dsn, schema) as c:
        # "outer": a's run, its lease run out in step 0: b's worker claims it.
        orphaned = asyncio.create_task(SagaOrchestrator(a).execute(pl_nesting(), saga_id="outer"))
        try:
            await _entered("outer:0")
            expire(dsn, schema, "outer")
            stop = asyncio.Event()
            worker = asyncio.create_task(
                SagaOrchestrator(b).run_worker(poll_interval=0.02, stop=stop, handle_signals=False)
            )
            await _entered(f"{inner}:1")  # the inner saga, started by b's recovery, in step 1
            stop.set()
            await asyncio.wait_for(worker, GIVE_UP)
            assert not UNDONE
            # Both handed over by the worker (released: their next claim counts no
            # recovery attempt), the inner saga too: not only given up by its own handed
            # back run, as a crash leaves a saga (its next claim counting an attempt).
            handed = query(
                dsn,
                "SELECT saga_id, status, owner, lease_until <= now(), released "
                f'FROM "{schema}".sagas ORDER BY saga_id',
            )
            assert handed == [
                ("outer", "executing", None, True, True),
                (inner, "executing", None, True, True),
            ]
            # Another worker finishes both, running each step of the inner saga once.
            stop = asyncio.Event()
            finishing = asyncio.create_task(
                SagaOrchestrator(c).run_worker(poll_interval=0.02, stop=stop, handle_signals=False)
            )
            for _ in range(int(GIVE_UP / 0.02)):
                statuses = query(dsn, f'SELECT DISTINCT status FROM "{schema}".sagas')
                if statuses == [("completed",)]:
                    break
                await asyncio.sleep(0.02)
            stop.set()
            await asyncio.wait_for(finishing, GIVE_UP)
            assert statuses == [("completed",)]
            assert not UNDONE
            assert [RAN[(inner, n)] for n in range(3)] == [1, 2, 1]  # step 1: interrupted once
            attempts = query(
                dsn, f'SELECT saga_id, recovery_attempts FROM "{schema}".sagas ORDER BY saga_id'
            )
            assert attempts == [("outer", 1), (inner, 0)]  # outer: a's lease ran out
        finally:
            for gate in GATES.values():
                gate.set()
            orphaned.cancel()
            await asyncio.gather(orphaned, return_exceptions=True)


@pytest.mark.asyncio
async def test_release_leases_refuses_one_saga_id_given_as_a_string(dsn: str, schema: str) -> None:
    # A string is a collection of its characters: "order-1" would release sagas "o", "r"...
    async with opened(dsn, schema) as store:
        with pytest.raises(SagaDefinitionError, match=r"pass saga_ids=\['order-1'\]"):
            await store.release_leases(saga_ids="order-1")


@pytest.mark.asyncio
async def test_release_leases_refuses_an_as_crash_that_is_not_a_bool(dsn: str, schema: str) -> None:
    # as_crash="no" is true to Python: the next claim of every saga released counted as a
    # recovery attempt, as after a crash, bringing each nearer to being dead-lettered.
    async with opened(dsn, schema) as store:
        with pytest.raises(SagaDefinitionError, match=r"as_crash=...\) must be True or False"):
            await store.release_leases(as_crash="no")  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_saga_row_another_session_holds_does_not_stop_the_other_leases_renewing(
    dsn: str, schema: str
) -> None:
    # Regression: the heartbeat renews every lease of the store in one statement, which
    # waited for every row: one saga's row held by another session (an operator's open
    # transaction) stopped the renewal of all of them. The worker's other sagas' leases
    # ran out while it ran them; another worker took them over, ran their steps again,
    # and the first got LeaseLost ("this worker was paused or cut off"), with nothing
    # logged about the stuck heartbeat.
    psycopg = pytest.importorskip("psycopg")
    async with opened(dsn, schema) as store:
        runs = []
        for saga_id in ("held", "free"):
            GATES[f"{saga_id}:1"] = asyncio.Event()
            ENTERED[f"{saga_id}:1"] = asyncio.Event()
            runs.append(
                asyncio.create_task(
                    SagaOrchestrator(store).execute(pl_gated_three(), saga_id=saga_id)
                )
            )
            await ENTERED[f"{saga_id}:1"].wait()
        leases = f'SELECT saga_id, lease_until FROM "{schema}".sagas ORDER BY saga_id'
        before = dict(query(dsn, leases))
        async with await psycopg.AsyncConnection.connect(dsn) as holder:
            await holder.execute(
                f'SELECT 1 FROM "{schema}".sagas WHERE saga_id = %s FOR UPDATE', ("held",)
            )
            renewed = await asyncio.wait_for(store.renew(), 10)  # (it waited for the row)
            await holder.rollback()
        after = dict(query(dsn, leases))
        assert renewed == 1
        assert after["free"] > before["free"]
        assert after["held"] == before["held"]  # held: renewed at the next beat
        for gate in GATES.values():
            gate.set()
        assert await asyncio.gather(*runs) == [[0, 1, 2], [0, 1, 2]]
