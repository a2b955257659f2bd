"""The PostgreSQL store's listings read an index, not every saga of the log.

``list_sagas()`` (``sagakit list``, with or without ``--status``) and ``dead_letters()``
(which ``list`` and ``show`` call too) had no index to read from: each was a sequential
scan of the sagas table (90 ms, 40 ms and 50 ms for 100,000 sagas). These tests read the
query plans, never times: with sequential scans and sorts priced out, a plan that still
holds one has no index to do without it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pg_helpers.db import query
from sagakit import PostgresStore, SagaOrchestrator, saga, step
from sagakit.stores._pg_sql import statements


@step
async def pgplan_hop(n: int) -> int:
    return n + 1


@saga
def pgplan_hops(n: int):  # type: ignore[no-untyped-def]
    yield pgplan_hop(n)


def plan(dsn: str, sql: str, params: tuple[Any, ...]) -> str:
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(dsn) as conn:
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SET LOCAL enable_sort = off")
        rows = conn.execute("EXPLAIN " + sql, params).fetchall()
        conn.rollback()
    return "\n".join(row[0] for row in rows)


@pytest.fixture
def log(dsn: str, schema: str) -> str:
    async def run() -> None:
        async with SagaOrchestrator(PostgresStore(dsn, schema=schema)) as orchestrator:
            for n in range(3):
                await orchestrator.execute(pgplan_hops(n))
        await orchestrator.store.close()

    asyncio.run(run())
    query(dsn, f'ANALYZE "{schema}".sagas')
    return schema


@pytest.mark.parametrize(
    ("statement", "params", "index"),
    [
        ("newest", (100,), "sagas_started"),
        ("newest_with_status", ("failed", 100), "sagas_status"),
        # `sagakit list`'s pages: each step count from the steps' primary key.
        ("listed", (100,), "sagas_started"),
        ("listed_with_status", ("failed", 100), "sagas_status"),
        ("listed_before", ("2030-01-01", "x", 100), "sagas_started"),
        ("listed_with_status_before", ("failed", "2030-01-01", "x", 100), "sagas_status"),
        ("dead_letters", (), "sagas_parked"),
    ],
)
def test_listings_read_an_index_without_sorting_the_log(
    dsn: str, log: str, statement: str, params: tuple[Any, ...], index: str
) -> None:
    shown = plan(dsn, getattr(statements(log), statement), params)
    sagas_scans = [line for line in shown.splitlines() if " on sagas" in line]
    assert sagas_scans, shown
    assert all(index in line for line in sagas_scans), shown
    assert "Seq Scan" not in shown, shown
    assert "Sort" not in shown.replace("Sort Key", ""), shown


def test_a_claim_takes_the_oldest_orphans_without_sorting_every_one(dsn: str, log: str) -> None:
    # With many orphans (a fleet of workers gone at once), each claim of `limit` sorted
    # every saga whose lease had run out: 180 ms per claim of 100 with 100,000 orphans.
    params = {
        "owner": "me",
        "ids": [],
        "all": True,
        "names": [],
        "any_id": True,
        "mine": [],
        "limit": 100,
        "max": 3,
        "lease": 30.0,
        "token": 1,
    }
    shown = plan(dsn, statements(log).claim, params)
    assert "sagas_started" in shown, shown
    assert "Seq Scan" not in shown, shown
    assert "Sort" not in shown.replace("Sort Key", ""), shown
