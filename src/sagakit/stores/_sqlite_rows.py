"""Loading SQLite saga-log rows and turning them back into sagakit records."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any

from .._runs import events_of
from .._serialization import JsonSerializer
from ..exceptions import StoreError
from ..records import SagaMetadata, StepRecord
from ..status import SagaStatus, StepStatus
from ._cli_records import ListedSaga
from ._protocol import LoggedStep, OrphanedSaga
from ._records import exactly, known_status, loads_as, record_name, saga_metadata, step_value
from ._sqlite_sql import SELECT_ORPHAN, SELECT_ORPHAN_STEPS, SELECT_SAGA, SELECT_STEPS


def when(stamp: float | None, saga_id: str | None = None) -> datetime | None:
    """A stored Unix time as a UTC datetime; anything else (a row edited by hand with
    ``datetime('now')``) is a :class:`StoreError` naming ``saga_id``, not a ``TypeError``."""
    if stamp is None:
        return None
    if isinstance(stamp, int | float) and not isinstance(stamp, bool):
        try:
            return datetime.fromtimestamp(stamp, UTC)
        except (ValueError, OverflowError, OSError):
            pass
    of = "" if saga_id is None else f" of saga {saga_id!r}"
    raise StoreError(
        f"a time{of} in the saga log is {stamp!r}, not a Unix time in seconds, as sagakit "
        "writes them: the row was edited by hand; set it to a number (unixepoch() in SQLite)"
    )


_NEVER = datetime.min.replace(tzinfo=UTC)


def load_metadata(
    conn: sqlite3.Connection, saga_id: str, serializer: JsonSerializer, *, exact: bool = False
) -> SagaMetadata | None:
    """The :class:`SagaMetadata` of ``saga_id`` (``None``: not in the log); ``exact``:
    results read back exactly or a :class:`SerializationError` (see :func:`step_value`)."""
    row = conn.execute(SELECT_SAGA, (saga_id,)).fetchone()
    if row is None:
        return None
    sid, name, status, _, total, started, updated, finished, error, parked = row
    records: list[StepRecord] = []
    stamps = [updated]  # when it changed last: its row, or a step's start
    for (
        idx,
        step_name,
        step_status,
        attempts,
        duration,
        step_error,
        result,
        comp,
        step_started,
    ) in conn.execute(SELECT_STEPS, (saga_id,)):
        stamps.append(step_started)
        completed = step_status == "completed"
        records.append(
            StepRecord(
                index=idx,
                name=step_name,
                status=known_status(
                    StepStatus, step_status, saga_id, record_name(comp, idx, step_name)
                ),
                attempts=attempts,
                duration=duration,
                error=step_error,
                events=(
                    tuple(
                        events_of(
                            step_value(
                                serializer,
                                result,
                                exactly(exact, "the result", comp, idx, step_name, saga_id),
                            )
                        )
                    )
                    if completed
                    else ()
                ),
                compensation=bool(comp),
            )
        )
    latest = max(when(stamp, saga_id) or _NEVER for stamp in stamps)  # (each one checked)
    return saga_metadata(
        saga_id=sid,
        name=name,
        status=status,
        total_steps=total,
        started_at=when(started, saga_id),
        # Ended: its end, written with finished_at (a step started before the clock was
        # set back may be stamped after it). Running: its row's last change or a step's start.
        updated_at=when(updated, saga_id) if finished is not None else latest,
        finished_at=when(finished, saga_id),
        error=error,
        records=records,
        dead_letter=parked,
    )


def listed(row: tuple[Any, ...]) -> ListedSaga:
    """A :class:`ListedSaga` from a row of :data:`~._sqlite_sql.LISTED`."""
    saga_id, name, status, total, started, finished, error, parked, executed, _ = row
    return ListedSaga(
        id=saga_id,
        name=name,
        status=known_status(SagaStatus, status, saga_id),
        steps_executed=executed,
        total_steps=total,
        started_at=when(started, saga_id),
        finished_at=when(finished, saga_id),
        error=error,
        dead_letter=parked,
    )


def number_unordered(conn: sqlite3.Connection, saga_id: str) -> int:
    """Give ``saga_id``'s records without a ``start_order`` one, past the saga's others;
    the saga's highest ``start_order`` then (0 for none), which its next start goes past.

    Only a process of an older sagakit, which opened the log before it was upgraded to
    schema version 2, writes such records; they are listed after the numbered ones, by
    ``started_at``. Recovery numbers them in that order before it starts anything, so
    what it starts is listed after them.
    """
    unordered = conn.execute(
        "SELECT compensation, idx FROM sagakit_steps WHERE saga_id = ? AND start_order IS NULL "
        "ORDER BY compensation, started_at, idx",
        (saga_id,),
    ).fetchall()
    [(top,)] = conn.execute(
        "SELECT coalesce(max(start_order), 0) FROM sagakit_steps WHERE saga_id = ?", (saga_id,)
    )
    if not unordered:
        return int(top)
    conn.executemany(
        "UPDATE sagakit_steps SET start_order = ? WHERE saga_id = ? AND compensation = ? "
        "AND idx = ?",
        [(top + n, saga_id, comp, idx) for n, (comp, idx) in enumerate(unordered, 1)],
    )
    return int(top) + len(unordered)


def load_orphan_rows(conn: sqlite3.Connection, saga_id: str) -> tuple[Any, ...]:
    """The saga row and step rows :func:`decode_orphan` decodes (read while claiming)."""
    saga = conn.execute(SELECT_ORPHAN, (saga_id,)).fetchone()
    steps = conn.execute(SELECT_ORPHAN_STEPS, (saga_id,)).fetchall()
    return (saga, steps)


def decode_orphan(rows: tuple[Any, ...], serializer: JsonSerializer) -> OrphanedSaga:
    """An :class:`OrphanedSaga` from claimed rows; raises :class:`SerializationError`."""
    saga, steps = rows
    (
        saga_id,
        name,
        status,
        explicit,
        factory,
        policy,
        fingerprint,
        arguments,
        attempts,
        error,
        started_at,
    ) = saga
    args, kwargs = loads_as(serializer, arguments, f"the arguments of saga {name!r}")
    forward: list[LoggedStep] = []
    compensations: list[LoggedStep] = []
    for idx, step_name, step_status, tries, duration, step_error, result, comp in steps:
        what = f"the result of {record_name(comp, idx, step_name)}"
        value = None if result is None else loads_as(serializer, result, what)
        logged = LoggedStep(
            index=idx,
            name=step_name,
            status=StepStatus(step_status),
            attempts=tries,
            result=value,
            events=tuple(events_of(value)) if step_status == "completed" else (),
            error=step_error,
            duration=duration,
            compensation=bool(comp),
        )
        (compensations if comp else forward).append(logged)
    forward.sort(key=lambda logged: logged.index)
    return OrphanedSaga(
        saga_id=saga_id,
        name=name,
        status=SagaStatus(status),
        args=tuple(args),
        kwargs=dict(kwargs),
        policy=policy,
        steps=tuple(forward),
        compensations=tuple(compensations),
        recovery_attempts=attempts,
        explicit_id=bool(explicit),
        factory=bool(factory),
        fingerprint=fingerprint,
        error=error,
        started_at=when(started_at),
    )


__all__ = [
    "decode_orphan",
    "listed",
    "load_metadata",
    "load_orphan_rows",
    "number_unordered",
    "when",
]
