"""The SQL text of the SQLite store: its log writes and the reads that load records."""

from __future__ import annotations

_SAGA_COLUMNS = (
    "id, name, status, steps_executed, total_steps, started_at, updated_at, finished_at, error, "
    "dead_letter"
)
_STEP_COLUMNS = "idx, name, status, attempts, duration, error, result, compensation"
NEXT_FINISH = (
    "(SELECT coalesce(max(finish_order), 0) + 1 FROM sagakit_sagas WHERE finished_at = {at})"
)
"""The ``finish_order`` of a saga ending at ``{at}`` (an index seek)."""

# ------------------------------------------------------------------- writes

INSERT_SAGA = (
    "INSERT INTO sagakit_sagas (id, name, status, explicit, factory, policy, fingerprint, "
    "arguments, owner, total_steps, started_at, updated_at) "
    "VALUES (?, ?, 'executing', ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_STEP = (
    "INSERT INTO sagakit_steps (saga_id, compensation, idx, name, status, attempts, started_at, "
    "start_order) VALUES (?, ?, ?, ?, 'running', ?, ?, {order}) "
    "ON CONFLICT (saga_id, compensation, idx) DO UPDATE SET status = 'running', "
    "attempts = excluded.attempts, error = NULL, started_at = excluded.started_at, "
    "start_order = excluded.start_order"
)
UPSERT_STEP = _UPSERT_STEP.format(order="?")
"""A step or compensation starts (again): listed past every record of its saga so far.

``start_order`` is the saga's highest plus one, counted by the store that runs the saga
(from 0 at its start, from the log's highest when recovery claims it) and passed as the
seventh parameter: reading the highest from the log at every start scans all of the
saga's rows, so a long saga's starts got slower with every step. A run the store neither
began nor claimed has no count: its starts use :data:`UPSERT_STEP_UNCOUNTED`."""
UPSERT_STEP_UNCOUNTED = _UPSERT_STEP.format(
    order="(SELECT coalesce(max(start_order), 0) + 1 FROM sagakit_steps WHERE saga_id = ?)"
)
""":data:`UPSERT_STEP` reading the saga's highest ``start_order`` from the log (the
seventh parameter is the saga id again, as numbered placeholders with a sequence of
parameters are deprecated since Python 3.12). Only for a run this store neither began
nor claimed: every other start binds its number, one text parameter and a subquery
fewer per start."""
END_STEP = (
    "UPDATE sagakit_steps SET status = ?, attempts = ?, duration = ?, error = ?, result = ? "
    "WHERE saga_id = ? AND compensation = ? AND idx = ?"
)
COMPLETE_STEP = (
    "UPDATE sagakit_steps SET status = 'completed', attempts = ?, duration = ?, error = NULL, "
    "result = ? WHERE saga_id = ? AND compensation = ? AND idx = ?"
)
""":data:`END_STEP` of a completion with nothing to note (the usual one): its status and
``NULL`` error written in the SQL, not bound (binding ``None`` costs ``sqlite3`` a lookup
of an adapter)."""
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
# A claim given back unrun (give_back()), or let go of by a claim_orphans() that then
# failed: it counted a recovery attempt no run made.
_UNCOUNT = "recovery_attempts = max(recovery_attempts - 1, 0)"
UNCOUNT_ATTEMPT = f"UPDATE sagakit_sagas SET {_UNCOUNT} WHERE id = ?"
"""give_back()'s, in the hand-over, which clears the owner if it is still this process."""
LET_GO = f"UPDATE sagakit_sagas SET owner = NULL, {_UNCOUNT} WHERE id = ? AND owner = ?"
"""claim_orphans()'s, clearing the owner in the same statement: (id, this process's owner)."""
SAGA_ERROR = "UPDATE sagakit_sagas SET error = coalesce(error, ?), updated_at = ? WHERE id = ?"
INTERRUPTED_STEP = (
    "INSERT INTO sagakit_steps (saga_id, compensation, idx, name, status, attempts, "
    "started_at, duration, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (saga_id, compensation, idx) DO UPDATE SET status = excluded.status, "
    "duration = excluded.duration, error = excluded.error WHERE status = 'running'"
)
"""A step or compensation no transition ended (see ``unended``): the run's end writes it,
its record too if its start never reached the log (a step cancelled while its start was
written: PostgreSQL's log and the run's own record keep it ``failed`` alike)."""
RESOLVE_INTERRUPTED = (
    "UPDATE sagakit_steps SET status = 'failed', "
    "error = 'interrupted; the saga was resolved by an operator' "
    "WHERE saga_id = ? AND status = 'running'"
)
"""The steps a resolved saga's run left running: they will never end now."""
FINISHED = (
    "UPDATE sagakit_sagas SET status = ?, error = ?, steps_executed = ?, "
    "total_steps = coalesce(?, total_steps), finished_at = ?, updated_at = ?, "
    f"owner = NULL, finish_order = {NEXT_FINISH.format(at='?')} WHERE id = ?"
)
"""A saga ends: listed after those that ended at the same ``finished_at`` before it."""

