"""A new SQLite saga log is not readable by other users.

The log holds every saga's arguments, results and events (account numbers, addresses,
tokens); SQLite created it, and its WAL and shared-memory files, as the umask allowed:
``-rw-r--r--`` under the common umask of 022, readable by every user of the machine.
A new log is now created for its owner and group only (the group as the umask allows);
a log that exists keeps the permissions it has.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sagakit import SagaOrchestrator, SQLiteStore, saga, step

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
