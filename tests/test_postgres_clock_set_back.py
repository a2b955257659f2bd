"""The database server's clock set back (NTP) while a saga runs on PostgreSQL: its
metadata still reads as the run went, started <= updated <= finished, never a negative
duration, whoever writes the stamp (a worker's batch, an operator's call).

The store stamps its rows with the server's ``now()``. Here the store's connections find
a ``now()`` of the test's schema ahead of ``pg_catalog``'s (``search_path`` in the DSN's
``options``): the server's transaction time less the seconds in a one-row table, which
a step (or the test) sets. Every ``now()`` the store's statements, its ``apply_writes``
function and its columns' defaults read is that clock.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from urllib.parse import quote

import pytest

from pg_helpers.db import opened, query
from sagakit import (
    CompensationFailed,
    PostgresStore,
    Retry,
    SagaMetadata,
    SagaOrchestrator,
    SagaStatus,
    StepFailed,
    saga,
    step,
)
from sagakit.cli import main
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

HOUR = 3600.0
CLOCK: dict[str, str] = {}  # the test's DSN and schema
SEEN: list[SagaMetadata | None] = []  # the log's record of the run, read mid-run
STORE: list[PostgresStore] = []


async def set_clock_back(seconds: float) -> None:
    """Set the server's clock (as the store's connections read it) ``seconds`` back."""
    table = f'"{CLOCK["schema"]}".clock_set_back'
    await asyncio.to_thread(query, CLOCK["dsn"], f"UPDATE {table} SET seconds = %s", (seconds,))


@step
async def pgclock_take(n: int) -> list[str]:
    if n == 1:
        await set_clock_back(HOUR)  # NTP sets the server's clock back an hour mid-step
    else:
        SEEN.append(await STORE[0].get("back"))  # the run as the log has it now
    return [f"took {n}"]


@pgclock_take.compensate
async def pgclock_give_back(result: list[str], n: int) -> list[str]:
    return [f"gave back {n}"]


@step
async def pgclock_refuse() -> None:
    raise ValueError("refused")


@saga
def pgclock_order(refused: bool):  # type: ignore[no-untyped-def]
    yield pgclock_take(1)
    yield pgclock_take(2)
    if refused:
        yield pgclock_refuse()


@step
async def pgclock_hold(n: int) -> int:
    return n


@pgclock_hold.compensate
async def pgclock_fail_to_release(result: int, n: int) -> None:
    raise RuntimeError("cannot release")


@saga
def pgclock_held(n: int):  # type: ignore[no-untyped-def]
    yield pgclock_hold(n)
    yield pgclock_hold(n + 1)
    yield pgclock_refuse()


@pytest.fixture
def clock_dsn(dsn: str, schema: str) -> str:
    """``dsn`` for connections whose ``now()`` is the test's clock (set back by nothing yet)."""
    s = f'"{schema}"'
    query(dsn, f"CREATE TABLE {s}.clock_set_back (seconds double precision NOT NULL)")
    query(dsn, f"INSERT INTO {s}.clock_set_back VALUES (0)")
    query(
        dsn,
        f"CREATE FUNCTION {s}.now() RETURNS timestamptz LANGUAGE sql STABLE AS "
        "$$ SELECT pg_catalog.now() - make_interval(secs => "
        f"(SELECT seconds FROM {s}.clock_set_back)) $$",
    )
    CLOCK.update(dsn=dsn, schema=schema)
    SEEN.clear()
    joined = "&" if "?" in dsn else "?"
    return f"{dsn}{joined}options={quote(f'-c search_path={schema},pg_catalog')}"


@asynccontextmanager
async def clock_store(clock_dsn: str, schema: str) -> AsyncIterator[PostgresStore]:
    """An open store on ``schema`` whose clock is the test's (the steps' ``STORE``)."""
    async with opened(clock_dsn, schema) as store:
        STORE[:] = [store]
        try:
            yield store
        finally:
            STORE.clear()


def assert_in_order(meta: SagaMetadata | None) -> SagaMetadata:
    """``meta``'s stamps never before its start, its end its last change."""
    assert meta is not None
    assert meta.started_at is not None
    assert meta.updated_at is not None
    assert meta.started_at <= meta.updated_at
    if meta.finished_at is not None:
        assert meta.started_at <= meta.finished_at
        assert meta.updated_at >= meta.finished_at
    assert meta.duration is not None
    assert meta.duration >= 0
    return meta


def test_the_clock_is_the_servers_set_back(clock_dsn: str) -> None:
    # The simulation itself: a connection of the DSN reads the clock set back.
    asyncio.run(set_clock_back(HOUR))
    [(shifted, real)] = query(clock_dsn, "SELECT now(), pg_catalog.now()")
    assert (real - shifted).total_seconds() == HOUR


