"""``SQLiteStore(read_only=True)`` and the CLI's read-only commands never write the log."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli_helpers.run import cli
from sagakit import SagaOrchestrator, SQLiteStore, StoreError, saga, step
from sagakit.stores import _sqlite_schema


@step
async def hop(n: int) -> int:
    return n + 1


@saga
def hops(n: int):  # type: ignore[no-untyped-def]
    yield hop(n)


def make_log(path: Path) -> None:
    async def run() -> None:
        async with SagaOrchestrator(SQLiteStore(path)) as orchestrator:
            await orchestrator.execute(hops(1), saga_id="ro-1")

    asyncio.run(run())


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def journal_mode(path: Path) -> int:
    """The file format bytes of the header: 1 for a rollback journal, 2 for WAL."""
    return path.read_bytes()[18]


@pytest.fixture
def backup(tmp_path: Path) -> Path:
    """A ``VACUUM INTO`` backup of a log: a rollback-journal file, alone in its directory."""
    make_log(tmp_path / "sagas.db")
    target = tmp_path / "backups" / "sagas.db"
    target.parent.mkdir()
    conn = sqlite3.connect(tmp_path / "sagas.db")
    conn.execute("VACUUM INTO ?", (str(target),))
    conn.close()
    assert journal_mode(target) == 1
    return target


@pytest.mark.parametrize("command", [["list"], ["show", "ro-1"], ["dead-letters"]])
def test_the_cli_reads_a_backup_without_changing_it(backup: Path, command: list[str]) -> None:
    before = snapshot(backup)
    code, out = cli("--db", str(backup), *command)
    assert code == 0
    assert "ro-1" in out or out == "no dead letters\n"
    assert snapshot(backup) == before
    assert journal_mode(backup) == 1  # not switched to WAL
    assert sorted(p.name for p in backup.parent.iterdir()) == ["sagas.db"]


def test_a_read_only_store_issues_no_write_on_a_wal_log(tmp_path: Path) -> None:
    db = tmp_path / "sagas.db"
    make_log(db)
    assert journal_mode(db) == 2
    before = snapshot(db)

    async def read() -> None:
        store = SQLiteStore(db, read_only=True, verify=True)
        try:
            found = await store.get("ro-1")
            assert found is not None
            assert found.steps_executed == 1
            assert [m.id for m in await store.list_sagas()] == ["ro-1"]
            assert await store.dead_letters() == []
            assert await store.running() == []
        finally:
            await store.close()

    asyncio.run(read())
    assert snapshot(db) == before
    wal = tmp_path / "sagas.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # nothing appended to the log


def test_write_methods_of_a_read_only_store_raise(backup: Path) -> None:
    before = snapshot(backup)

    async def write() -> None:
        store = SQLiteStore(backup, read_only=True)
        try:
            for attempt in (
                store.resolve("ro-1", "by hand"),
                store.resume_dead_letter("ro-1"),
                store.release("ro-1"),
                store.dead_letter("ro-1", "why"),
                store.claim_orphans(),
            ):
                with pytest.raises(StoreError, match="opened read-only"):
                    await attempt
            with pytest.raises(StoreError, match="opened read-only"):
                await SagaOrchestrator(store).execute(hops(2), saga_id="ro-2")
            with pytest.raises(StoreError, match="opened read-only"):
                await store._writer.submit([], alone=True)  # the writer refuses too
        finally:
            await store.close()

    asyncio.run(write())
    assert snapshot(backup) == before


def test_a_missing_file_is_refused_and_not_created(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"no saga log at .*read-only"):
        SQLiteStore(tmp_path / "nothing.db", read_only=True)
    assert list(tmp_path.iterdir()) == []


def test_a_database_without_a_log_is_refused_and_left_alone(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE things (x)")
    conn.commit()
    conn.close()
    before = snapshot(other)
    with pytest.raises(StoreError, match="without sagakit's tables"):
        SQLiteStore(other, read_only=True)
    assert snapshot(other) == before


def test_an_older_schema_is_refused_not_migrated(
    backup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(backup)
    monkeypatch.setattr(_sqlite_schema, "SCHEMA_VERSION", _sqlite_schema.SCHEMA_VERSION + 1)
    with pytest.raises(
        StoreError, match=r"older than .* upgrade it with `sagakit --db .* upgrade`"
    ):
        SQLiteStore(backup, read_only=True)
    assert snapshot(backup) == before


def test_a_clean_wal_log_in_an_unwritable_directory_is_read_immutable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without write access to the directory SQLite cannot create the -shm file a WAL
    # log needs; with no -wal file holding commits the file alone is the whole log.
    db = tmp_path / "sagas.db"
    make_log(db)
    assert journal_mode(db) == 2
    assert not (tmp_path / "sagas.db-wal").exists()
    monkeypatch.setattr(_sqlite_schema.os, "access", lambda path, mode: False)
    before = snapshot(db)

    async def read() -> list[str]:
        store = SQLiteStore(db, read_only=True)
        try:
            return [meta.id for meta in await store.list_sagas()]
        finally:
            await store.close()

    assert asyncio.run(read()) == ["ro-1"]
    assert snapshot(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sagas.db"]  # no -shm: immutable


@pytest.fixture
def unwritable(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() == 0:
        pytest.skip("runs as root, for whom chmod does not make a directory read-only")
    folder = tmp_path / "mount"
    folder.mkdir()
    yield folder
    folder.chmod(stat.S_IRWXU)


@pytest.mark.parametrize("wal", [False, True])
def test_a_log_in_a_read_only_directory_can_be_listed(unwritable: Path, wal: bool) -> None:
    db = unwritable / "sagas.db"
    make_log(db)
    if not wal:
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.close()
    unwritable.chmod(stat.S_IRUSR | stat.S_IXUSR)
    db.chmod(stat.S_IRUSR)
    before = snapshot(db)
    code, out = cli("--db", str(db), "list")
    assert (code, "ro-1" in out) == (0, True)
    assert snapshot(db) == before
