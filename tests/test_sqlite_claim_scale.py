"""A claim reads the running sagas a page at a time, and never those it took before.

``claim_orphans()`` read every running saga of the log, the ones this process had just
claimed too, to take the oldest ``limit``: recovering n orphans read about n * n / limit
rows (1 s and 20 MB per claim of 100 with 100,000 orphans). This test counts the rows a
claim looks at (each one's owner is checked), never times.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import sagakit.stores._sqlite_claims as sqlite_claims
from sagakit import SagaOrchestrator, SQLiteStore, saga, step
from sagakit.stores._sqlite_owner import owner_alive

ORPHANS = 600


@step
async def claim_hop(n: int) -> int:
    return n + 1


@saga
def claim_hops(n: int):  # type: ignore[no-untyped-def]
    yield claim_hop(n)


async def make_orphans(path: Path) -> None:
    """A log of ``ORPHANS`` sagas left running by no process, oldest ``orphan-000``."""
    async with SagaOrchestrator(SQLiteStore(path)) as orchestrator:
        await orchestrator.execute(claim_hops(1), saga_id="template")
    await orchestrator.store.close()
    conn = sqlite3.connect(path)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(sagakit_sagas)")]
    found = conn.execute("SELECT * FROM sagakit_sagas WHERE id = 'template'").fetchone()
    template = dict(zip(columns, found, strict=True))
    rows = []
    for n in range(ORPHANS):
        row = dict(template, id=f"orphan-{n:03}", status="executing", owner=None)
        row.update(started_at=template["started_at"] + n, finished_at=None, finish_order=None)
        rows.append([row[column] for column in columns])
    conn.executemany(f"INSERT INTO sagakit_sagas VALUES ({', '.join('?' * len(columns))})", rows)
    conn.commit()
    conn.close()


@pytest.mark.asyncio
async def test_claims_look_at_what_they_take_not_at_every_running_saga(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "orphans.db"
    await make_orphans(path)
    looked_at: list[str | None] = []

    def counted(token: str | None) -> bool:
        looked_at.append(token)
        return owner_alive(token)

    monkeypatch.setattr(sqlite_claims, "owner_alive", counted)
    store = SQLiteStore(path)
    try:
        claimed: list[str] = []
        while batch := await store.claim_orphans(limit=100):
            claimed.extend(orphan.saga_id for orphan in batch)
    finally:
        await store.close()
    assert claimed == [f"orphan-{n:03}" for n in range(ORPHANS)]  # each once, oldest first
    # Each claim looked at every saga claimed before it too: 100 + 200 + ... + 600, and
    # 600 for the last claim, which found none (2,700 in all).
    assert ORPHANS <= len(looked_at) < 2 * ORPHANS, len(looked_at)  # (each taken: looked at)
