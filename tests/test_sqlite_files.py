"""The SQLite store's file shared with other processes: opening it while they work."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from sagakit import SagaOrchestrator, SagaStatus, SQLiteStore, StoreError, saga, step
from sagakit.stores._sqlite_schema import check_file


@step
async def echo(value: int) -> int:
    return value


@saga
def one_step(value: int):  # type: ignore[no-untyped-def]
    yield echo(value)


def _latest_page_one(wal: bytes) -> bytes:
    """The newest copy of page 1 among a ``-wal`` file's frames."""
    page_size = int.from_bytes(wal[8:12], "big")
    frame = 24 + page_size
    found = b""
    for start in range(32, len(wal) - frame + 1, frame):
        if int.from_bytes(wal[start : start + 4], "big") == 1:
            found = wal[start + 24 : start + frame]
    assert found
    return found


def _start_checkpoint(db: Path) -> None:
    """Do what a checkpoint does first: write the WAL's page 1 over the file's."""
    size = db.stat().st_size
    page_one = _latest_page_one(Path(f"{db}-wal").read_bytes())
    assert int.from_bytes(page_one[28:32], "big") * len(page_one) > size
    with open(db, "r+b") as file:
        file.write(page_one)


@pytest.mark.asyncio
async def test_a_log_mid_checkpoint_is_not_refused_as_truncated(tmp_path: Path) -> None:
    # Another process's checkpoint copies the WAL into the file page by page, page 1 (the
    # header, with the new page count) first: a store opened meanwhile read a header
    # saying more pages than the file had, and refused a sound log as truncated.
    db = tmp_path / "sagas.db"
    await SQLiteStore(db).close()
    with closing(sqlite3.connect(db, isolation_level=None)) as other:
        other.execute("PRAGMA wal_autocheckpoint=0")
        other.execute("CREATE TABLE app (data TEXT)")
        other.executemany("INSERT INTO app VALUES (?)", [("x" * 1000,)] * 40)
        _start_checkpoint(db)
        store = SQLiteStore(db)
        try:
            assert await store.running_count() == 0
        finally:
            await store.close()
        assert other.execute("SELECT count(*) FROM app").fetchone() == (40,)


@pytest.mark.asyncio
@pytest.mark.parametrize("read_only", [False, True])
async def test_a_relative_path_keeps_naming_the_same_log_after_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_only: bool
) -> None:
    # The reader connection (reads, checkpoints) opened the relative path on first use:
    # after os.chdir() it created an empty database in the new directory and failed
    # ("no such table") or read nothing of the log.
    (tmp_path / "app").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "app")
    orchestrator = SagaOrchestrator(SQLiteStore("sagas.db"))
    await orchestrator.execute(one_step(1), saga_id="s-1")
    await orchestrator.close()
    store = SQLiteStore("sagas.db", read_only=read_only)
    monkeypatch.chdir(tmp_path / "elsewhere")
    try:
        saga = await store.get("s-1")
        assert saga is not None
        assert saga.status is SagaStatus.COMPLETED
    finally:
        await store.close()
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_new_log_never_shows_other_processes_an_empty_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sqlite3.connect() created the file empty and the first write filled it in: a worker
    # starting at the same moment as another on a new log was refused with "saga log ...
    # is an empty file (truncated?)". Check the file as such a worker would, whenever a
    # connection opens.
    db = str(tmp_path / "sagas.db")
    seen: list[str] = []
    connect = sqlite3.connect

    def spying(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        if os.path.exists(db):
            try:
                check_file(db)
            except StoreError as error:
                seen.append(str(error))
        return conn

    monkeypatch.setattr(sqlite3, "connect", spying)
    store = SQLiteStore(db)
    asyncio.run(store.close())
    assert seen == []
    assert not [name for name in os.listdir(tmp_path) if name != "sagas.db"]


@contextmanager
def unprivileged() -> Iterator[None]:
    """Run the block as a user that file modes bind: root writes a file or directory
    whatever its mode, so its effective ids become nobody's meanwhile."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def folder() -> Iterator[Path]:
    """A directory nobody (see unprivileged()) may enter: pytest's tmp_path is root's
    alone when the suite runs as root."""
    if not hasattr(os, "seteuid"):
        pytest.skip("needs POSIX file modes")
    path = Path(tempfile.mkdtemp())
    path.chmod(0o777)
    yield path
    path.chmod(0o700)
    shutil.rmtree(path)


def make_log(db: Path) -> None:
    async def run() -> None:
        async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
            await orchestrator.execute(one_step(1), saga_id="p-1")

    asyncio.run(run())


def test_a_log_this_process_may_not_write_is_refused_for_that_not_as_corrupt(
    folder: Path,
) -> None:
    # Regression: a log in a directory the service's user may not write (SQLite creates
    # its -wal and -shm there), or a read-only file (a backup made with VACUUM INTO,
    # still a rollback-journal file), was refused as "unable to open database file" or
    # as "corrupt or not a sagakit log ...; restore it from a backup", for a permission.
    backup = folder / "backup.db"
    make_log(folder / "sagas.db")
    (folder / "sagas.db").chmod(0o644)  # readable by that user (a new log is not)
    with closing(sqlite3.connect(folder / "sagas.db")) as conn:
        conn.execute(f"VACUUM INTO '{backup}'")
    backup.chmod(0o444)
    with unprivileged(), pytest.raises(StoreError) as refused:
        SQLiteStore(backup)
    message = str(refused.value)
    assert "corrupt" not in message
    assert f"cannot write saga log {str(backup)!r}" in message
    assert "may not write the file (SQLite writes the log, and creates backup.db-wal" in message
    assert "give it write access to both, or open the log with SQLiteStore(" in message

    folder.chmod(0o555)
    for log in (backup, folder / "sagas.db"):
        with unprivileged(), pytest.raises(StoreError) as refused:
            SQLiteStore(log)
        assert "may not write the file or its directory" in str(refused.value)
    (folder / "sagas.db").chmod(0o666)
    with unprivileged(), pytest.raises(StoreError) as refused:
        SQLiteStore(folder / "sagas.db")
    assert f"may not write its directory {str(folder)!r}" in str(refused.value)
    with unprivileged(), pytest.raises(StoreError) as refused:
        SQLiteStore(folder / "new.db")
    assert str(refused.value).startswith(f"cannot create saga log {str(folder / 'new.db')!r}")
    assert f"may not write its directory {str(folder)!r}; give it write access there" in str(
        refused.value
    )
    store = SQLiteStore(folder / "sagas.db", read_only=True)  # what it says to do
    assert [meta.id for meta in asyncio.run(read_history(store))] == ["p-1"]


async def read_history(store: SQLiteStore) -> list[Any]:
    try:
        return await store.history()
    finally:
        await store.close()
