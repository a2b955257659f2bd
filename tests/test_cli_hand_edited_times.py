"""A SQLite saga log row whose time is not a Unix time: one line naming it, no traceback.

An operator settling a saga by hand in the ``sqlite3`` shell writes ``finished_at =
datetime('now')`` (text), as SQLite's own docs do; ``sagakit list`` (the whole listing,
for one row) and ``show`` then ended in a ``TypeError`` traceback.
"""

from __future__ import annotations

import asyncio
import io
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from sagakit import SagaOrchestrator, SQLiteStore, saga, step
from sagakit.cli import main


@step
async def hold(item: str) -> str:
    return item


@saga(name="hand_edited_time_order")
def order(item: str):  # type: ignore[no-untyped-def]
    yield hold(item)


async def _run_one(db: str) -> None:
    store = SQLiteStore(db)
    try:
        await SagaOrchestrator(store).execute(order("book"), saga_id="o-1")
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("sql", "command"),
    [
        ("UPDATE sagakit_sagas SET finished_at = datetime('now')", ["list"]),
        ("UPDATE sagakit_sagas SET started_at = datetime('now')", ["list", "--json"]),
        ("UPDATE sagakit_sagas SET updated_at = 'yesterday'", ["show", "o-1"]),
        ("UPDATE sagakit_steps SET started_at = datetime('now')", ["show", "o-1"]),
        (
            "UPDATE sagakit_sagas SET status = 'executing', finished_at = NULL, "
            "dead_letter = 'stuck', parked_at = datetime('now')",
            ["dead-letters"],
        ),
    ],
)
def test_a_time_edited_by_hand_is_named(
    tmp_path: Path, sql: str, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "sagas.db")
    asyncio.run(_run_one(db))
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(sql)
    code = main(["--db", db, *command], io.StringIO())
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1, err
    assert err.startswith("sagakit: "), err
    assert "of saga 'o-1'" in err, err
    assert "not a Unix time" in err, err
