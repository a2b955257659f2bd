"""``sagakit list`` reads only what it shows: one query per page, no step record decoded.

It read every saga of a page whole, as ``get()`` does (all of its row, every step record,
each completed record's result or events decoded), to print a few of its columns: 10.6 s
for ``list --limit 100000`` of a SQLite log of 5-step sagas, two queries per saga. Each page
is now one query of the listed columns, counting ``steps_executed`` in the database; what it
prints is what ``list_sagas()`` reports, table and ``--json`` alike.
"""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import sagakit._cli_read as read_module
import sagakit._cli_text as text_module
from cli_helpers.run import cli
from pg_helpers.db import dsn_or_skip, query
from sagakit import (
    JsonSerializer,
    SagaMetadata,
    SagaOrchestrator,
    SQLiteStore,
    StepFailed,
    saga,
    step,
)


@dataclass(frozen=True)
class ListingHold:
    item: str


@step
async def listing_reserve(item: str, amount: int) -> ListingHold:
    return ListingHold(item)


@listing_reserve.compensate
async def listing_release(hold: ListingHold, item: str, amount: int) -> None:
    return None


@step
async def listing_charge(item: str, amount: int) -> int:
    if amount < 0:
        raise ValueError(f"cannot charge {amount}")
    return amount


@step
async def listing_ship(item: str, amount: int) -> str:
    return f"shipped {item}"


@saga(name="listing_order")
def listing_order(item: str, amount: int):  # type: ignore[no-untyped-def]
    yield listing_reserve(item, amount)
    yield listing_charge(item, amount)
    yield listing_ship(item, amount)


SAGAS = 14
"""Sagas in the log: pages of 4 (``_PAGE`` set so) make four pages, the last short."""


@dataclass(frozen=True)
class Log:
    """A log of :data:`SAGAS` sagas ``l-00``... of every kind ``list`` shows."""

    kind: str
    argv: list[str]
    run: Any  # (sqlite sql, postgres sql) -> None

    def store(self) -> Any:
        if self.kind == "sqlite":
            return SQLiteStore(self.argv[1], read_only=True)
        from sagakit import PostgresStore

        return PostgresStore(self.argv[1], schema=self.argv[3])


