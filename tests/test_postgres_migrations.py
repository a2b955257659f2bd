"""Upgrading a PostgreSQL saga log in place: a schema at an earlier version, with rows
written by that version's ``apply_writes``, opened by this sagakit.

The old schema is built from the migration scripts themselves (the first ``n``), and
its rows are written by a store whose migration is skipped: the Python side of a write
did not change, so what lands in the tables is what the older sagakit wrote.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from typing import Any

import pytest

from pg_helpers.db import opened, query
from sagakit import (
    PostgresStore,
    Retry,
    SagaOrchestrator,
    SagaStatus,
    StepFailed,
    saga,
    step,
)
from sagakit.stores import _pg_schema
from sagakit.stores._pg_writer import Write, batch_params
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

UNDONE: list[int] = []


@step
async def take(n: int) -> int:
    return n


@take.compensate
async def give_back(result: int, n: int) -> list[str]:
    UNDONE.append(n)
    return [f"gave back {n}"]


@step
async def refuse(n: int) -> None:
    raise ValueError(f"refused {n}")


@saga
def three_then_refused():  # type: ignore[no-untyped-def]
    for n in range(3):
        yield take(n)
    yield refuse(3)


@pytest.fixture(autouse=True)
def _reset() -> None:
    UNDONE.clear()


def at_version(dsn: str, schema: str, version: int) -> None:
    """Build ``schema`` as sagakit left it at schema ``version``."""
    import psycopg

    s = f'"{schema}"'
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(
            f"CREATE TABLE {s}.schema_migrations ("
            "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for number, script in enumerate(_pg_schema.migrations(schema)[:version], start=1):
            conn.execute(script)
            conn.execute(f"INSERT INTO {s}.schema_migrations (version) VALUES (%s)", (number,))


# sha256 of the scripts of versions 1-6 for the schema "sagakit", as applied: a log may
# be at any of them, so their text must never change (a later version changes things by
# a new script, as versions 4, 5 and 7 do).
APPLIED = {
    1: "6c8f04f4cd8079bc8c7b7a0ae223f12b7e35bb192543d1c07141fd23c965ebef",
    2: "13e2b0766a1160f8d4ca9f93f56dd736fb023d705aba19ddf0aad4641a2989fb",
    3: "b1c5b0f75fa045c3bbbaa0b9a6385ee32a03f0c73adf8c165e68a0e38831656a",
    4: "2525f7c68d696637493a7ccbc4f0aa2974df44f50cf97f5ea70173374252953c",
    5: "49cef072b8765c0733f5d24559903959c95d9e1b9860f631c4479aaacddf8dfa",
    6: "5069646f6a364216bd5def5de95a143d05f6dc4fedc36a20ea6791408ba0c85f",
}


def test_the_scripts_of_applied_versions_never_change() -> None:
    scripts = _pg_schema.migrations("sagakit")
    digests = {n: hashlib.sha256(scripts[n - 1].encode()).hexdigest() for n in APPLIED}
    assert digests == APPLIED
    assert len(scripts) == _pg_schema.SCHEMA_VERSION == 7


def columns(dsn: str, schema: str, table: str) -> set[str]:
    found = query(
        dsn,
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s",
        (schema, table),
    )
    return {name for (name,) in found}


def old_store(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch, version: int = 3
) -> PostgresStore:
    """A store writing to ``schema`` as it is, without migrating it first (as a sagakit
    of schema ``version`` did: before version 3, a begin kept no write token)."""

    async def unmigrated(conn: Any, schema: str, **options: Any) -> int:
        return 0

    monkeypatch.setattr("sagakit.stores._pg_connection.migrate", unmigrated)
    store = PostgresStore(dsn, schema=schema)
    if version < 3:
        sql = store._sql
        store._sql = dataclasses.replace(
            sql,
            begin=sql.begin.replace(", last_write)", ")").replace(", %(token)s)", ")"),
            restart=sql.restart.replace(", last_write = %(token)s", ""),
            conflict=sql.conflict.replace("last_write FROM", "NULL FROM"),
        )
    return store


def compensations(meta: Any) -> list[tuple[int, str]]:
    return [(c.index, str(c.status)) for c in meta.compensations]


@pytest.mark.asyncio
@pytest.mark.parametrize("version", [2, 3])
async def test_an_earlier_version_is_upgraded_in_place_and_its_rows_list_as_before(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    # Version 3 (write tokens) came before the record order of version 4: a log may be
    # at either when this sagakit opens it.
    at_version(dsn, schema, version)
    assert "start_order" not in columns(dsn, schema, "steps")
    assert ("last_write" in columns(dsn, schema, "sagas")) is (version >= 3)
    store = old_store(dsn, schema, monkeypatch, version)
    await store.open()
    orchestrator = SagaOrchestrator(store, compensation_retry=Retry(attempts=1))
    for saga_id in ("old-b", "old-a"):  # finished in this order, by the old version
        with pytest.raises(StepFailed):
            await orchestrator.execute(three_then_refused(), saga_id=saga_id)
    # A saga left mid-compensation: give_back(2) fails, the run goes on, give_back(1)
    # completes and the process "dies" in give_back(0).
    crashing = SagaOrchestrator(
        store, compensation_retry=Retry(attempts=1), continue_on_compensation_failure=True
    )
    faults = FaultInjector().fail_compensation(take, index=2)
    faults.crash(take, compensation=True, index=0)
    with faults, pytest.raises(SimulatedCrash):
        await crashing.execute(three_then_refused(), saga_id="old-crashed")
    await simulate_restart(store)
    await store.close()
    monkeypatch.undo()
    assert UNDONE == [2, 1, 0, 2, 1, 0, 1]

    async with opened(dsn, schema) as store:
        versions = query(dsn, f'SELECT version FROM "{schema}".schema_migrations ORDER BY version')
        assert versions == [(n,) for n in range(1, _pg_schema.SCHEMA_VERSION + 1)]
        assert {"start_order"} <= columns(dsn, schema, "steps")
        assert {"finish_order"} <= columns(dsn, schema, "sagas")
        ordered = f'SELECT count(*) FROM "{schema}".steps WHERE start_order IS NOT NULL'
        assert query(dsn, ordered) == [(0,)]  # no row rewritten: old rows list by seq
        # The old version's rows list as it listed them.
        assert [m.id for m in await store.history()] == ["old-b", "old-a"]  # by finished_at
        old = await store.get("old-a")
        assert old is not None
        assert compensations(old) == [(2, "completed"), (1, "completed"), (0, "completed")]
        assert old.compensation_events == ("gave back 2", "gave back 1", "gave back 0")
        crashed = await store.get("old-crashed")
        assert crashed is not None
        assert crashed.status is SagaStatus.COMPENSATING
        assert compensations(crashed) == [(2, "failed"), (1, "completed"), (0, "running")]

        # Recovery by this version runs give_back(0) again (not give_back(2), which failed
        # for good): it is listed where it last started.
        [outcome] = await SagaOrchestrator(store).recover()
        assert outcome.status is SagaStatus.FAILED
        assert UNDONE == [2, 1, 0, 2, 1, 0, 1, 0]
        recovered = await store.get("old-crashed")
        assert recovered is not None
        assert compensations(recovered) == [(2, "failed"), (1, "completed"), (0, "completed")]
        assert [m.id for m in await store.history()] == ["old-b", "old-a", "old-crashed"]
        assert [m.id for m in await store.history(limit=2)] == ["old-a", "old-crashed"]
        # Version 4's apply_writes keeps the write tokens of version 3.
        tokens = f'SELECT last_write FROM "{schema}".sagas WHERE saga_id = %s'
        assert query(dsn, tokens, ("old-crashed",)) != [(None,)]


@pytest.mark.asyncio
async def test_starts_sent_by_a_sagakit_before_version_4_are_ordered_too(
    dsn: str, schema: str
) -> None:
    """During a rolling upgrade, workers started before it still write (their writes
    say nothing of ``start``): a start of theirs moves the saga's counter on all the same."""

    def old_write(*writes: Write) -> None:
        rows, events, new = batch_params(list(writes))
        new_keys = ("start", "start_order")
        unsaid = [{k: v for k, v in row.items() if k not in new_keys} for row in json.loads(rows)]
        sql = f'SELECT * FROM "{schema}".apply_writes(%s::jsonb, %s::jsonb, %s::jsonb)'
        assert query(dsn, sql, (json.dumps(unsaid), events, new)) == []

    def start(index: int) -> Write:
        return Write(
            "rolling", "s", 1, "compensating", index=index, compensation=True,
            step_name="take", step_status="running", attempts=1,
        )  # fmt: skip

    async with opened(dsn, schema) as store:
        first = start(1)
        first.new = {
            "saga_id": "rolling", "name": "s", "factory": False, "policy": "resume",
            "fingerprint": None, "args": "[]", "kwargs": "{}", "total": 2,
            "owner": "old-worker", "lease": 30.0,
        }  # fmt: skip
        for write in (first, start(0), start(1)):  # 1 is run again, last
            old_write(write)
        meta = await store.get("rolling")
    assert meta is not None
    assert [c.index for c in meta.compensations] == [0, 1]
    found = query(
        dsn,
        f'SELECT step_index, start_order FROM "{schema}".steps ORDER BY step_index',
    )
    assert found == [(0, 2), (1, 3)]


