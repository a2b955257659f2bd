"""The SQL the PostgreSQL store sends, built once per schema.

Lease times are always the database's ``now()``; a saga's stamps are too, but never
before its start (``greatest(now(), started_at)``); durations travel as seconds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, LiteralString, TypeAlias

from ._pg_schema import check_schema_name

Run: TypeAlias = Callable[[str, Any], Awaitable[list[tuple[Any, ...]]]]
"""Sends one statement with its parameters, in its own transaction, and returns its rows
(the store's ``_run``)."""

_SAGA_COLUMNS = (
    "saga_id, name, status, explicit_id, factory, policy, fingerprint, args, kwargs, "
    "total_steps, error, started_at, updated_at, finished_at, recovery_attempts, "
    "dead_reason, parked_at"
)
_FINISH_ORDER = "finished_at, finish_order NULLS FIRST, saga_id"
"""The history's order: sagas that finished in one batch (one ``finished_at``) in the
order they finished in it; rows from before schema version 4 by saga id."""
_LISTED_COLUMNS = "saga_id, name, status, total_steps, started_at, finished_at, error, dead_reason"
"""The columns of a saga ``sagakit list`` shows (``_pg_rows.listed`` reads them)."""
_STEP_COLUMNS = (
    "saga_id, compensation, step_index, name, status, attempts, duration, error, result, events"
)


@dataclass(frozen=True, slots=True)
class Statements:
    """Every statement of the store, with the schema name quoted in: each a
    ``LiteralString`` (literal text and the checked schema name only), as psycopg asks."""

    begin: LiteralString
    unbegin: LiteralString
    conflict: LiteralString
    restart: LiteralString
    delete_steps: LiteralString
    apply: LiteralString
    heartbeat: LiteralString
    release: LiteralString
    release_one: LiteralString
    give_back: LiteralString
    claim: LiteralString
    claimed_by: LiteralString
    renewed: LiteralString
    claimed_steps: LiteralString
    get: LiteralString
    running: LiteralString
    history: LiteralString
    history_newest: LiteralString
    newest: LiteralString
    newest_with_status: LiteralString
    listed: LiteralString
    listed_with_status: LiteralString
    listed_before: LiteralString
    listed_with_status_before: LiteralString
    arguments: LiteralString
    running_count: LiteralString
    running_names: LiteralString
    claimable_running_names: LiteralString
    leases: LiteralString
    history_count: LiteralString
    dead_letter: LiteralString
    dead_letters: LiteralString
    resume: LiteralString
    resolve: LiteralString
    resolved: LiteralString
    events: LiteralString
    events_of: LiteralString
    settle: LiteralString
    last_write: LiteralString
    last_write_shared: str


def statements(schema: str) -> Statements:
    """The statements of a store using ``schema``."""
    s = f'"{check_schema_name(schema)}"'
    lease = "now() + make_interval(secs => %(lease)s)"
    # A saga's stamps, never before its start: a server clock set back (NTP) while it ran
    # would end (or park, or update) it before it began, a negative duration.
    stamp = "greatest(now(), started_at)"
    active = "finished_at IS NULL AND dead_reason IS NULL"

    def running_names(only: LiteralString) -> LiteralString:
        return (
            "SELECT name, count(*), coalesce(max(CASE WHEN EXISTS (SELECT 1 FROM "
            f"{s}.steps st WHERE st.saga_id = r.saga_id AND st.status = 'completed') "
            f"THEN r.saga_id END), max(r.saga_id)) FROM {s}.sagas r WHERE {active} "
            f"{only}GROUP BY name ORDER BY name"
        )

    # Compensations in the order they last started (as SQLite lists them); rows from
    # before schema version 4 have no start_order and come first, by seq.
    record_order = (
        "compensation, CASE WHEN compensation THEN coalesce(start_order, 0) ELSE step_index END, "
        "seq"
    )
    steps_order = f"ORDER BY saga_id, {record_order}"

    def steps_of(saga: LiteralString) -> LiteralString:
        """The records of the ``sagas`` row ``saga`` (its alias), in the order above, as
        one JSON array of arrays (``_pg_rows.metadata`` reads them): read in the row's
        statement, they are of the row's snapshot. (Read by a second statement, a write
        committing in between made them disagree: a saga EXECUTING with every step
        completed, a finished saga with a step running.)"""
        return (
            "(SELECT json_agg(json_build_array(compensation, step_index, name, status, "
            f"attempts, duration, error, events) ORDER BY {record_order}) "
            f"FROM {s}.steps st WHERE st.saga_id = {saga}.saga_id)"
        )

    def listed(where: LiteralString) -> LiteralString:
        """A page of ``sagakit list``: the newest sagas ``where`` says (the newest of a
        status, before the last of the page before), the columns it shows, and their
        completed forward steps counted from the steps' primary key, for the rows the
        LIMIT keeps only (a subquery, so it runs first); no step record is read."""
        return (
            f"SELECT {_LISTED_COLUMNS}, (SELECT count(*) FROM {s}.steps st "
            "WHERE st.saga_id = page.saga_id AND NOT st.compensation "
            f"AND st.status = 'completed') FROM (SELECT {_LISTED_COLUMNS} FROM {s}.sagas "
            f"{where} ORDER BY started_at DESC, saga_id DESC LIMIT %s) AS page "
            "ORDER BY started_at DESC, saga_id DESC"
        )

    return Statements(
        begin=(
            f"INSERT INTO {s}.sagas (saga_id, name, status, explicit_id, factory, policy, "
            "fingerprint, args, kwargs, total_steps, owner, lease_until, last_write) VALUES "
            "(%(id)s, %(name)s, 'executing', %(explicit)s, %(factory)s, %(policy)s, "
            f"%(fingerprint)s, %(args)s, %(kwargs)s, %(total)s, %(owner)s, {lease}, "
            "%(token)s) ON CONFLICT (saga_id) DO NOTHING RETURNING fence"
        ),
        # The row a begin wrote (its write token) for a run that its caller cancelled.
        unbegin=(
            f"DELETE FROM {s}.sagas WHERE saga_id = %(id)s AND owner = %(owner)s "
            "AND last_write = %(token)s AND finished_at IS NULL"
        ),
        # With the row's owner and last write token: a begin whose connection was lost
        # finds its own row (or restart) there if it committed (see PostgresStore.begin).
        conflict=(
            f"SELECT status, finished_at IS NULL, resolved, dead_reason, owner, fence, "
            f"last_write, name, args, kwargs, fingerprint FROM {s}.sagas "
            "WHERE saga_id = %s FOR UPDATE"
        ),
        restart=(
            f"UPDATE {s}.sagas SET name = %(name)s, status = 'executing', "
            "explicit_id = %(explicit)s, factory = %(factory)s, policy = %(policy)s, "
            "fingerprint = %(fingerprint)s, args = %(args)s, kwargs = %(kwargs)s, "
            "total_steps = %(total)s, error = NULL, started_at = now(), updated_at = now(), "
            f"finished_at = NULL, owner = %(owner)s, fence = fence + 1, lease_until = {lease}, "
            "released = false, recovery_attempts = 0, dead_reason = NULL, parked_at = NULL, "
            "resolved = false, finish_order = NULL, last_write = %(token)s "
            "WHERE saga_id = %(id)s RETURNING fence"
        ),
        delete_steps=f"DELETE FROM {s}.steps WHERE saga_id = %s",
        apply=f"SELECT * FROM {s}.apply_writes(%s::jsonb, %s::jsonb, %s::jsonb)",
        # A row another session holds is skipped (renewed at the next beat), not waited
        # for: one row held by an open transaction stopped every lease of the store
        # renewing, and other workers took its other sagas over. (No claim takes a row
        # while it is held either.)
        heartbeat=(
            f"WITH l AS (SELECT saga_id FROM {s}.sagas WHERE owner = %(owner)s "
            f"AND saga_id = ANY(%(ids)s::text[]) AND {active} ORDER BY saga_id "
            "FOR UPDATE SKIP LOCKED) "
            f"UPDATE {s}.sagas s SET lease_until = {lease} FROM l "
            "WHERE s.saga_id = l.saga_id RETURNING s.saga_id"
        ),
        # %(released)s false: as if the worker died (the next claim counts an attempt).
        # %(ids)s: only those sagas (a worker's own), or all the store owns (%(all)s).
        release=(
            f"WITH l AS (SELECT saga_id FROM {s}.sagas WHERE owner = %(owner)s AND {active} "
            "AND (%(all)s OR saga_id = ANY(%(ids)s::text[])) "
            f"ORDER BY saga_id FOR UPDATE) UPDATE {s}.sagas s SET owner = NULL, "
            "lease_until = now(), fence = s.fence + 1, released = %(released)s FROM l "
            "WHERE s.saga_id = l.saga_id RETURNING s.saga_id"
        ),
        # One saga this store stopped running unfinished; the next claim counts an attempt.
        # A token above %(fence)s under this owner is still that lease's: moved on by the
        # store's own settling (or a claim that only renewed it) whose answer was lost, as
        # when finish() is cancelled meanwhile. (Another owner's claim changes the owner.)
        # A later lease of this store's (a claim or restart after release_leases() gave
        # the saga up while this release was on its way) wrote a write token above
        # %(token)s, the last one the store had handed out when it sent the release:
        # that lease is left alone.
        release_one=(
            f"UPDATE {s}.sagas SET owner = NULL, lease_until = now(), fence = fence + 1, "
            "released = false WHERE saga_id = %(id)s AND owner = %(owner)s "
            "AND fence >= %(fence)s AND (last_write IS NULL OR last_write <= %(token)s) "
            f"AND {active} RETURNING saga_id"
        ),
        # Claims of ids=fences that no run made since (give_back()): the row as before
        # the claim, so the next claim reads what this one read. A crash's claim counted
        # an attempt and stays unreleased (its recovery warns); a handover's stays released.
        give_back=(
            f"WITH g AS (SELECT saga_id FROM {s}.sagas WHERE owner = %(owner)s AND {active} "
            "AND saga_id = ANY(%(ids)s::text[]) AND (saga_id, fence) IN "
            "(SELECT * FROM unnest(%(ids)s::text[], "
            "%(fences)s::bigint[])) ORDER BY saga_id FOR UPDATE) "
            f"UPDATE {s}.sagas s SET owner = NULL, lease_until = now(), fence = s.fence + 1, "
            "released = s.saga_id = ANY(%(handed)s::text[]), recovery_attempts = CASE "
            "WHEN s.saga_id = ANY(%(handed)s::text[]) THEN s.recovery_attempts "
            "ELSE greatest(s.recovery_attempts - 1, 0) END "
            "FROM g WHERE s.saga_id = g.saga_id RETURNING s.saga_id"
        ),
        claim=(
            f"WITH c AS (SELECT saga_id, released AS handed, "
            "recovery_attempts + CASE WHEN released THEN 0 ELSE 1 END AS attempts "
            f"FROM {s}.sagas WHERE {active} AND lease_until <= now() "
            "AND (%(all)s OR name = ANY(%(names)s::text[]) OR NOT factory) "
            "AND (%(any_id)s OR saga_id = ANY(%(ids)s::text[])) "
            # Never a saga this store still runs (its lease ran out while the database
            # was unreachable): the run would go on beside its own recovery.
            "AND NOT (saga_id = ANY(%(mine)s::text[])) "
            "ORDER BY started_at, saga_id LIMIT %(limit)s FOR UPDATE SKIP LOCKED), "
            "d AS (SELECT saga_id, attempts, attempts > %(max)s AS dead, handed FROM c) "
            f"UPDATE {s}.sagas s SET "
            "owner = CASE WHEN d.dead THEN NULL ELSE %(owner)s END, "
            # The claim that parks a saga is no attempt (no run of it is made): its count
            # and reason say the attempts that were made, as SQLite's (s.: the old row).
            "fence = s.fence + 1, released = false, recovery_attempts = CASE WHEN d.dead "
            "THEN s.recovery_attempts ELSE d.attempts END, "
            f"lease_until = CASE WHEN d.dead THEN NULL ELSE {lease} END, "
            "dead_reason = CASE WHEN d.dead THEN 'none of its ' || s.recovery_attempts || "
            "' recovery attempt' || CASE WHEN s.recovery_attempts = 1 THEN '' ELSE 's' END "
            "|| ' finished it: each time its process died or was stopped (max_attempts=' "
            "|| %(max)s || ')' END, "
            "parked_at = CASE WHEN d.dead THEN greatest(now(), s.started_at) END, "
            # The claim's write token (the next one for a handover), for claimed_by.
            "last_write = CASE WHEN d.dead THEN s.last_write "
            "WHEN d.handed THEN %(token)s + 1 ELSE %(token)s END "
            "FROM d WHERE s.saga_id = d.saga_id "
            "RETURNING s.saga_id, s.name, s.status, s.args, s.kwargs, s.policy, "
            "s.recovery_attempts, s.explicit_id, s.factory, s.fingerprint, s.error, "
            "s.started_at, s.fence, d.dead, d.handed"
        ),
        # The rows a claim whose reply was lost took, by its write token (as the claim
        # returns them; a parked one has no owner, so it is not among them).
        claimed_by=(
            "SELECT saga_id, name, status, args, kwargs, policy, recovery_attempts, "
            "explicit_id, factory, fingerprint, error, started_at, fence, false, "
            f"last_write = %(token)s + 1 FROM {s}.sagas WHERE owner = %(owner)s "
            f"AND last_write IN (%(token)s, %(token)s + 1) AND {active}"
        ),
        # A claim that only renewed the lease of a saga this store runs (see _claim in
        # postgres.py): it counted a recovery attempt (the row was not released), which
        # no crash caused.
        renewed=(
            f"UPDATE {s}.sagas SET recovery_attempts = recovery_attempts - 1 "
            "WHERE saga_id = ANY(%(ids)s::text[]) AND owner = %(owner)s "
            f"AND {active} AND recovery_attempts > 0"
        ),
        # Read after the claim committed: every write of the former owner is in (later
        # ones are fenced out), so the highest start_order is where the claimer counts on.
        claimed_steps=(
            f"SELECT {_STEP_COLUMNS}, start_order FROM {s}.steps WHERE saga_id = ANY(%s) "
            f"{steps_order}"
        ),
        get=f"SELECT {_SAGA_COLUMNS}, {steps_of('g')} FROM {s}.sagas g WHERE saga_id = %s",
        running=(
            f"SELECT {_SAGA_COLUMNS}, {steps_of('r')} FROM {s}.sagas r WHERE {active} "
            "ORDER BY started_at, saga_id"
        ),
        history=(
            f"SELECT {_SAGA_COLUMNS}, {steps_of('h')} FROM {s}.sagas h "
            f"WHERE finished_at IS NOT NULL ORDER BY {_FINISH_ORDER}"
        ),
        # The steps of the rows the LIMIT keeps only (a subquery, so it runs first).
        history_newest=(
            f"SELECT {_SAGA_COLUMNS}, {steps_of('newest')} FROM (SELECT {_SAGA_COLUMNS}, "
            f"finish_order FROM {s}.sagas WHERE finished_at IS NOT NULL "
            "ORDER BY finished_at DESC, finish_order DESC NULLS LAST, saga_id DESC "
            f"LIMIT %s) AS newest ORDER BY {_FINISH_ORDER}"
        ),
        newest=(
            f"SELECT {_SAGA_COLUMNS}, {steps_of('newest')} FROM (SELECT {_SAGA_COLUMNS} "
            f"FROM {s}.sagas ORDER BY started_at DESC, saga_id DESC LIMIT %s) AS newest "
            "ORDER BY started_at DESC, saga_id DESC"
        ),
        newest_with_status=(
            f"SELECT {_SAGA_COLUMNS}, {steps_of('newest')} FROM (SELECT {_SAGA_COLUMNS} "
            f"FROM {s}.sagas WHERE status = %s ORDER BY started_at DESC, saga_id DESC "
            "LIMIT %s) AS newest ORDER BY started_at DESC, saga_id DESC"
        ),
        listed=listed(""),
        listed_with_status=listed("WHERE status = %s"),
        listed_before=listed("WHERE (started_at, saga_id) < (%s, %s)"),
        listed_with_status_before=listed("WHERE status = %s AND (started_at, saga_id) < (%s, %s)"),
        arguments=f"SELECT args, kwargs FROM {s}.sagas WHERE saga_id = %s",
        running_count=f"SELECT count(*) FROM {s}.sagas WHERE {active}",
        # The names of the running sagas, how many of each and one's id (one with a
        # completed step, whose events' class is the saga module's, where there is one).
        running_names=running_names(""),
        # The same of those a claim could take: not under a lease (leases').
        claimable_running_names=running_names("AND (lease_until IS NULL OR lease_until <= now()) "),
        # The running sagas no claim takes yet: their owner's lease has not run out; how
        # many, and the seconds until the first and the last of those leases run out.
        leases=(
            "SELECT count(*), extract(epoch FROM min(lease_until) - now()), "
            f"extract(epoch FROM max(lease_until) - now()) FROM {s}.sagas "
            f"WHERE {active} AND lease_until > now()"
        ),
        history_count=f"SELECT count(*) FROM {s}.sagas WHERE finished_at IS NOT NULL",
        dead_letter=(
            f"UPDATE {s}.sagas SET dead_reason = %(reason)s, parked_at = {stamp}, owner = NULL, "
            "lease_until = NULL, fence = fence + 1 "
            f"WHERE saga_id = %(id)s AND fence = %(fence)s AND {active} RETURNING saga_id"
        ),
        dead_letters=(
            "SELECT saga_id, name, status, recovery_attempts, dead_reason, parked_at "
            f"FROM {s}.sagas WHERE dead_reason IS NOT NULL AND finished_at IS NULL "
            "ORDER BY parked_at, saga_id"
        ),
        resume=(
            f"UPDATE {s}.sagas SET dead_reason = NULL, parked_at = NULL, recovery_attempts = 0, "
            f"released = false, lease_until = now(), updated_at = {stamp}, "
            "last_write = %(token)s "
            "WHERE saga_id = %(id)s AND dead_reason IS NOT NULL AND finished_at IS NULL "
            "RETURNING saga_id"
        ),
        # The steps the run left running will never end now: they are failed too.
        resolve=(
            f"WITH r AS (UPDATE {s}.sagas SET status = 'failed', resolved = true, "
            "error = 'resolved by an operator: ' || %(note)s || "
            "coalesce(' (was: ' || coalesce(dead_reason || "
            "coalesce('; error: ' || error, ''), error) || ')', ''), "
            f"finished_at = coalesce(finished_at, {stamp}), "
            # (finished_at: the one it had, if any; greatest() skips a NULL.)
            "updated_at = greatest(now(), started_at, finished_at), owner = NULL, "
            "lease_until = NULL, fence = fence + 1, dead_reason = NULL, parked_at = NULL, "
            "last_write = %(token)s "
            "WHERE saga_id = %(id)s AND ("
            "dead_reason IS NOT NULL "
            "OR (finished_at IS NOT NULL AND status = 'failed' AND NOT resolved) "
            "OR (finished_at IS NULL AND lease_until <= now())) "
            "RETURNING saga_id), "
            f"i AS (UPDATE {s}.steps st SET status = 'failed', "
            "error = 'interrupted; the saga was resolved by an operator' "
            "FROM r WHERE st.saga_id = r.saga_id AND st.status = 'running') "
            "SELECT saga_id FROM r"
        ),
        # A saga resolve() refused as resolved already: when, and its error (the note).
        resolved=(
            f"SELECT updated_at, error FROM {s}.sagas WHERE saga_id = %s AND resolved "
            "AND finished_at IS NOT NULL"
        ),
        events=(
            "SELECT position, saga_id, saga_name, step_index, step_name, compensation, data, "
            f"recorded_at FROM {s}.events WHERE position > %s ORDER BY position LIMIT %s"
        ),
        events_of=(
            "SELECT position, saga_id, saga_name, step_index, step_name, compensation, data, "
            f"recorded_at FROM {s}.events WHERE saga_id = %s AND position > %s "
            "ORDER BY position LIMIT %s"
        ),
        # After a write whose outcome is unknown: waits for it if it is still committing,
        # and moves the fencing token on so that it can never commit later.
        settle=(
            f"UPDATE {s}.sagas SET fence = fence + 1 WHERE saga_id = %(id)s "
            "AND owner = %(owner)s AND finished_at IS NULL RETURNING fence, last_write"
        ),
        last_write=f"SELECT last_write FROM {s}.sagas WHERE saga_id = %s",
        # An operator's call in doubt reads back its token: FOR SHARE waits for the call,
        # if it is still committing, and then reads the row as it left it.
        last_write_shared=f"SELECT last_write FROM {s}.sagas WHERE saga_id = %s FOR SHARE",
    )


__all__ = ["Run", "Statements", "statements"]
