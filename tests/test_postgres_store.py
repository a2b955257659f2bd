"""PostgresStore in one process: schema migrations, the log, idempotent ids, leases,
fencing, claims, dead letters, the event stream and the CLI, against a real server.

Several stores in one process stand for several workers: each has its own owner
id, pool and leases. Leases are expired with SQL rather than by waiting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import random
import re
import string
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from pg_helpers.db import expire, opened, query
from pg_helpers.roles import as_role, grant_reading
from sagakit import (
    LeaseLost,
    PostgresStore,
    SagaAlreadyExecuting,
    SagaAlreadyFailed,
    SagaDefinitionError,
    SagaOrchestrator,
    SagaStatus,
    SerializationError,
    StepFailed,
    StepStatus,
    StoreConfigError,
    StoreError,
    current_step,
    saga,
    step,
)
from sagakit._recovery import DEFAULT_MAX_ATTEMPTS, _recover_one
from sagakit.cli import main as cli_main
from sagakit.stores import RecoverableStore, _pg_schema
from sagakit.stores._pg_schema import SCHEMA_VERSION
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart
from sagakit.transitions import Transition, TransitionKind

RAN: Counter[tuple[str, int, str]] = Counter()
GATES: dict[str, asyncio.Event] = {}
ENTERED: dict[str, asyncio.Event] = {}


def _ran(kind: str) -> None:
    ctx = current_step()
    assert ctx is not None
    RAN[(ctx.saga_id, ctx.step_index, kind)] += 1


async def _held_at_gate(key: str) -> None:
    """Wait at the gate a test set at ``GATES[key]``, if any, saying so in ``ENTERED[key]``."""
    gate = GATES.get(key)
    if gate is not None:
        ENTERED[key].set()
        await gate.wait()


@step
async def act(n: int) -> list[str]:
    _ran("do")
    ctx = current_step()
    assert ctx is not None
    await _held_at_gate(f"{ctx.saga_id}:{ctx.step_index}")
    return [f"{ctx.saga_id}:{n}"]


@act.compensate
async def unact(result: list[str], n: int) -> list[str]:
    _ran("undo")
    ctx = current_step()
    assert ctx is not None
    await _held_at_gate(f"{ctx.saga_id}:undo{ctx.step_index}")
    return [f"undo {n}"]


@step
async def explode(n: int) -> None:
    _ran("do")
    raise ValueError(f"boom {n}")


@step
async def explode_undo(n: int) -> None:
    _ran("do")


@explode_undo.compensate
async def explode_undo_back(result: None, n: int) -> None:
    raise RuntimeError("cannot undo")


@step
async def explode_raw(n: int) -> None:
    # A message with text PostgreSQL cannot store as is: a NUL and a lone surrogate
    # (as a file name decoded with surrogateescape gives).
    raise ValueError(f"bad byte \x00 in caf\udce9 {n}")


@saga
def pg_fails_raw():  # type: ignore[no-untyped-def]
    yield act(0)
    yield explode_raw(1)


@saga
def pg_five(steps: int = 5):  # type: ignore[no-untyped-def]
    for n in range(steps):
        yield act(n)


@saga
def pg_fails():  # type: ignore[no-untyped-def]
    yield act(0)
    yield explode(1)


@saga
def pg_fails_late():  # type: ignore[no-untyped-def]
    yield act(0)
    yield act(1)
    yield explode(2)


@saga
def pg_fails_badly():  # type: ignore[no-untyped-def]
    yield explode_undo(0)
    yield explode(1)


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    RAN.clear()
    GATES.clear()
    ENTERED.clear()
    yield
    for gate in GATES.values():
        gate.set()


async def hang_at(orchestrator: SagaOrchestrator, saga_id: str, index: int) -> asyncio.Task[Any]:
    """Start ``pg_five`` as ``saga_id`` and wait until it is inside step ``index``."""
    key = f"{saga_id}:{index}"
    GATES[key] = asyncio.Event()
    ENTERED[key] = asyncio.Event()
    task = asyncio.create_task(orchestrator.execute(pg_five(), saga_id=saga_id))
    await ENTERED[key].wait()
    return task


# ---------------------------------------------------------------- no server needed


def test_importing_sagakit_does_not_import_psycopg() -> None:
    code = "import sys, sagakit; print('psycopg' in sys.modules, 'psycopg_pool' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"schema": "bad-name"}, "plain identifier"),
        ({"schema": '"; DROP TABLE x; --'}, "plain identifier"),
        # Regression: taken, and the first use failed with PostgreSQL's "unacceptable
        # schema name", told to check the DSN and that the server is up.
        ({"schema": "pg_sagas"}, "reserved for PostgreSQL's system schemas"),
        ({"lease": 0}, "lease must be a positive"),
        ({"lease": float("inf"), "heartbeat": 10}, "lease must be a positive, finite"),
        # Regression: finite but past what PostgreSQL adds to now(): every execute() then
        # failed with "timestamp out of range".
        ({"lease": 1e13, "heartbeat": 10}, "about 31,000 years"),
        ({"lease": 10**20, "heartbeat": 10}, "got 100000000000000000000"),
        ({"lease": 30, "heartbeat": float("nan")}, "heartbeat must be a positive"),
        # Too large for a float: each raised a bare OverflowError.
        ({"lease": 10**400, "heartbeat": 10}, "lease must be a positive, finite"),
        ({"lease": 30, "heartbeat": 10**400}, "heartbeat (inf s) must be shorter"),
        ({"connect_timeout": 10**400}, "connect_timeout must be a finite number"),
        ({"lease": 2, "heartbeat": 2}, "heartbeat (2 s) must be shorter"),
        # Regression: taken, and the store's first use failed with a bare OverflowError
        # ("cannot convert float infinity to integer") from its migration's lock timeout.
        ({"connect_timeout": float("inf")}, "connect_timeout must be a finite number"),
        ({"command_timeout": 0}, "command_timeout must be a positive number of seconds, got 0"),
        ({"command_timeout": "60"}, "command_timeout must be a positive number"),
        ({"command_timeout": True}, "command_timeout must be a positive number"),
        ({"command_timeout": float("nan")}, "command_timeout must be a positive number"),
        ({"command_timeout": float("inf")}, "command_timeout must be a finite number"),
        ({"command_timeout": 10**400}, "command_timeout must be a finite number"),
        ({"min_size": 0}, "min_size must be"),
        ({"min_size": 4, "max_size": 2}, "max_size (2) must be >= min_size (4)"),
        # Regression: taken, and the first execute() failed with an AttributeError.
        ({"serializer": 3}, "serializer must be a JsonSerializer (dumps and loads), got 3"),
    ],
)
def test_bad_options_raise_clear_errors(options: dict[str, Any], message: str) -> None:
    # A StoreConfigError: a SagaDefinitionError (also a TypeError) as the other stores' bad
    # settings are, and still a StoreError, which these were before. Regression: only a
    # StoreError, so `except SagaDefinitionError` caught SQLiteStore's bad settings and
    # PostgresStore.claim_orphans(limit=-1) but not PostgresStore(lease=0).
    with pytest.raises(StoreConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PostgresStore("postgresql://localhost/x", **options)
    with pytest.raises(SagaDefinitionError):
        PostgresStore("postgresql://localhost/x", **options)
    with pytest.raises(StoreError):
        PostgresStore("postgresql://localhost/x", **options)


@pytest.mark.asyncio
async def test_the_longest_lease_is_one_the_database_takes(dsn: str, schema: str) -> None:
    async with opened(dsn, schema, lease=1e12) as store:
        await SagaOrchestrator(store).execute(pg_five(2), saga_id="long-lease")
        assert await store.renew() == 0
        meta = await store.get("long-lease")
    assert meta is not None
    assert meta.status is SagaStatus.COMPLETED


def test_store_implements_the_recoverable_protocol() -> None:
    assert isinstance(PostgresStore("postgresql://localhost/x"), RecoverableStore)


@pytest.mark.asyncio
async def test_unreachable_server_gives_a_store_error() -> None:
    store = PostgresStore("postgresql://nobody@127.0.0.1:1/none", connect_timeout=0.5)
    with pytest.raises(StoreError, match="cannot open the PostgreSQL saga log"):
        await store.open()
    await store.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("suffix", "reason"),
    [
        ("?no_such_option=1", 'invalid URI query parameter: "no_such_option"'),
        ("_sagakit_no_such_db", 'database "test_sagakit_no_such_db" does not exist'),
    ],
)
async def test_a_bad_dsn_gives_its_reason_without_waiting(
    dsn: str, suffix: str, reason: str
) -> None:
    # The pool would retry in the background until connect_timeout and then report only
    # that it timed out; the reason must be in the error, and at once.
    if not dsn.endswith("/test"):
        pytest.skip("needs the test DSN to end with the database name /test")
    store = PostgresStore(dsn + suffix, connect_timeout=3600)
    try:
        async with asyncio.timeout(20):  # a guard, not a measurement
            with pytest.raises(StoreError, match="cannot open the PostgreSQL saga log") as info:
                await store.open()
    finally:
        await store.close()
    assert reason in str(info.value)


# ---------------------------------------------------------------- schema


def _with_lock_timeout(dsn: str, timeout: str) -> str:
    """``dsn`` for a session whose ``lock_timeout`` is ``timeout`` (as a role's would be)."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(dsn, options=f"-c lock_timeout={timeout}")


@pytest.mark.parametrize(
    "role_setting",
    [
        None,
        # Regression: a role's lock_timeout (below the time a migration takes, ~40 ms) made
        # every opener but the first fail on the migration's advisory lock, with a StoreError
        # telling to check the DSN and that the server is up.
        "lock_timeout=1ms",
        # Regression: as under a short lock_timeout, a role's statement_timeout (below the
        # time another opener's migration takes) cancelled every opener's wait for the
        # migration's lock but the first one's, with a StoreError telling to check the DSN
        # and that the server is up. The migration now waits as long as connect_timeout.
        "statement_timeout=20ms",
    ],
)
@pytest.mark.asyncio
async def test_concurrent_openers_migrate_the_schema_once(
    dsn: str, schema: str, role_setting: str | None
) -> None:
    from psycopg.conninfo import make_conninfo

    session = dsn if role_setting is None else make_conninfo(dsn, options=f"-c {role_setting}")
    stores = [PostgresStore(session, schema=schema) for _ in range(4)]
    try:
        await asyncio.gather(*(store.open() for store in stores))
    finally:
        for store in stores:
            await store.close()
    versions = query(dsn, f'SELECT version FROM "{schema}".schema_migrations ORDER BY version')
    assert versions == [(version,) for version in range(1, SCHEMA_VERSION + 1)]


@pytest.mark.parametrize(
    "setting",
    ["0", "1", "20", "999", "1000", "1500", "60000", "90000", "3600000", "86400000", "2147483647"],
)
def test_a_statement_timeout_as_show_gives_it_is_read_in_milliseconds(
    dsn: str, setting: str
) -> None:
    # The migration lengthens a role's short statement_timeout, read with SHOW (cheap,
    # where the pg_settings scan it replaced outlasted a 20 ms timeout on a loaded server).
    from sagakit.stores._pg_schema import shown_milliseconds

    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"SET statement_timeout = {setting}")
        row = conn.execute("SHOW statement_timeout").fetchone()
    assert row is not None
    assert shown_milliseconds(row[0]) == int(setting), row[0]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("role_timeout", "value"),
    # A statement_timeout well under connect_timeout, yet one that the store's other
    # statements (not lengthened) keep to on a loaded machine: 1 ms made the test flaky.
    [("lock_timeout", "1ms"), ("statement_timeout", "50ms")],
)
async def test_a_migration_held_up_past_connect_timeout_names_the_fix(
    dsn: str, schema: str, role_timeout: str, value: str
) -> None:
    psycopg = pytest.importorskip("psycopg")
    from psycopg.conninfo import make_conninfo

    key = _pg_schema.lock_key(schema, "migrate")
    with psycopg.connect(dsn) as holder:  # another process migrating, for ever
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        short = make_conninfo(dsn, options=f"-c {role_timeout}={value}")
        store = PostgresStore(short, schema=schema, connect_timeout=0.2)
        with pytest.raises(StoreError, match=r"waited 0\.2 s for a lock") as raised:
            await store.open()
        assert "upgrade" in str(raised.value)
        holder.rollback()
    async with opened(dsn, schema):  # once it is free, the schema migrates
        pass