@pytest.mark.asyncio
async def test_starts_sent_by_a_sagakit_before_version_5_read_the_logs_highest(
    dsn: str, schema: str
) -> None:
    """A worker of version 4 does not count its sagas' starts (its writes say ``start``,
    not ``start_order``): apply_writes still reads where the saga's count stands."""

    def v4_write(*writes: Write) -> None:
        rows, events, new = batch_params(list(writes))
        said = json.loads(rows)
        assert all("start_order" in row for row in said)
        unsaid = [{k: v for k, v in row.items() if k != "start_order"} for row in said]
        sql = f'SELECT * FROM "{schema}".apply_writes(%s::jsonb, %s::jsonb, %s::jsonb)'
        assert query(dsn, sql, (json.dumps(unsaid), events, new)) == []

    def start(index: int) -> Write:
        return Write(
            "rolling", "s", 1, "compensating", index=index, compensation=True,
            step_name="take", step_status="running", attempts=1, start_order=99,
        )  # fmt: skip

    async with opened(dsn, schema):
        first = start(2)
        first.new = {
            "saga_id": "rolling", "name": "s", "factory": False, "policy": "resume",
            "fingerprint": None, "args": "[]", "kwargs": "{}", "total": 3,
            "owner": "old-worker", "lease": 30.0,
        }  # fmt: skip
        v4_write(first)
        v4_write(start(1), start(0))  # two starts in one batch
    found = query(
        dsn,
        f'SELECT step_index, start_order FROM "{schema}".steps ORDER BY step_index',
    )
    assert found == [(0, 3), (1, 2), (2, 1)]


