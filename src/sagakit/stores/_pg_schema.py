"""The PostgreSQL saga log's tables, in a configurable schema, created by versioned migrations.

Each migration runs once, in order, inside one transaction that holds an advisory
lock, so several workers starting together migrate the schema exactly once. The
applied versions are kept in ``<schema>.schema_migrations``; a database migrated by
a newer sagakit is refused rather than misread.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, LiteralString, cast

from .._seconds import timeout_text
from ..exceptions import StoreConfigError, StoreError

if TYPE_CHECKING:
    from psycopg import AsyncConnection

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def check_schema_name(schema: object) -> LiteralString:
    """``schema`` if it is a plain SQL identifier, else :class:`StoreConfigError`.

    Checked so, it may be quoted into a statement: hence a ``LiteralString``, the type
    psycopg asks of a statement's text."""
    if not isinstance(schema, str) or not _NAME.fullmatch(schema):
        raise StoreConfigError(
            f"schema must be a plain identifier (letters, digits, underscores; at most 63 "
            f"characters; not starting with a digit), got {schema!r}"
        )
    if schema.startswith("pg_"):  # refused by PostgreSQL only once the store first connects
        raise StoreConfigError(
            f"schema {schema!r} starts with 'pg_', a prefix reserved for PostgreSQL's system "
            "schemas; name the log's schema without it, e.g. 'sagakit'"
        )
    # (mypy reads LiteralString as str, so to it these casts are redundant.)
    return cast("LiteralString", schema)  # type: ignore[redundant-cast]


