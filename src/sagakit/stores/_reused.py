"""The check every built-in store makes before it answers an explicit id that completed
with that run's events: is this the same saga, called with the same arguments?

An explicit id is an idempotency key. A retried request gets the recorded events of the
run it started; a different saga, or the same saga with other arguments, under an id that
completed would get them too, and believe that its own operation was done. So such a reuse
is refused with :class:`SagaIdReused` (as a payment API refuses an idempotency key sent
again with other parameters). Only a completed id is checked: a running or ``FAILED`` one
is refused anyway, and a ``COMPENSATED`` one (or a resolved ``FAILED`` one) runs again.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._serialization import JsonSerializer
from ..exceptions import SagaIdReused
from ._fingerprint import definition_fingerprint

if TYPE_CHECKING:
    from .._sagas import SagaDefinition
    from .._steps import StepCall

Same = Callable[[Any, Any], bool]

_DEFAULT = JsonSerializer()


def same_values(dumps: Callable[[Any], str] | None = None) -> Same:
    """Whether two arguments are the same: equal (``==``), or written the same by
    ``dumps`` (a serializer's: an object without ``__eq__`` that it writes the same
    way, a set whose strings it lists in another order in another process)."""
    dump = _DEFAULT.dumps if dumps is None else dumps

    def same(recorded: Any, now: Any) -> bool:
        try:
            if recorded is now or bool(recorded == now):
                return True
        except Exception:  # an == that raises (an array's): compare what is written
            pass
        try:
            written, writing = dump(recorded), dump(now)
            # The same text (a NaN is not equal to itself), or the same JSON (the keys of
            # an object in another order).
            return written == writing or bool(json.loads(written) == json.loads(writing))
        except Exception:  # not serializable (the in-memory store keeps any value)
            return False

    return same


def _bound(definition: SagaDefinition, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
    """The arguments by parameter name, defaults filled in (``f(1, b=2)`` is ``f(1, 2)``),
    or ``None`` when the saga has no signature to bind them to, or they do not bind."""
    factory = definition.factory
    if factory is None:
        return None
    try:
        bound = inspect.signature(factory.__wrapped__).bind(*args, **kwargs)
    except (TypeError, ValueError):  # none to read, or recorded for another signature
        return None
    bound.apply_defaults()
    return bound.arguments


def _differing(
    definition: SagaDefinition,
    recorded_args: Sequence[Any],
    recorded_kwargs: Mapping[str, Any],
    same: Same,
) -> list[str]:
    """The arguments that differ, by parameter name (``"amount"``; ``"argument 0"`` for
    a positional one when the saga has no signature that both calls bind to)."""
    args, kwargs = definition.args, definition.kwargs
    recorded = _bound(definition, recorded_args, recorded_kwargs)
    now = _bound(definition, args, kwargs) if recorded is not None else None
    if recorded is not None and now is not None:
        return [
            name
            for name in dict.fromkeys([*recorded, *now])
            if name not in recorded or name not in now or not same(recorded[name], now[name])
        ]
    missing = object()
    differ = [
        f"argument {index}"
        for index in range(max(len(recorded_args), len(args)))
        if index >= len(recorded_args)
        or index >= len(args)
        or not same(recorded_args[index], args[index])
    ]
    for key in dict.fromkeys([*recorded_kwargs, *kwargs]):
        old, new = recorded_kwargs.get(key, missing), kwargs.get(key, missing)
        if old is missing or new is missing or not same(old, new):
            differ.append(key)
    return differ


def _differing_steps(
    recorded: Sequence[StepCall[Any]], now: Sequence[StepCall[Any]], same: Same
) -> list[str]:
    """A builder-form definition's steps that differ from the completed run's (its steps
    are what its id stands for): ``"step 1 (credit)"``, or ``"its steps"`` when they are
    other steps or as many."""
    if [call._spec.name for call in recorded] != [call._spec.name for call in now]:
        return ["its steps"]
    return [
        f"step {index} ({call._spec.name})"
        for index, (old, call) in enumerate(zip(recorded, now, strict=True))
        if not same(list(old._args), list(call._args)) or not same(old._kwargs, call._kwargs)
    ]


def check_same_run(
    saga_id: str,
    definition: SagaDefinition,
    recorded_name: str,
    recorded_args: Sequence[Any],
    recorded_kwargs: Mapping[str, Any],
    same: Same,
) -> None:
    """Raise :class:`SagaIdReused` when ``definition`` is another saga than the completed
    run of ``saga_id`` (``recorded_name``), or is called with other arguments."""
    if definition.name != recorded_name:
        raise SagaIdReused(saga_id, recorded_name, definition.name)
    differ = _differing(definition, recorded_args, recorded_kwargs, same)
    if differ:
        raise SagaIdReused(saga_id, recorded_name, definition.name, tuple(differ))


def check_same_steps(
    saga_id: str, definition: SagaDefinition, recorded: SagaDefinition, same: Same
) -> None:
    """:func:`check_same_run` for the in-memory store, which keeps the completed run's
    definition: a builder-form one's steps and their arguments are compared too."""
    check_same_run(saga_id, definition, recorded.name, recorded.args, recorded.kwargs, same)
    if definition.factory is None and definition.steps is not None and recorded.steps:
        differ = _differing_steps(recorded.steps, definition.steps, same)
        if differ:
            raise SagaIdReused(saga_id, recorded.name, definition.name, tuple(differ))


