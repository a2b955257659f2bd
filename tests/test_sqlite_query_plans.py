"""The SQLite store's listings read an index, not every saga of the log.

``list_sagas()`` (``sagakit list``) had no index to read the newest sagas from: SQLite
scanned the whole ``sagakit_sagas`` table and sorted it to return 100 rows (0.85 s for a
log of a million sagas). These tests read SQLite's query plans, never times.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from sagakit import SagaOrchestrator, SQLiteStore, saga, step
from sagakit.stores import _sqlite_sql


@step
async def plan_hop(n: int) -> int:
    return n + 1


@saga
def plan_hops(n: int):  # type: ignore[no-untyped-def]
    yield plan_hop(n)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "plans.db"

    async def run() -> None:
        async with SagaOrchestrator(SQLiteStore(path)) as orchestrator:
            for n in range(3):
                await orchestrator.execute(plan_hops(n))

    asyncio.run(run())
    return path


def plan(path: Path, sql: str, params: tuple[object, ...]) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("where", "params", "index"),
    [
        (_sqlite_sql.LIST_NEWEST, (100,), "sagakit_sagas_started"),
        (_sqlite_sql.LIST_NEWEST_OF_STATUS, ("failed", 100), "sagakit_sagas_status"),
    ],
    ids=["all", "of-a-status"],
)
def test_list_sagas_reads_the_newest_from_an_index(
    log: Path, where: str, params: tuple[object, ...], index: str
) -> None:
    steps = plan(log, f"SELECT id FROM sagakit_sagas {where}", params)
    assert any(index in step for step in steps), steps
    assert not any("TEMP B-TREE" in step for step in steps), steps  # no sort of every row


@pytest.mark.parametrize(
    ("where", "params", "index"),
    [
        ("", (), "sagakit_sagas_started"),
        ("WHERE (started_at, rowid) < (?, ?)", (1e10, 9), "sagakit_sagas_started"),
        ("WHERE status = ?", ("failed",), "sagakit_sagas_status"),
        (
            "WHERE status = ? AND (started_at, rowid) < (?, ?)",
            ("failed", 1e10, 9),
            "sagakit_sagas_status",
        ),
    ],
    ids=["first", "next", "of-a-status", "next-of-a-status"],
)
def test_a_page_of_sagakit_list_reads_an_index_and_counts_steps_from_the_key(
    log: Path, where: str, params: tuple[object, ...], index: str
) -> None:
    steps = plan(log, f"{_sqlite_sql.LISTED} {where} {_sqlite_sql.LIST_NEWEST}", (*params, 500))
    assert any(index in step for step in steps), steps
    assert not any("TEMP B-TREE" in step for step in steps), steps
    assert any("SEARCH st USING PRIMARY KEY" in step for step in steps), steps  # not a scan


def test_the_listings_the_store_runs_are_those_planned(
    log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # list_sagas() runs the statements whose plans the test above reads.
    ran: list[str] = []
    connect = sqlite3.connect

    def traced(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)  # type: ignore[arg-type]
        conn.set_trace_callback(ran.append)
        return conn

    async def run() -> None:
        store = SQLiteStore(log, read_only=True)
        try:
            assert len(await store.list_sagas()) == 3
            assert await store.list_sagas(status="failed") == []
        finally:
            await store.close()

    monkeypatch.setattr(sqlite3, "connect", traced)
    asyncio.run(run())
    listed = [sql for sql in ran if "ORDER BY started_at DESC, rowid DESC" in sql]
    select = "SELECT id FROM sagakit_sagas "
    assert listed == [  # as traced: with the parameters in place
        select + _sqlite_sql.LIST_NEWEST.replace("?", "100"),
        select + _sqlite_sql.LIST_NEWEST_OF_STATUS.replace("?", "'failed'", 1).replace("?", "100"),
    ]