def lock_key(schema: str, purpose: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``purpose`` in ``schema``."""
    digest = hashlib.sha256(f"sagakit:{schema}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _number(value: int) -> LiteralString:
    """An integer as the text of a statement: its digits (and sign) need no quoting."""
    return cast("LiteralString", str(value))  # type: ignore[redundant-cast]


def _v1(s: str, events_lock: int) -> str:
    return f"""
CREATE TABLE {s}.sagas (
    saga_id text PRIMARY KEY,
    name text NOT NULL,
    status text NOT NULL,
    explicit_id boolean NOT NULL,
    factory boolean NOT NULL,
    policy text NOT NULL,
    fingerprint text,
    args text NOT NULL,
    kwargs text NOT NULL,
    total_steps integer,
    error text,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    owner text,
    fence bigint NOT NULL DEFAULT 1,
    lease_until timestamptz,
    released boolean NOT NULL DEFAULT false,
    recovery_attempts integer NOT NULL DEFAULT 0,
    dead_reason text,
    parked_at timestamptz,
    resolved boolean NOT NULL DEFAULT false
);
CREATE INDEX sagas_leases ON {s}.sagas (lease_until)
    WHERE finished_at IS NULL AND dead_reason IS NULL;
CREATE INDEX sagas_owner ON {s}.sagas (owner) WHERE owner IS NOT NULL;
CREATE INDEX sagas_finished ON {s}.sagas (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE {s}.steps (
    saga_id text NOT NULL,
    compensation boolean NOT NULL,
    step_index integer NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    name text NOT NULL,
    status text NOT NULL,
    attempts integer NOT NULL,
    duration double precision,
    error text,
    result text,
    events text,
    fence bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga_id, compensation, step_index)
);

CREATE TABLE {s}.events (
    position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    saga_id text NOT NULL,
    saga_name text NOT NULL,
    step_index integer NOT NULL,
    step_name text NOT NULL,
    compensation boolean NOT NULL,
    data text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_by_saga ON {s}.events (saga_id, position);

-- One call applies the log writes of many sagas (one per saga) in one statement.
-- A saga's writes are applied only if its fencing token still matches: the
-- UPDATE locks the saga row, so a concurrent claim either waits for this batch or
-- makes it skip that saga. Returns the ids of the sagas fenced out.
CREATE FUNCTION {s}.apply_batch(
    p_ids text[], p_fences bigint[], p_status text[], p_final boolean[],
    p_error text[], p_total integer[],
    p_index integer[], p_comp boolean[], p_name text[], p_step_status text[],
    p_attempts integer[], p_duration double precision[], p_step_error text[],
    p_result text[], p_events text[],
    e_saga text[], e_saga_name text[], e_index integer[], e_step text[],
    e_comp boolean[], e_data text[]
) RETURNS SETOF text LANGUAGE plpgsql AS $fn$
DECLARE
    v_ok text[];
BEGIN
    -- Lock the sagas in id order, as the heartbeat and release do: no deadlocks
    -- (one saga needs no ordering: its UPDATE below locks it).
    IF cardinality(p_ids) > 1 THEN
        PERFORM 1 FROM {s}.sagas WHERE saga_id = ANY(p_ids) ORDER BY saga_id FOR UPDATE;
    END IF;
    WITH b AS (
        -- A saga may come with staged writes before its last one: its row takes the last.
        SELECT DISTINCT ON (t.saga_id) t.*
        FROM unnest(p_ids, p_fences, p_status, p_final, p_error, p_total)
            WITH ORDINALITY AS t(saga_id, fence, status, final, error, total, ord)
        ORDER BY t.saga_id, t.ord DESC
    ), u AS (
        UPDATE {s}.sagas s SET
            status = b.status,
            updated_at = now(),
            error = coalesce(b.error, s.error),
            total_steps = coalesce(b.total, s.total_steps),
            finished_at = CASE WHEN b.final THEN now() ELSE s.finished_at END,
            owner = CASE WHEN b.final THEN NULL ELSE s.owner END,
            lease_until = CASE WHEN b.final THEN NULL ELSE s.lease_until END
        FROM b
        WHERE s.saga_id = b.saga_id AND s.fence = b.fence AND s.finished_at IS NULL
        RETURNING s.saga_id
    )
    SELECT coalesce(array_agg(u.saga_id), '{{}}') INTO v_ok FROM u;

    IF cardinality(v_ok) > 0 THEN
        INSERT INTO {s}.steps AS st (saga_id, compensation, step_index, name, status,
                                      attempts, duration, error, result, events, fence)
        SELECT DISTINCT ON (t.saga_id, t.comp, t.idx)
               t.saga_id, t.comp, t.idx, t.name, t.sstatus, t.attempts, t.duration,
               t.err, t.result, t.events, t.fence
        FROM unnest(p_ids, p_fences, p_index, p_comp, p_name, p_step_status, p_attempts,
                    p_duration, p_step_error, p_result, p_events)
            WITH ORDINALITY AS t(saga_id, fence, idx, comp, name, sstatus, attempts,
                                 duration, err, result, events, ord)
        WHERE t.idx IS NOT NULL AND t.saga_id = ANY(v_ok)
        ORDER BY t.saga_id, t.comp, t.idx, t.ord DESC
        ON CONFLICT (saga_id, compensation, step_index) DO UPDATE SET
            name = excluded.name, status = excluded.status, attempts = excluded.attempts,
            duration = excluded.duration, error = excluded.error, result = excluded.result,
            events = excluded.events, fence = excluded.fence, updated_at = now();

        IF cardinality(e_saga) > 0 THEN
            -- Held until commit: event positions are handed out in commit order, so
            -- a reader that saw position p has seen every committed position below it.
            PERFORM pg_advisory_xact_lock({events_lock});
            INSERT INTO {s}.events (saga_id, saga_name, step_index, step_name,
                                    compensation, data)
            SELECT e.saga_id, e.sname, e.idx, e.step, e.comp, e.data
            FROM unnest(e_saga, e_saga_name, e_index, e_step, e_comp, e_data)
                WITH ORDINALITY AS e(saga_id, sname, idx, step, comp, data, ord)
            WHERE e.saga_id = ANY(v_ok)
            ORDER BY e.ord;
        END IF;
    END IF;

    RETURN QUERY SELECT DISTINCT x FROM unnest(p_ids) AS x WHERE NOT (x = ANY(v_ok));
END
$fn$;
"""


_START_ORDER = """,
               -- t.start: the record's start is the saga's t.start-th in this batch (a
               -- start without it, from a sagakit before version 4, is the only one). The
               -- saga's counter moves on from its highest so far (the saga row is locked:
               -- no concurrent batch writes its records).
               CASE WHEN t.start IS NOT NULL OR t.sstatus = 'running' THEN
                   (SELECT coalesce(max(x.start_order), 0) FROM {s}.steps x
                    WHERE x.saga_id = t.saga_id) + coalesce(t.start, 1) END"""
"""``apply_writes``' start order of a record (version 4), for ``str.format(s=...)``."""

_COUNTED_START_ORDER = """,
               -- t.start_order: the record's start order, counted by the store that owns
               -- the saga (version 5). Reading the saga's highest scans all its records, so
               -- a long saga's starts got slower with every step; that is left to a write
               -- that does not say (a sagakit before version 5, during a rolling upgrade).
               CASE WHEN t.start_order IS NOT NULL THEN t.start_order
                    WHEN t.start IS NOT NULL OR t.sstatus = 'running' THEN
                   (SELECT coalesce(max(x.start_order), 0) FROM {s}.steps x
                    WHERE x.saga_id = t.saga_id) + coalesce(t.start, 1) END"""
"""``apply_writes``' start order of a record (version 5), for ``str.format(s=...)``."""


def _v2(s: str, events_lock: int) -> str:
    # apply_batch took 21 array parameters, and adapting arrays in the client cost
    # ~250 µs per batch; apply_writes takes the writes as JSON arrays of objects (one
    # string each to send, parsed once by the server: jsonb), and inserts the rows of
    # sagas with generated ids along with their first write. Otherwise its logic is
    # apply_batch's.
    return _apply_writes(s, events_lock, tokens=False)


def _v3(s: str, events_lock: int) -> str:
    # A write whose connection died mid-commit may or may not have committed. Each
    # write now carries a token that apply_writes keeps in its saga's row
    # (last_write), so the writer can look it up and send again only what did not
    # commit (see _pg_settle.py). A write without a token (an older sagakit) clears it.
    return f"""
ALTER TABLE {s}.sagas ADD COLUMN last_write bigint;
{_apply_writes(s, events_lock, tokens=True)}"""


def _v4(s: str, events_lock: int) -> str:
    # Records were listed by `seq`, the identity of a row's first insert: a compensation
    # that recovery ran again kept its first place (SQLite lists it where it ran last),
    # and identities inside one batch follow the index order of the INSERT, not the
    # order things started. `start_order` is a per-saga counter that every start write
    # moves on (each write says which of its saga's starts in the batch it carries), so
    # a record is listed where it last started. `finish_order` is a saga's
    # place in the batch that finished it: sagas ending in one batch share `finished_at`,
    # and the history lists them in the order they finished. Rows written before this
    # version keep both NULL and list by `seq` and saga id as before. Apart from those
    # two columns, apply_writes is version 3's (write tokens included).
    return f"""
ALTER TABLE {s}.steps ADD COLUMN IF NOT EXISTS start_order bigint;
ALTER TABLE {s}.sagas ADD COLUMN IF NOT EXISTS finish_order integer;
{_apply_writes(s, events_lock, tokens=True, order=True)}"""


def _v5(s: str, events_lock: int) -> str:
    # Each start read its saga's highest start_order from the log (every record of the
    # saga, so a 3,000-step saga's last steps cost ~1.7x its first). A write of a start
    # now says its start order (`start_order`), counted by the store that owns the saga
    # (from 0 when it begins it, from the log's highest when a claim takes it over); a
    # write that does not (a worker of an older sagakit) still reads it. Apart from
    # that, apply_writes is version 4's.
    return _apply_writes(s, events_lock, tokens=True, order=True, counted=True)


def _v6(s: str, events_lock: int) -> str:
    # `list_sagas()` (`sagakit list`), of every status or of one, had no index to read the
    # newest sagas from, and `dead_letters()` (which `list` and `show` call too) none for the
    # parked ones: each read every saga of the log (a sequential scan, 90 ms for 100,000
    # sagas). The parked sagas' index is partial: it holds only them.
    # An operator may build them CONCURRENTLY ahead (docs/postgres.md): one such build that
    # failed or was cancelled left an invalid index of that name, which IF NOT EXISTS would
    # take as built (and PostgreSQL never reads): it is dropped and built again.
    schema = s.strip('"')
    return f"""
DO $do$
DECLARE invalid regclass;
BEGIN
    FOR invalid IN
        SELECT i.indexrelid::regclass FROM pg_index AS i
        JOIN pg_class AS c ON c.oid = i.indexrelid
        JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = '{schema}' AND NOT i.indisvalid
            AND c.relname IN ('sagas_started', 'sagas_status', 'sagas_parked')
    LOOP
        EXECUTE format('DROP INDEX %s', invalid);
    END LOOP;
END
$do$;
CREATE INDEX IF NOT EXISTS sagas_started ON {s}.sagas (started_at, saga_id);
CREATE INDEX IF NOT EXISTS sagas_status ON {s}.sagas (status, started_at, saga_id);
CREATE INDEX IF NOT EXISTS sagas_parked ON {s}.sagas (parked_at, saga_id)
    WHERE dead_reason IS NOT NULL AND finished_at IS NULL;"""


def _v7(s: str, events_lock: int) -> str:
    # A write was stamped with the server's now(): a server clock set back (NTP) while a
    # saga ran ended it (finished_at, updated_at) before its started_at, a negative
    # duration. apply_writes now stamps a saga's row and its events never before the
    # saga's start, and a step's row never before its own last stamp. Apart from that, it
    # is version 5's (same arguments: older workers call it as their own).
    return _apply_writes(s, events_lock, tokens=True, order=True, counted=True, clamped=True)


def _apply_writes(
    s: str,
    events_lock: int,
    *,
    tokens: bool,
    order: bool = False,
    counted: bool = False,
    clamped: bool = False,
) -> str:
    """``apply_writes`` as of version 2, of version 3 (``tokens``: each write's token
    kept in ``sagas.last_write``), of version 4 (``tokens`` and ``order``: records'
    ``steps.start_order`` and sagas' ``sagas.finish_order``), of version 5 (and
    ``counted``: a start's ``start_order`` as its write says, if it does), or of
    version 7 (and ``clamped``: no stamp before the saga's start, see ``_v7``).

    Versions 2 to 5 are applied migrations: their text must never change.
    """
    create = "CREATE OR REPLACE FUNCTION" if tokens or order else "CREATE FUNCTION"
    token_column = ", token bigint" if tokens else ""
    token_name = ", token" if tokens else ""
    set_token = "\n            last_write = b.token," if tokens else ""
    set_finish = (
        "\n            finish_order = CASE WHEN b.final THEN b.ord ELSE s.finish_order END,"
        if order
        else ""
    )
    start_col = ",\n                                      start_order" if order else ""
    start_order = (_COUNTED_START_ORDER if counted else _START_ORDER).format(s=s) if order else ""
    start_type = ",\n                start integer" if order else ""
    start_name = ", start" if order else ""
    if counted:
        start_type += ", start_order bigint"
        start_name += ", start_order"
    keep_order = (
        ",\n            start_order = coalesce(excluded.start_order, st.start_order)"
        if order
        else ""
    )
    # The saga's stamps, its records' and its events', never before its start (``sg``:
    # the saga's row); a record's end never before its start.
    stamp = "greatest(now(), s.started_at)" if clamped else "now()"
    saga_stamp = ",\n               greatest(now(), sg.started_at)" if clamped else ""
    if clamped:
        start_col += ", updated_at"
    step_stamp = (
        "\n            greatest(excluded.updated_at, st.updated_at)" if clamped else "now()"
    )
    step_saga = f"\n            JOIN {s}.sagas sg ON sg.saga_id = t.saga_id" if clamped else ""
    event_column = ",\n                                    recorded_at" if clamped else ""
    event_saga = f"\n            JOIN {s}.sagas sg ON sg.saga_id = e.saga_id" if clamped else ""
    return f"""
-- One call applies the log writes of many sagas (one per saga) in one statement.
-- Sagas with generated ids come with their row (p_new): nothing acted before their
-- first write, so the row is inserted with it. A saga's writes are applied only if
-- its fencing token still matches: the UPDATE locks the saga row, so a concurrent
-- claim either waits for this batch or makes it skip that saga. Returns the sagas
-- refused: 'fenced' (another worker owns it now) or 'exists' (a generated id that
-- is already in the log: nothing of that saga is written).
{create} {s}.apply_writes(p_writes jsonb, p_events jsonb, p_new jsonb)
RETURNS TABLE (refused_id text, reason text) LANGUAGE plpgsql AS $fn$
DECLARE
    v_ids text[];
    v_ok text[];
    v_exists text[] := '{{}}';
BEGIN
    SELECT array_agg(w.saga_id) INTO v_ids
    FROM jsonb_to_recordset(p_writes) AS w(saga_id text);
    IF jsonb_array_length(p_new) > 0 THEN
        WITH inserted AS (
            INSERT INTO {s}.sagas AS s (saga_id, name, status, explicit_id, factory, policy,
                                       fingerprint, args, kwargs, total_steps, owner,
                                       lease_until)
            SELECT n.saga_id, n.name, 'executing', false, n.factory, n.policy,
                   n.fingerprint, n.args, n.kwargs, n.total, n.owner,
                   now() + make_interval(secs => n.lease)
            FROM jsonb_to_recordset(p_new) AS n(saga_id text, name text, factory boolean,
                policy text, fingerprint text, args text, kwargs text, total integer,
                owner text, lease double precision)
            ON CONFLICT (saga_id) DO NOTHING
            RETURNING s.saga_id
        )
        -- A row already there is another saga's, unless this worker sent it before
        -- (a write whose caller was cancelled may still have gone out).
        SELECT coalesce(array_agg(n.saga_id), '{{}}') INTO v_exists
        FROM jsonb_to_recordset(p_new) AS n(saga_id text, owner text)
        WHERE n.saga_id NOT IN (SELECT i.saga_id FROM inserted i)
          AND NOT EXISTS (SELECT 1 FROM {s}.sagas x WHERE x.saga_id = n.saga_id
                          AND x.owner = n.owner AND NOT x.explicit_id);
    END IF;
    -- Lock the sagas in id order, as the heartbeat and release do: no deadlocks
    -- (one saga needs no ordering: its UPDATE below locks it).
    IF cardinality(v_ids) > 1 THEN
        PERFORM 1 FROM {s}.sagas WHERE saga_id = ANY(v_ids) ORDER BY saga_id FOR UPDATE;
    END IF;
    WITH b AS (
        -- A saga may come with staged writes before its last one: its row takes the last.
        SELECT DISTINCT ON (t.saga_id) t.*
        FROM ROWS FROM (jsonb_to_recordset(p_writes) AS (saga_id text, fence bigint,
                status text, final boolean, error text, total integer{token_column}))
            WITH ORDINALITY AS t(saga_id, fence, status, final, error, total{token_name}, ord)
        WHERE NOT (t.saga_id = ANY(v_exists))
        ORDER BY t.saga_id, t.ord DESC
    ), u AS (
        UPDATE {s}.sagas s SET
            status = b.status,{set_token}
            updated_at = {stamp},
            error = coalesce(b.error, s.error),
            total_steps = coalesce(b.total, s.total_steps),
            finished_at = CASE WHEN b.final THEN {stamp} ELSE s.finished_at END,{set_finish}
            owner = CASE WHEN b.final THEN NULL ELSE s.owner END,
            lease_until = CASE WHEN b.final THEN NULL ELSE s.lease_until END
        FROM b
        WHERE s.saga_id = b.saga_id AND s.fence = b.fence AND s.finished_at IS NULL
        RETURNING s.saga_id
    )
    SELECT coalesce(array_agg(u.saga_id), '{{}}') INTO v_ok FROM u;

    IF cardinality(v_ok) > 0 THEN
        INSERT INTO {s}.steps AS st (saga_id, compensation, step_index, name, status,
                                      attempts, duration, error, result, events, fence{start_col})
        SELECT DISTINCT ON (t.saga_id, t.comp, t.idx)
               t.saga_id, t.comp, t.idx, t.name, t.sstatus, t.attempts, t.duration,
               t.err, t.result, t.events, t.fence{start_order}{saga_stamp}
        FROM ROWS FROM (jsonb_to_recordset(p_writes) AS (saga_id text, fence bigint,
                idx integer, comp boolean, name text, sstatus text, attempts integer,
                duration double precision, err text, result text, events text{start_type}))
            WITH ORDINALITY AS t(saga_id, fence, idx, comp, name, sstatus, attempts,
                                 duration, err, result, events{start_name}, ord){step_saga}
        WHERE t.idx IS NOT NULL AND t.saga_id = ANY(v_ok)
        ORDER BY t.saga_id, t.comp, t.idx, t.ord DESC
        ON CONFLICT (saga_id, compensation, step_index) DO UPDATE SET
            name = excluded.name, status = excluded.status, attempts = excluded.attempts,
            duration = excluded.duration, error = excluded.error, result = excluded.result,
            events = excluded.events, fence = excluded.fence, updated_at = {step_stamp}{keep_order};

        IF jsonb_array_length(p_events) > 0 THEN
            -- Held until commit: event positions are handed out in commit order, so
            -- a reader that saw position p has seen every committed position below it.
            PERFORM pg_advisory_xact_lock({events_lock});
            INSERT INTO {s}.events (saga_id, saga_name, step_index, step_name,
                                    compensation, data{event_column})
            SELECT e.saga_id, e.sname, e.idx, e.step, e.comp, e.data{saga_stamp}
            FROM ROWS FROM (jsonb_to_recordset(p_events) AS (saga_id text, sname text,
                    idx integer, step text, comp boolean, data text))
                WITH ORDINALITY AS e(saga_id, sname, idx, step, comp, data, ord){event_saga}
            WHERE e.saga_id = ANY(v_ok)
            ORDER BY e.ord;
        END IF;
    END IF;

    RETURN QUERY
        SELECT DISTINCT x, CASE WHEN x = ANY(v_exists) THEN 'exists' ELSE 'fenced' END
        FROM unnest(v_ids) AS x WHERE NOT (x = ANY(v_ok));
END
$fn$;
"""


def migrations(schema: str) -> list[LiteralString]:
    """The migration scripts for ``schema``, version ``n`` at index ``n - 1``."""
    s = f'"{check_schema_name(schema)}"'
    events_lock = lock_key(schema, "events")
    scripts = [
        _v1(s, events_lock),
        _v2(s, events_lock),
        _v3(s, events_lock),
        _v4(s, events_lock),
        _v5(s, events_lock),
        _v6(s, events_lock),
        _v7(s, events_lock),
    ]
    # Literal text, the checked schema name and an integer: statements psycopg may run.
    return cast("list[LiteralString]", scripts)  # type: ignore[redundant-cast]


SCHEMA_VERSION = len(migrations("sagakit"))


def _newer(schema: str, current: int, known: int) -> StoreError:
    return StoreError(
        f"PostgreSQL schema {schema!r} is at saga-log version {current}, newer than "
        f"this sagakit understands ({known}); upgrade sagakit"
    )


MAX_LOCK_TIMEOUT_MS = 2_147_483_647
"""The longest ``lock_timeout`` PostgreSQL takes (a 32-bit count of milliseconds)."""


_UNIT_MS = {"": 1, "ms": 1, "s": 1_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
_SHOWN = re.compile(r"(\d+)\s*(ms|s|min|h|d)?")


def shown_milliseconds(shown: str) -> int | None:
    """A time setting as ``SHOW`` gives it (``"20ms"``, ``"5min"``, ``"0"``) in
    milliseconds; ``None`` for a form it does not give."""
    match = _SHOWN.fullmatch(shown.strip())
    if match is None:
        return None
    return int(match[1]) * _UNIT_MS[match[2] or ""]


async def migrate(conn: AsyncConnection[object], schema: str, *, wait: float = 10.0) -> int:
    """Bring ``schema`` to :data:`SCHEMA_VERSION`; returns how many migrations ran.

    Waits up to ``wait`` seconds for its locks (another process migrating the schema
    holds the migration's lock until it commits), whatever the role's ``lock_timeout``
    or a shorter ``statement_timeout``.
    """
    name = check_schema_name(schema)
    s = f'"{name}"'
    scripts = migrations(name)
    # A schema already at this version needs no lock and no DDL, so a role that may only
    # read the log opens it too (an operator's `sagakit list`); one at a newer version
    # is refused before any DDL, which such a role may not run.
    cursor = await conn.execute("SELECT to_regclass(%s)", (f"{s}.schema_migrations",))
    found = await cursor.fetchone()
    if found is not None and found[0] is not None:  # type: ignore[index]
        cursor = await conn.execute(f"SELECT coalesce(max(version), 0) FROM {s}.schema_migrations")
        row = await cursor.fetchone()
        if row is not None and int(row[0]) == len(scripts):  # type: ignore[index]
            return 0
        if row is not None and int(row[0]) > len(scripts):  # type: ignore[index]
            raise _newer(schema, int(row[0]), len(scripts))  # type: ignore[index]
    try:
        return await _migrate_locked(conn, name, scripts, wait)
    except Exception as error:
        state = getattr(error, "sqlstate", None)
        upgrade = f"`sagakit --db ... --schema {schema} upgrade`"
        if state == _LOCK_NOT_AVAILABLE:
            raise StoreError(
                f"cannot migrate the PostgreSQL saga log (schema {schema!r}): waited "
                f"{timeout_text(wait)} for a lock held by another session (another process "
                "migrating the schema, or a long transaction on its tables); try again once it "
                "is done, give the store a longer connect_timeout, or migrate ahead of the "
                f"deploy with {upgrade}"
            ) from error
        if state == _INSUFFICIENT_PRIVILEGE:
            reason = str(error).partition("\n")[0]
            raise StoreError(
                f"cannot create or migrate the PostgreSQL saga log (schema {schema!r}): "
                f"{reason}; the store's role needs CREATE on the database (or to own the "
                f"schema and its tables), or migrate it ahead as a role that may: {upgrade}"
            ) from error
        raise


_LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout ran out
_INSUFFICIENT_PRIVILEGE = "42501"  # permission denied, must be owner


async def _migrate_locked(
    conn: AsyncConnection[object],
    schema: LiteralString,
    scripts: list[LiteralString],
    wait: float,
) -> int:
    s = f'"{schema}"'
    async with conn.transaction():
        # A role's lock_timeout shorter than another opener's migration (~40 ms) failed
        # every store opening at once but the first: wait for it, up to ``wait``.
        timeout = min(max(int(wait * 1000), 1), MAX_LOCK_TIMEOUT_MS)
        await conn.execute(f"SET LOCAL lock_timeout = {_number(timeout)}")
        # So did a role's statement_timeout: one shorter than that wait is lengthened
        # (a second past it, so that a lock waited for too long says so, as above).
        longer = min(timeout + 1000, MAX_LOCK_TIMEOUT_MS)
        # Read with SHOW, not from pg_settings, whose scan of every setting (about 1 ms,
        # 20 times SHOW's) a loaded server made outlast a 20 ms statement_timeout.
        cursor = await conn.execute("SHOW statement_timeout")
        shown = await cursor.fetchone()
        role_ms = shown_milliseconds(str(shown[0])) if shown else None  # type: ignore[index]
        if role_ms is not None and 1 <= role_ms < longer:
            await conn.execute(f"SET LOCAL statement_timeout = {_number(longer)}")
        key = _number(lock_key(schema, "migrate"))
        await conn.execute(f"SELECT pg_advisory_xact_lock({key})")
        # CREATE SCHEMA IF NOT EXISTS needs the right to create schemas in the database
        # even when the schema exists: a role that owns the schema but has no such right
        # could not open it.
        cursor = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        if await cursor.fetchone() is None:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {s}.schema_migrations ("
            "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute(f"SELECT coalesce(max(version), 0) FROM {s}.schema_migrations")
        row = await cursor.fetchone()
        current = int(row[0]) if row else 0  # type: ignore[index]
        if current > len(scripts):
            raise _newer(schema, current, len(scripts))
        for version in range(current + 1, len(scripts) + 1):
            await conn.execute(scripts[version - 1])
            await conn.execute(
                f"INSERT INTO {s}.schema_migrations (version) VALUES (%s)", (version,)
            )
    return len(scripts) - current


__all__ = [
    "SCHEMA_VERSION",
    "check_schema_name",
    "lock_key",
    "migrate",
    "migrations",
    "shown_milliseconds",
]
