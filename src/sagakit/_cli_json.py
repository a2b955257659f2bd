"""What the ``sagakit`` command prints with ``--json``: sagas, their records, arguments and
parking, each stored value made JSON-able."""

from __future__ import annotations

import json
from typing import Any

from .records import SagaMetadata, StepRecord
from .stores._cli_records import ListedSaga, StoredArguments
from .stores._protocol import DeadLetter


def _plain(value: Any) -> Any:
    """A JSON-able form of any stored value, for ``--json`` (NaN and infinity are not JSON,
    nor a dict key that is not a string: ``json`` would write ``{1: "a", "1": "b"}`` with
    one key twice)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)
    return value if _string_keys(value) else repr(value)


def _string_keys(value: Any) -> bool:
    """Whether every dict in ``value`` (a JSON-able value) has only string keys."""
    if isinstance(value, dict):
        return all(isinstance(key, str) and _string_keys(v) for key, v in value.items())
    if isinstance(value, list | tuple):
        return all(_string_keys(item) for item in value)
    return True


def _saga_json(meta: SagaMetadata | ListedSaga, dead_letter: bool) -> dict[str, Any]:
    """A saga's keys of ``list --json`` (``show --json`` adds its records)."""
    return {
        "id": meta.id,
        "name": meta.name,
        "status": str(meta.status),
        "steps_executed": meta.steps_executed,
        "total_steps": meta.total_steps,
        "started_at": None if meta.started_at is None else meta.started_at.isoformat(),
        "finished_at": None if meta.finished_at is None else meta.finished_at.isoformat(),
        "error": meta.error,
        "dead_letter": dead_letter,
        # Why it is parked, beside its own error (which the reason used to replace).
        "dead_letter_reason": meta.dead_letter,
    }


def _shown_json(
    meta: SagaMetadata, dead_letter: bool, arguments: StoredArguments | None
) -> dict[str, Any]:
    """``show --json``: the saga's keys of ``list --json`` with ``updated_at`` after
    ``started_at`` (as :class:`~sagakit.SagaMetadata` orders them), its records, its
    events, its arguments."""
    shown: dict[str, Any] = {}
    for key, value in _saga_json(meta, dead_letter).items():
        shown[key] = value
        if key == "started_at":
            updated = meta.updated_at
            shown["updated_at"] = None if updated is None else updated.isoformat()
    return shown | {
        "steps": [_step_json(record) for record in meta.steps],
        "compensations": [_step_json(record) for record in meta.compensations],
        "events": [_plain(event) for event in meta.events],
        "compensation_events": [_plain(event) for event in meta.compensation_events],
        "arguments": None if arguments is None else _arguments_json(arguments),
    }


def _arguments_json(arguments: StoredArguments) -> dict[str, Any]:
    """A saga's arguments for ``show --json``: ``args`` and ``kwargs`` (each value as
    :func:`_plain` gives it), or, where they cannot be read, ``null`` with ``raw`` (the
    text as stored) and ``error`` (why)."""
    args, kwargs = arguments.args, arguments.kwargs
    return {
        "args": None if args is None else [_plain(value) for value in args],
        "kwargs": None if kwargs is None else {key: _plain(v) for key, v in kwargs.items()},
        "raw": arguments.raw,
        "error": arguments.error,
    }


def _parked_json(letter: DeadLetter) -> dict[str, Any]:
    """Why and since when a dead letter is parked (``dead-letters``, ``show``)."""
    return {
        "recovery_attempts": letter.recovery_attempts,
        "reason": letter.reason,
        "parked_at": None if letter.parked_at is None else letter.parked_at.isoformat(),
    }


def _step_json(record: StepRecord) -> dict[str, Any]:
    return {
        "index": record.index,
        "name": record.name,
        "status": str(record.status),
        "attempts": record.attempts,
        "duration": record.duration,
        "error": record.error,
        "events": [_plain(event) for event in record.events],
    }