@pytest.mark.asyncio
async def test_a_write_waits_for_a_lock_past_the_roles_lock_timeout(dsn: str, schema: str) -> None:
    # Regression: under a role's lock_timeout, a batch waiting for a lock another session
    # (another worker's batch, its heartbeat, the event stream's lock) held a little
    # longer was refused, and its saga failed and compensated; under load, with 20 ms,
    # some sagas in a thousand did. The store's connections wait for the locks they need.
    psycopg = pytest.importorskip("psycopg")
    app = f"sk_lock_{schema}"
    short = _with_lock_timeout(f"{dsn}?application_name={app}", "1ms")
    async with opened(short, schema) as store:
        GATES["held:0"] = asyncio.Event()
        ENTERED["held:0"] = asyncio.Event()
        running = asyncio.create_task(SagaOrchestrator(store).execute(pg_five(3), saga_id="held"))
        await ENTERED["held:0"].wait()
        async with await psycopg.AsyncConnection.connect(dsn) as blocker:
            await blocker.execute(
                f'SELECT 1 FROM "{schema}".sagas WHERE saga_id = %s FOR UPDATE', ("held",)
            )
            GATES["held:0"].set()
            waiting = (
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                "AND wait_event_type = 'Lock'"
            )
            deadline = asyncio.get_running_loop().time() + 60
            while not query(dsn, waiting, (app,)) and not running.done():
                assert asyncio.get_running_loop().time() < deadline, "the write never waited"
                await asyncio.sleep(0.01)
            await blocker.rollback()
        assert await running == ["held:0", "held:1", "held:2"]
    assert not [key for key in RAN if key[2] == "undo"]


@pytest.mark.asyncio
async def test_a_schema_at_version_1_is_upgraded_and_keeps_working(dsn: str, schema: str) -> None:
    # Version 1 applied writes through apply_batch; version 2 adds apply_writes, and
    # version 3 the write tokens (sagas.last_write) that settle a commit in doubt, and
    # version 4 the order records are listed in (steps.start_order, sagas.finish_order).
    async with opened(dsn, schema) as store:
        await SagaOrchestrator(store).execute(pg_five(2), saga_id="before")
    query(dsn, f'DROP FUNCTION "{schema}".apply_writes(jsonb, jsonb, jsonb)')
    query(dsn, f'ALTER TABLE "{schema}".sagas DROP COLUMN last_write, DROP COLUMN finish_order')
    query(dsn, f'ALTER TABLE "{schema}".steps DROP COLUMN start_order')
    query(dsn, f'DELETE FROM "{schema}".schema_migrations WHERE version > 1')
    async with opened(dsn, schema) as store:
        await SagaOrchestrator(store).execute(pg_five(3), saga_id="after")
        after = await store.get("after")
        assert after is not None
        assert after.status is SagaStatus.COMPLETED
        assert [s.name for s in after.steps] == ["act", "act", "act"]
        stream = await store.read_events()
        assert [e.saga_id for e in stream] == ["before"] * 2 + ["after"] * 3
    versions = query(dsn, f'SELECT version FROM "{schema}".schema_migrations ORDER BY version')
    assert versions == [(version,) for version in range(1, SCHEMA_VERSION + 1)]


@pytest.mark.asyncio
async def test_read_events_refuses_an_event_it_cannot_read_back_as_sqlite_does(
    dsn: str, schema: str
) -> None:
    # Regression: the stream handed such an event over as its raw JSON (a tagged dict),
    # so a projection applied a dict in place of the event and saved its position;
    # SQLite raises, naming the event.
    gone = '{"__sk__":"enum","t":"no_such_module_xyz:Gone","v":1}'
    async with opened(dsn, schema) as store:
        await SagaOrchestrator(store).execute(pg_five(2), saga_id="odd")
        first, second = await store.read_events()
        query(
            dsn,
            f"UPDATE \"{schema}\".events SET data = '{gone}' "
            f"WHERE position = {second.position} RETURNING 1",
        )
        pattern = rf"event #{second.position} of saga 'odd': .*no_such_module_xyz"
        with pytest.raises(SerializationError, match=pattern):
            await store.read_events()
        with pytest.raises(SerializationError, match=pattern):
            await store.read_events(saga_id="odd")
        assert await store.read_events(limit=1) == [first]
        assert await store.read_events(after=second.position) == []


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("window", "message"),
    [
        ({"limit": 0}, "limit must be a whole number > 0, got 0"),
        ({"limit": None}, "limit must be a whole number > 0, got None"),
        ({"limit": -1}, "limit must be a whole number > 0, got -1"),
        ({"limit": True}, "limit must be a whole number > 0, got True"),
        ({"limit": 1.5}, "limit must be a whole number > 0, got 1.5"),
        ({"after": -5}, "after must be a position >= 0, got -5"),
        ({"after": "0"}, "after must be a position >= 0, got '0'"),
        # Past a 64-bit integer: SQLite raised OverflowError, PostgreSQL its driver's error.
        ({"after": 2**63}, f"after must be at most {2**63 - 1}, got {2**63}"),
        ({"limit": 2**64}, f"limit must be at most {2**63 - 1}, got {2**64}"),
    ],
)
async def test_read_events_refuses_a_window_that_is_no_position_and_page_as_sqlite_does(
    durable_store: Any, window: dict[str, Any], message: str
) -> None:
    # Regression: PostgreSQL answered limit=0 with no events (a consumer paging with
    # `while page := read_events(...)` stopped as if at the end of the stream), read
    # the whole stream for limit=None, and gave the driver's error for a negative limit.
    store = durable_store()
    try:
        await SagaOrchestrator(store).execute(pg_five(2), saga_id="window")
        with pytest.raises(SagaDefinitionError, match=re.escape(message)):
            await store.read_events(**window)
        assert len(await store.read_events(limit=1)) == 1
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_a_role_owning_an_existing_schema_opens_it_without_the_right_to_create_one(
    dsn: str, role: str
) -> None:
    # Regression: docs/postgres.md says the user needs the right to create a schema "or
    # an existing schema it owns", but the migration ran CREATE SCHEMA IF NOT EXISTS,
    # which PostgreSQL refuses without the right to create schemas even when the schema
    # exists: "permission denied for database".
    schema = f"sk_owned_{uuid.uuid4().hex[:8]}"
    query(dsn, f'CREATE SCHEMA "{schema}" AUTHORIZATION "{role}"')
    async with opened(as_role(dsn, role), schema) as store:
        await SagaOrchestrator(store).execute(pg_five(2), saga_id="owned")
        meta = await store.get("owned")
    assert meta is not None
    assert meta.status is SagaStatus.COMPLETED
    versions = query(dsn, f'SELECT version FROM "{schema}".schema_migrations ORDER BY version')
    assert versions == [(version,) for version in range(1, SCHEMA_VERSION + 1)]


@pytest.mark.asyncio
async def test_a_reader_of_a_schema_from_a_newer_sagakit_is_told_to_upgrade(
    dsn: str, schema: str, role: str
) -> None:
    # Regression: a role that may only read the log (an operator's `sagakit list`) got
    # "permission denied" from the migration's DDL instead of "upgrade sagakit".
    async with opened(dsn, schema):
        pass
    query(dsn, f'INSERT INTO "{schema}".schema_migrations (version) VALUES (99) RETURNING 1')
    grant_reading(dsn, schema, role)
    store = PostgresStore(as_role(dsn, role), schema=schema)
    with pytest.raises(StoreError, match=r"version 99, newer than this sagakit.*upgrade sagakit"):
        await store.open()


