"""A saga run's fingerprint: a short hash of what its definition runs, recorded when it
starts. Recovery compares a generator saga's against its code (to stop a replay of
changed code); an explicit id that completed compares a builder-form definition's
against its steps and their arguments (see ``_reused.py``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from types import CodeType
from typing import TYPE_CHECKING, Any

from .._serialization import _TAG as TAG

if TYPE_CHECKING:
    from .._sagas import SagaDefinition
    from .._steps import StepCall


_FINGERPRINTS: dict[tuple[str, CodeType], str] = {}
"""Fingerprints of generator sagas by name and code (computed once per saga function)."""


def definition_fingerprint(
    definition: SagaDefinition, dumps: Callable[[Any], str] | None = None
) -> str:
    """A short hash of what a definition runs: its step names, or its generator's code.

    With ``dumps``, a builder-form definition's hash covers its steps' arguments too
    (as written by ``dumps``): they are what its explicit id stands for, as a decorated
    saga's own arguments are for it (see ``_reused.py``)."""
    steps = definition.steps
    code = None
    if steps is None and definition.factory is not None:
        code = definition.factory.__wrapped__.__code__
        known = _FINGERPRINTS.get((definition.name, code))
        if known is not None:
            return known
    digest = hashlib.sha256(definition.name.encode())
    if steps is not None:
        written = dumps if definition.factory is None else None
        for call in steps:
            digest.update(b"\0" + call._spec.name.encode())
            if written is not None:
                digest.update(b"\1" + _arguments_written(call, written).encode())
    elif code is not None:
        digest.update(code.co_code)
        digest.update(repr(code.co_names).encode())
    fingerprint = digest.hexdigest()[:16]
    if code is not None:
        _FINGERPRINTS[definition.name, code] = fingerprint
    return fingerprint


def _arguments_written(call: StepCall[Any], dumps: Callable[[Any], str]) -> str:
    """A step call's arguments as ``dumps`` writes them, in a form that is the same in
    every process (a dict's keys sorted, a set's items too: a set of strings is listed
    in another order in another process), or a mark when they cannot be written (such
    arguments are then not told apart: the builder's steps need not be serializable)."""
    try:
        written = json.loads(dumps([list(call._args), call._kwargs]))
    except Exception:
        return "\0unwritable"
    return json.dumps(_canonical(written), sort_keys=True, separators=(",", ":"))


def _canonical(value: Any) -> Any:
    """Written JSON ``value`` with the items of each set sorted."""
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    if isinstance(value, dict):
        value = {key: _canonical(item) for key, item in value.items()}
        if value.get(TAG) in ("set", "frozenset") and isinstance(value.get("v"), list):
            value["v"] = sorted(value["v"], key=lambda item: json.dumps(item, sort_keys=True))
    return value


__all__ = ["definition_fingerprint"]
