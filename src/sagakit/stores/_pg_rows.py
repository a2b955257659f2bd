"""Turning PostgreSQL saga-log rows back into sagakit records."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from .._serialization import JsonSerializer
from ..records import SagaMetadata, StepRecord
from ..status import SagaStatus, StepStatus
from ._cli_records import ListedSaga
from ._protocol import DeadLetter, LoggedStep, OrphanedSaga, StoredEvent
from ._records import exactly, known_status, loads_as, record_name, saga_metadata, step_value

Row = Sequence[Any]


def utc(stamp: datetime | None) -> datetime | None:
    """``stamp`` in UTC (the database hands back its session time zone)."""
    return None if stamp is None else stamp.astimezone(UTC)


def steps_by_saga(rows: Iterable[Row]) -> dict[str, list[Row]]:
    """Step rows (``claimed_steps`` order) grouped by saga id."""
    grouped: dict[str, list[Row]] = {}
    for row in rows:
        grouped.setdefault(row[0], []).append(row)
    return grouped


def metadata(saga: Row, serializer: JsonSerializer, *, exact: bool = False) -> SagaMetadata:
    """A :class:`SagaMetadata` from a ``sagas`` row read with its step records (the
    JSON array of ``steps_of`` in ``_pg_sql``, ``None`` when it has none); ``exact``:
    events read back exactly or a :class:`SerializationError` (see :func:`step_value`)."""
    (saga_id, name, status, _explicit, _factory, _policy, _fp, _args, _kwargs, total, error,
     started, updated, finished, _attempts, dead_reason, _parked, steps) = saga  # fmt: skip
    records = [
        StepRecord(
            index=index,
            name=step_name,
            status=known_status(
                StepStatus, step_status, saga_id, record_name(comp, index, step_name)
            ),
            attempts=attempts,
            duration=duration,
            error=step_error,
            events=(
                tuple(
                    step_value(
                        serializer,
                        ev,
                        exactly(exact, "the events", comp, index, step_name, saga_id),
                    )
                )
                if step_status == StepStatus.COMPLETED and ev is not None
                else ()
            ),
            compensation=comp,
        )
        for comp, index, step_name, step_status, attempts, duration, step_error, ev in steps or ()
    ]
    return saga_metadata(
        saga_id=saga_id,
        name=name,
        status=status,
        total_steps=total,
        started_at=utc(started),
        updated_at=utc(updated),
        finished_at=utc(finished),
        error=error,
        records=records,
        dead_letter=dead_reason,
    )


def listed(row: Row) -> ListedSaga:
    """A :class:`ListedSaga` from a row of a ``listed`` statement (``_pg_sql``)."""
    saga_id, name, status, total, started, finished, error, dead_reason, executed = row
    return ListedSaga(
        id=saga_id,
        name=name,
        status=known_status(SagaStatus, status, saga_id),
        steps_executed=executed,
        total_steps=total,
        started_at=utc(started),
        finished_at=utc(finished),
        error=error,
        dead_letter=dead_reason,
    )


def logged_step(row: Row, serializer: JsonSerializer) -> LoggedStep:
    """A :class:`LoggedStep` from a step row; raises :class:`SerializationError`."""
    _, comp, index, name, status, attempts, duration, error, result, events = row
    completed = status == StepStatus.COMPLETED
    what = record_name(comp, index, name)
    return LoggedStep(
        index=index,
        name=name,
        status=StepStatus(status),
        attempts=attempts,
        result=(
            loads_as(serializer, result, f"the result of {what}")
            if completed and result is not None
            else None
        ),
        events=(
            tuple(loads_as(serializer, events, f"the events of {what}"))
            if completed and events is not None
            else ()
        ),
        error=error,
        duration=duration,
        compensation=comp,
    )


def orphan(claimed: Row, steps: Sequence[Row], serializer: JsonSerializer) -> OrphanedSaga:
    """An :class:`OrphanedSaga` from a claimed row; raises :class:`SerializationError`."""
    (saga_id, name, status, args, kwargs, policy, attempts, explicit, factory, fingerprint,
     error, started, _fence, _dead, released) = claimed  # fmt: skip
    logged = [logged_step(row, serializer) for row in steps]
    return OrphanedSaga(
        saga_id=saga_id,
        name=name,
        status=SagaStatus(status),
        args=tuple(loads_as(serializer, args, f"the arguments of saga {name!r}")),
        kwargs=dict(loads_as(serializer, kwargs, f"the keyword arguments of saga {name!r}")),
        policy=policy,
        steps=tuple(step for step in logged if not step.compensation),
        compensations=tuple(step for step in logged if step.compensation),
        recovery_attempts=attempts,
        explicit_id=explicit,
        factory=factory,
        fingerprint=fingerprint,
        error=error,
        started_at=utc(started),
        released=released,
    )


def dead_letter(row: Row) -> DeadLetter:
    """A :class:`DeadLetter` from a ``dead_letters`` row."""
    saga_id, name, status, attempts, reason, parked = row
    known = known_status(SagaStatus, status, saga_id)
    return DeadLetter(saga_id, name, known, attempts, reason, utc(parked))


def stored_event(row: Row, serializer: JsonSerializer) -> StoredEvent:
    """A :class:`StoredEvent` from an ``events`` row."""
    position, saga_id, saga_name, index, step_name, comp, data, recorded = row
    return StoredEvent(
        position=position,
        saga_id=saga_id,
        saga_name=saga_name,
        step_index=index,
        step_name=step_name,
        compensation=comp,
        event=loads_as(serializer, data, f"event #{position} of saga {saga_id!r}"),
        recorded_at=utc(recorded),
    )


__all__ = [
    "dead_letter",
    "listed",
    "logged_step",
    "metadata",
    "orphan",
    "steps_by_saga",
    "stored_event",
    "utc",
]