# -------------------------------------------------------------------- reads

SELECT_SAGA = f"SELECT {_SAGA_COLUMNS} FROM sagakit_sagas WHERE id = ?"
LIST_NEWEST = "ORDER BY started_at DESC, rowid DESC LIMIT ?"
"""``list_sagas()``: the newest sagas (an index read backwards: ``sagakit_sagas_started``)."""
LIST_NEWEST_OF_STATUS = "WHERE status = ? ORDER BY started_at DESC, rowid DESC LIMIT ?"
"""``list_sagas(status=...)``: the newest of one status (``sagakit_sagas_status``)."""
LISTED = (
    "SELECT id, name, status, total_steps, started_at, finished_at, error, dead_letter, "
    "(SELECT count(*) FROM sagakit_steps st WHERE st.saga_id = s.id AND st.compensation = 0 "
    "AND st.status = 'completed'), rowid FROM sagakit_sagas s"
)
"""A page of ``sagakit list`` (followed by a ``WHERE`` and :data:`LIST_NEWEST`): the
columns it shows, its completed forward steps counted from the steps' primary key, and
the page's key (``started_at``, ``rowid``)."""
SELECT_ARGUMENTS = "SELECT arguments FROM sagakit_sagas WHERE id = ?"
"""A saga's call arguments, for ``sagakit show``: ``[args, kwargs]`` as one JSON array."""
RUNNING_NAMES = (
    "SELECT name, owner, count(*), max(CASE WHEN EXISTS (SELECT 1 FROM sagakit_steps st "
    "WHERE st.saga_id = s.id AND st.status = 'completed') THEN s.id END), max(s.id) "
    "FROM sagakit_sagas s WHERE finished_at IS NULL AND dead_letter IS NULL "
    "GROUP BY name, owner ORDER BY name"
)
"""The running sagas by name and owner (a process: few of them), how many of each, the id
of one with a completed step (whose result's class is the saga module's; NULL where none
has one) and of any one."""
_RECORD_ORDER = "ORDER BY compensation, start_order IS NULL, start_order, started_at, idx"
"""Steps, then compensations, each in the order they last started (not by the clock).
Records an older sagakit wrote into this schema have no ``start_order``: they come after
the numbered ones, by the clock, as that version listed them (until recovery numbers
them: :func:`~._sqlite_rows.number_unordered`)."""
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
    "COMPLETE_STEP",
    "END_STEP",
    "EXECUTING",
    "FINISHED",
    "INSERT_EVENT",
    "INSERT_SAGA",
    "INTERRUPTED_STEP",
    "LET_GO",
    "LISTED",
    "LIST_NEWEST",
    "LIST_NEWEST_OF_STATUS",
    "RUNNING_NAMES",
    "NEXT_FINISH",
    "RESOLVE_INTERRUPTED",
    "RETRY_STEP",
    "SAGA_ERROR",
    "SELECT_ARGUMENTS",
    "SELECT_ORPHAN",
    "SELECT_ORPHAN_STEPS",
    "SELECT_SAGA",
    "SELECT_STEPS",
    "UNCOUNT_ATTEMPT",
    "UPSERT_STEP",
    "UPSERT_STEP_UNCOUNTED",
]