@pytest.mark.asyncio
async def test_a_role_that_may_only_read_the_log_is_told_the_grants_to_write(
    dsn: str, schema: str, role: str
) -> None:
    # Regression: a write refused for want of a right raised a StoreError holding the
    # server's PL/pgSQL context (twenty lines of SQL), and named no grant.
    async with opened(dsn, schema):
        pass
    grant_reading(dsn, schema, role)
    async with opened(as_role(dsn, role), schema) as store:
        for saga_id in ("ro-explicit", None):  # its start alone, or staged with its first step
            with pytest.raises(
                StoreError, match="InsufficientPrivilege: permission denied"
            ) as raised:
                await SagaOrchestrator(store).execute(pg_five(2), saga_id=saga_id)
            message = str(raised.value)
            assert "\n" not in message
            assert "PL/pgSQL" not in message
            assert f"USAGE on schema {schema} and SELECT, INSERT, UPDATE, DELETE" in message
    query(dsn, f'GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"')
    async with opened(as_role(dsn, role), schema) as store:  # the grants named are enough
        await SagaOrchestrator(store).execute(pg_five(2), saga_id="granted")
        meta = await store.get("granted")
    assert meta is not None
    assert meta.status is SagaStatus.COMPLETED


@pytest.mark.asyncio
async def test_a_role_that_may_not_create_the_schema_is_told_the_fix(dsn: str, role: str) -> None:
    # Regression: the migration's "permission denied for database" came with the fix for
    # an unreachable server: "check the DSN and that the server is up".
    store = PostgresStore(as_role(dsn, role), schema=f"sk_denied_{uuid.uuid4().hex[:8]}")
    with pytest.raises(StoreError, match="permission denied") as raised:
        await store.open()
    message = str(raised.value)
    assert "check the DSN" not in message
    assert "CREATE on the database" in message
    assert "upgrade" in message


@pytest.mark.asyncio
async def test_a_reader_of_a_schema_from_an_older_sagakit_is_told_to_upgrade_it(
    dsn: str, schema: str, role: str
) -> None:
    async with opened(dsn, schema):
        pass
    query(dsn, f'DELETE FROM "{schema}".schema_migrations WHERE version = %s', (SCHEMA_VERSION,))
    grant_reading(dsn, schema, role)
    store = PostgresStore(as_role(dsn, role), schema=schema)
    with pytest.raises(StoreError, match=rf"--schema {schema} upgrade") as raised:
        await store.open()
    assert "check the DSN" not in str(raised.value)


@pytest.mark.asyncio
async def test_a_schema_from_a_newer_sagakit_is_refused(dsn: str, schema: str) -> None:
    async with opened(dsn, schema):
        pass
    query(dsn, f'INSERT INTO "{schema}".schema_migrations (version) VALUES (99) RETURNING 1')
    store = PostgresStore(dsn, schema=schema)
    with pytest.raises(StoreError, match="version 99, newer than this sagakit"):
        await store.open()


# ---------------------------------------------------------------- the log


@pytest.mark.asyncio
async def test_a_saga_is_logged_with_one_round_trip_per_state_change(dsn: str, schema: str) -> None:
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        before = store.stats
        events = await orchestrator.execute(pg_five(), saga_id="logged")
        after = store.stats
        # begin, 5 x (started, completed), finished: 12 state changes, every one written
        # (11 through the writer), in one round trip each at most (completions are
        # written with the next start when the orchestrator stages them).
        assert after.writes - before.writes == 11
        assert after.round_trips - before.round_trips <= 12
        assert after.round_trips - before.round_trips == after.statements - before.statements
        assert events == [f"logged:{n}" for n in range(5)]

        meta = await orchestrator.get_saga("logged")
        assert meta is not None
        assert meta.status is SagaStatus.COMPLETED
        assert meta.steps_executed == 5
        assert meta.total_steps == 5
        assert list(meta.events) == events
        assert [s.name for s in meta.steps] == ["act"] * 5
        assert meta.finished_at is not None
        assert meta.started_at is not None
        assert meta.finished_at >= meta.started_at
        assert await orchestrator.history_count() == 1
        assert await orchestrator.running_count() == 0
        assert [m.id for m in await orchestrator.get_history()] == ["logged"]


@pytest.mark.asyncio
async def test_a_failed_saga_logs_its_compensations(dsn: str, schema: str) -> None:
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        with pytest.raises(Exception, match="boom 1"):
            await orchestrator.execute(pg_fails(), saga_id="undone")
        meta = await store.get("undone")
        assert meta is not None
        assert meta.status is SagaStatus.COMPENSATED
        assert [(s.name, str(s.status)) for s in meta.steps] == [
            ("act", "completed"),
            ("explode", "failed"),
        ]
        assert meta.steps[1].error == "ValueError: boom 1"
        assert [(c.name, str(c.status)) for c in meta.compensations] == [("act", "completed")]
        assert meta.compensation_events == ("undo 0",)
        stream = await store.read_events()
        assert [(e.step_name, e.compensation, e.event) for e in stream] == [
            ("act", False, "undone:0"),
            ("act", True, "undo 0"),
        ]


@pytest.mark.asyncio
async def test_an_error_message_postgres_cannot_store_is_logged_escaped(
    dsn: str, schema: str
) -> None:
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        with pytest.raises(StepFailed, match="bad byte"):
            await orchestrator.execute(pg_fails_raw(), saga_id="raw")
        meta = await store.get("raw")
        assert meta is not None
        assert meta.status is SagaStatus.COMPENSATED
        assert meta.steps[1].error == "ValueError: bad byte \\x00 in caf\\udce9 1"
        assert meta.error is not None
        assert meta.error.endswith("failed: ValueError: bad byte \\x00 in caf\\udce9 1")
        assert [(c.name, str(c.status)) for c in meta.compensations] == [("act", "completed")]


@pytest.mark.asyncio
async def test_concurrent_sagas_share_batched_writes(dsn: str, schema: str) -> None:
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        ids = [f"batch-{n}" for n in range(50)]
        await asyncio.gather(*(orchestrator.execute(pg_five(), saga_id=i) for i in ids))
        stats = store.stats
        assert stats.writes == 50 * 11  # every write of every saga, none skipped
        assert stats.batches < stats.writes  # but sent together
        statuses = dict(query(dsn, f'SELECT saga_id, status FROM "{schema}".sagas'))
        assert statuses == dict.fromkeys(ids, "completed")
        assert sorted(RAN.values()) == [1] * 250


@pytest.mark.asyncio
async def test_a_write_the_server_rejects_fails_only_its_own_saga(dsn: str, schema: str) -> None:
    async with opened(dsn, schema) as store:
        # One saga's step rows are refused by the server (a stand-in for any write
        # that one saga alone gets wrong); the sagas batched with it must not suffer.
        query(
            dsn,
            f'CREATE FUNCTION "{schema}".refuse() RETURNS trigger LANGUAGE plpgsql AS '
            "$$ BEGIN RAISE EXCEPTION 'refused for %', NEW.saga_id; END $$",
        )
        query(
            dsn,
            f'CREATE TRIGGER refuse BEFORE INSERT ON "{schema}".steps FOR EACH ROW '
            f"WHEN (NEW.saga_id = 'poison') EXECUTE FUNCTION \"{schema}\".refuse()",
        )
        orchestrator = SagaOrchestrator(store)
        ids = [f"mate-{n}" for n in range(20)]
        outcomes = await asyncio.gather(
            *(orchestrator.execute(pg_five(), saga_id=i) for i in [*ids[:10], "poison", *ids[10:]]),
            return_exceptions=True,
        )
        poisoned = outcomes.pop(10)
        assert isinstance(poisoned, StoreError), poisoned
        assert "refused for poison" in str(poisoned)
        assert all(isinstance(outcome, list) for outcome in outcomes), outcomes
        statuses = dict(query(dsn, f'SELECT saga_id, status FROM "{schema}".sagas'))
        assert {i: statuses[i] for i in ids} == dict.fromkeys(ids, "completed")
        assert sorted(RAN[k] for k in RAN if k[0] != "poison") == [1] * 100


@pytest.mark.asyncio
async def test_a_generated_id_is_inserted_with_its_first_step_start(dsn: str, schema: str) -> None:
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        before = store.stats
        events = await orchestrator.execute(pg_five())
        after = store.stats
        # No round trip of its own for the start: 6 in all (5 step starts, the finish).
        assert after.round_trips - before.round_trips == 6
        saga_id = events[0].split(":")[0]
        rows = query(
            dsn,
            f'SELECT status, explicit_id, owner, fence FROM "{schema}".sagas WHERE saga_id = %s',
            (saga_id,),
        )
        assert rows == [("completed", False, None, 1)]
        assert [e.saga_id for e in await store.read_events()] == [saga_id] * 5


@pytest.mark.asyncio
async def test_generated_ids_in_flight_start_in_shared_statements(dsn: str, schema: str) -> None:
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        await asyncio.gather(*(orchestrator.execute(pg_five()) for _ in range(50)))
        stats = store.stats
        assert stats.writes == 50 * 11
        assert stats.statements < 50  # fewer statements than sagas: starts were batched too
        statuses = query(dsn, f'SELECT status, count(*) FROM "{schema}".sagas GROUP BY status')
        assert statuses == [("completed", 50)]
        assert sorted(RAN.values()) == [1] * 250


@pytest.mark.asyncio
async def test_a_new_row_sent_again_by_its_worker_is_no_conflict(dsn: str, schema: str) -> None:
    # A write whose caller was cancelled may have gone out; the next one carries the
    # row again. Only another worker's row under that id is refused.
    async with opened(dsn, schema):
        pass

    def apply(owner: str, status: str) -> list[tuple[Any, ...]]:
        write = {"saga_id": "g-1", "fence": 1, "status": status, "final": False}
        new = {"saga_id": "g-1", "name": "pg_five", "factory": True, "policy": "resume",
               "args": "[]", "kwargs": "{}", "owner": owner, "lease": 30}  # fmt: skip
        return query(
            dsn,
            f'SELECT * FROM "{schema}".apply_writes(%s::jsonb, %s::jsonb, %s::jsonb)',
            (json.dumps([write]), "[]", json.dumps([new])),
        )

    assert apply("worker-a", "executing") == []
    assert apply("worker-a", "compensating") == []  # its own row: applied
    assert apply("worker-b", "failed") == [("g-1", "exists")]
    rows = query(dsn, f'SELECT status, owner FROM "{schema}".sagas')
    assert rows == [("compensating", "worker-a")]


