"""Building sagakit records back from a durable store's rows, and naming them alike in
the errors of writing and reading their values (shared by the stores)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime
from enum import StrEnum
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .._names import record_name
from .._runs import CRASHED
from .._serialization import JsonSerializer
from ..exceptions import SagaDefinitionError, SerializationError, StoreError
from ..records import SagaMetadata, StepRecord
from ..status import SagaStatus, StepStatus

if TYPE_CHECKING:
    from ..transitions import Transition


def status_filter(status: SagaStatus | str) -> str:
    """``status`` as stored, for ``list_sagas(status=...)``: a :class:`SagaStatus` or its
    value in any case (``"FAILED"``, as the docs write statuses, is ``failed``, as the CLI's
    ``--status`` takes it); anything else is a :class:`SagaDefinitionError` naming the
    valid ones, as every other bad argument of a store's is."""
    try:
        return str(SagaStatus(status.lower() if isinstance(status, str) else status))
    except ValueError:
        choices = ", ".join(str(s) for s in SagaStatus)
        raise SagaDefinitionError(
            f"list_sagas(status=...) must be a SagaStatus or one of {choices}; got {status!r}"
        ) from None


_Status = TypeVar("_Status", bound=StrEnum)


def known_status(kind: type[_Status], stored: Any, saga_id: str, step: str = "") -> _Status:
    """``stored``, a status read from the log, as a :class:`SagaStatus` or
    :class:`StepStatus`; one this sagakit does not know (an operator's hand edit, such as
    ``'FAILED'``; a newer sagakit's) is a :class:`StoreError` naming the saga (and
    ``step``), not a bare ``ValueError`` that ended ``sagakit list`` in a traceback."""
    try:
        return kind(stored)
    except ValueError:
        known = ", ".join(repr(str(status)) for status in kind)
        of = f"{step} of saga" if step else "saga"
        raise StoreError(
            f"{of} {saga_id!r} has status {stored!r} in the saga log, which this sagakit "
            f"does not know (it knows {known}): the row was edited by hand, or written by "
            "a newer sagakit; set it to one of those, or read the log with that sagakit"
        ) from None


def completion_texts(
    dumps: Callable[..., str], transition: Transition, compensation: object
) -> tuple[str, list[str]]:
    """A completed step's (or compensation's) result and events as text to store, by
    ``dumps`` (a serializer's); a :class:`SerializationError` names the record as
    :func:`record_name` does, on every store: ``"cannot store the result of step 3
    ('gen'): ..."``, ``"cannot store an event of step 3 ('gen'): ..."``."""
    t = transition
    # (A partial, not a closure: half the cost, on every completion of a durable saga.)
    result = dumps(t.result, what=partial(_value_name, "the result", compensation, t))
    events = t.events
    if len(events) == 1 and events[0] is t.result:
        return result, [result]  # the one event is the result: the same text
    what = partial(_value_name, "an event", compensation, t)
    return result, [dumps(event, what=what) for event in events]


def _value_name(value: str, compensation: object, transition: Transition) -> str:
    """``"the result of step 3 ('gen')"``: named only on failure (a completion's index
    and name are set)."""
    index, name = cast(int, transition.step_index), cast(str, transition.step_name)
    return f"{value} of {record_name(compensation, index, name)}"


def lenient(serializer: JsonSerializer, text: str | None) -> Any:
    """Decode for display: a value whose class cannot be loaded shows as raw JSON."""
    if text is None:
        return None
    try:
        return serializer.loads(text)
    except SerializationError:
        try:
            return json.loads(text)
        except (ValueError, RecursionError):  # not JSON, or too deep to read: as stored
            return text


def step_value(serializer: JsonSerializer, text: str | None, exact_as: str | None) -> Any:
    """A completed record's stored result (or events): :func:`lenient` for monitoring;
    read exactly when ``exact_as`` names what it is, for a value handed back to a caller
    as the step's own (the events ``execute()`` returns for a completed id), where raw
    JSON would pass for it: a :class:`SerializationError` naming it instead."""
    if text is None or exact_as is None:
        return lenient(serializer, text)
    return loads_as(serializer, text, exact_as)


