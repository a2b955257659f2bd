"""A new SQLite saga log is not readable by other users.

The log holds every saga's arguments, results and events (account numbers, addresses,
tokens); SQLite created it, and its WAL and shared-memory files, as the umask allowed:
``-rw-r--r--`` under the common umask of 022, readable by every user of the machine.
A new log is now created for its owner and group only (the group as the umask allows);
a log that exists keeps the permissions it has.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sagakit import SagaOrchestrator, SQLiteStore, StoreError, saga, step
from sagakit.stores import _sqlite_schema
from sagakit.stores._sqlite_schema import check_file

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")


@step
async def sp_note(value: int) -> int:
    return value


@saga(name="sqlite_permissions.note")
def note(value: int):  # type: ignore[no-untyped-def]
    yield sp_note(value)


@pytest.fixture
def umask() -> Iterator[object]:
    def set_to(mask: int) -> None:
        os.umask(mask)

    previous = os.umask(0o022)
    try:
        yield set_to
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def _write_one(path: Path) -> dict[str, int]:
    """Run a saga on the log at ``path``; the modes of its WAL and shared-memory files,
    which exist while the store is open."""
    async with SagaOrchestrator(SQLiteStore(path)) as orchestrator:
        await orchestrator.execute(note(1), saga_id="one")
        sides = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
        return {side.name: _mode(side) for side in sides if side.exists()}


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o640), (0o002, 0o660), (0o077, 0o600)])
def test_a_new_log_is_for_its_owner_and_group_only(
    tmp_path: Path, umask: object, mask: int, expected: int
) -> None:
    umask(mask)  # type: ignore[operator]
    path = tmp_path / "sagas.db"
    sides = asyncio.run(_write_one(path))
    assert _mode(path) == expected
    assert sides  # (WAL mode: both exist)
    assert all(mode == expected for mode in sides.values()), sides


def test_an_existing_log_keeps_its_permissions(tmp_path: Path, umask: object) -> None:
    path = tmp_path / "sagas.db"
    asyncio.run(_write_one(path))
    os.chmod(path, 0o644)  # widened on purpose: a reader of another user
    asyncio.run(_write_one(path))
    assert _mode(path) == 0o644


def _no_hard_links(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted (no hard links here)")

    monkeypatch.setattr(os, "link", refuse)


def _check_each_open(db: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What another process checking the log whenever a connection opens would be told."""
    seen: list[str] = []
    connect = sqlite3.connect

    def spying(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        if db.exists():
            try:
                check_file(str(db))
            except StoreError as error:
                seen.append(str(error))
        return conn

    monkeypatch.setattr(sqlite3, "connect", spying)
    return seen


def test_a_new_log_is_for_its_owner_and_group_where_hard_links_fail(
    tmp_path: Path, umask: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: the log is built under a temporary name and hard-linked into place;
    # where the link failed (a file system without hard links), sqlite3.connect created
    # it in place as the umask allowed: -rw-r--r--, readable by every user. It is now
    # renamed into place (never over a file there), still never an empty file meanwhile.
    _no_hard_links(monkeypatch)
    path = tmp_path / "sagas.db"
    seen = _check_each_open(path, monkeypatch)
    sides = asyncio.run(_write_one(path))
    assert _mode(path) == 0o640
    assert all(mode == 0o640 for mode in sides.values()), sides
    assert seen == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sagas.db"]


def test_where_no_rename_can_refuse_to_replace_the_log_is_still_created_private(
    tmp_path: Path, umask: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Neither hard links nor a no-replace rename: created empty in place (the one case
    # where another process may meet it empty), with the log's permissions all the same.
    _no_hard_links(monkeypatch)
    monkeypatch.setattr(_sqlite_schema, "rename_no_replace", lambda source, target: False)
    path = tmp_path / "sagas.db"
    asyncio.run(_write_one(path))
    assert _mode(path) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sagas.db"]


def test_the_rename_fallback_never_replaces_a_log_another_process_created(
    tmp_path: Path,
) -> None:
    # A plain os.rename() would: a log another process created (and maybe wrote to)
    # between the check and the rename would be lost.
    source, target = tmp_path / "mine.new", tmp_path / "sagas.db"
    source.write_bytes(b"mine")
    target.write_bytes(b"theirs")
    try:
        renamed = _sqlite_schema.rename_no_replace(str(source), str(target))
    except FileExistsError:
        pass
    else:
        assert not renamed, "renamed over an existing file"
    assert target.read_bytes() == b"theirs"
    assert source.read_bytes() == b"mine"
    target.unlink()
    if _sqlite_schema.rename_no_replace(str(source), str(target)):
        assert target.read_bytes() == b"mine"
        assert not source.exists()