@pytest.mark.asyncio
async def test_a_saga_version_4_left_running_is_recovered_in_order(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Version 4's apply_writes reads the saga's highest start_order at every start; a
    # claim by this version counts on from it.
    at_version(dsn, schema, 4)
    store = old_store(dsn, schema, monkeypatch)
    await store.open()
    faults = FaultInjector().crash(take, compensation=True, index=1)
    crashing = SagaOrchestrator(store, compensation_retry=Retry(attempts=1))
    with faults, pytest.raises(SimulatedCrash):
        await crashing.execute(three_then_refused(), saga_id="v4-crashed")
    await simulate_restart(store)
    await store.close()
    monkeypatch.undo()
    orders = f'SELECT compensation, step_index, start_order FROM "{schema}".steps ORDER BY 3'
    before = [(False, 0, 1), (False, 1, 2), (False, 2, 3), (False, 3, 4), (True, 2, 5)]
    assert query(dsn, orders) == [*before, (True, 1, 6)]

    async with opened(dsn, schema) as store:
        [outcome] = await SagaOrchestrator(store).recover()
        assert outcome.status is SagaStatus.COMPENSATED
        recovered = await store.get("v4-crashed")
    assert recovered is not None
    assert compensations(recovered) == [(2, "completed"), (1, "completed"), (0, "completed")]
    assert query(dsn, orders) == [*before, (True, 1, 7), (True, 0, 8)]


def test_the_upgrade_command_migrates_an_earlier_version(dsn: str, schema: str) -> None:
    # An operator migrating ahead of a deploy, from the command line.
    import io

    from sagakit.cli import main

    at_version(dsn, schema, 1)
    out = io.StringIO()
    assert main(["--db", dsn, "--schema", schema, "upgrade", "--json"], out) == 0
    assert json.loads(out.getvalue()) == {
        "schema_version": _pg_schema.SCHEMA_VERSION,
        "previous_schema_version": 1,
    }
    [(version,)] = query(dsn, f'SELECT max(version) FROM "{schema}".schema_migrations')
    assert version == _pg_schema.SCHEMA_VERSION
    query(dsn, f'CREATE SCHEMA "{schema}_5"')
    try:
        at_version(dsn, f"{schema}_5", _pg_schema.SCHEMA_VERSION - 1)
        out = io.StringIO()
        assert main(["--db", dsn, "--schema", f"{schema}_5", "upgrade"], out) == 0
        assert out.getvalue() == (
            f"upgraded saga log schema {schema + '_5'!r} of the PostgreSQL database from "
            f"schema version {_pg_schema.SCHEMA_VERSION - 1} to {_pg_schema.SCHEMA_VERSION}\n"
        )
    finally:
        query(dsn, f'DROP SCHEMA IF EXISTS "{schema}_5" CASCADE')


@pytest.mark.parametrize("schema_exists", [True, False], ids=["empty-schema", "no-schema"])
def test_the_upgrade_command_creates_the_log_ahead_of_the_first_deploy(
    dsn: str, schema: str, schema_exists: bool
) -> None:
    # A role that may not create the log is told to run `sagakit upgrade` as a role that
    # may; on a database without the log yet, that command refused ("no saga log in
    # schema"), so the first deploy had to run the application as the privileged role.
    import io

    from sagakit.cli import main

    target = schema if schema_exists else f"{schema}_new"
    try:
        out = io.StringIO()
        assert main(["--db", dsn, "--schema", target, "upgrade"], out) == 0
        assert out.getvalue() == (
            f"created saga log schema {target!r} of the PostgreSQL database at schema "
            f"version {_pg_schema.SCHEMA_VERSION}\n"
        )
        [(version,)] = query(dsn, f'SELECT max(version) FROM "{target}".schema_migrations')
        assert version == _pg_schema.SCHEMA_VERSION
        out = io.StringIO()
        assert main(["--db", dsn, "--schema", target, "upgrade", "--json"], out) == 0
        assert json.loads(out.getvalue()) == {
            "schema_version": _pg_schema.SCHEMA_VERSION,
            "previous_schema_version": _pg_schema.SCHEMA_VERSION,
        }
        # The read-only commands still refuse a schema without a log rather than create one.
        missing = f"{schema}_absent"
        assert main(["--db", dsn, "--schema", missing, "list"], io.StringIO()) == 1
        assert query(dsn, "SELECT 1 FROM pg_namespace WHERE nspname = %s", (missing,)) == []
    finally:
        if not schema_exists:
            query(dsn, f'DROP SCHEMA IF EXISTS "{target}" CASCADE')


@pytest.mark.parametrize("command", [["list"], ["show", "old-1"], ["dead-letters"]])
def test_the_read_only_commands_refuse_an_earlier_version_naming_the_upgrade(
    dsn: str, schema: str, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: `sagakit list` of a newer sagakit, run by an operator during a rolling
    # upgrade, migrated the log (version 6 builds indexes, which holds every worker's
    # writes meanwhile) though it only reads; with a role that may only read, it failed
    # with "permission denied for schema", naming neither the versions nor the fix. The
    # SQLite log's read-only commands refuse an older version, naming `sagakit upgrade`.
    from sagakit.cli import main

    older = _pg_schema.SCHEMA_VERSION - 1
    at_version(dsn, schema, older)
    assert main(["--db", dsn, "--schema", schema, *command], io.StringIO()) == 1
    told = capsys.readouterr().err
    assert told == (
        f"sagakit: PostgreSQL schema {schema!r} is at saga-log version {older}, older than "
        f"this sagakit's ({_pg_schema.SCHEMA_VERSION}); `list`, `show` and `dead-letters` "
        f"do not migrate it: upgrade it with `sagakit --db ... --schema {schema} upgrade` "
        "(as a role that may migrate the schema), or open it once with a PostgresStore\n"
    )
    assert dsn not in told
    [(version,)] = query(dsn, f'SELECT max(version) FROM "{schema}".schema_migrations')
    assert version == older  # left as it was
    assert main(["--db", dsn, "--schema", schema, "upgrade"], io.StringIO()) == 0
    out = io.StringIO()
    assert main(["--db", dsn, "--schema", schema, "dead-letters"], out) == 0
    assert (out.getvalue(), capsys.readouterr().err) == ("no dead letters\n", "")