def exactly(
    exact: bool, part: str, compensation: object, index: int, name: str, saga_id: str
) -> str | None:
    """The ``exact_as`` of :func:`step_value`: ``None`` (lenient) unless ``exact``."""
    if not exact:
        return None
    return f"{part} of {record_name(compensation, index, name)} of saga {saga_id!r}"


def loads_as(serializer: JsonSerializer, text: str, what: str) -> Any:
    """``serializer.loads(text)``; a :class:`SerializationError` says ``what`` it was."""
    try:
        return serializer.loads(text)
    except SerializationError as error:
        raise SerializationError(f"{what}: {error}") from error


_UNDONE = frozenset({SagaStatus.COMPENSATING, SagaStatus.COMPENSATED, SagaStatus.FAILED})
"""The statuses of a saga whose forward path has stopped: none of its steps runs."""


def shown_step(record: StepRecord, status: SagaStatus) -> StepRecord:
    """A forward step's ``record`` as a saga of ``status`` shows it.

    A step logged ``running`` in a saga compensating (or ended) is one its process died in
    (or handed back) and recovery compensates: its end (``failed``, :data:`CRASHED`) is
    written only with the saga's, so the log keeps it ``running`` until then. It is shown
    as it will end, not as running: nothing runs a saga's steps while it is compensated.
    Only the record built for reading changes, never the log, whose rows a recovery (an
    older sagakit's too) reads as they are: a ``running`` step may have acted, and is
    compensated as a timed-out one; a ``failed`` one, as one that only raised.
    """
    if record.status is not StepStatus.RUNNING or status not in _UNDONE:
        return record
    # As recovery ends it: its logged error and duration, if any, were an earlier attempt's.
    return replace(record, status=StepStatus.FAILED, duration=None, error=CRASHED)


def shown_compensations(records: list[StepRecord]) -> tuple[StepRecord, ...]:
    """A saga's compensation ``records``, in the order they last started, as it shows them.

    Compensations run one at a time: one logged ``running`` that a later one followed is
    one the process died in, that recovery did not run again (the recovering code declares
    no compensation for that step any more; one it runs again starts again, last). Its end
    (``failed``, :data:`CRASHED`) is written with the saga's; it is shown so until then,
    and the log keeps it as it was (see :func:`shown_step`).
    """
    running = StepStatus.RUNNING
    return tuple(
        replace(record, status=StepStatus.FAILED, error=CRASHED)
        if record.status is running and position < len(records) - 1
        else record
        for position, record in enumerate(records)
    )


def saga_metadata(
    *,
    saga_id: str,
    name: str,
    status: str,
    total_steps: int | None,
    started_at: datetime | None,
    updated_at: datetime | None,
    finished_at: datetime | None,
    error: str | None,
    records: Iterable[StepRecord],
    dead_letter: str | None = None,
) -> SagaMetadata:
    """A :class:`SagaMetadata` from a saga's fields and its step and compensation records.

    Forward steps are put in index order; compensations keep the order given (the order
    they ran). Events are those of the completed records, in that order. A step the
    saga's compensation left ``running`` in the log is shown ``failed``, and so is a
    compensation a later one followed (see :func:`shown_step`, :func:`shown_compensations`).
    """
    known = known_status(SagaStatus, status, saga_id)
    forward: list[StepRecord] = []
    compensations: list[StepRecord] = []
    for record in records:
        if record.compensation:
            compensations.append(record)
        else:
            forward.append(shown_step(record, known))
    forward.sort(key=lambda record: record.index)
    undone = shown_compensations(compensations)
    completed = StepStatus.COMPLETED
    return SagaMetadata(
        id=saga_id,
        name=name,
        status=known,
        steps_executed=sum(1 for record in forward if record.status is completed),
        total_steps=total_steps,
        started_at=started_at,
        updated_at=updated_at,
        finished_at=finished_at,
        error=error,
        steps=tuple(forward),
        compensations=undone,
        events=tuple(event for record in forward for event in record.events),
        compensation_events=tuple(event for record in undone for event in record.events),
        dead_letter=dead_letter,
    )


__all__ = [
    "completion_texts",
    "exactly",
    "known_status",
    "lenient",
    "loads_as",
    "record_name",
    "saga_metadata",
    "shown_compensations",
    "shown_step",
    "step_value",
]