@contextmanager
def listing_log(tmp_path: Path, kind: str) -> Iterator[Log]:
    """Completed and compensated sagas (compensations completed: not steps executed), one
    left running in its second step, one parked, one whose total is unknown, one whose
    error has a newline; some started at one instant (ties across pages)."""
    if kind == "postgres":
        from sagakit import PostgresStore

        dsn = dsn_or_skip()
        schema = "sk_cli_listing_" + uuid.uuid4().hex[:8]
        store: Any = PostgresStore(dsn, schema=schema)
        argv = ["--db", dsn, "--schema", schema]

        def run(sqlite_sql: str, pg_sql: str) -> None:
            query(dsn, pg_sql.replace("{s}", f'"{schema}"'))
    else:
        path = str(tmp_path / "listing.db")
        store = SQLiteStore(path)
        argv = ["--db", path]

        def run(sqlite_sql: str, pg_sql: str) -> None:
            with closing(sqlite3.connect(path)) as conn, conn:
                conn.execute(sqlite_sql)

    async def write() -> None:
        async with SagaOrchestrator(store) as orchestrator:
            for n in range(SAGAS):
                amount = -n if n % 3 == 1 else n
                with suppress(StepFailed):  # compensated: listed as such
                    await orchestrator.execute(
                        listing_order(f"item-{n}", amount), saga_id=f"l-{n:02}"
                    )

    log = Log(kind, argv, run)
    try:
        asyncio.run(write())
        # Left running in its second step (the first completed).
        run(
            "UPDATE sagakit_sagas SET status = 'executing', finished_at = NULL, "
            "finish_order = NULL WHERE id = 'l-05'",
            "UPDATE {s}.sagas SET status = 'executing', finished_at = NULL, "
            "finish_order = NULL WHERE saga_id = 'l-05'",
        )
        run(
            "DELETE FROM sagakit_steps WHERE saga_id = 'l-05' AND idx = 2",
            "DELETE FROM {s}.steps WHERE saga_id = 'l-05' AND step_index = 2",
        )
        run(
            "UPDATE sagakit_steps SET status = 'running' WHERE saga_id = 'l-05' AND idx = 1",
            "UPDATE {s}.steps SET status = 'running' WHERE saga_id = 'l-05' AND step_index = 1",
        )
        run(
            "UPDATE sagakit_sagas SET status = 'executing', finished_at = NULL, "
            "finish_order = NULL, dead_letter = 'stuck', parked_at = 0 WHERE id = 'l-06'",
            "UPDATE {s}.sagas SET status = 'executing', finished_at = NULL, "
            "finish_order = NULL, dead_reason = 'stuck', parked_at = now() "
            "WHERE saga_id = 'l-06'",
        )
        run(
            "UPDATE sagakit_sagas SET total_steps = NULL WHERE id = 'l-08'",
            "UPDATE {s}.sagas SET total_steps = NULL WHERE saga_id = 'l-08'",
        )
        run(
            "UPDATE sagakit_sagas SET error = 'two' || char(10) || 'lines' WHERE id = 'l-10'",
            "UPDATE {s}.sagas SET error = 'two' || chr(10) || 'lines' WHERE saga_id = 'l-10'",
        )
        run(  # l-02 to l-05 started at one instant: ties across two pages of 4
            "UPDATE sagakit_sagas SET started_at = (SELECT started_at FROM sagakit_sagas "
            "WHERE id = 'l-02') WHERE id BETWEEN 'l-02' AND 'l-05'",
            "UPDATE {s}.sagas SET started_at = (SELECT started_at FROM {s}.sagas "
            "WHERE saga_id = 'l-02') WHERE saga_id BETWEEN 'l-02' AND 'l-05'",
        )
        yield log
    finally:
        if kind == "postgres":
            query(dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def reported(log: Log, status: str | None = None) -> list[SagaMetadata]:
    """What ``list_sagas()`` reports: every saga whole, newest first."""

    async def read() -> list[SagaMetadata]:
        store = log.store()
        try:
            return await store.list_sagas(status=status, limit=1000)  # type: ignore[no-any-return]
        finally:
            await store.close()

    return asyncio.run(read())


def as_json(meta: SagaMetadata) -> dict[str, Any]:
    """A saga as ``list --json`` documents it (docs/durability.md)."""
    return {
        "id": meta.id,
        "name": meta.name,
        "status": str(meta.status),
        "steps_executed": meta.steps_executed,
        "total_steps": meta.total_steps,
        "started_at": None if meta.started_at is None else meta.started_at.isoformat(),
        "finished_at": None if meta.finished_at is None else meta.finished_at.isoformat(),
        "error": meta.error,
        "dead_letter": meta.dead_letter is not None,
        "dead_letter_reason": meta.dead_letter,
    }


def as_table(sagas: list[SagaMetadata]) -> str:
    """``sagas`` as ``list`` prints them: a dead letter marked, its reason as its error."""
    rows = [["ID", "NAME", "STATUS", "STEPS", "STARTED", "ERROR"]]
    for meta in sagas:
        parked = meta.dead_letter is not None
        error = f"dead-lettered: {meta.dead_letter}" if parked else meta.error or ""
        rows.append(
            [
                str(meta.id),
                meta.name,
                f"{meta.status} (dead letter)" if parked else str(meta.status),
                f"{meta.steps_executed}/{'?' if meta.total_steps is None else meta.total_steps}",
                text_module._when(meta.started_at),
                text_module._cut(error, 60),
            ]
        )
    out = io.StringIO()
    text_module._table(rows, out)
    return out.getvalue()


KINDS = ["sqlite", "postgres"]


@pytest.fixture(autouse=True)
def _pages_of_four(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of 4 sagas: the log's 14 take four; tables at their whole width."""
    monkeypatch.setattr(read_module, "_PAGE", 4)
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.mark.parametrize("kind", KINDS)
def test_a_listing_of_several_pages_is_what_list_sagas_reports(tmp_path: Path, kind: str) -> None:
    with listing_log(tmp_path, kind) as log:
        sagas = reported(log)
        assert len(sagas) == SAGAS
        # The log holds what the listing must tell apart.
        kinds = {(m.id, m.steps_executed, len(m.compensations)) for m in sagas}
        assert ("l-05", 1, 0) in kinds  # running in its second step
        assert ("l-01", 1, 1) in kinds  # compensated: its compensation is not counted
        assert {m.id for m in sagas if m.dead_letter} == {"l-06"}
        code, out = cli(*log.argv, "list", "--limit", "100", "--json")
        assert code == 0
        assert out == json.dumps([as_json(m) for m in sagas], indent=2) + "\n"
        code, out = cli(*log.argv, "list", "--limit", "100")
        assert code == 0
        assert out == as_table(sagas)
        # A limit that ends inside a page, and one that ends at a page's end.
        for limit in (6, 8):
            code, out = cli(*log.argv, "list", "--limit", str(limit), "--json")
            assert json.loads(out) == [as_json(m) for m in sagas[:limit]]


@pytest.mark.parametrize("kind", KINDS)
def test_a_listing_of_one_status_is_what_list_sagas_reports(tmp_path: Path, kind: str) -> None:
    with listing_log(tmp_path, kind) as log:
        for status in ("compensated", "executing", "completed"):
            sagas = reported(log, status)
            assert sagas, status
            code, out = cli(*log.argv, "list", "--status", status.upper(), "--json")
            assert code == 0
            assert out == json.dumps([as_json(m) for m in sagas], indent=2) + "\n"
            code, out = cli(*log.argv, "list", "--status", status)
            assert out == as_table(sagas)
        assert cli(*log.argv, "list", "--status", "failed") == (0, "no sagas\n")


@pytest.mark.parametrize("kind", KINDS)
def test_a_listing_decodes_no_stored_value(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The step records' results and events, which it never shows, are not read.
    with listing_log(tmp_path, kind) as log:
        expected = [as_json(m) for m in reported(log)]

        def refused(self: JsonSerializer, text: str | bytes) -> Any:
            raise AssertionError(f"the listing decoded a stored value: {text!r}")

        monkeypatch.setattr(JsonSerializer, "loads", refused)
        for options in ([], ["--json"]):
            code, out = cli(*log.argv, "list", *options)
            assert code == 0, out
        assert json.loads(out) == expected


@contextmanager
def statements_run(kind: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The SQL the store sends that reads sagas (their times) or step records."""
    ran: list[str] = []
    if kind == "sqlite":
        connect = sqlite3.connect

        def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            conn = connect(*args, **kwargs)
            conn.set_trace_callback(ran.append)
            return conn

        monkeypatch.setattr(sqlite3, "connect", traced)
    else:
        import psycopg

        execute = psycopg.AsyncConnection.execute

        async def recorded(self: Any, sql: Any, *args: Any, **kwargs: Any) -> Any:
            ran.append(str(sql))
            return await execute(self, sql, *args, **kwargs)

        monkeypatch.setattr(psycopg.AsyncConnection, "execute", recorded)
    yield ran
    # (Not the store's own when it opens the log, which reads the highest id.)
    ran[:] = [sql for sql in ran if any(word in sql for word in ("started_at", "steps"))]


@pytest.mark.parametrize("kind", KINDS)
def test_a_listing_reads_each_page_in_one_query(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with listing_log(tmp_path, kind) as log:
        with statements_run(kind, monkeypatch) as ran:
            code, out = cli(*log.argv, "list", "--limit", "100", "--json")
        assert code == 0
        assert len(json.loads(out)) == SAGAS
        assert len(ran) == 4, ran  # pages of 4, 4, 4 and 2
        with statements_run(kind, monkeypatch) as ran:
            code, out = cli(*log.argv, "list", "--limit", "5", "--status", "completed")
        assert len(out.splitlines()) == 1 + 5
        assert len(ran) == 2, ran  # 4, then the 1 left
