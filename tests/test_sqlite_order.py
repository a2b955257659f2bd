"""The order the SQLite log lists things in, whatever the wall clock does, and the
migration (schema version 2) that brought it to logs written before.

Records were listed by ``started_at`` (a clock set back between two starts listed them
out of order) and the history by ``finished_at`` alone (sagas finishing at the same
instant came back in the order their rows were first written, not the order they
finished). The tests set the store's wall clock with ``store_helpers.clock``.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sagakit import (
    Retry,
    SagaAlreadyResolved,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StepFailed,
    StoreError,
    saga,
    step,
)
from sagakit.stores import _sqlite_rows, _sqlite_schema
from sagakit.stores import sqlite as sqlite_module
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart
from store_helpers.clock import set_sqlite_clock

UNDONE: list[int] = []
GATES: dict[str, asyncio.Event] = {}
ENTERED: dict[str, asyncio.Event] = {}  # set once a gated_take step is running


@step
async def take(n: int) -> int:
    return n


@take.compensate
async def give_back(result: int, n: int) -> list[str]:
    UNDONE.append(n)
    return [f"gave back {n}"]


@step
async def refuse(n: int) -> None:
    raise ValueError(f"refused {n}")


@step
async def wait_gate(key: str) -> str:
    ENTERED[key].set()
    await GATES[key].wait()
    return key


@saga
def refused_after_three():  # type: ignore[no-untyped-def]
    for n in range(3):
        yield take(n)
    yield refuse(3)


@saga
def gated_take(key: str):  # type: ignore[no-untyped-def]
    yield take(0)
    yield wait_gate(key)


@saga
def take_seven():  # type: ignore[no-untyped-def]
    yield take(7)


@step
async def hold(key: str) -> str:
    return key


@hold.compensate
async def release_when_let(result: str, key: str) -> None:
    ENTERED[key].set()
    await GATES[key].wait()


@saga
def held_then_refused(key: str):  # type: ignore[no-untyped-def]
    yield take(0)
    yield take(1)
    yield hold(key)
    yield take(3)
    yield refuse(4)


@pytest.fixture(autouse=True)
def _reset() -> None:
    UNDONE.clear()
    GATES.clear()
    ENTERED.clear()


def gate(*keys: str) -> None:
    for key in keys:
        GATES[key], ENTERED[key] = asyncio.Event(), asyncio.Event()


async def entered(*keys: str) -> None:
    await asyncio.gather(*(ENTERED[key].wait() for key in keys))


def ticking(step: float, start: float = 2_000_000_000.0) -> Callable[[], float]:
    """A wall clock moved by ``step`` seconds at every reading."""
    now = [start]

    def read() -> float:
        now[0] += step
        return now[0]

    return read


def backwards(start: float = 2_000_000_000.0) -> Callable[[], float]:
    """A wall clock set back by a second at every reading."""
    return ticking(-1.0, start)


def rows(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql, params).fetchall()


def records(meta: Any) -> tuple[list[int], list[tuple[int, str]]]:
    return (
        [r.index for r in meta.steps],
        [(c.index, str(c.status)) for c in meta.compensations],
    )


# --------------------------------------------------------------- start order


@pytest.mark.asyncio
async def test_records_are_listed_in_the_order_they_started_when_the_clock_steps_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.db"
    set_sqlite_clock(monkeypatch, backwards())
    async with SagaOrchestrator(SQLiteStore(path)) as orchestrator:
        with pytest.raises(StepFailed):
            await orchestrator.execute(refused_after_three(), saga_id="back")
        meta = await orchestrator.get_saga("back")
    assert meta is not None
    # Every start was stamped earlier than the one before it (give_back(2) ran first)...
    stamps = rows(
        path,
        "SELECT idx, started_at FROM sagakit_steps WHERE saga_id = 'back' AND compensation "
        "ORDER BY started_at",
    )
    assert [idx for idx, _ in stamps] == [0, 1, 2]
    # ...and still each is listed where it started: steps in order, then compensations
    # in the order they ran.
    assert records(meta) == ([0, 1, 2, 3], [(2, "completed"), (1, "completed"), (0, "completed")])
    assert meta.compensation_events == ("gave back 2", "gave back 1", "gave back 0")


UNCOUNTED_STORES: list[SQLiteStore] = []


@step
async def take_uncounted(n: int) -> int:
    # The store loses its count of this run's starts: as for a run it neither began nor
    # claimed, every later start reads the saga's highest start_order from the log.
    UNCOUNTED_STORES[-1]._orders.pop("uncounted", None)
    return n


@take_uncounted.compensate
async def give_back_uncounted(result: int, n: int) -> None:
    return None


@saga
def refused_after_uncounted():  # type: ignore[no-untyped-def]
    yield take(0)
    yield take_uncounted(1)
    yield take(2)
    yield refuse(3)


@pytest.mark.asyncio
async def test_starts_the_store_has_no_count_for_are_numbered_from_the_log(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    UNCOUNTED_STORES.append(store)
    async with SagaOrchestrator(store) as orchestrator:
        with pytest.raises(StepFailed):
            await orchestrator.execute(refused_after_uncounted(), saga_id="uncounted")
        meta = await orchestrator.get_saga("uncounted")
    assert meta is not None
    assert records(meta) == ([0, 1, 2, 3], [(2, "completed"), (1, "completed"), (0, "completed")])
    numbered = rows(
        path,
        "SELECT compensation, idx, start_order FROM sagakit_steps WHERE saga_id = 'uncounted' "
        "ORDER BY start_order",
    )
    assert numbered == [(0, 0, 1), (0, 1, 2), (0, 2, 3), (0, 3, 4), (1, 2, 5), (1, 1, 6), (1, 0, 7)]


@pytest.mark.asyncio
async def test_a_compensation_recovery_runs_again_is_listed_where_it_last_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # give_back(2) fails and the run goes on, give_back(1) completes and the process
    # "dies" in give_back(0); recovery, with the clock set back all along, runs give_back(0)
    # again (not give_back(2), which failed for good): it is listed last, where it last
    # started, though its clock says it started first.
    path = tmp_path / "s.db"
    set_sqlite_clock(monkeypatch, backwards())
    first = SagaOrchestrator(
        SQLiteStore(path),
        compensation_retry=Retry(attempts=1),
        continue_on_compensation_failure=True,
    )
    faults = FaultInjector().fail_compensation(take, index=2)
    faults.crash(take, compensation=True, index=0)
    with faults, pytest.raises(SimulatedCrash):
        await first.execute(refused_after_three(), saga_id="crashed")
    await simulate_restart(first.store)
    await first.store.close()
    async with SagaOrchestrator(SQLiteStore(path)) as restarted:
        [outcome] = await restarted.recover()
        meta = await restarted.get_saga("crashed")
    assert outcome.status is SagaStatus.FAILED
    assert UNDONE == [1, 0]  # give_back(2) failed before it appended
    assert meta is not None
    assert records(meta)[1] == [(2, "failed"), (1, "completed"), (0, "completed")]


# ------------------------------------------------------------------ ties of time


@pytest.mark.asyncio
async def test_sagas_ending_at_the_same_instant_are_listed_in_the_order_they_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen = 1_700_000_000.0
    set_sqlite_clock(monkeypatch, lambda: frozen)
    monkeypatch.setattr("sagakit._runs.time", SimpleNamespace(time=lambda: frozen))
    ids = ["t-a", "t-b", "t-c"]
    gate(*ids)
    store = SQLiteStore(tmp_path / "s.db")
    async with SagaOrchestrator(store) as orchestrator:
        tasks = {
            saga_id: asyncio.create_task(orchestrator.execute(gated_take(saga_id), saga_id=saga_id))
            for saga_id in ids
        }
        await entered(*ids)
        # Started at the same instant: in the order their rows were written.
        assert [m.id for m in await orchestrator.get_running_sagas()] == ids
        assert [m.id for m in await store.list_sagas()] == ids[::-1]  # newest first
        for saga_id in ("t-c", "t-a", "t-b"):  # not the order they started
            GATES[saga_id].set()
            await tasks[saga_id]
        history = await orchestrator.get_history()
        newest = await orchestrator.get_history(limit=2)
    assert {m.finished_at for m in history} == {history[0].finished_at}  # one instant
    assert [m.id for m in history] == ["t-c", "t-a", "t-b"]
    assert [m.id for m in newest] == ["t-a", "t-b"]


@pytest.mark.asyncio
async def test_a_saga_resolved_at_the_instant_others_ended_is_listed_after_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # resolve() ends a saga too (it sets finished_at): it numbers its end like FINISHED.
    # (The clock is frozen from the stuck saga's start: one frozen after it would be a
    # clock set back, and resolve() never ends a saga before its start.)
    frozen = 1_700_000_000.0
    set_sqlite_clock(monkeypatch, lambda: frozen)
    monkeypatch.setattr("sagakit._runs.time", SimpleNamespace(time=lambda: frozen))
    path = tmp_path / "s.db"
    first = SQLiteStore(path)
    with FaultInjector().crash(take), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(first).execute(take_seven(), saga_id="r-stuck")
    await simulate_restart(first)
    await first.close()
    store = SQLiteStore(path)
    async with SagaOrchestrator(store) as orchestrator:
        await orchestrator.execute(take_seven(), saga_id="r-done")
        await store.resolve("r-stuck", "done by hand")
        await orchestrator.execute(take_seven(), saga_id="r-after")
        with pytest.raises(SagaAlreadyResolved):  # already ended: keeps its place
            await store.resolve("r-stuck", "again")
        history = await orchestrator.get_history()
    assert {m.finished_at for m in history} == {history[0].finished_at}
    assert [m.id for m in history] == ["r-done", "r-stuck", "r-after"]


# --------------------------------------------------------------------- migration

# sha256 of the statements of schema version 1, as released: a log may be at that
# version, so they must never change (a later version changes things by a migration).
APPLIED = {1: "e7ad47ebe181cd40387a850e7e1d40636cc2127dc703cefff4135f2976ccfd11"}

V1_STEPS = (
    "SELECT idx, name, status, attempts, duration, error, result, compensation, started_at "
    "FROM sagakit_steps WHERE saga_id = ? ORDER BY compensation, started_at, idx"
)
V1_HISTORY = "SELECT id FROM sagakit_sagas WHERE finished_at IS NOT NULL ORDER BY finished_at"
# Version 1's writes, taking the parameters today's store passes (and ignoring those it
# adds: the start counter for a start, the end's instant again).
V1_UPSERT_STEP = (
    "INSERT INTO sagakit_steps (saga_id, compensation, idx, name, status, attempts, started_at) "
    "SELECT ?, ?, ?, ?, 'running', ?, ? WHERE ? IS NOT NULL "
    "ON CONFLICT (saga_id, compensation, idx) DO UPDATE "
    "SET status = 'running', attempts = excluded.attempts, error = NULL, "
    "started_at = excluded.started_at"
)
V1_FINISHED = (
    "UPDATE sagakit_sagas SET status = ?, error = ?, steps_executed = ?, "
    "total_steps = coalesce(?, total_steps), finished_at = ?, updated_at = ?, "
    "owner = NULL WHERE ? IS NOT NULL AND id = ?"
)


def old_store(path: Path, monkeypatch: pytest.MonkeyPatch) -> SQLiteStore:
    """A store as sagakit was at schema version 1: it creates that schema, writes records
    and ends sagas with that version's statements, and reads with its queries (until
    ``monkeypatch.undo()``)."""
    monkeypatch.setattr(_sqlite_schema, "SCHEMA_VERSION", 1)
    monkeypatch.setattr(sqlite_module, "UPSERT_STEP", V1_UPSERT_STEP)
    monkeypatch.setattr(sqlite_module, "FINISHED", V1_FINISHED)
    monkeypatch.setattr(_sqlite_rows, "SELECT_STEPS", V1_STEPS)
    monkeypatch.setattr(
        _sqlite_rows, "SELECT_ORPHAN_STEPS", V1_STEPS.replace(", started_at FROM", " FROM")
    )
    return SQLiteStore(path)


def version_of(path: Path) -> int:
    [(value,)] = rows(path, "SELECT value FROM sagakit_meta WHERE key = 'schema_version'")
    return int(value)


@pytest.mark.asyncio
async def test_a_version_1_log_is_upgraded_in_place_and_its_rows_list_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "old.db"
    store = old_store(path, monkeypatch)
    orchestrator = SagaOrchestrator(store, compensation_retry=Retry(attempts=1))
    # Two sagas ending at the same instant: version 1 listed them in the order their rows
    # were written (old-b first), though old-a ended first.
    set_sqlite_clock(monkeypatch, lambda: 1_700_000_000.0)
    monkeypatch.setattr("sagakit._runs.time", SimpleNamespace(time=lambda: 1_700_000_000.0))
    gate("old-b", "old-a")
    b = asyncio.create_task(orchestrator.execute(gated_take("old-b"), saga_id="old-b"))
    a = asyncio.create_task(orchestrator.execute(gated_take("old-a"), saga_id="old-a"))
    await entered("old-b", "old-a")
    GATES["old-a"].set()
    await a
    GATES["old-b"].set()
    await b
    set_sqlite_clock(monkeypatch, backwards())
    with pytest.raises(StepFailed):  # its records stamped by a clock going back
        await orchestrator.execute(refused_after_three(), saga_id="old-back")
    set_sqlite_clock(monkeypatch, time.time)
    crashing = SagaOrchestrator(
        store, compensation_retry=Retry(attempts=1), continue_on_compensation_failure=True
    )
    faults = FaultInjector().fail_compensation(take, index=2)
    faults.crash(take, compensation=True, index=0)
    with faults, pytest.raises(SimulatedCrash):
        await crashing.execute(refused_after_three(), saga_id="old-crashed")
    await simulate_restart(store)
    await store.close()
    monkeypatch.undo()
    assert version_of(path) == 1
    listed = {
        saga_id: rows(path, V1_STEPS, (saga_id,))
        for saga_id in ("old-a", "old-b", "old-back", "old-crashed")
    }
    history = rows(path, V1_HISTORY)
    assert history == [("old-b",), ("old-a",), ("old-back",)]
    # A read-only store does not migrate: it refuses the log, and leaves it as it is.
    with pytest.raises(StoreError, match=r"schema version 1, older .* writable SQLiteStore"):
        SQLiteStore(path, read_only=True)
    assert version_of(path) == 1

    async with SagaOrchestrator(SQLiteStore(path)) as upgraded:
        assert version_of(path) == _sqlite_schema.SCHEMA_VERSION
        # The old rows list as version 1 listed them: the history, and compensations by
        # started_at (old-back's too, though its clock went back: the log cannot tell).
        assert [(m.id,) for m in await upgraded.get_history()] == history
        for saga_id, old_rows in listed.items():
            meta = await upgraded.get_saga(saga_id)
            assert meta is not None
            assert [c.index for c in meta.compensations] == [
                idx for idx, *_, comp, _ in old_rows if comp
            ]
        back = await upgraded.get_saga("old-back")
        assert back is not None
        assert [c.index for c in back.compensations] == [0, 1, 2]
        crashed = await upgraded.get_saga("old-crashed")
        assert crashed is not None
        assert crashed.status is SagaStatus.COMPENSATING
        assert records(crashed)[1] == [(2, "failed"), (1, "completed"), (0, "running")]

        # Recovery by this version runs give_back(0) again (not give_back(2), which failed
        # for good), with the clock set back (years, to before the saga started): it is
        # listed last, where it last started, and the saga ends no earlier than it began.
        set_sqlite_clock(monkeypatch, backwards(1_000_000_000.0))
        [outcome] = await upgraded.recover()
        assert outcome.status is SagaStatus.FAILED
        recovered = await upgraded.get_saga("old-crashed")
        assert recovered is not None
        assert records(recovered)[1] == [(2, "failed"), (1, "completed"), (0, "completed")]
        assert recovered.started_at is not None
        assert recovered.finished_at is not None
        assert recovered.finished_at >= recovered.started_at
        # A saga ending at the instant two old ones ended is listed after them.
        set_sqlite_clock(monkeypatch, lambda: 1_700_000_000.0)
        monkeypatch.setattr("sagakit._runs.time", SimpleNamespace(time=lambda: 1_700_000_000.0))
        await upgraded.execute(take_seven(), saga_id="new")
        assert [m.id for m in await upgraded.get_history()] == [
            "old-b",
            "old-a",
            # Ended at its start, the instant old-b and old-a ended (the clock set back to
            # 2001 would end it before it began), before new.
            "old-crashed",
            "new",
            "old-back",
        ]


def start_orders(path: Path, saga_id: str) -> list[tuple[int, int, int | None]]:
    return rows(
        path,
        "SELECT compensation, idx, start_order FROM sagakit_steps WHERE saga_id = ? "
        "ORDER BY compensation, idx",
        (saga_id,),
    )


@pytest.mark.asyncio
async def test_records_an_older_sagakit_writes_after_the_upgrade_list_by_clock_until_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that opened the log at version 1 keeps writing after another one upgraded
    it: its records have no start_order. They are listed after the saga's numbered ones, by
    the clock (as version 1 listed them), and recovery numbers them so before it runs
    anything, so what it runs again is listed after them."""
    path = tmp_path / "s.db"
    before = old_store(path, monkeypatch)
    set_sqlite_clock(monkeypatch, ticking(1.0))
    orchestrator = SagaOrchestrator(before, compensation_retry=Retry(attempts=1))
    gate("mid")
    with FaultInjector().crash(take, compensation=True, index=0):
        task = asyncio.create_task(orchestrator.execute(held_then_refused("mid"), saga_id="mid"))
        await entered("mid")  # give_back(3) done, hold's compensation (2) started: version 1
        monkeypatch.setattr(_sqlite_schema, "SCHEMA_VERSION", len(_sqlite_schema.migrations()))
        await SQLiteStore(path).close()  # another process opens the log: upgraded
        assert version_of(path) == len(_sqlite_schema.migrations())
        GATES["mid"].set()
        with pytest.raises(SimulatedCrash):  # in give_back(0), after give_back(1)
            await task
    await simulate_restart(before)
    await before.close()
    monkeypatch.undo()
    assert UNDONE == [3, 1]
    assert [row for row in start_orders(path, "mid") if row[0]] == [
        (1, 0, None), (1, 1, None), (1, 2, 7), (1, 3, 6),
    ]  # fmt: skip

    set_sqlite_clock(monkeypatch, backwards(1_000_000_000.0))  # recovery's clock: years back
    async with SagaOrchestrator(SQLiteStore(path)) as restarted:
        meta = await restarted.get_saga("mid")
        assert meta is not None
        assert records(meta)[1] == [
            (3, "completed"),
            (2, "completed"),
            (1, "completed"),
            (0, "running"),
        ]
        [outcome] = await restarted.recover()
        assert outcome.status is SagaStatus.COMPENSATED
        recovered = await restarted.get_saga("mid")
    assert UNDONE == [3, 1, 0]
    assert recovered is not None
    assert records(recovered)[1] == [
        (3, "completed"), (2, "completed"), (1, "completed"), (0, "completed"),
    ]  # fmt: skip
    # Numbered when recovery claimed the saga, in the order they were listed (give_back(1),
    # then the give_back(0) that crashed: 8 and 9), then give_back(0) started again: 10.
    assert [row for row in start_orders(path, "mid") if row[0]] == [
        (1, 0, 10), (1, 1, 8), (1, 2, 7), (1, 3, 6),
    ]  # fmt: skip