@pytest.mark.asyncio
@pytest.mark.parametrize("refused", [False, True], ids=["completed", "compensated"])
async def test_a_server_clock_set_back_mid_run_never_ends_a_saga_before_it_started(
    clock_dsn: str, schema: str, refused: bool
) -> None:
    # Regression: the log stamped each write with the server's now(), as set back: the
    # run's updated_at (mid-run) and finished_at an hour before its started_at, a
    # duration of -3600 s in get_saga(), the history and `sagakit show`.
    async with clock_store(clock_dsn, schema) as store:
        await run_and_check(store, refused)
    out = io.StringIO()
    argv = ["--db", clock_dsn, "--schema", schema, "show", "back", "--json"]
    assert await asyncio.to_thread(main, argv, out) == 0
    shown = json.loads(out.getvalue())
    started = datetime.fromisoformat(shown["started_at"])
    assert started <= datetime.fromisoformat(shown["finished_at"])


async def run_and_check(store: PostgresStore, refused: bool) -> None:
    orchestrator = SagaOrchestrator(store)
    if refused:
        with pytest.raises(StepFailed):
            await orchestrator.execute(pgclock_order(True), saga_id="back")
    else:
        await orchestrator.execute(pgclock_order(False), saga_id="back")
    [running] = SEEN  # read by step 2, after step 1's end was written
    assert running is not None
    assert running.status is SagaStatus.EXECUTING
    assert_in_order(running)
    meta = assert_in_order(await orchestrator.get_saga("back"))
    assert meta.status is (SagaStatus.COMPENSATED if refused else SagaStatus.COMPLETED)
    assert meta.updated_at == meta.finished_at
    [listed] = await orchestrator.get_history()
    assert_in_order(listed)
    assert [len(meta.steps), len(meta.compensations)] == ([3, 2] if refused else [2, 0])
    for record in (*meta.steps, *meta.compensations):
        assert record.duration is not None
        assert record.duration >= 0
    assert meta.started_at is not None
    events = await store.read_events(saga_id="back")
    assert len(events) == (4 if refused else 2)
    assert all(e.recorded_at is not None and e.recorded_at >= meta.started_at for e in events)
    # The records' rows (their stamps are no record's field; an operator's SQL reads them).
    s = f'"{CLOCK["schema"]}"'
    before_start = (
        f"SELECT st.compensation, st.step_index FROM {s}.steps st "
        f"JOIN {s}.sagas sg USING (saga_id) WHERE st.updated_at < sg.started_at"
    )
    assert await asyncio.to_thread(query, CLOCK["dsn"], before_start) == []
    [page] = await store.list_sagas()
    assert page.started_at is not None
    assert page.finished_at is not None
    assert page.started_at <= page.finished_at


@pytest.mark.asyncio
async def test_an_operators_calls_with_the_server_clock_set_back_stamp_nothing_before_a_start(
    clock_dsn: str, schema: str
) -> None:
    # Regression: resolve(), resume_dead_letter() and dead_letter() stamped now() as set
    # back: a saga resolved an hour before it started (a negative duration), and an
    # updated_at or a parked_at before its started_at.
    async with clock_store(clock_dsn, schema) as store:
        await operate_and_check(store)


async def operate_and_check(store: PostgresStore) -> None:
    orchestrator = SagaOrchestrator(store, compensation_retry=Retry(attempts=1))
    with pytest.raises(CompensationFailed):
        await orchestrator.execute(pgclock_held(1), saga_id="failed")
    for saga_id in ("crashed", "parked", "parked-by-claim"):
        with FaultInjector().crash(pgclock_refuse), pytest.raises(SimulatedCrash):
            await orchestrator.execute(pgclock_held(1), saga_id=saga_id)
    await set_clock_back(HOUR)
    await simulate_restart(store)  # gives the crashed runs' leases up
    assert len(await store.claim_orphans(saga_ids=["parked"])) == 1
    await store.dead_letter("parked", "parked by the test")
    # A claim parks a saga whose recovery crashed more than max_attempts times.
    assert len(await store.claim_orphans(saga_ids=["parked-by-claim"], max_attempts=1)) == 1
    await simulate_restart(store)
    assert await store.claim_orphans(saga_ids=["parked-by-claim"], max_attempts=1) == []
    parked = await store.dead_letters()
    assert sorted(p.saga_id for p in parked) == ["parked", "parked-by-claim"]
    for dead in parked:
        meta = assert_in_order(await store.get(dead.saga_id))
        assert meta.started_at is not None
        assert dead.parked_at is not None
        assert dead.parked_at >= meta.started_at
    await store.resume_dead_letter("parked")
    assert_in_order(await store.get("parked"))
    for saga_id in ("crashed", "failed"):
        await store.resolve(saga_id, "settled by hand")
        meta = assert_in_order(await store.get(saga_id))
        assert meta.status is SagaStatus.FAILED
