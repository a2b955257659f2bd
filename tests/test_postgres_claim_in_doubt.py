"""PostgreSQL: a claim of orphans whose connection is lost while it commits.

The claim takes the orphans' leases and counts a recovery attempt in one statement. If
its answer is lost after it committed, the store did not know it held those sagas: they
waited under a lease nobody renewed until it ran out, and the attempt it counted was
never run (enough of them parked a saga that never crashed). The claim keeps its write
token in the rows it takes, and the store reads them back on a new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pg_helpers.db import opened, query
from sagakit import LeaseLost, PostgresStore, SagaOrchestrator, SagaStatus, StoreError, saga, step

RAN: Counter[str] = Counter()
GATE: dict[str, asyncio.Event] = {}
STARTED: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    RAN.clear()
    GATE.clear()
    STARTED.clear()


@step
async def cd_first(saga_id: str) -> str:
    RAN[saga_id] += 1
    if RAN[saga_id] == 1:  # the first run hangs here, as in a worker that then dies
        STARTED.setdefault(saga_id, asyncio.Event()).set()
        await GATE.setdefault(saga_id, asyncio.Event()).wait()
    return saga_id


@saga
def cd_one(saga_id: str):  # type: ignore[no-untyped-def]
    yield cd_first(saga_id)


class LostClaim:
    """Loses the connection of this store's next claim once: ``before`` the server got
    it (nothing written), or ``after`` it committed; then that of the first ``reads``
    read-backs of the claim too."""

    def __init__(self, store: PostgresStore, when: str, reads: int = 0) -> None:
        self.store = store
        self.when = when
        self.reads = reads
        self.lost = 0
        self.real = store._conn
        store._conn = self._conn  # type: ignore[method-assign]

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[Any]:
        async with self.real() as conn:  # its errors come out as the store's do
            yield _Lossy(conn, self)


class _Lossy:
    def __init__(self, conn: Any, loss: LostClaim) -> None:
        self._conn = conn
        self._loss = loss

    async def execute(self, sql: str, params: Any = None) -> Any:
        loss = self._loss
        if sql == loss.store._sql.claimed_by and loss.lost <= loss.reads:
            pass  # a read-back lost
        elif sql != loss.store._sql.claim or loss.lost:
            return await self._conn.execute(sql, params)
        elif loss.when == "after":
            await self._conn.execute(sql, params)  # autocommit: it committed
        loss.lost += 1
        psycopg = pytest.importorskip("psycopg")
        raise psycopg.OperationalError("server closed the connection unexpectedly")


async def _orphan(store: PostgresStore, saga_id: str, how: str) -> asyncio.Task[Any]:
    """Leave ``saga_id`` running in ``store``, its lease given up ``how``: as a crash
    (the next claim counts an attempt) or as a handover (it counts none)."""
    task = asyncio.ensure_future(SagaOrchestrator(store).execute(cd_one(saga_id), saga_id=saga_id))
    await STARTED.setdefault(saga_id, asyncio.Event()).wait()
    assert await store.release_leases(as_crash=how == "crash") == 1
    return task


def _row(dsn: str, schema: str, saga_id: str) -> tuple[Any, ...]:
    (row,) = query(
        dsn,
        f'SELECT owner, recovery_attempts, lease_until > now() FROM "{schema}".sagas '
        "WHERE saga_id = %s",
        (saga_id,),
    )
    return row


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["crash", "handover"])
async def test_a_claim_whose_answer_is_lost_is_read_back_and_recovered_at_once(
    dsn: str, schema: str, how: str
) -> None:
    # Regression: the claim committed, its answer was lost, and claim_orphans() raised
    # StoreError: the saga sat under this store's lease, renewed by nobody, until it ran
    # out, and the recovery attempt the claim counted was never run.
    async with opened(dsn, schema) as a, opened(dsn, schema) as b:
        task = await _orphan(a, "s", how)
        loss = LostClaim(b, "after")
        outcomes = await SagaOrchestrator(b).recover()
        assert loss.lost == 1
        assert [(o.saga_id, o.status) for o in outcomes] == [("s", SagaStatus.COMPLETED)]
        assert RAN["s"] == 2  # the first run (hung) and its recovery, here and now
        (attempts,) = query(
            dsn, f'SELECT recovery_attempts FROM "{schema}".sagas WHERE saga_id = %s', ("s",)
        )
        assert attempts == (1 if how == "crash" else 0,)
        GATE["s"].set()
        with pytest.raises(LeaseLost):
            await task


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["crash", "handover"])
async def test_a_claim_read_back_returns_what_the_claim_would_have(
    dsn: str, schema: str, how: str
) -> None:
    async with opened(dsn, schema) as a, opened(dsn, schema) as b:
        task = await _orphan(a, "s", how)
        LostClaim(b, "after")
        (orphan,) = await b.claim_orphans()
        assert (orphan.saga_id, orphan.released) == ("s", how == "handover")
        assert orphan.recovery_attempts == (1 if how == "crash" else 0)
        assert b.owns("s")
        assert _row(dsn, schema, "s") == (b.owner, orphan.recovery_attempts, True)
        # Given back, the row is as the claim found it: a handover's counts no attempt.
        await b.give_back(["s"])
        assert not b.owns("s")
        (again,) = await b.claim_orphans()
        assert (again.recovery_attempts, again.released) == (
            orphan.recovery_attempts,
            orphan.released,
        )
        await b.dead_letter("s", "test over")
        GATE["s"].set()
        with pytest.raises(LeaseLost):
            await task


@pytest.mark.asyncio
async def test_a_read_back_whose_connection_is_lost_is_tried_again(dsn: str, schema: str) -> None:
    async with opened(dsn, schema) as a, opened(dsn, schema) as b:
        task = await _orphan(a, "s", "crash")
        loss = LostClaim(b, "after", reads=2)
        (orphan,) = await b.claim_orphans()
        assert loss.lost == 3  # the claim, then two read-backs, before the third read it
        assert (orphan.saga_id, orphan.recovery_attempts) == ("s", 1)
        assert b.owns("s")
        await b.dead_letter("s", "test over")
        GATE["s"].set()
        with pytest.raises(LeaseLost):
            await task


@pytest.mark.asyncio
async def test_a_claim_lost_before_the_server_got_it_raises_and_takes_nothing(
    dsn: str, schema: str
) -> None:
    async with opened(dsn, schema) as a, opened(dsn, schema) as b:
        task = await _orphan(a, "s", "crash")
        loss = LostClaim(b, "before")
        with pytest.raises(StoreError, match="server closed the connection"):
            await b.claim_orphans()
        assert loss.lost == 1
        assert not b.owns("s")
        assert _row(dsn, schema, "s") == (None, 0, False)  # claimable at once, as it was
        (orphan,) = await b.claim_orphans()
        assert orphan.recovery_attempts == 1
        await b.dead_letter("s", "test over")
        GATE["s"].set()
        with pytest.raises(LeaseLost):
            await task
