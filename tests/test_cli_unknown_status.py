"""A saga log row with a status sagakit does not know: one line naming it, no traceback.

An operator who marks a saga by hand (``UPDATE ... SET status = 'FAILED'``, as the docs
write statuses), or a log a newer sagakit wrote, made ``sagakit list`` (every saga of the
listing), ``show`` and ``dead-letters`` end in a ``ValueError`` traceback.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from contextlib import closing
from pathlib import Path

import pytest

from cli_helpers.run import cli
from pg_helpers.db import dsn_or_skip, query
from sagakit import PostgresStore, SagaOrchestrator, SQLiteStore, StoreError, saga, step


@step
async def hold(item: str) -> str:
    return item


@saga(name="unknown_status_order")
def order(item: str):  # type: ignore[no-untyped-def]
    yield hold(item)


async def _run_one(store: SQLiteStore | PostgresStore) -> None:
    try:
        await SagaOrchestrator(store).execute(order("book"), saga_id="o-1")
    finally:
        await store.close()


def _names(err: str, *words: str) -> None:
    for word in words:
        assert word in err, err


@pytest.fixture
def sqlite_log(tmp_path: Path) -> str:
    db = str(tmp_path / "sagas.db")
    asyncio.run(_run_one(SQLiteStore(db)))
    return db


def _edit(db: str, sql: str) -> None:
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(sql)


@pytest.mark.parametrize("command", [["list"], ["list", "--json"], ["show", "o-1"]])
def test_a_saga_status_edited_by_hand_is_named(
    sqlite_log: str, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    _edit(sqlite_log, "UPDATE sagakit_sagas SET status = 'FAILED' WHERE id = 'o-1'")
    code, _ = cli("--db", sqlite_log, *command)
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1, err
    assert err.startswith("sagakit: "), err
    _names(err, "'o-1'", "'FAILED'")


def test_a_step_status_sagakit_does_not_know_is_named(
    sqlite_log: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _edit(sqlite_log, "UPDATE sagakit_steps SET status = 'skipped' WHERE saga_id = 'o-1'")
    code, _ = cli("--db", sqlite_log, "show", "o-1")
    err = capsys.readouterr().err
    assert code == 1
    _names(err, "'o-1'", "'skipped'", "'hold'")


def test_a_dead_letter_of_an_unknown_status_is_named(
    sqlite_log: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _edit(
        sqlite_log,
        "UPDATE sagakit_sagas SET status = 'paused', dead_letter = 'stuck', parked_at = 0,"
        " finished_at = NULL WHERE id = 'o-1'",
    )
    code, _ = cli("--db", sqlite_log, "dead-letters")
    err = capsys.readouterr().err
    assert code == 1
    _names(err, "'o-1'", "'paused'")


def test_the_store_raises_a_store_error(sqlite_log: str) -> None:
    _edit(sqlite_log, "UPDATE sagakit_sagas SET status = 'FAILED' WHERE id = 'o-1'")

    async def read() -> None:
        store = SQLiteStore(sqlite_log, read_only=True)
        try:
            await store.get("o-1")
        finally:
            await store.close()

    with pytest.raises(StoreError, match="status 'FAILED'"):
        asyncio.run(read())


def test_postgres_names_an_unknown_status_too(capsys: pytest.CaptureFixture[str]) -> None:
    dsn = dsn_or_skip()
    schema = "sk_cli_status_" + uuid.uuid4().hex[:8]
    try:
        asyncio.run(_run_one(PostgresStore(dsn, schema=schema)))
        query(dsn, f"UPDATE \"{schema}\".sagas SET status = 'FAILED' WHERE saga_id = 'o-1'")
        for command in (["list"], ["show", "o-1"]):
            code, _ = cli("--db", dsn, "--schema", schema, *command)
            err = capsys.readouterr().err
            assert code == 1, command
            _names(err, "'o-1'", "'FAILED'")
        query(
            dsn,
            f"UPDATE \"{schema}\".sagas SET status = 'paused', dead_reason = 'stuck', "
            "parked_at = now(), finished_at = NULL WHERE saga_id = 'o-1'",
        )
        code, _ = cli("--db", dsn, "--schema", schema, "dead-letters")
        err = capsys.readouterr().err
        assert code == 1
        _names(err, "'o-1'", "'paused'")
    finally:
        query(dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
