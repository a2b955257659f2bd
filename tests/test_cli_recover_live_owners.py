"""``sagakit recover``'s note of sagas left alone for want of their ``@saga`` counts only
those recovery could take.

It counted every running saga of a name not imported, those a live process runs (on
SQLite) or a worker holds under its lease (on PostgreSQL) too: "2 unfinished sagas named
... were left alone: no @saga of that name is registered here; pass --import", where
``--import`` would have recovered one, and the other was (on PostgreSQL) also noted as
running under a lease, for another reason.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from cli_helpers.run import cli
from pg_helpers.db import query
from sagakit import PostgresStore, SagaOrchestrator, SQLiteStore, saga, step
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart


@step
async def owned_step(x: str) -> str:
    return x


@saga(name="live_owners_order")
def order(x: str):  # type: ignore[no-untyped-def]
    yield owned_step(x)


async def _two_orphans(store: SQLiteStore | PostgresStore) -> None:
    """Sagas ``live-1`` and ``dead-1``, each crashed inside its step."""
    try:
        orchestrator = SagaOrchestrator(store)
        for saga_id in ("live-1", "dead-1"):
            with FaultInjector().crash(owned_step), pytest.raises(SimulatedCrash):
                await orchestrator.execute(order(saga_id), saga_id=saga_id)
        await simulate_restart(store)
    finally:
        await store.close()


@pytest.fixture
def live_process() -> Iterator[int]:
    """The pid of a process of this host that runs until the test ends."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait(timeout=60)


LEFT_ALONE = (
    "1 unfinished saga named not_imported_here was left alone: no @saga of that name is "
    "registered here; pass --import with the module that declares it"
)


def test_sqlite_counts_no_saga_a_live_process_runs(tmp_path: Path, live_process: int) -> None:
    db = str(tmp_path / "sagas.db")
    asyncio.run(_two_orphans(SQLiteStore(db)))
    with closing(sqlite3.connect(db)) as conn, conn:
        # Declared in a module this process did not import; live-1 run by a live process.
        conn.execute("UPDATE sagakit_sagas SET name = 'not_imported_here', owner = NULL")
        conn.execute(
            "UPDATE sagakit_sagas SET owner = ? WHERE id = 'live-1'",
            (f"{socket.gethostname()}/{live_process}/?",),
        )
    assert cli("--db", db, "recover") == (0, f"nothing to recover\n{LEFT_ALONE}\n")


def test_postgres_counts_no_saga_a_worker_holds_under_its_lease(dsn: str, schema: str) -> None:
    asyncio.run(_two_orphans(PostgresStore(dsn, schema=schema)))
    query(dsn, f"UPDATE \"{schema}\".sagas SET name = 'not_imported_here', lease_until = now()")
    query(
        dsn,
        f"UPDATE \"{schema}\".sagas SET owner = 'elsewhere', "
        "lease_until = now() + interval '1 hour' WHERE saga_id = 'live-1'",
    )
    assert cli("--db", dsn, "--schema", schema, "recover") == (
        0,
        "nothing to recover\n"
        "1 saga is running under a lease, which runs out in 60 minutes (by the database's "
        "clock); it is recovered once the lease expires (a later recover, or any worker, "
        "claims it), or finished by the worker holding it\n"
        f"{LEFT_ALONE}\n",
    )
