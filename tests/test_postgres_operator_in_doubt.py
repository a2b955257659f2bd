"""PostgreSQL: an operator's resolve() or resume_dead_letter() whose connection is lost.

Each is one ``UPDATE``. It was sent once: a lost connection raised, though a second try
would have answered, and the call may have committed (sent again, it would match
nothing and say the saga is not dead-lettered). Now the ``UPDATE`` keeps a token of the
call in the saga's row (``last_write``); after a lost connection the store reads it back
on a new one, and sends the ``UPDATE`` again only if the token is not there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest

from pg_helpers.db import opened, query
from pg_helpers.kill import KillDuring
from sagakit import PostgresStore, SagaOrchestrator, SagaStatus, StoreError, saga, step
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

pytestmark = pytest.mark.asyncio

Call = Callable[[PostgresStore, str], Awaitable[None]]

CALLS: dict[str, tuple[Call, str]] = {
    # Each call, and its statement (a _pg_sql field).
    "resume_dead_letter": (lambda s, i: s.resume_dead_letter(i), "resume"),
    "resolve": (lambda s, i: s.resolve(i, "refunded by hand"), "resolve"),
}


@step
async def od_pack(item: str) -> str:
    return item


@step
async def od_ship(item: str) -> str:
    return item


@saga
def od_order(item: str):  # type: ignore[no-untyped-def]
    yield od_pack(item)
    yield od_ship(item)


async def _park(dsn: str, schema: str, saga_id: str) -> None:
    """Leave ``saga_id`` dead-lettered: crashed in its second step, claimed, parked."""
    async with opened(dsn, schema) as seeder:
        with FaultInjector().crash(od_ship), pytest.raises(SimulatedCrash):
            await SagaOrchestrator(seeder).execute(od_order(saga_id), saga_id=saga_id)
        await simulate_restart(seeder)
        assert len(await seeder.claim_orphans(saga_ids=[saga_id])) == 1
        await seeder.dead_letter(saga_id, "parked by the test")


def _row(dsn: str, schema: str, saga_id: str) -> tuple[Any, ...]:
    (row,) = query(
        dsn,
        f'SELECT status, dead_reason, resolved, error, recovery_attempts FROM "{schema}".sagas '
        "WHERE saga_id = %s",
        (saga_id,),
    )
    return row


def _applied(name: str, row: tuple[Any, ...]) -> bool:
    """Whether ``row`` shows the call ``name`` applied once (a note nested twice, or a
    resolved saga resumed, shows it applied twice or wrongly)."""
    status, dead_reason, resolved, error, attempts = row
    if name == "resume_dead_letter":
        return dead_reason is None and not resolved and attempts == 0 and status == "executing"
    return (
        status == "failed"
        and resolved
        and dead_reason is None
        and error == "resolved by an operator: refunded by hand (was: parked by the test)"
    )


class LostAfterCommit:
    """The store's next ``sql`` runs, commits, and its answer is lost: the store's
    error for a lost connection is raised (a client-side ``OperationalError``, no
    sqlstate). ``then`` runs between the commit and the error."""

    def __init__(
        self,
        store: PostgresStore,
        sql: str,
        then: Callable[[], Awaitable[None]] | None = None,
        *,
        read_backs_lost: bool = False,
    ) -> None:
        self.store, self.sql, self.then = store, sql, then
        self.read_backs_lost = read_backs_lost  # every read-back's connection lost too
        self.lost = 0
        self.sent = 0
        self._real = store._run
        store._run = self._run  # type: ignore[method-assign]

    async def _run(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        if self.read_backs_lost and sql.startswith("SELECT last_write "):  # a read-back
            self._lose()
        if sql != self.sql:
            return await self._real(sql, params)
        self.sent += 1
        found = await self._real(sql, params)
        if self.lost:
            return found
        self.lost += 1
        if self.then is not None:
            await self.then()
        self._lose()

    def _lose(self) -> NoReturn:
        psycopg = pytest.importorskip("psycopg")
        try:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        except psycopg.OperationalError as error:
            raise StoreError(self.store._refused(error)) from error


@pytest.mark.parametrize("name", list(CALLS))
async def test_a_call_whose_backend_is_killed_before_it_commits_is_sent_again(
    dsn: str, schema: str, name: str
) -> None:
    # Regression: the call raised StoreError (AdminShutdown: terminating connection due
    # to administrator command), though nothing was applied and a second try would do.
    call, sql = CALLS[name]
    await _park(dsn, schema, "p")
    app = f"op_{schema}"
    async with opened(f"{dsn}?application_name={app}", schema) as store:
        kill = KillDuring(store, dsn, schema, app, getattr(store._sql, sql))
        await call(store, "p")
        assert kill.killed == 1
    assert _applied(name, _row(dsn, schema, "p"))


@pytest.mark.parametrize("name", list(CALLS))
async def test_a_call_whose_answer_is_lost_after_it_committed_returns(
    dsn: str, schema: str, name: str
) -> None:
    # Regression: the call raised the lost connection's StoreError although it had been
    # applied; and sent again by hand it said "not dead-lettered" (or resolved already).
    call, sql = CALLS[name]
    await _park(dsn, schema, "p")
    async with opened(dsn, schema) as store:
        loss = LostAfterCommit(store, getattr(store._sql, sql))
        await call(store, "p")
        assert (loss.lost, loss.sent) == (1, 1)  # read back, not sent again
        assert _applied(name, _row(dsn, schema, "p"))
        if name == "resume_dead_letter":
            assert await store.dead_letters() == []
            (orphan,) = await store.claim_orphans(saga_ids=["p"])
            assert orphan.saga_id == "p"
            await store.dead_letter("p", "test over")


@pytest.mark.parametrize("name", list(CALLS))
async def test_a_call_in_doubt_that_gives_up_on_the_server_says_it_may_have_been_applied(
    dsn: str, schema: str, name: str
) -> None:
    # The call committed, its answer was lost, and the server stayed out of reach until
    # connect_timeout: the error said only that the connection was lost.
    call, sql = CALLS[name]
    await _park(dsn, schema, "p")
    async with opened(dsn, schema, connect_timeout=0.5) as store:
        loss = LostAfterCommit(store, getattr(store._sql, sql), read_backs_lost=True)
        with pytest.raises(StoreError) as raised:
            await call(store, "p")
        assert (loss.lost, loss.sent) == (1, 1)
        text = str(raised.value)
        assert "server closed the connection unexpectedly" in text
        assert "connect_timeout" in text
        assert f"{name}() was in doubt" in text
        assert "may have been applied" in text
        assert "sagakit show p" in text
    assert _applied(name, _row(dsn, schema, "p"))


@pytest.mark.parametrize("name", list(CALLS))
async def test_a_call_the_server_refuses_raises_at_once(dsn: str, schema: str, name: str) -> None:
    # A guard: a refused statement (here cancelled by statement_timeout while another
    # session holds the row) is not a lost connection, and is not sent again.
    psycopg = pytest.importorskip("psycopg")
    call, sql = CALLS[name]
    await _park(dsn, schema, "p")
    async with opened(_with_statement_timeout(dsn, 100), schema) as store:
        sent: list[str] = []
        real = store._run

        async def counted(statement: str, params: Any = None) -> list[tuple[Any, ...]]:
            sent.append(statement)
            return await real(statement, params)

        store._run = counted  # type: ignore[method-assign]
        async with await psycopg.AsyncConnection.connect(dsn) as locker:
            await locker.execute(
                f'SELECT 1 FROM "{schema}".sagas WHERE saga_id = %s FOR UPDATE', ("p",)
            )
            with pytest.raises(StoreError, match="statement_timeout") as raised:
                await call(store, "p")
            await locker.rollback()
        assert sent == [getattr(store._sql, sql)]
        assert "may have been applied" not in str(raised.value)
    row = _row(dsn, schema, "p")
    assert row[1] == "parked by the test"  # nothing applied
    assert not row[2]


async def test_a_resume_applied_then_claimed_before_its_read_back_says_it_was_in_doubt(
    dsn: str, schema: str
) -> None:
    # The known gap: the resume committed, its answer was lost, and a worker claimed the
    # saga before the read-back: the token is gone, the UPDATE sent again matches
    # nothing. The error must not say plainly "not dead-lettered" (it was, and the call
    # resumed it): it says the call was in doubt and may have been applied.
    await _park(dsn, schema, "p")
    async with opened(dsn, schema) as store, opened(dsn, schema) as worker:

        async def claimed() -> None:
            assert len(await worker.claim_orphans(saga_ids=["p"])) == 1

        loss = LostAfterCommit(store, store._sql.resume, claimed)
        with pytest.raises(StoreError) as raised:
            await store.resume_dead_letter("p")
        assert (loss.lost, loss.sent) == (1, 2)
        text = str(raised.value)
        assert "in doubt" in text
        assert "may have been applied" in text
        assert "sagakit show p" in text
        assert worker.owns("p")
        await worker.dead_letter("p", "test over")


async def test_a_resolve_applied_then_run_again_before_its_read_back_says_it_was_in_doubt(
    dsn: str, schema: str
) -> None:
    # The same gap for resolve(): resolved, its answer lost, and the id executed again
    # (a resolved saga's id may be) before the read-back.
    await _park(dsn, schema, "p")
    async with opened(dsn, schema) as store, opened(dsn, schema) as other:

        async def run_again() -> None:
            await SagaOrchestrator(other).execute(od_order("again"), saga_id="p")

        loss = LostAfterCommit(store, store._sql.resolve, run_again)
        with pytest.raises(StoreError) as raised:
            await store.resolve("p", "refunded by hand")
        assert (loss.lost, loss.sent) == (1, 2)
        text = str(raised.value)
        assert "completed and not dead-lettered" in text
        assert "in doubt" in text
        assert "may have been applied" in text
        assert "sagakit show p" in text
    meta = _row(dsn, schema, "p")
    assert meta[0] == SagaStatus.COMPLETED


def _with_statement_timeout(dsn: str, ms: int) -> str:
    parts = urlsplit(dsn)
    option = f"options=-c%20statement_timeout%3D{ms}"
    extra = f"{parts.query}&{option}" if parts.query else option
    return urlunsplit(parts._replace(query=extra))