@pytest.mark.asyncio
async def test_unserializable_arguments_fail_before_anything_runs(dsn: str, schema: str) -> None:
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        with pytest.raises(SerializationError, match="arguments of saga 'pg_five'"):
            await orchestrator.execute(pg_five(object()))  # type: ignore[arg-type]
        assert not RAN
        assert await store.running_count() == 0


@pytest.mark.asyncio
async def test_recording_a_saga_the_store_does_not_own_is_refused(dsn: str, schema: str) -> None:
    async with opened(dsn, schema) as a, opened(dsn, schema) as b:
        task = await hang_at(SagaOrchestrator(a), "owned-by-a", 1)
        from sagakit._runs import SagaRun
        from sagakit.transitions import Transition, TransitionKind

        run = SagaRun("owned-by-a", pg_five(), True, 0.0, SagaOrchestrator()._ref)
        transition = Transition(
            TransitionKind.STEP_STARTED, "owned-by-a", "pg_five", SagaStatus.EXECUTING, 1, "act"
        )
        with pytest.raises(StoreError, match="neither begun nor claimed by this store"):
            await b.record(run, transition)
        GATES["owned-by-a:1"].set()
        await task


# ---------------------------------------------------------------- idempotent ids


@pytest.mark.asyncio
async def test_same_id_on_two_workers_is_decided_by_the_database(dsn: str, schema: str) -> None:
    async with opened(dsn, schema) as a, opened(dsn, schema) as b:
        task = await hang_at(SagaOrchestrator(a), "once", 2)
        with pytest.raises(SagaAlreadyExecuting):
            await SagaOrchestrator(b).execute(pg_five(), saga_id="once")
        GATES["once:2"].set()
        first = await task
        again = await SagaOrchestrator(b).execute(pg_five(), saga_id="once")
        assert again == first  # the recorded result, nothing run again
        assert sorted(RAN.values()) == [1] * 5


@pytest.mark.asyncio
async def test_an_id_the_log_cannot_hold_is_refused_before_its_row_is_written(
    dsn: str, schema: str
) -> None:
    # Regression: an id of 2,690 random letters fitted the sagas table's index but not
    # the steps table's: its row went in, its first step's start was refused, and it
    # stayed EXECUTING, an orphan every worker claimed and failed to run.
    # Random letters: PostgreSQL compresses a repetitive id into a short index entry.
    letters = random.Random(7)
    longest = "".join(letters.choices(string.ascii_letters, k=2048))
    too_long = "".join(letters.choices(string.ascii_letters, k=2690))
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        for saga_id, message in (
            (too_long, "2690 bytes of UTF-8, longer than"),
            ("a\x00b", "NUL"),
        ):
            with pytest.raises(StoreError, match=message):
                await orchestrator.execute(pg_five(2), saga_id=saga_id)
        # Not valid Unicode: refused before any store sees it, as by every store.
        with pytest.raises(SagaDefinitionError, match="valid Unicode text"):
            await orchestrator.execute(pg_five(2), saga_id="caf\udce9")
        assert not RAN
        assert await store.running_count() == 0
        await orchestrator.execute(pg_five(2), saga_id=longest)  # the longest id it takes
        meta = await store.get(longest)
        assert meta is not None
        assert meta.status == SagaStatus.COMPLETED