def check_same_stored_run(
    saga_id: str,
    definition: SagaDefinition,
    recorded_name: str,
    recorded: Sequence[str],
    now: Sequence[str],
    serializer: JsonSerializer,
    fingerprint: str | None,
) -> None:
    """:func:`check_same_run` for a durable store, from the texts its ``serializer``
    wrote: ``recorded``, the completed run's arguments, and ``now``, this run's (each
    ``[args, kwargs]`` in one text, or the two in two). Arguments that can no longer be
    read (a class renamed since they were written) are compared as written.

    A builder-form definition's steps and their arguments are compared by the run's
    recorded ``fingerprint`` (a log written before fingerprints covered the arguments
    holds one of the step names only: then those are compared)."""
    if definition.name != recorded_name:
        raise SagaIdReused(saga_id, recorded_name, definition.name)
    if definition.factory is None and fingerprint not in (
        None,
        definition_fingerprint(definition, serializer.dumps),
        definition_fingerprint(definition),
    ):
        which = ("its steps or their arguments",)
        raise SagaIdReused(saga_id, recorded_name, definition.name, which)
    if tuple(recorded) == tuple(now):  # written the same: nothing to decode
        return
    try:
        values = [serializer.loads(text) for text in recorded]
    except Exception:
        if [json.loads(text) for text in recorded] == [json.loads(text) for text in now]:
            return
        which = ("the arguments as written, which no longer load",)
        raise SagaIdReused(saga_id, recorded_name, definition.name, which) from None
    args, kwargs = values[0] if len(values) == 1 else values
    check_same_run(saga_id, definition, recorded_name, args, kwargs, same_values(serializer.dumps))


Written = tuple[str, str | None]
"""A definition's arguments as the default serializer writes them, and (for a builder-form
definition) its fingerprint over its steps' arguments: see :func:`written_arguments`."""


_ATOMS = (str, int, float, complex, bytes, bool, type(None))


def _unchanging(args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    """Whether arguments are values that cannot change in place: text, numbers, ``None``
    (the common case), or tuples and frozensets of them."""

    def fixed(value: Any) -> bool:
        kind = type(value)
        if kind in _ATOMS:
            return True
        return (kind is tuple or kind is frozenset) and all(fixed(item) for item in value)

    return all(fixed(value) for value in args) and all(fixed(value) for value in kwargs.values())


def written_arguments(definition: SagaDefinition) -> Written | None:
    """What ``definition`` is called with, written as a durable store writes it when its
    run begins, or ``None`` when it cannot be written (the in-memory store keeps any
    value) or need not be (no argument can change in place). The in-memory store keeps
    this beside the run's definition, whose arguments are the caller's own objects: one
    changed in place since (a list added to) is then told from the value the run was
    called with, as a durable store tells it."""
    steps = definition.steps if definition.factory is None else None
    if _unchanging(definition.args, definition.kwargs) and (
        steps is None or all(_unchanging(call._args, call._kwargs) for call in steps)
    ):
        return None  # nothing to change in place: compared as they are (and faster)
    try:
        arguments = _DEFAULT.dumps([list(definition.args), definition.kwargs])
    except Exception:
        return None
    if definition.factory is not None:
        return arguments, None
    return arguments, definition_fingerprint(definition, _DEFAULT.dumps)


def check_same_written(
    saga_id: str, definition: SagaDefinition, recorded_name: str, recorded: Written, now: Written
) -> None:
    """:func:`check_same_stored_run` for what :func:`written_arguments` wrote of the
    completed run when it began (``recorded``) and of ``definition`` (``now``)."""
    check_same_stored_run(
        saga_id, definition, recorded_name, (recorded[0],), (now[0],), _DEFAULT, recorded[1]
    )


__all__ = [
    "Written",
    "check_same_run",
    "check_same_steps",
    "check_same_stored_run",
    "check_same_written",
    "same_values",
    "written_arguments",
]
