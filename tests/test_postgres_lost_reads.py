"""PostgreSQL: a read whose connection the server kills is tried again on a new one.

Writes and claims rode out a lost connection (a fail-over, a restart, a killed backend)
for up to ``connect_timeout``; reads were sent once, so a monitoring call made as a
backend was killed raised ``AdminShutdown`` although a second try would have answered.
Here the store's own backend is killed in the middle of one chosen read: the test holds
the saga log's tables locked, so that read waits on the server, kills the backend
waiting, then lets go of the tables.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pg_helpers.db import opened
from pg_helpers.kill import KillDuring
from sagakit import PostgresStore, SagaOrchestrator, SagaStatus, saga, step
from sagakit.exceptions import StepFailed
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart


@step
async def lr_pack(item: str) -> list[str]:
    return [f"packed {item}"]  # a step's returned list: its events


@step
async def lr_ship(item: str) -> str:
    if item == "broken":
        raise ValueError("cannot ship a broken item")
    return item


@saga
def lr_order(item: str):  # type: ignore[no-untyped-def]
    yield lr_pack(item)
    yield lr_ship(item)


async def _outcome(call: Awaitable[Any]) -> tuple[str, Any]:
    try:
        return ("returned", await call)
    except Exception as error:
        return ("raised", f"{type(error).__name__}: {error}")


async def _seed(dsn: str, schema: str) -> None:
    """A completed saga, a failed one, one left running by a crash, a parked one, and
    one resolved by an operator."""
    async with opened(dsn, schema) as seeder:
        orchestrator = SagaOrchestrator(seeder)
        await orchestrator.execute(lr_order("book"), saga_id="done")
        with pytest.raises(StepFailed):
            await orchestrator.execute(lr_order("broken"), saga_id="compensated")
        for saga_id in ("crashed", "parked", "settled"):
            with FaultInjector().crash(lr_ship), pytest.raises(SimulatedCrash):
                await orchestrator.execute(lr_order(saga_id), saga_id=saga_id)
        await simulate_restart(seeder)
        assert len(await seeder.claim_orphans(saga_ids=["parked"])) == 1
        await seeder.dead_letter("parked", "parked by the test")
        await seeder.resolve("settled", "refunded by hand")


LATER = datetime.datetime(9999, 1, 1, tzinfo=datetime.UTC)  # a page after every saga

Read = Callable[[PostgresStore], Awaitable[Any]]

# Each read, and the statement during which the backend is killed (a _pg_sql field).
READS: dict[str, tuple[Read, str]] = {
    "get": (lambda s: s.get("done"), "get"),
    "history": (lambda s: s.history(), "history"),
    "history(limit)": (lambda s: s.history(limit=1), "history_newest"),
    "running": (lambda s: s.running(), "running"),
    "list_sagas": (lambda s: s.list_sagas(), "newest"),
    "list_sagas(status)": (lambda s: s.list_sagas(status="compensated"), "newest_with_status"),
    "_list_page": (lambda s: s._list_page(None, 2, None), "listed"),
    "_list_page(after)": (
        lambda s: s._list_page("executing", 1, (LATER, "z")),
        "listed_with_status_before",
    ),
    "_arguments": (lambda s: s._arguments("done"), "arguments"),
    "running_count": (lambda s: s.running_count(), "running_count"),
    "history_count": (lambda s: s.history_count(), "history_count"),
    "_running_names": (lambda s: s._running_names(), "running_names"),
    "_leases": (lambda s: s._leases(), "leases"),
    "dead_letters": (lambda s: s.dead_letters(), "dead_letters"),
    "read_events": (lambda s: s.read_events(), "events"),
    "read_events(saga_id)": (lambda s: s.read_events(saga_id="done"), "events_of"),
    # resolve()'s look-ups, once its UPDATE matched nothing: resolved already...
    "resolve: resolved already": (lambda s: s.resolve("settled", "again"), "resolved"),
    # ... or not resolvable (COMPLETED), read by get()
    "resolve: not resolvable": (lambda s: s.resolve("done", "no"), "get"),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("name", list(READS))
async def test_a_read_whose_backend_is_killed_answers_as_if_it_were_not(
    dsn: str, schema: str, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: the read raised StoreError (AdminShutdown: terminating connection due
    # to administrator command). Now it is sent again, and answers what it answers
    # without the kill; the wait for the server is told as a write's is.
    read, sql = READS[name]
    await _seed(dsn, schema)
    app = f"reads_{schema}"
    async with opened(f"{dsn}?application_name={app}", schema) as store:
        expected = await _outcome(read(store))
        kill = KillDuring(store, dsn, schema, app, getattr(store._sql, sql))
        with caplog.at_level(logging.INFO, logger="sagakit"):
            assert await _outcome(read(store)) == expected
        assert kill.killed == 1
    assert "AdminShutdown" not in str(expected)
    lost = [r for r in caplog.records if "lost its connection" in r.message]
    back = [r for r in caplog.records if "again after" in r.message]
    assert [r.levelno for r in lost] == [logging.WARNING]
    assert [r.levelno for r in back] == [logging.INFO]


@pytest.mark.asyncio
async def test_the_seeded_log_gives_each_read_something_to_answer(dsn: str, schema: str) -> None:
    # A guard: reads answering empty lists would compare equal whatever they did.
    await _seed(dsn, schema)
    async with opened(dsn, schema) as store:
        done = await store.get("done")
        assert done is not None
        assert done.status is SagaStatus.COMPLETED
        assert len(await store.history()) == 3
        assert [m.id for m in await store.running()] == ["crashed"]  # (not the parked one)
        assert await store.running_count() == 1
        assert [d.saga_id for d in await store.dead_letters()] == ["parked"]
        assert {e.saga_id for e in await store.read_events(saga_id="done")} == {"done"}
        assert [m.id for m in (await store._list_page("executing", 1, (LATER, "z")))[0]]
        outcomes = [await _outcome(store.resolve(i, "x")) for i in ("settled", "done")]
        assert [text.split(":")[0] for _, text in outcomes] == ["SagaAlreadyResolved", "StoreError"]


@pytest.mark.asyncio
async def test_a_claim_whose_backend_is_killed_as_it_reads_the_steps_returns_the_saga(
    dsn: str, schema: str
) -> None:
    # Regression: the claim committed, then the read of the claimed sagas' steps raised,
    # and the claim with it: the saga waited under a lease nobody renewed until it ran
    # out, its recovery attempt counted for nothing.
    await _seed(dsn, schema)
    app = f"reads_{schema}"
    async with opened(f"{dsn}?application_name={app}", schema) as store:
        kill = KillDuring(store, dsn, schema, app, store._sql.claimed_steps)
        (orphan,) = await store.claim_orphans(saga_ids=["crashed"])
        assert kill.killed == 1
        assert orphan.saga_id == "crashed"
        assert [s.name for s in orphan.steps] == ["lr_pack", "lr_ship"]  # (ship: crashed in)
        assert store.owns("crashed")
        await store.dead_letter("crashed", "test over")