@pytest.mark.asyncio
async def test_a_generated_id_already_in_the_log_is_refused_before_anything_runs(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Generated ids carry 80 random bits per process, but if one ever met an id
    # already logged, the run must not be answered with that saga's result.
    monkeypatch.setattr("sagakit._orchestrator.new_saga_id", lambda: "generated-twice")
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        assert await orchestrator.execute(pg_five(1)) == ["generated-twice:0"]
        with pytest.raises(StoreError, match="already in the saga log"):
            await orchestrator.execute(pg_five(2))
        meta = await store.get("generated-twice")
        assert meta is not None
        assert len(meta.steps) == 1  # the first run's, untouched


@pytest.mark.asyncio
async def test_a_generated_id_whose_first_write_may_have_committed_is_still_finished(
    dsn: str, schema: str
) -> None:
    # The connection is lost after the server committed the write carrying the row, so
    # the write's outcome is unknown. The store looks it up (its token is in the row):
    # it committed, so the run goes on, nothing is written twice, and its end reaches
    # the log (not "executing" there, for another worker to run once its lease ends).
    async with opened(dsn, schema) as store:
        send = store._writer._send
        sent = 0

        async def answer_lost(writes: list[Any]) -> dict[str, str]:
            nonlocal sent
            sent += 1
            refused = await send(writes)
            if sent == 1:
                raise ConnectionError("connection lost before the answer came")
            return refused

        store._writer._send = answer_lost
        result = await SagaOrchestrator(store).execute(pg_five(2))
        assert sorted(RAN.values()) == [1, 1]
        rows = query(dsn, f'SELECT status, owner, finished_at IS NOT NULL FROM "{schema}".sagas')
        assert rows == [("completed", None, True)]
        assert [e.event for e in await store.read_events()] == result


@pytest.mark.asyncio
async def test_failed_ids_are_refused_until_resolved(dsn: str, schema: str) -> None:
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        with pytest.raises(Exception, match="cannot undo"):
            await orchestrator.execute(pg_fails_badly(), saga_id="bad")
        with pytest.raises(SagaAlreadyFailed):
            await orchestrator.execute(pg_fails_badly(), saga_id="bad")
        await store.resolve("bad", "refunded by hand")
        meta = await store.get("bad")
        assert meta is not None
        assert meta.error is not None
        assert meta.error.startswith("resolved by an operator: refunded by hand")
        # Resolved: the id may run again, as a fresh run with a fresh log.
        assert await orchestrator.execute(pg_five(1), saga_id="bad") == ["bad:0"]
        meta = await store.get("bad")
        assert meta is not None
        assert (meta.status, [s.name for s in meta.steps]) == (SagaStatus.COMPLETED, ["act"])


@pytest.mark.asyncio
async def test_a_compensated_id_can_run_again(dsn: str, schema: str) -> None:
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        with pytest.raises(Exception, match="boom"):
            await orchestrator.execute(pg_fails(), saga_id="retry-me")
        assert await orchestrator.execute(pg_five(2), saga_id="retry-me") == [
            "retry-me:0",
            "retry-me:1",
        ]
        meta = await store.get("retry-me")
        assert meta is not None
        assert meta.compensations == ()


# ---------------------------------------------------------------- leases and fencing


async def _lease_left(dsn: str, schema: str, saga_id: str) -> float:
    ((left,),) = query(
        dsn,
        f'SELECT extract(epoch FROM lease_until - now()) FROM "{schema}".sagas WHERE saga_id = %s',
        (saga_id,),
    )
    return float(left)


@pytest.mark.asyncio
async def test_heartbeat_renews_every_lease_in_one_statement(dsn: str, schema: str) -> None:
    async with opened(dsn, schema, lease=30.0, heartbeat=10.0) as store:
        orchestrator = SagaOrchestrator(store)
        tasks = [await hang_at(orchestrator, f"beat-{n}", 0) for n in range(3)]
        query(dsn, f"UPDATE \"{schema}\".sagas SET lease_until = now() + interval '1 second'")
        before = store.stats.statements
        assert await store.renew() == 3
        assert store.stats.statements == before + 1
        for n in range(3):
            assert await _lease_left(dsn, schema, f"beat-{n}") > 20
        for n in range(3):
            GATES[f"beat-{n}:0"].set()
        await asyncio.gather(*tasks)
        assert await store.renew() == 0  # finished sagas hold no lease


@pytest.mark.asyncio
async def test_claims_take_only_expired_leases_and_never_the_same_saga(
    dsn: str, schema: str
) -> None:
    async with opened(dsn, schema) as owner:
        orchestrator = SagaOrchestrator(owner)
        tasks = [await hang_at(orchestrator, f"orphan-{n}", 1) for n in range(10)]
        for n in range(8):
            expire(dsn, schema, f"orphan-{n}")
        rivals = [PostgresStore(dsn, schema=schema) for _ in range(4)]
        try:
            claims = await asyncio.gather(
                *(rival.claim_orphans(limit=3, names={"pg_five"}) for rival in rivals)
            )
            taken = [orphan.saga_id for claim in claims for orphan in claim]
            assert sorted(taken) == [f"orphan-{n}" for n in range(8)]  # each exactly once
            assert all(len(claim) <= 3 for claim in claims)
            orphan = next(o for claim in claims for o in claim)
            assert [s.status for s in orphan.completed_steps] == ["completed"]
            assert orphan.steps[1].status == "running"  # interrupted inside step 1
            assert orphan.recovery_attempts == 1
            assert orphan.args == (5,) or orphan.args == ()
            assert not await rivals[0].claim_orphans(names={"another_saga"})
        finally:
            for rival in rivals:
                await rival.close()
        for n in range(10):
            GATES[f"orphan-{n}:1"].set()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        lost = [o for o in outcomes if isinstance(o, LeaseLost)]
        assert len(lost) == 8  # the claimed ones are fenced out of their old owner
        assert sum(isinstance(o, list) for o in outcomes) == 2


@pytest.mark.asyncio
async def test_a_fenced_out_worker_stops_the_saga_without_compensating(
    dsn: str, schema: str
) -> None:
    async with opened(dsn, schema) as a, opened(dsn, schema) as b:
        task = await hang_at(SagaOrchestrator(a), "fenced", 2)
        expire(dsn, schema, "fenced")
        (orphan,) = await b.claim_orphans()
        assert orphan.saga_id == "fenced"
        GATES["fenced:2"].set()  # the old owner wakes up and tries to record step 2
        with pytest.raises(LeaseLost, match="fenced"):
            await task
        assert not a.owns("fenced")
        assert RAN[("fenced", 3, "do")] == 0  # no further step
        assert not [key for key in RAN if key[2] == "undo"]  # and no compensation
        (fence,) = query(dsn, f'SELECT DISTINCT fence FROM "{schema}".steps WHERE step_index = 2')
        assert fence == (1,)  # only the old owner's STEP_STARTED, written before the claim
        # The new owner finishes it from the log it claimed (step 2 was interrupted).
        outcome = await _recover_one(SagaOrchestrator(b), b, orphan, DEFAULT_MAX_ATTEMPTS)
        assert (outcome.action, outcome.status) == ("resumed", SagaStatus.COMPLETED)
        assert [RAN[("fenced", n, "do")] for n in range(5)] == [1, 1, 2, 1, 1]


@pytest.mark.asyncio
async def test_release_hands_sagas_over_without_counting_a_crash(dsn: str, schema: str) -> None:
    async with opened(dsn, schema, lease=60.0, heartbeat=20.0) as a, opened(dsn, schema) as b:
        task = await hang_at(SagaOrchestrator(a), "handed", 1)
        assert await b.claim_orphans() == []  # a live lease is never claimed
        assert await a.release_leases() == 1
        (orphan,) = await b.claim_orphans()
        assert orphan.recovery_attempts == 0
        GATES["handed:1"].set()
        with pytest.raises(LeaseLost):
            await task
        await b.dead_letter("handed", "test over")


# ---------------------------------------------------------------- dead letters


@pytest.mark.asyncio
async def test_a_saga_parked_for_its_attempts_is_logged_with_why_and_the_fix(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: its ERROR record said only "too many recovery attempts", as SQLite's did.
    async with opened(dsn, schema) as a, opened(dsn, schema) as b, opened(dsn, schema) as c:
        task = await hang_at(SagaOrchestrator(a), "logged-park", 1)
        expire(dsn, schema, "logged-park")
        assert len(await c.claim_orphans(max_attempts=1)) == 1  # a worker that then dies
        expire(dsn, schema, "logged-park")
        caplog.set_level(logging.INFO, logger="sagakit")
        assert await b.claim_orphans(max_attempts=1) == []  # attempt 2 > 1: parked
        (letter,) = await b.dead_letters()
        [parked] = [r for r in caplog.records if "parked saga" in r.getMessage()]
        assert parked.levelno == logging.ERROR
        assert parked.getMessage() == (
            f"sagakit parked saga pg_five (logged-park): {letter.reason}; "
            "`sagakit resume` it once its cause is fixed, or `sagakit resolve` it"
        )
        GATES["logged-park:1"].set()
        with pytest.raises(LeaseLost):
            await task


@pytest.mark.asyncio
async def test_dead_letters_resume_and_resolve(dsn: str, schema: str) -> None:
    async with opened(dsn, schema) as a, opened(dsn, schema) as b, opened(dsn, schema) as c:
        task = await hang_at(SagaOrchestrator(a), "crashy", 1)
        expire(dsn, schema, "crashy")
        assert len(await c.claim_orphans(max_attempts=1)) == 1  # a worker that then dies
        expire(dsn, schema, "crashy")
        assert await b.claim_orphans(max_attempts=1) == []  # attempt 2 > 1: parked
        (letter,) = await a.dead_letters()
        assert (letter.saga_id, letter.recovery_attempts) == ("crashy", 1)
        assert "max_attempts=1" in letter.reason
        assert await b.claim_orphans() == []  # parked sagas are never claimed
        assert await b.running_count() == 0
        meta = await b.get("crashy")
        assert meta is not None
        # Why it is parked, beside its own error (none: it was executing).
        assert (meta.dead_letter, meta.error) == (letter.reason, None)

        await b.resume_dead_letter("crashy")
        (again,) = await b.claim_orphans(max_attempts=1)
        assert again.recovery_attempts == 1
        await b.dead_letter("crashy", "operator wants it parked")
        assert [d.reason for d in await b.dead_letters()] == ["operator wants it parked"]
        with pytest.raises(StoreError, match="no saga 'nope'"):
            await b.resume_dead_letter("nope")
        with pytest.raises(StoreError, match="no saga 'nope'"):
            await b.resolve("nope", "?")
        await b.resolve("crashy", "fixed by hand")
        assert await b.dead_letters() == []
        meta = await b.get("crashy")
        assert meta is not None
        assert meta.status is SagaStatus.FAILED
        GATES["crashy:1"].set()
        with pytest.raises(LeaseLost):
            await task


@pytest.mark.asyncio
async def test_a_running_saga_with_a_live_owner_cannot_be_resolved(dsn: str, schema: str) -> None:
    async with opened(dsn, schema) as store:
        task = await hang_at(SagaOrchestrator(store), "busy", 0)
        with pytest.raises(StoreError, match="is executing and not dead-lettered"):
            await store.resolve("busy", "no")
        GATES["busy:0"].set()
        await task


@pytest.mark.asyncio
async def test_an_unreadable_log_is_dead_lettered_with_the_reason(dsn: str, schema: str) -> None:
    async with opened(dsn, schema) as a, opened(dsn, schema) as b:
        task = await hang_at(SagaOrchestrator(a), "garbled", 1)
        expire(dsn, schema, "garbled")
        query(
            dsn,
            f'UPDATE "{schema}".sagas SET args = \'{{"__sk__": "nope"}}\' RETURNING 1',
        )
        assert await b.claim_orphans() == []
        (letter,) = await b.dead_letters()
        assert "cannot be read back" in letter.reason
        GATES["garbled:1"].set()
        with pytest.raises(LeaseLost):
            await task


@pytest.mark.asyncio
async def test_an_unreadable_log_is_parked_naming_the_value_that_cannot_be_read(
    dsn: str, schema: str
) -> None:
    # Regression: the reason said only "stored value has type ...", not whether the
    # saga's arguments or which step's result could not be read back.
    gone = '{"__sk__":"enum","t":"no_such_module_xyz:Gone","v":1}'
    async with opened(dsn, schema) as a, opened(dsn, schema) as b:
        result = await hang_at(SagaOrchestrator(a), "bad-result", 2)
        arguments = await hang_at(SagaOrchestrator(a), "bad-args", 1)
        for saga_id in ("bad-result", "bad-args"):
            expire(dsn, schema, saga_id)
        query(
            dsn,
            f"UPDATE \"{schema}\".steps SET result = '{gone}' "
            "WHERE saga_id = 'bad-result' AND step_index = 1 RETURNING 1",
        )
        query(
            dsn,
            f'UPDATE "{schema}".sagas SET kwargs = \'{{"steps": {gone}}}\' '
            "WHERE saga_id = 'bad-args' RETURNING 1",
        )
        assert await b.claim_orphans() == []
        reasons = {letter.saga_id: letter.reason for letter in await b.dead_letters()}
        assert "the result of step 1 ('act'): " in reasons["bad-result"]
        assert "the keyword arguments of saga 'pg_five': " in reasons["bad-args"]
        assert "no_such_module_xyz" in reasons["bad-args"]
        for saga_id, task in (("bad-result", result), ("bad-args", arguments)):
            GATES[f"{saga_id}:{2 if task is result else 1}"].set()
            with pytest.raises(LeaseLost):
                await task


@pytest.mark.asyncio
async def test_a_parked_or_unreadable_orphan_does_not_stop_recover_before_the_others(
    dsn: str, schema: str
) -> None:
    # Regression: recover() claims one orphan at a time and stopped at the first claim
    # that returned nothing, so an older orphan parked by the claim (too many attempts)
    # or whose log could not be read back left every newer orphan unrecovered.
    async with opened(dsn, schema) as a, opened(dsn, schema) as b, opened(dsn, schema) as c:
        tasks = [await hang_at(SagaOrchestrator(a), name, 1) for name in ("crashy", "garbled")]
        expire(dsn, schema, "crashy")
        assert len(await c.claim_orphans(max_attempts=1)) == 1  # a worker that then dies
        tasks.append(await hang_at(SagaOrchestrator(a), "fine", 1))
        gates = [GATES.pop(f"{name}:1") for name in ("crashy", "garbled", "fine")]
        for saga_id in ("crashy", "garbled", "fine"):
            expire(dsn, schema, saga_id)
        query(
            dsn,
            f'UPDATE "{schema}".sagas SET args = \'{{"__sk__": "nope"}}\' '
            "WHERE saga_id = 'garbled' RETURNING 1",
        )
        outcomes = await SagaOrchestrator(b).recover(max_attempts=1)
        assert [(o.saga_id, o.action, o.status) for o in outcomes] == [
            ("fine", "resumed", SagaStatus.COMPLETED)
        ]
        assert sorted(d.saga_id for d in await b.dead_letters()) == ["crashy", "garbled"]
        for gate in gates:
            gate.set()
        for task in tasks:
            with pytest.raises(LeaseLost):
                await task


# ---------------------------------------------------------------- the event stream


@pytest.mark.asyncio
async def test_event_stream_pages_every_event_once_in_order(dsn: str, schema: str) -> None:
    async with opened(dsn, schema) as a, opened(dsn, schema) as b:
        runs = [
            SagaOrchestrator(store).execute(pg_five(3), saga_id=f"ev-{n}")
            for n, store in enumerate([a, b] * 10)
        ]
        await asyncio.gather(*runs)
        seen: list[Any] = []
        position = 0
        while page := await a.read_events(after=position, limit=7):
            assert len(page) <= 7
            seen.extend(page)
            position = page[-1].position
        positions = [event.position for event in seen]
        assert positions == sorted(set(positions))
        assert sorted(event.event for event in seen) == sorted(
            f"ev-{n}:{i}" for n in range(20) for i in range(3)
        )
        one = await b.read_events(saga_id="ev-4")
        assert [event.event for event in one] == ["ev-4:0", "ev-4:1", "ev-4:2"]
        assert all(event.saga_name == "pg_five" for event in one)


# ---------------------------------------------------------------- the CLI


@pytest.mark.asyncio
async def test_cli_reads_and_repairs_a_postgres_log(
    dsn: str, schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        await orchestrator.execute(pg_five(2), saga_id="cli-ok")
        with pytest.raises(Exception, match="cannot undo"):
            await orchestrator.execute(pg_fails_badly(), saga_id="cli-bad")

    def cli(*argv: str) -> tuple[int, str]:
        code = cli_main(["--db", dsn, "--schema", schema, *argv])
        return code, capsys.readouterr().out

    # The CLI runs its own event loop: call it from a thread.
    code, out = await asyncio.to_thread(cli, "list", "--json")
    assert code == 0
    assert {row["id"]: row["status"] for row in json.loads(out)} == {
        "cli-ok": "completed",
        "cli-bad": "failed",
    }
    code, out = await asyncio.to_thread(cli, "show", "cli-ok")
    assert code == 0
    assert "saga cli-ok (pg_five): completed" in out
    code, out = await asyncio.to_thread(cli, "list", "--status", "failed")
    assert "cli-bad" in out
    assert "cli-ok" not in out
    code, out = await asyncio.to_thread(cli, "resolve", "cli-bad", "--note", "refunded")
    assert (code, out) == (0, "saga cli-bad marked resolved\n")
    code, out = await asyncio.to_thread(cli, "recover")
    assert (code, out) == (0, "nothing to recover\n")


# ---------------------------------------------------------------- the worker loop


@pytest.mark.asyncio
async def test_run_worker_finishes_orphans_and_leaves_the_execute_calls_beside_it_when_cancelled(
    dsn: str, schema: str
) -> None:
    async with opened(dsn, schema) as dead, opened(dsn, schema, lease=60.0, heartbeat=20) as live:
        stuck = await hang_at(SagaOrchestrator(dead), "orphaned", 1)
        dead_gate = GATES.pop("orphaned:1")  # the re-run of step 1 does not hang
        expire(dsn, schema, "orphaned")
        finished = asyncio.Event()
        orchestrator = SagaOrchestrator(
            live,
            listeners=[
                lambda t: (
                    finished.set()
                    if t.kind == "saga_finished" and t.saga_id == "orphaned"
                    else None
                )
            ],
        )
        # An execute() beside the worker, on its store: not the worker's to hand over.
        hanging = await hang_at(orchestrator, "live-one", 3)
        worker = asyncio.create_task(orchestrator.run_worker(poll_interval=0.05))
        await finished.wait()
        meta = await live.get("orphaned")
        assert meta is not None
        assert meta.status is SagaStatus.COMPLETED
        assert [RAN[("orphaned", n, "do")] for n in range(5)] == [1, 2, 1, 1, 1]

        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker
        # Cancelled, the worker handed over only its own sagas (none in flight here):
        # the execute() beside it keeps its lease and goes on to its end.
        (row,) = query(
            dsn,
            f'SELECT owner, released, lease_until > now() FROM "{schema}".sagas '
            "WHERE saga_id = 'live-one'",
        )
        assert row == (live.owner, False, True)
        GATES["live-one:3"].set()
        await hanging
        assert RAN[("live-one", 4, "do")] == 1
        assert not [key for key in RAN if key[2] == "undo"]
        dead_gate.set()
        with pytest.raises(LeaseLost):
            await stuck


LEFT_RUNNING: list[asyncio.Task[Any]] = []


@step
async def start_beside(n: int) -> None:
    ctx = current_step()
    assert ctx is not None
    beside = ctx.orchestrator.execute(pg_five(), saga_id="beside")
    LEFT_RUNNING.append(asyncio.create_task(beside))  # not awaited: it outlives the step


@saga
def pg_starts_beside():  # type: ignore[no-untyped-def]
    yield act(0)
    yield start_beside(1)


@step
async def start_unawaited(n: int) -> None:
    ctx = current_step()
    assert ctx is not None
    inner = ctx.orchestrator.execute(pg_five(), saga_id="unawaited")
    LEFT_RUNNING.append(asyncio.create_task(inner))  # not awaited: it outlives the step
    await ENTERED["unawaited:3"].wait()  # started while this step runs: its inner saga


@saga
def pg_starts_unawaited():  # type: ignore[no-untyped-def]
    yield act(0)
    yield start_unawaited(1)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("outer_saga", "outer_id", "inner_id"),
    [(pg_starts_beside, "starter", "beside"), (pg_starts_unawaited, "outer", "unawaited")],
    ids=["started-after-its-step", "started-by-its-step"],
)
async def test_a_stopping_worker_keeps_the_lease_of_a_saga_a_task_its_step_left_running_runs(
    dsn: str, schema: str, outer_saga: Any, outer_id: str, inner_id: str
) -> None:
    # Regression: a step of a saga the worker finished left a task running that executes
    # a saga — started after that step ended, or by the step, which returned without
    # awaiting it. The worker counted it as that step's inner saga and released its lease
    # as it stopped, though it does not cancel it: the saga went on here while any worker
    # could take it over and run its steps again. Once its step has ended it is no inner
    # saga: like an execute() beside the worker, it keeps its lease and goes on to its end.
    LEFT_RUNNING.clear()
    async with opened(dsn, schema) as dead, opened(dsn, schema, lease=60.0, heartbeat=20) as live:
        key = f"{outer_id}:0"
        GATES[key] = asyncio.Event()
        ENTERED[key] = asyncio.Event()
        stuck = asyncio.create_task(SagaOrchestrator(dead).execute(outer_saga(), saga_id=outer_id))
        await ENTERED[key].wait()
        dead_gate = GATES.pop(key)  # the re-run of step 0 does not hang
        expire(dsn, schema, outer_id)
        inner_key = f"{inner_id}:3"
        GATES[inner_key] = asyncio.Event()
        ENTERED[inner_key] = asyncio.Event()
        orchestrator = SagaOrchestrator(live)
        worker = asyncio.create_task(orchestrator.run_worker(poll_interval=0.05))
        await ENTERED[inner_key].wait()
        await wait_for_status(live, outer_id, SagaStatus.COMPLETED)
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker
        (row,) = query(
            dsn,
            f'SELECT owner, released, lease_until > now() FROM "{schema}".sagas '
            f"WHERE saga_id = '{inner_id}'",
        )
        assert row == (live.owner, False, True)
        GATES[inner_key].set()
        (inner,) = LEFT_RUNNING
        await inner
        assert RAN[(inner_id, 4, "do")] == 1
        assert not [key for key in RAN if key[2] == "undo"]
        dead_gate.set()
        with pytest.raises(LeaseLost):
            await stuck


async def wait_for_status(store: Any, saga_id: str, status: SagaStatus) -> None:
    """Until ``saga_id``'s row says ``status`` (read every 10 ms)."""
    while True:
        meta = await store.get(saga_id)
        if meta is not None and meta.status is status:
            return
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_run_worker_stops_when_told(dsn: str, schema: str) -> None:
    async with opened(dsn, schema) as store:
        stop = asyncio.Event()
        worker = asyncio.create_task(
            SagaOrchestrator(store).run_worker(poll_interval=0.05, stop=stop)
        )
        await asyncio.sleep(0.1)
        stop.set()
        await worker  # returns cleanly
        assert worker.done()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"poll_interval": 0}, "poll_interval must be greater than zero seconds"),
        ({"concurrency": 0}, "concurrency must be a whole number >= 1"),
        ({"max_attempts": 0}, "max_attempts must be a whole number >= 1"),
        ({"poll_interval": float("nan")}, "poll_interval must be a finite number of seconds"),
        # Infinity claimed once, then never again (orphans waited for a restart).
        ({"poll_interval": float("inf")}, "poll_interval must be a finite number of seconds"),
        ({"poll_interval": "1"}, "poll_interval must be a number of seconds"),
        ({"poll_interval": 10**400}, "poll_interval must be a finite number of seconds"),
        # A threading.Event's wait() blocked the event loop, then the worker died with
        # a TypeError from asyncio.
        ({"stop": threading.Event()}, "stop must be an asyncio.Event"),
        ({"stop": True}, "stop must be an asyncio.Event"),
        # Past a 64-bit integer every claim failed (taken for the database being away).
        ({"concurrency": 10**20}, "concurrency must be at most 9223372036854775807"),
        ({"max_attempts": 2**63}, "max_attempts must be at most 9223372036854775807"),
        # "no" was taken for its truth: SIGTERM handled all the same.
        ({"handle_signals": "no"}, "handle_signals must be True or False"),
    ],
)
async def test_run_worker_rejects_bad_options(options: dict[str, Any], message: str) -> None:
    orchestrator = SagaOrchestrator(PostgresStore("postgresql://localhost/x"))
    with pytest.raises(SagaDefinitionError, match=message):
        await orchestrator.run_worker(**options)


