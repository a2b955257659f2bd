"""PostgreSQL: the begin of an explicit saga id whose connection is lost while it commits.

The begin inserts the saga's row (or, for an id whose earlier run ended COMPENSATED,
restarts it in one transaction). If the connection is lost before the server got the
statement, nothing was written; if after it committed, the row is this run's. Either
way the run goes on: the begin is tried again on a new connection, and finds its own
row by the write token it carries, instead of failing the execute (nothing had run)
and leaving a row that made the next execute of the id raise SagaAlreadyExecuting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pg_helpers.db import GIVE_UP, opened, query
from sagakit import (
    PostgresStore,
    SagaAlreadyExecuting,
    SagaOrchestrator,
    SagaStatus,
    StepFailed,
    StepStatus,
    StoreError,
    current_step,
    saga,
    step,
)
from sagakit._runs import SagaRun

RAN: Counter[tuple[str, int]] = Counter()
FAIL: set[str] = set()  # saga ids whose last step fails (once)


@pytest.fixture(autouse=True)
def _reset() -> None:
    RAN.clear()
    FAIL.clear()


@step
async def bd_emit(n: int) -> list[str]:
    ctx = current_step()
    assert ctx is not None
    RAN[(ctx.saga_id, ctx.step_index)] += 1
    if n == 1 and ctx.saga_id in FAIL:
        FAIL.discard(ctx.saga_id)
        raise RuntimeError("declined")
    return [f"{ctx.saga_id}:{n}"]


@bd_emit.compensate
async def bd_unemit(result: list[str], n: int) -> None:
    return None


@saga
def bd_two():  # type: ignore[no-untyped-def]
    for n in range(2):
        yield bd_emit(n)


class LostBegin:
    """Loses the connection of the begin's ``what`` ("insert": its ``INSERT``;
    "restart": the transaction restarting a COMPENSATED id) once: ``before`` the server
    got it (nothing written), or ``after`` it committed; or (``cancelled``) has the
    caller cancelled as the answer of its commit comes back."""

    def __init__(self, store: PostgresStore, what: str, when: str) -> None:
        self.store = store
        self.what = what
        self.when = when
        self.lost = 0
        self.committed_then_lost = False
        self.real = store._conn
        store._conn = self._conn  # type: ignore[method-assign]

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[Any]:
        async with self.real() as conn:  # its errors come out as the store's do
            yield _Lossy(conn, self)


class _Lossy:
    def __init__(self, conn: Any, loss: LostBegin) -> None:
        self._conn = conn
        self._loss = loss

    def _lose(self) -> Exception:
        psycopg = pytest.importorskip("psycopg")
        self._loss.lost += 1
        return psycopg.OperationalError("server closed the connection unexpectedly")

    async def execute(self, sql: str, params: Any = None) -> Any:
        loss, statements = self._loss, self._loss.store._sql
        target = statements.begin if loss.what == "insert" else statements.restart
        explicit = isinstance(params, dict) and params.get("explicit")
        if sql != target or not explicit or loss.lost:
            return await self._conn.execute(sql, params)
        if loss.when == "before":
            raise self._lose()
        cursor = await self._conn.execute(sql, params)
        if loss.what == "insert":  # autocommit: it committed
            await self._fail()
        loss.committed_then_lost = True  # once the transaction commits
        return cursor

    async def _fail(self) -> None:
        """Lose the connection, or (``cancelled``) have the caller cancelled."""
        if self._loss.when != "cancelled":
            raise self._lose()
        self._loss.lost += 1
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with self._conn.transaction() as tx:
            yield tx
        if self._loss.committed_then_lost and not self._loss.lost:
            await self._fail()


async def _compensated_once(store: PostgresStore, saga_id: str) -> None:
    """Run ``saga_id`` to COMPENSATED, so that executing it again restarts its row."""
    FAIL.add(saga_id)
    with pytest.raises(StepFailed, match="declined"):
        await SagaOrchestrator(store).execute(bd_two(), saga_id=saga_id)
    RAN.clear()


@pytest.mark.asyncio
@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("what", ["insert", "restart"])
async def test_a_begin_whose_connection_is_lost_is_begun_again_and_runs_once(
    dsn: str, schema: str, what: str, when: str
) -> None:
    # Regression: the begin of an explicit id was not tried again. The execute raised
    # StoreError though nothing had run; after a commit whose answer was lost, the row
    # was left running under this store's lease, and executing the id again raised
    # SagaAlreadyExecuting until the lease ran out and a worker ran it after all.
    async with opened(dsn, schema) as store:
        if what == "restart":
            await _compensated_once(store, "s")
        before = [e.event for e in await store.read_events()]  # (the stream keeps them)
        loss = LostBegin(store, what, when)
        orchestrator = SagaOrchestrator(store)
        assert await orchestrator.execute(bd_two(), saga_id="s") == ["s:0", "s:1"]
        assert loss.lost == 1
        assert dict(RAN) == {("s", 0): 1, ("s", 1): 1}
        meta = await store.get("s")
        assert meta is not None
        assert meta.status is SagaStatus.COMPLETED
        assert [s.status for s in meta.steps] == [StepStatus.COMPLETED] * 2
        assert not meta.compensations  # an earlier run's records are gone
        assert not store._held  # its lease is this store's no more
        # Executing it again gives the recorded events: no phantom run is left.
        assert await orchestrator.execute(bd_two(), saga_id="s") == ["s:0", "s:1"]
        assert dict(RAN) == {("s", 0): 1, ("s", 1): 1}
        assert [e.event for e in await store.read_events()] == [*before, "s:0", "s:1"]


@pytest.mark.asyncio
@pytest.mark.parametrize("who", ["this store", "another store"])
async def test_a_begin_lost_while_another_run_of_the_id_begins_is_refused(
    dsn: str, schema: str, who: str
) -> None:
    # The begin is tried again after a lost connection, and the id is now another
    # run's, which began it meanwhile (of this store too: the same owner): that run's
    # row carries another write token, so this one is refused as a duplicate, not
    # taken for its own.
    async with opened(dsn, schema) as store, opened(dsn, schema) as other:
        beginner = store if who == "this store" else other
        loss = LostBegin(store, "insert", "before")
        lossy = loss._conn
        interloper = SagaRun("s", bd_two(), True, 0.0, SagaOrchestrator()._ref)
        began = False

        @contextlib.asynccontextmanager
        async def another_begins_first() -> AsyncIterator[Any]:
            nonlocal began
            if loss.lost == 1 and not began:
                began = True
                await beginner.begin(interloper)
            async with lossy() as conn:
                yield conn

        store._conn = another_begins_first  # type: ignore[method-assign]
        with pytest.raises(SagaAlreadyExecuting):
            await SagaOrchestrator(store).execute(bd_two(), saga_id="s")
        assert loss.lost == 1
        assert began
        assert not RAN
        assert beginner.owns("s")  # (the interloper's run)
        (owner,) = query(dsn, f'SELECT owner FROM "{schema}".sagas WHERE saga_id = %s', ("s",))
        assert owner == (beginner.owner,)
        await beginner.release_leases()


@pytest.mark.asyncio
@pytest.mark.parametrize("what", ["insert", "restart"])
async def test_a_begin_cancelled_as_it_commits_leaves_no_row_running(
    dsn: str, schema: str, what: str
) -> None:
    # Regression: the caller of execute() was cancelled as its begin committed. The row
    # stayed running under a lease nobody renewed: executing the id again raised
    # SagaAlreadyExecuting, and once the lease ran out, a worker ran the saga that its
    # caller had cancelled before it started. The row is taken out, as on SQLite.
    async with opened(dsn, schema) as store:
        if what == "restart":
            await _compensated_once(store, "s")
        loss = LostBegin(store, what, "cancelled")
        orchestrator = SagaOrchestrator(store)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.create_task(orchestrator.execute(bd_two(), saga_id="s"))
        assert loss.lost == 1
        assert not RAN
        assert await store.get("s") is None
        assert not store.owns("s")
        assert await orchestrator.execute(bd_two(), saga_id="s") == ["s:0", "s:1"]
        assert dict(RAN) == {("s", 0): 1, ("s", 1): 1}


# Terminates the backends of an application (waiting until each is gone).
_KILL = "SELECT pg_terminate_backend(%s, 10000)"


@pytest.mark.asyncio
async def test_a_backend_killed_during_a_begin_does_not_fail_the_execute(
    dsn: str, schema: str
) -> None:
    # A real connection death: the begin's INSERT waits for another session inserting
    # the same id, and its backend is terminated there. The other session then rolls
    # back: the begin, tried again, takes the id and the saga runs.
    psycopg = pytest.importorskip("psycopg")
    app = f"sk_begin_{schema}"
    async with opened(f"{dsn}?application_name={app}", schema) as store:
        orchestrator = SagaOrchestrator(store)
        async with await psycopg.AsyncConnection.connect(dsn) as blocker:
            await blocker.execute(
                store._sql.begin,
                {
                    "id": "s",
                    "name": "bd_two",
                    "explicit": True,
                    "factory": True,
                    "policy": "compensate",
                    "fingerprint": None,
                    "args": "[]",
                    "kwargs": "{}",
                    "total": None,
                    "owner": "blocker",
                    "lease": 30.0,
                    "token": None,
                },
            )
            running = asyncio.create_task(orchestrator.execute(bd_two(), saga_id="s"))
            waiting = (
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                "AND wait_event_type = 'Lock'"
            )
            deadline = asyncio.get_running_loop().time() + GIVE_UP
            while not (blocked := query(dsn, waiting, (app,))):
                assert asyncio.get_running_loop().time() < deadline, "the begin never waited"
                assert not running.done(), running
                await asyncio.sleep(0.01)
            assert query(dsn, _KILL, (blocked[0][0],)) == [(True,)]
            await blocker.rollback()
        assert await running == ["s:0", "s:1"]
        assert dict(RAN) == {("s", 0): 1, ("s", 1): 1}
        meta = await store.get("s")
        assert meta is not None
        assert meta.status is SagaStatus.COMPLETED


@pytest.mark.asyncio
async def test_a_begin_that_cannot_reach_the_log_still_raises_store_error(
    dsn: str, schema: str
) -> None:
    # Tried again only while connections are lost, until connect_timeout: a log that
    # stays unreachable still fails the execute, and nothing runs.
    async with opened(dsn, schema, connect_timeout=0.5) as store:
        loss = LostBegin(store, "insert", "before")
        loss.lost = 0

        @contextlib.asynccontextmanager
        async def always_lost() -> AsyncIterator[Any]:
            async with loss.real() as conn:
                lossy = _Lossy(conn, loss)
                loss.lost = 0  # lose every try
                yield lossy

        store._conn = always_lost  # type: ignore[method-assign]
        with pytest.raises(StoreError, match="server closed the connection") as raised:
            await SagaOrchestrator(store).execute(bd_two(), saga_id="s")
        assert "within 0.5 s (connect_timeout)" in str(raised.value)
        assert not RAN
        assert not store.owns("s")