# ------------------------------------------------------------ long sagas


VM_TICKS: list[int] = [0]  # SQLite VM instructions run on the store's write connection / 10
TICKS_AT: list[int] = []  # VM_TICKS when each numbered step ran


@step
async def numbered(n: int) -> int:
    TICKS_AT.append(VM_TICKS[0])
    return n


@saga
def numbered_steps(count: int):  # type: ignore[no-untyped-def]
    for n in range(count):
        yield numbered(n)


@pytest.mark.asyncio
async def test_a_long_sagas_step_starts_do_not_read_all_its_records(tmp_path: Path) -> None:
    # Every start read the saga's highest start_order from the log, scanning all its
    # rows: the work per step grew with the saga (a 2,000-step saga's last steps ran
    # about four times slower than its first; 8,000 steps, over ten times).
    TICKS_AT.clear()
    VM_TICKS[0] = 0
    store = SQLiteStore(tmp_path / "s.db")

    def tick() -> int:
        VM_TICKS[0] += 1
        return 0

    store._writer._conn.set_progress_handler(tick, 10)
    async with SagaOrchestrator(store) as orchestrator:
        await orchestrator.execute(numbered_steps(400), saga_id="long")
        meta = await orchestrator.get_saga("long")
    assert meta is not None
    assert meta.steps_executed == 400
    per_step = [after - before for before, after in itertools.pairwise(TICKS_AT)]
    early, late = sum(per_step[10:30]), sum(per_step[370:390])
    assert late <= early * 1.5 + 20, (early, late)
    # ...and the records still list in the order they started, numbered 1, 2, ...
    orders = rows(
        tmp_path / "s.db",
        "SELECT start_order FROM sagakit_steps WHERE saga_id = 'long' ORDER BY idx",
    )
    assert [order for (order,) in orders] == list(range(1, 401))


@pytest.mark.asyncio
async def test_an_id_run_again_after_it_was_compensated_numbers_its_records_afresh(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    async with SagaOrchestrator(SQLiteStore(path)) as orchestrator:
        with pytest.raises(StepFailed):
            await orchestrator.execute(refused_after_three(), saga_id="again")
        await orchestrator.execute(take_seven(), saga_id="again")
        meta = await orchestrator.get_saga("again")
    assert meta is not None
    assert meta.status is SagaStatus.COMPLETED
    assert rows(path, "SELECT idx, start_order FROM sagakit_steps WHERE saga_id = 'again'") == [
        (0, 1)
    ]