@pytest.mark.asyncio
async def test_run_worker_refuses_a_stop_event_of_another_event_loop() -> None:
    # Its wait() failed at once in this loop, every time: the worker claimed in a busy
    # loop (thousands of claims a second), and stop.set() from its own loop never came.
    stop = asyncio.Event()

    async def bind() -> None:  # awaited in another loop: bound to it
        waiting = asyncio.create_task(stop.wait())
        await asyncio.sleep(0)
        waiting.cancel()

    thread = threading.Thread(target=lambda: asyncio.run(bind()))
    thread.start()
    thread.join()
    orchestrator = SagaOrchestrator(PostgresStore("postgresql://localhost/x"))
    with pytest.raises(
        SagaDefinitionError, match=r"stop is an asyncio\.Event of another event loop"
    ):
        await orchestrator.run_worker(stop=stop)


@pytest.mark.asyncio
async def test_run_worker_needs_a_recoverable_store() -> None:
    with pytest.raises(StoreError, match="cannot recover sagas"):
        await SagaOrchestrator().run_worker()


@pytest.mark.asyncio
async def test_run_worker_on_a_store_without_leases_stops_cleanly(tmp_path: Any) -> None:
    from sagakit import SQLiteStore

    stop = asyncio.Event()
    stop.set()
    async with SagaOrchestrator(SQLiteStore(str(tmp_path / "log.db"))) as orchestrator:
        await orchestrator.run_worker(stop=stop, handle_signals=False)


