"""A rolling upgrade: a log of the schema version the sagakit before this one wrote
(completed, running and dead-lettered sagas), opened by this sagakit while a store of the
older version still has it open, and the upgrade and rollback procedures
docs/durability.md and docs/postgres.md give. The older log is this version's rewound with
the migrations' own statements: the SQLite version before only lacked the indexes the
latest migration adds; the PostgreSQL one (5) lacked version 6's indexes and had version
5's ``apply_writes`` where version 7 has its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from pg_helpers.db import query
from sagakit import (
    PostgresStore,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StoreError,
    saga,
    step,
)
from sagakit.cli import main
from sagakit.stores import _pg_schema, _sqlite_schema
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

DOCS = Path(__file__).resolve().parent.parent / "docs"


@step
async def rolling_debit(n: int) -> int:
    return -n


@rolling_debit.compensate
async def rolling_refund(result: int, n: int) -> None:
    pass


@step
async def rolling_credit(n: int) -> int:
    return n


@saga
def rolling_transfer(n: int):  # type: ignore[no-untyped-def]
    yield rolling_debit(n)
    yield rolling_credit(n)


def crashing() -> FaultInjector:
    injector = FaultInjector()
    injector.crash(rolling_credit, after=True)
    return injector


async def write_a_log(open_store: Callable[[], Any]) -> None:
    """done-1 completed; dead-1 parked after its recovery crashed too; orphan-1 running,
    its process gone."""
    store = open_store()
    orchestrator = SagaOrchestrator(store)
    await orchestrator.execute(rolling_transfer(1), saga_id="done-1")
    with crashing(), contextlib.suppress(SimulatedCrash):
        await orchestrator.execute(rolling_transfer(2), saga_id="dead-1")
    await simulate_restart(store)
    await store.close()
    for _ in range(2):
        store = open_store()
        try:
            with crashing():
                await SagaOrchestrator(store, max_recovery_attempts=1).recover()
        except SimulatedCrash:
            await simulate_restart(store)
        finally:
            await store.close()
    store = open_store()
    with crashing(), contextlib.suppress(SimulatedCrash):
        await SagaOrchestrator(store).execute(rolling_transfer(3), saga_id="orphan-1")
    await simulate_restart(store)
    await store.close()


def sql_block(doc: str, containing: str) -> str:
    """The ```sql block of ``docs/<doc>`` that contains ``containing``."""
    blocks = re.findall(r"```sql\n(.*?)```", (DOCS / doc).read_text(), re.DOTALL)
    [block] = [b for b in blocks if containing in b]
    return "\n".join(line.strip() for line in block.splitlines())


async def the_new_version_takes_over(new: Any, old: Any, old_orchestrator: Any) -> None:
    """``new`` migrated the log ``old`` (the version before) still has open: both work."""
    orchestrator = SagaOrchestrator(new)
    assert [(m.id, m.status) for m in await new.list_sagas()] == [
        ("orphan-1", SagaStatus.EXECUTING),
        ("dead-1", SagaStatus.EXECUTING),
        ("done-1", SagaStatus.COMPLETED),
    ]
    assert [d.saga_id for d in await new.dead_letters()] == ["dead-1"]
    [outcome] = await orchestrator.recover()
    assert (outcome.saga_id, outcome.status) == ("orphan-1", SagaStatus.COMPLETED)
    events = await new.read_events(saga_id="orphan-1")
    assert [e.event for e in events] == [-3, 3]
    # The older version's store, opened before the migration, goes on.
    await old_orchestrator.execute(rolling_transfer(4), saga_id="old-after")
    with crashing(), contextlib.suppress(SimulatedCrash):
        await old_orchestrator.execute(rolling_transfer(5), saga_id="old-orphan")
    assert [m.id for m in await old.list_sagas(status="completed")] == [
        "old-after",
        "orphan-1",
        "done-1",
    ]
    await new.resume_dead_letter("dead-1")
    await simulate_restart(old)
    recovered = await orchestrator.recover()
    assert sorted((o.saga_id, o.status) for o in recovered) == [
        ("dead-1", SagaStatus.COMPLETED),
        ("old-orphan", SagaStatus.COMPLETED),
    ]
    assert {m.status for m in await new.list_sagas()} == {SagaStatus.COMPLETED}


# ------------------------------------------------------------------------------- SQLite


def rewind_sqlite(path: Path) -> None:
    """Take the latest migration's indexes out and record the version before."""
    previous = _sqlite_schema.SCHEMA_VERSION - 1
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for statement in _sqlite_schema.migrations()[-1]:
            [name] = re.findall(r"CREATE INDEX IF NOT EXISTS (\w+)", statement)
            conn.execute(f"DROP INDEX {name}")
        conn.execute(
            "UPDATE sagakit_meta SET value = ? WHERE key = 'schema_version'", (str(previous),)
        )


def sqlite_schema_of(path: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return (
            conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()
            + conn.execute("SELECT key, value FROM sagakit_meta").fetchall()
        )


def sqlite_at(path: Path, version: int) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for statements in _sqlite_schema.migrations()[:version]:
            for statement in statements:
                conn.execute(statement)
        conn.execute("INSERT INTO sagakit_meta VALUES ('schema_version', ?)", (str(version),))


@pytest.mark.asyncio
async def test_a_sqlite_log_of_the_version_before_is_migrated_under_a_store_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sagas.db"
    await write_a_log(lambda: SQLiteStore(path))
    rewind_sqlite(path)
    previous = _sqlite_schema.SCHEMA_VERSION - 1

    # The read-only commands and stores refuse it, naming the fix, and leave it as it is.
    for command in (["list"], ["show", "done-1"], ["dead-letters"]):
        assert await asyncio.to_thread(main, ["--db", str(path), *command], io.StringIO()) == 1
    with pytest.raises(StoreError, match=f"schema version {previous}, older.*upgrade"):
        SQLiteStore(path, read_only=True)

    # A process of the version before has the log open (it opened it at that version)...
    monkeypatch.setattr(_sqlite_schema, "SCHEMA_VERSION", previous)
    old = SQLiteStore(path)
    monkeypatch.undo()
    old_orchestrator = SagaOrchestrator(old)
    assert len(await old.list_sagas()) == 3
    # ... when this version migrates it.
    out = io.StringIO()
    assert await asyncio.to_thread(main, ["--db", str(path), "upgrade"], out) == 0
    assert out.getvalue() == (
        f"upgraded saga log {str(path)!r} from schema version {previous} to "
        f"{_sqlite_schema.SCHEMA_VERSION}\n"
    )
    new = SQLiteStore(path)
    try:
        await the_new_version_takes_over(new, old, old_orchestrator)
    finally:
        await old.close()
        await new.close()
    # The version before, opening the log now, is refused naming the fix.
    monkeypatch.setattr(_sqlite_schema, "SCHEMA_VERSION", previous)
    with pytest.raises(StoreError, match=r"newer than this sagakit understands.*upgrade sagakit"):
        SQLiteStore(path)


def test_the_documented_sqlite_rollback_gives_the_log_of_the_version_before(
    tmp_path: Path,
) -> None:
    path, before = tmp_path / "sagas.db", tmp_path / "before.db"
    asyncio.run(write_a_log(lambda: SQLiteStore(path)))
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.executescript(sql_block("durability.md", "DROP INDEX sagakit_sagas_started"))
    sqlite_at(before, _sqlite_schema.SCHEMA_VERSION - 1)
    assert sqlite_schema_of(path) == sqlite_schema_of(before)
    # Every saga is still there, and this version migrates the log again.
    assert main(["--db", str(path), "upgrade"], io.StringIO()) == 0
    assert main(["--db", str(path), "show", "dead-1"], io.StringIO()) == 0


# ---------------------------------------------------------------------------- PostgreSQL


def indexes(dsn: str, schema: str) -> list[tuple[str, str]]:
    found = query(
        dsn,
        "SELECT indexname, replace(indexdef, %s, 'S.') FROM pg_indexes "
        "WHERE schemaname = %s ORDER BY indexname",
        (f"{schema}.", schema),
    )
    return [(name, definition) for name, definition in found]


def pg_at(dsn: str, schema: str, version: int) -> None:
    from test_postgres_migrations import at_version

    query(dsn, f'CREATE SCHEMA "{schema}"')
    at_version(dsn, schema, version)


PG_BEFORE = 5
"""The PostgreSQL schema version the sagakit before this one wrote (docs/postgres.md)."""


def rewind_pg(dsn: str, schema: str) -> None:
    """Take the migrations after :data:`PG_BEFORE` out: version 6's indexes, and version
    7's ``apply_writes`` (version 5's script creates that of version 5 again)."""
    scripts = _pg_schema.migrations(schema)
    assert len(scripts) == 7  # a later version: rewind it here too
    names = re.findall(r"CREATE INDEX IF NOT EXISTS (\w+)", scripts[5])
    query(dsn, "DROP INDEX " + ", ".join(f'"{schema}".{name}' for name in names))
    query(dsn, scripts[PG_BEFORE - 1])
    query(dsn, f'DELETE FROM "{schema}".schema_migrations WHERE version > %s', (PG_BEFORE,))


@pytest.mark.asyncio
async def test_a_postgres_log_of_the_version_before_is_migrated_under_a_worker_of_it(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await write_a_log(lambda: PostgresStore(dsn, schema=schema, lease=1.0))
    rewind_pg(dsn, schema)
    previous = PG_BEFORE
    for command in (["list"], ["show", "done-1"], ["dead-letters"]):
        argv = ["--db", dsn, "--schema", schema, *command]
        assert await asyncio.to_thread(main, argv, io.StringIO()) == 1

    # A worker of the version before is running (its store opened the log at that
    # version): it finishes orphan-1...
    async def at_previous(conn: Any, schema: str, **options: Any) -> int:
        return 0

    monkeypatch.setattr("sagakit.stores._pg_connection.migrate", at_previous)
    old = PostgresStore(dsn, schema=schema, lease=1.0)
    old_orchestrator = SagaOrchestrator(old)
    await old.open()
    monkeypatch.undo()
    stop = asyncio.Event()
    worker = asyncio.create_task(
        old_orchestrator.run_worker(poll_interval=0.05, handle_signals=False, stop=stop)
    )
    new = PostgresStore(dsn, schema=schema, lease=1.0)
    try:
        await until_completed(old, "orphan-1")
        # ... when this version migrates the log under it,
        out = io.StringIO()
        argv = ["--db", dsn, "--schema", schema, "upgrade"]
        assert await asyncio.to_thread(main, argv, out) == 0
        assert f"from schema version {previous} to {_pg_schema.SCHEMA_VERSION}\n" in (
            out.getvalue()
        )
        # ... and goes on: it runs sagas, and claims one this version's process left.
        await old_orchestrator.execute(rolling_transfer(4), saga_id="old-after")
        with crashing(), contextlib.suppress(SimulatedCrash):
            await SagaOrchestrator(new).execute(rolling_transfer(5), saga_id="new-orphan")
        await simulate_restart(new)
        await until_completed(old, "new-orphan")
        stop.set()
        await worker
        # This version reads and recovers what the older one wrote.
        assert [(m.id, m.status) for m in await new.list_sagas(status="completed")] == [
            ("new-orphan", SagaStatus.COMPLETED),
            ("old-after", SagaStatus.COMPLETED),
            ("orphan-1", SagaStatus.COMPLETED),
            ("done-1", SagaStatus.COMPLETED),
        ]
        assert [d.saga_id for d in await new.dead_letters()] == ["dead-1"]
        assert [e.event for e in await new.read_events(saga_id="orphan-1")] == [-3, 3]
        await new.resume_dead_letter("dead-1")
        [outcome] = await SagaOrchestrator(new).recover()
        assert (outcome.saga_id, outcome.status) == ("dead-1", SagaStatus.COMPLETED)
    finally:
        stop.set()
        await worker
        await old.close()
        await new.close()


async def until_completed(store: PostgresStore, saga_id: str) -> None:
    """Wait until ``saga_id`` is completed (a worker's claim is not instant)."""
    async with asyncio.timeout(60):
        # The log is what we wait on.
        while (meta := await store.get(saga_id)) is None or meta.status != "completed":  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def test_the_documented_postgres_prebuild_and_rollback(dsn: str, schema: str) -> None:
    import psycopg

    built, before = f"{schema}_new", f"{schema}_v{PG_BEFORE}"
    try:
        pg_at(dsn, built, _pg_schema.SCHEMA_VERSION)
        pg_at(dsn, before, PG_BEFORE)
        # Building the indexes CONCURRENTLY ahead, then upgrading, gives the migration's.
        pg_at(dsn, f"{schema}_pre", PG_BEFORE)
        prebuild = sql_block("postgres.md", "CONCURRENTLY").replace("sagakit.", f"{schema}_pre.")
        with psycopg.connect(dsn, autocommit=True) as conn:
            for statement in prebuild.split(";"):
                if statement.strip():
                    conn.execute(statement)
        assert main(["--db", dsn, "--schema", f"{schema}_pre", "upgrade"], io.StringIO()) == 0
        assert indexes(dsn, f"{schema}_pre") == indexes(dsn, built)
        # The documented rollback gives the schema of the version before.
        rollback = sql_block("postgres.md", "DELETE FROM sagakit.schema_migrations")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(rollback.replace("sagakit.", f'"{built}".'))
        assert indexes(dsn, built) == indexes(dsn, before)
        versions = "SELECT max(version) FROM {}.schema_migrations"
        assert query(dsn, versions.format(built)) == query(dsn, versions.format(before))
    finally:
        for name in (built, before, f"{schema}_pre"):
            query(dsn, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def test_an_invalid_index_a_failed_concurrent_build_left_is_built_again(
    dsn: str, schema: str
) -> None:
    # Regression: docs/postgres.md has operators build version 6's indexes CONCURRENTLY
    # ahead of `sagakit upgrade`; a build that fails or is cancelled leaves an invalid
    # index of that name, which PostgreSQL keeps up to date but never reads, and the
    # migration's CREATE INDEX IF NOT EXISTS took it as built: `sagakit list` went on
    # reading the whole table.
    import psycopg

    target, built = f"{schema}_pre", f"{schema}_new"
    try:
        pg_at(dsn, built, _pg_schema.SCHEMA_VERSION)
        pg_at(dsn, target, PG_BEFORE)
        asyncio.run(write_a_log(lambda: PostgresStore(dsn, schema=built)))
        query(dsn, f'INSERT INTO "{target}".sagas SELECT * FROM "{built}".sagas')
        # Two sagas of one status: a unique build fails, leaving the index invalid.
        unique = f'CREATE UNIQUE INDEX CONCURRENTLY sagas_status ON "{target}".sagas (status)'
        with (
            psycopg.connect(dsn, autocommit=True) as conn,
            pytest.raises(psycopg.errors.UniqueViolation),
        ):
            conn.execute(unique)
        invalid = "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        invalid += "JOIN pg_namespace n ON n.oid = c.relnamespace "
        invalid += "WHERE n.nspname = %s AND NOT i.indisvalid"
        assert query(dsn, invalid, (target,)) == [("sagas_status",)]
        assert main(["--db", dsn, "--schema", target, "upgrade"], io.StringIO()) == 0
        assert query(dsn, invalid, (target,)) == []
        assert indexes(dsn, target) == indexes(dsn, built)
    finally:
        for name in (built, target):
            query(dsn, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
