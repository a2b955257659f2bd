"""What the ``sagakit`` command reads of a durable log beyond the store protocol: a
listing's sagas (``list``) and a saga's call arguments (``show``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .._serialization import JsonSerializer
from ..exceptions import SerializationError
from ..status import SagaStatus


@dataclass(frozen=True, slots=True)
class ListedSaga:
    """A saga as ``sagakit list`` shows it: the fields of its row, and ``steps_executed``
    (its completed forward steps, as :class:`~sagakit.SagaMetadata` counts them) counted
    by the query that lists it. Its step records (their results and events), which a
    listing never shows, are not read."""

    id: str
    name: str
    status: SagaStatus
    steps_executed: int
    total_steps: int | None
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    dead_letter: str | None


@dataclass(frozen=True, slots=True)
class StoredArguments:
    """A saga's call arguments as its log keeps them (for recovery), for ``sagakit show``:
    decoded (``args``, ``kwargs``), or, where they cannot be (a class this process cannot
    import, a row edited by hand), ``None`` with ``raw``, the text as stored, and
    ``error``, why."""

    args: tuple[Any, ...] | None
    kwargs: dict[str, Any] | None
    raw: str | None = None
    error: str | None = None


def stored_arguments(serializer: JsonSerializer, raw: Any) -> StoredArguments:
    """A saga's arguments from ``raw``, the JSON array ``[args, kwargs]`` they are stored
    as; what cannot be read is kept as stored, with the reason, never raised."""
    if not isinstance(raw, str):
        return StoredArguments(None, None, repr(raw), "the stored arguments are not text")
    try:
        value = serializer.loads(raw)
    except SerializationError as error:
        return StoredArguments(None, None, raw, str(error))
    match value:
        case [list() | tuple() as args, dict() as kwargs] if all(
            isinstance(k, str) for k in kwargs
        ):
            return StoredArguments(tuple(args), kwargs)
    return StoredArguments(
        None,
        None,
        raw,
        "the stored arguments are not the [args, kwargs] array sagakit writes "
        "(the row was edited by hand)",
    )


__all__ = ["ListedSaga", "StoredArguments", "stored_arguments"]