@pytest.mark.asyncio
async def test_a_saga_taken_over_while_compensating_is_compensated_once(
    dsn: str, schema: str
) -> None:
    async with opened(dsn, schema) as a, opened(dsn, schema) as b:
        GATES["undoing:undo1"] = asyncio.Event()
        ENTERED["undoing:undo1"] = asyncio.Event()
        task = asyncio.create_task(SagaOrchestrator(a).execute(pg_fails_late(), saga_id="undoing"))
        await ENTERED["undoing:undo1"].wait()  # step 2 failed; compensating step 1
        stale_gate = GATES.pop("undoing:undo1")
        expire(dsn, schema, "undoing")
        (orphan,) = await b.claim_orphans()
        assert orphan.status is SagaStatus.COMPENSATING
        assert [(c.index, str(c.status)) for c in orphan.compensations] == [(1, "running")]
        outcome = await _recover_one(SagaOrchestrator(b), b, orphan, DEFAULT_MAX_ATTEMPTS)
        assert (outcome.action, outcome.status) == ("compensated", SagaStatus.COMPENSATED)

        stale_gate.set()  # the old owner finishes compensating step 1 and is fenced out
        with pytest.raises(LeaseLost):
            await task
        # Step 1's compensation ran again under the new owner (it was interrupted);
        # step 0's ran once, by the new owner only.
        assert RAN[("undoing", 1, "undo")] == 2
        assert RAN[("undoing", 0, "undo")] == 1
        meta = await b.get("undoing")
        assert meta is not None
        assert meta.status is SagaStatus.COMPENSATED
        assert [(c.index, str(c.status)) for c in meta.compensations] == [
            (1, "completed"),
            (0, "completed"),
        ]
        assert meta.compensation_events == ("undo 1", "undo 0")


@pytest.mark.asyncio
async def test_the_background_heartbeat_keeps_leases_alive(dsn: str, schema: str) -> None:
    async with opened(dsn, schema, lease=30.0, heartbeat=0.05) as store:
        task = await hang_at(SagaOrchestrator(store), "kept", 0)
        query(dsn, f"UPDATE \"{schema}\".sagas SET lease_until = now() + interval '1 second'")
        for _ in range(600):  # the heartbeat renews it to now() + 30 s, by itself
            if await _lease_left(dsn, schema, "kept") > 20:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the heartbeat never renewed the lease")
        GATES["kept:0"].set()
        await task


