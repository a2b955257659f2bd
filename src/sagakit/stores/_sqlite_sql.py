"""The SQL text of the SQLite store: its log writes and the reads that load records."""

from __future__ import annotations

_SAGA_COLUMNS = (
    "id, name, status, steps_executed, total_steps, started_at, updated_at, finished_at, error, "
    "dead_letter"
)
_STEP_COLUMNS = "idx, name, status, attempts, duration, error, result, compensation"

# ------------------------------------------------------------------- writes

INSERT_SAGA = (
    "INSERT INTO sagakit_sagas (id, name, status, explicit, factory, policy, fingerprint, "
    "arguments, owner, total_steps, started_at, updated_at) "
    "VALUES (?, ?, 'executing', ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
UPSERT_STEP = (  # triggers move the saga's start counter on (see _sqlite_schema._V2)
    "INSERT INTO sagakit_steps (saga_id, compensation, idx, name, status, attempts, started_at) "
    "VALUES (?, ?, ?, ?, 'running', ?, ?) ON CONFLICT (saga_id, compensation, idx) DO UPDATE "
    "SET status = 'running', attempts = excluded.attempts, error = NULL, "
    "started_at = excluded.started_at"
)
END_STEP = (
    "UPDATE sagakit_steps SET status = ?, attempts = ?, duration = ?, error = ?, result = ? "
    "WHERE saga_id = ? AND compensation = ? AND idx = ?"
)
RETRY_STEP = (
    "UPDATE sagakit_steps SET attempts = ?, error = ? "
    "WHERE saga_id = ? AND compensation = ? AND idx = ?"
)
INSERT_EVENT = (
    "INSERT INTO sagakit_events (saga_id, saga_name, step_index, step_name, compensation, "
    "data, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
COMPENSATING = (
    "UPDATE sagakit_sagas SET status = 'compensating', error = coalesce(?, error), "
    "updated_at = ? WHERE id = ?"
)
EXECUTING = "UPDATE sagakit_sagas SET status = 'executing', updated_at = ? WHERE id = ?"
SAGA_ERROR = "UPDATE sagakit_sagas SET error = coalesce(error, ?), updated_at = ? WHERE id = ?"
INTERRUPTED_STEP = (
    "UPDATE sagakit_steps SET status = ?, duration = ?, error = ? "
    "WHERE saga_id = ? AND compensation = ? AND idx = ? AND status = 'running'"
)
"""A step or compensation no transition ended (see ``unended``): the run's end writes it."""
RESOLVE_INTERRUPTED = (
    "UPDATE sagakit_steps SET status = 'failed', "
    "error = 'interrupted; the saga was resolved by an operator' "
    "WHERE saga_id = ? AND status = 'running'"
)
"""The steps a resolved saga's run left running: they will never end now."""
FINISHED = (
    "UPDATE sagakit_sagas SET status = ?, error = ?, steps_executed = ?, "
    "total_steps = coalesce(?, total_steps), finished_at = ?, updated_at = ?, "
    "owner = NULL WHERE id = ?"
)

# -------------------------------------------------------------------- reads

SELECT_SAGA = f"SELECT {_SAGA_COLUMNS} FROM sagakit_sagas WHERE id = ?"
_RECORD_ORDER = "ORDER BY compensation, start_order, idx"
"""Steps, then compensations, each in the order they last started (not by the clock)."""
SELECT_STEPS = (
    f"SELECT {_STEP_COLUMNS}, started_at FROM sagakit_steps WHERE saga_id = ? {_RECORD_ORDER}"
)
SELECT_ORPHAN = (
    "SELECT id, name, status, explicit, factory, policy, fingerprint, arguments, "
    "recovery_attempts, error, started_at FROM sagakit_sagas WHERE id = ?"
)
SELECT_ORPHAN_STEPS = f"SELECT {_STEP_COLUMNS} FROM sagakit_steps WHERE saga_id = ? {_RECORD_ORDER}"

__all__ = [
    "COMPENSATING",
    "END_STEP",
    "EXECUTING",
    "FINISHED",
    "INSERT_EVENT",
    "INSERT_SAGA",
    "INTERRUPTED_STEP",
    "RESOLVE_INTERRUPTED",
    "RETRY_STEP",
    "SAGA_ERROR",
    "SELECT_ORPHAN",
    "SELECT_ORPHAN_STEPS",
    "SELECT_SAGA",
    "SELECT_STEPS",
    "UPSERT_STEP",
]