@pytest.mark.asyncio
@pytest.mark.parametrize("lost_as", ["nothing", "an error"])
async def test_close_stops_a_heartbeat_whose_cancellation_is_lost(
    dsn: str, schema: str, lost_as: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The driver or the pool may turn a cancellation during a renewal into an error, or
    # lose it: close() used to wait for the heartbeat forever (a hang seen in CI runs).
    renewing = asyncio.Event()
    losing = True

    async def renew_losing_the_cancellation(self: PostgresStore) -> int:
        renewing.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            if not losing:
                raise
            if lost_as == "an error":
                raise StoreError("the query was cancelled") from None
        return 0

    monkeypatch.setattr(PostgresStore, "renew", renew_losing_the_cancellation)
    store = PostgresStore(dsn, schema=schema, heartbeat=0.01)
    await store.open()
    await asyncio.wait_for(renewing.wait(), 5)
    closing = asyncio.create_task(store.close())
    finished, _ = await asyncio.wait({closing}, timeout=5)
    if not finished:  # the hang: end it, so the failure does not stop the suite
        losing = False
        closing.cancel()
        await asyncio.wait({closing}, timeout=5)
        pytest.fail("close() waited forever for a heartbeat that lost its cancellation")
    closing.result()


@pytest.mark.asyncio
async def test_a_staged_completion_is_written_with_the_next_record(dsn: str, schema: str) -> None:
    from sagakit._runs import SagaRun
    from sagakit.transitions import Transition, TransitionKind

    async with opened(dsn, schema) as store:
        run = SagaRun("staged", pg_five(2), True, 0.0, SagaOrchestrator()._ref)
        await store.begin(run)

        def transition(kind: TransitionKind, index: int, **fields: Any) -> Transition:
            return Transition(kind, "staged", "pg_five", SagaStatus.EXECUTING, index, "act", 1,
                              **fields)  # fmt: skip

        await store.record(run, transition(TransitionKind.STEP_STARTED, 0))
        store.stage(
            run,
            transition(TransitionKind.STEP_COMPLETED, 0, result=["e0"], events=("e0",)),
        )
        steps = f'SELECT step_index, status FROM "{schema}".steps ORDER BY step_index'
        assert query(dsn, steps) == [(0, "running")]  # staged: nothing sent yet
        with pytest.raises(SerializationError):
            store.stage(run, transition(TransitionKind.STEP_COMPLETED, 1, result=object()))
        before = store.stats
        await store.record(run, transition(TransitionKind.STEP_STARTED, 1))
        assert store.stats.statements == before.statements + 1  # both in one statement
        assert query(dsn, steps) == [(0, "completed"), (1, "running")]
        assert [e.event for e in await store.read_events(saga_id="staged")] == ["e0"]
        store.stage(
            run,
            transition(TransitionKind.STEP_COMPLETED, 1, result=["e1"], events=("e1",)),
        )
        await store.close()  # closing writes what is still staged
        assert query(dsn, steps) == [(0, "completed"), (1, "completed")]


# ------------------------------------------- a compensation's unstorable result

UNDONE: list[str] = []


class Opaque:
    """Not serializable by JsonSerializer."""


@step
async def unstorable_reserve(n: int) -> str:
    return f"reserved {n}"


@unstorable_reserve.compensate
async def unstorable_release(result: str, n: int) -> str:
    UNDONE.append(f"release {n}")
    return f"released {n}"


@step
async def unstorable_charge(n: int) -> str:
    return f"charged {n}"


@unstorable_charge.compensate
async def unstorable_refund(result: str, n: int) -> Opaque:
    UNDONE.append(f"refund {n}")
    return Opaque()  # the refund happened; its receipt cannot be stored


@step
async def unstorable_ship(n: int) -> None:
    raise ValueError("cannot ship")


@saga
def unstorable_order(n: int):  # type: ignore[no-untyped-def]
    yield unstorable_reserve(n)
    yield unstorable_charge(n)
    yield unstorable_ship(n)


@pytest.mark.asyncio
async def test_pg_unstorable_compensation_result_is_recorded_and_the_rest_still_compensate(
    dsn: str, schema: str
) -> None:
    UNDONE.clear()
    store = PostgresStore(dsn, schema=schema)
    async with SagaOrchestrator(store) as orchestrator:
        # The saga failed at 'ship': the caller must get StepFailed, as with SQLite.
        with pytest.raises(StepFailed):
            await orchestrator.execute(unstorable_order(1), saga_id="order-1")
        meta = await orchestrator.get_saga("order-1")
    # Every compensation ran: 'release' must not be skipped because the refund's
    # receipt could not be serialized.
    assert UNDONE == ["refund 1", "release 1"]
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    by_name = {c.name: c for c in meta.compensations}
    assert by_name["unstorable_charge"].status is StepStatus.COMPLETED
    assert by_name["unstorable_reserve"].status is StepStatus.COMPLETED
    assert by_name["unstorable_charge"].error is not None
    assert by_name["unstorable_charge"].error.startswith("result not stored: ")
    assert by_name["unstorable_reserve"].error is None


@pytest.mark.asyncio
async def test_after_a_server_restart_one_write_fails_not_one_per_pooled_connection(
    dsn: str, schema: str
) -> None:
    # The pool handed out its dead connections one by one after a restart (here: every
    # backend terminated, as a restart or fail-over does): each failed the next write,
    # so up to max_size sagas in a row failed. One failure now tests the idle ones.
    app = f"sk_restart_{schema}"
    async with opened(f"{dsn}?application_name={app}", schema, min_size=4, max_size=4) as store:
        orchestrator = SagaOrchestrator(store)
        assert len(await orchestrator.execute(pg_five(1))) == 1
        killed = query(
            dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (app,),
        )
        assert len(killed) == 4  # the pool's connections, all idle
        outcomes = []
        for _ in range(5):
            try:
                await orchestrator.execute(pg_five(1))
            except StoreError:
                outcomes.append("failed")
            else:
                outcomes.append("completed")
        assert outcomes.count("failed") <= 1, outcomes
        assert outcomes[-3:] == ["completed"] * 3


@pytest.mark.asyncio
async def test_a_closed_store_refuses_work_instead_of_reopening_itself(
    dsn: str, schema: str
) -> None:
    # After close(), the next use silently opened a new pool and heartbeat that
    # nothing would ever close.
    store = PostgresStore(dsn, schema=schema)
    orchestrator = SagaOrchestrator(store)
    assert len(await orchestrator.execute(pg_five(1))) == 1
    await store.close()
    with pytest.raises(StoreError, match="is closed; call open"):
        await orchestrator.execute(pg_five(1))
    with pytest.raises(StoreError, match="is closed"):
        await store.history_count()
    assert store._pool is None
    assert store._heartbeat is None
    await store.open()  # explicitly: usable again
    assert await store.history_count() == 1
    await store.close()


@pytest.mark.asyncio
async def test_an_id_with_a_nul_is_no_saga_of_the_log_when_read(dsn: str, schema: str) -> None:
    # Regression: execute() refuses such an id (PostgreSQL text cannot hold a NUL), but
    # get(), get_saga(), read_events(saga_id=...), resolve() and resume_dead_letter()
    # sent it and raised the driver's "DataError: PostgreSQL text fields cannot contain
    # NUL (0x00) bytes", as if the log were broken, where SQLite answers for the id.
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        assert await store.get("a\x00b") is None
        assert await orchestrator.get_saga("a\x00b") is None
        assert await store.read_events(saga_id="a\x00b") == []
        for call in (store.resolve("a\x00b", "settled"), store.resume_dead_letter("a\x00b")):
            with pytest.raises(StoreError) as refused:
                await call
            assert str(refused.value).startswith("no saga 'a\\x00b' in schema")
            assert "DataError" not in str(refused.value)


@pytest.mark.asyncio
async def test_an_id_with_a_nul_is_claimed_and_released_as_none(dsn: str, schema: str) -> None:
    # Regression: claim_orphans(saga_ids=...) and release_leases(saga_ids=...) sent such
    # an id and raised the driver's DataError, where the reads answer for it as for any
    # unknown id: no saga of the log can have it, so it is claimed and released as none.
    async with opened(dsn, schema) as store:
        with FaultInjector().crash(act), pytest.raises(SimulatedCrash):
            await SagaOrchestrator(store).execute(pg_five(2), saga_id="nul-real")
        await simulate_restart(store)
        assert await store.claim_orphans(saga_ids=["a\x00b"]) == []
        claimed = await store.claim_orphans(saga_ids=["a\x00b", "nul-real"])
        assert [orphan.saga_id for orphan in claimed] == ["nul-real"]
        assert await store.release_leases(saga_ids=["a\x00b"]) == 0
        assert await store.release_leases(saga_ids=["a\x00b", "nul-real"]) == 1


@pytest.mark.asyncio
async def test_a_store_closed_before_its_first_use_refuses_work_too(dsn: str, schema: str) -> None:
    # Regression: close() of a store never used yet (an `async with SagaOrchestrator(store)`
    # that ran nothing) left it open for business: the next use connected, migrated and
    # started a pool and heartbeat nothing would close, where a SQLiteStore is closed.
    store = PostgresStore(dsn, schema=schema)
    orchestrator = SagaOrchestrator(store)
    async with orchestrator:
        pass  # closes the store, never opened
    with pytest.raises(StoreError, match="is closed; call open"):
        await orchestrator.execute(pg_five(1))
    with pytest.raises(StoreError, match="is closed"):
        await store.get("anything")
    assert store._pool is None
    assert store._heartbeat is None
    await store.open()  # explicitly: usable again
    assert len(await orchestrator.execute(pg_five(1))) == 1
    await store.close()


@pytest.mark.asyncio
async def test_a_dead_letter_reason_or_resolve_note_with_a_nul_is_stored_escaped(
    dsn: str, schema: str
) -> None:
    # Recovery parks a saga with its error's text as the reason: a NUL in it made the
    # write fail (DataError), so the saga could not be parked, nor resolved with one.
    async with opened(dsn, schema) as a, opened(dsn, schema) as b:
        task = await hang_at(SagaOrchestrator(a), "nul", 1)
        expire(dsn, schema, "nul")
        assert len(await b.claim_orphans()) == 1
        await b.dead_letter("nul", "body raised ValueError: bad\x00byte")
        (letter,) = await b.dead_letters()
        assert letter.reason == "body raised ValueError: bad\\x00byte"
        await b.resolve("nul", "fixed\x00by hand")
        meta = await b.get("nul")
        assert meta is not None
        assert meta.error is not None
        assert meta.error.startswith("resolved by an operator: fixed\\x00by hand")
        GATES["nul:1"].set()
        with pytest.raises(LeaseLost):
            await task


@pytest.mark.asyncio
async def test_a_resumed_saga_whose_lease_is_lost_is_not_reported_as_resumed(
    dsn: str, schema: str
) -> None:
    # recover() reported a saga fenced out mid-resume as "resumed -> executing" (and a
    # worker logged it finished), while another worker owned and finished it.
    async with (
        opened(dsn, schema, lease=60.0, heartbeat=20.0) as a,
        opened(dsn, schema, lease=60.0, heartbeat=20.0) as b,
        opened(dsn, schema) as c,
    ):
        first = await hang_at(SagaOrchestrator(a), "lost", 1)
        expire(dsn, schema, "lost")
        ENTERED["lost:1"] = asyncio.Event()  # set again when b's resume enters step 1
        recovering = asyncio.create_task(SagaOrchestrator(b).recover())
        await ENTERED["lost:1"].wait()
        expire(dsn, schema, "lost")
        assert [o.saga_id for o in await c.claim_orphans()] == ["lost"]  # c owns it now
        GATES["lost:1"].set()
        assert await recovering == []  # not this call's to report: c finishes it
        with pytest.raises(LeaseLost):
            await first


@step
async def pg_cancel_me(n: int) -> str:
    # The saga's own cancellation lands once this returns, while the next step's start
    # (carrying this step's staged completion) waits for the writer.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().call_soon(task.cancel)
    _ran("do")
    return f"did {n}"


@pg_cancel_me.compensate
async def pg_uncancel_me(result: str, n: int) -> None:
    _ran("undo")


@saga
def pg_cancelled_after_first():  # type: ignore[no-untyped-def]
    yield pg_cancel_me(0)
    yield act(1)


@pytest.mark.asyncio
async def test_a_completion_staged_with_a_cancelled_write_is_logged_and_told(
    dsn: str, schema: str
) -> None:
    heard: list[str] = []
    async with opened(dsn, schema) as store:
        listener = lambda t: heard.append(f"{t.kind} {t.step_name}")  # noqa: E731
        orchestrator = SagaOrchestrator(store, listeners=[listener])
        with pytest.raises(asyncio.CancelledError):
            await orchestrator.execute(pg_cancelled_after_first(), saga_id="pg-staged")
        meta = await store.get("pg-staged")
    # Step 1's start is told if the write it rode in committed (its caller cancelled
    # while it was on its way), and only then: listeners hear what the log holds.
    started = "step_started act" in heard
    assert [line for line in heard if not line.endswith(" act")][:4] == [
        "saga_started None",
        "step_started pg_cancel_me",
        "step_completed pg_cancel_me",  # told, though the write it rode in was cancelled
        "compensation_started pg_cancel_me",
    ]
    if started:
        assert heard.index("step_started act") == 3  # as committed: before compensating
        # It never ran (cancelled before it started): a start told is ended, at once.
        assert heard.index("step_failed act") == 4
    else:
        assert "step_failed act" not in heard  # nor is the end of a start never told
    assert meta is not None
    assert [s.name for s in meta.steps] == (
        ["pg_cancel_me", "act"] if started else ["pg_cancel_me"]
    )
    assert meta.status is SagaStatus.COMPENSATED
    assert (meta.steps[0].name, str(meta.steps[0].status)) == ("pg_cancel_me", "completed")
    assert meta.steps[0].events == ("did 0",)
    assert [(c.name, str(c.status)) for c in meta.compensations] == [("pg_cancel_me", "completed")]
    assert RAN[("pg-staged", 0, "undo")] == 1


@pytest.mark.asyncio
async def test_list_sagas_refuses_an_unknown_status_and_lists_none_below_one(
    dsn: str, schema: str
) -> None:
    async with opened(dsn, schema) as store:
        await SagaOrchestrator(store).execute(pg_five(), saga_id="listed")
        # A bare ValueError before, which no other bad argument of a store's is.
        with pytest.raises(
            SagaDefinitionError, match=r"must be a SagaStatus or one of not_started, .*'bogus'"
        ):
            await store.list_sagas(status="bogus")
        with pytest.raises(SagaDefinitionError, match=r"got 3"):
            await store.list_sagas(status=3)  # type: ignore[arg-type]
        # A negative LIMIT was an SQL error here (SQLite read it as no limit at all).
        assert await store.list_sagas(limit=-1) == []
        assert await store.list_sagas(limit=0) == []
        assert [m.id for m in await store.list_sagas(status="completed")] == ["listed"]
        # Any case, as the CLI's --status takes it and the docs write statuses.
        assert [m.id for m in await store.list_sagas(status="COMPLETED")] == ["listed"]
        assert [m.id for m in await store.list_sagas(status=SagaStatus.COMPLETED)] == ["listed"]


@pytest.mark.asyncio
async def test_a_saga_the_store_released_says_so_not_that_its_lease_ran_out(
    dsn: str, schema: str
) -> None:
    # release_leases() (as a process that exits does, or close()) fences out the store's
    # own execute() calls: their LeaseLost must not blame a pause or advise on leases.
    async with opened(dsn, schema) as store:
        task = await hang_at(SagaOrchestrator(store), "handed-over", 1)
        assert await store.release_leases() == 1
        GATES["handed-over:1"].set()
        with pytest.raises(LeaseLost) as raised:
            await task
        assert raised.value.released
        assert "this store released it" in str(raised.value)
        assert "heartbeat" not in str(raised.value)
        assert pickle.loads(pickle.dumps(raised.value)).released
        assert RAN[("handed-over", 2, "do")] == 0  # no further step
        assert not [key for key in RAN if key[2] == "undo"]  # and no compensation
    # A lease that ran out and was claimed by another worker still says that.
    async with opened(dsn, schema) as a, opened(dsn, schema) as b:
        task = await hang_at(SagaOrchestrator(a), "taken-over", 1)
        expire(dsn, schema, "taken-over")
        (orphan,) = await b.claim_orphans(saga_ids=["taken-over"])
        assert orphan.saga_id == "taken-over"
        GATES["taken-over:1"].set()
        with pytest.raises(LeaseLost, match="paused or cut off past its lease") as raised:
            await task
        assert not raised.value.released


@pytest.mark.asyncio
async def test_cancelling_a_released_saga_stops_it_quietly_for_its_new_owner(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The shutdown of docs/postgres.md: release_leases(), then cancel the execute() calls.
    # Fenced out, the run stops as any fenced-out run does (SAGA_STOPPED, at INFO), with
    # nothing undone; it logged two WARNINGs per saga ("could not record the end of step",
    # "the end of saga ... could not be recorded") and told no SAGA_STOPPED.
    heard: list[Transition] = []
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        orchestrator.add_listener(heard.append)
        task = await hang_at(orchestrator, "shut-down", 1)
        assert await store.release_leases() == 1
        caplog.set_level(logging.INFO, logger="sagakit")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        (stopped,) = [t for t in heard if t.kind is TransitionKind.SAGA_STOPPED]
        assert isinstance(stopped.error, LeaseLost)
        assert stopped.error.released
        assert stopped.status is SagaStatus.EXECUTING
        assert TransitionKind.SAGA_FINISHED not in [t.kind for t in heard]
        assert not [key for key in RAN if key[0] == "shut-down" and key[2] == "undo"]
    async with opened(dsn, schema) as other:  # its new owner takes it at once
        (orphan,) = await other.claim_orphans(saga_ids=["shut-down"])
        assert orphan.status is SagaStatus.EXECUTING
