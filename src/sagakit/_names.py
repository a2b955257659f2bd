"""The name a step or saga is recorded under: given, or its function's."""

from __future__ import annotations

import contextlib
import importlib
import pickle
from collections.abc import Callable
from typing import Any

from ._tracebacks import hide_from_pytest
from .exceptions import SagaDefinitionError

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest


def qualname_of(fn: object) -> str:
    """How an error names ``fn`` (a ``functools.partial`` has no ``__qualname__``)."""
    return getattr(fn, "__qualname__", None) or repr(fn)


def record_name(compensation: object, index: object, name: object) -> str:
    """How an error or a log record names a step's record, wherever it is made (a run,
    a store writing or reading it): ``"step 3 ('gen')"``, or ``"the compensation of step
    3 ('gen')"`` for the one undoing step 3 (a compensation is numbered by its step)."""
    which = f"step {index} ({name!r})"
    return f"the compensation of {which}" if compensation else which


def written_name(obj: object, fallback: str) -> str:
    """How code names ``obj``: its qualified name, without the ``<locals>.`` path of a
    function it is defined in (``fallback`` if it has no qualified name)."""
    qualname = getattr(obj, "__qualname__", None) or fallback
    return qualname.rpartition("<locals>.")[2]


def declared_name(fn: object, name: object, *, what: str, fix: str) -> str:
    """``name``, else ``fn.__name__``; a clear error for neither (``what``: "step", "saga")."""
    own_name = getattr(fn, "__name__", None)
    if name is None:
        name = own_name
        if name is None:  # a functools.partial, say
            raise SagaDefinitionError(
                f"@{what} cannot name {fn!r}, which has no __name__; give the {what} a name: {fix}"
            )
    if not isinstance(name, str) or not name:
        of = f" of {own_name!r}" if isinstance(own_name, str) else ""
        raise SagaDefinitionError(f"@{what}(name=...){of} must be a non-empty string, got {name!r}")
    check_storable(name, f"@{what}(name=...)")
    return name


def unencodable(text: str) -> str | None:
    """Why ``text`` cannot be stored as UTF-8 (a lone surrogate, an undecodable byte of
    ``sys.argv`` or a file name), as the codec says it; ``None`` if it can."""
    if text.isascii():
        return None
    try:
        text.encode()
    except UnicodeEncodeError as error:
        return error.reason
    return None


def check_storable(name: str, where: str) -> None:
    """Refuse a step or saga name no saga log can store: a NUL (PostgreSQL text cannot
    hold one) or a lone surrogate (not UTF-8: neither SQLite nor PostgreSQL takes it).
    Found only when written, it failed the saga's records (on PostgreSQL, leaving it
    compensating for good)."""
    if "\x00" in name:
        problem = "a NUL character"
    elif unencodable(name) is not None:
        problem = "a lone surrogate (not valid Unicode text)"
    else:
        return
    raise SagaDefinitionError(
        f"{where} {name!r} contains {problem}, which a saga log cannot store; "
        "give it a name without one"
    )


def find_by_qualname(module: str, qualname: str) -> Any:
    """What ``module`` defines as ``qualname``, read from each class body's own namespace
    (``getattr`` on a class would bind a method step to it)."""
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        namespace = getattr(found, "__dict__", {})
        found = namespace[part] if part in namespace else getattr(found, part)
        if isinstance(found, staticmethod | classmethod):
            found = found.__func__
    return found


def by_reference(obj: object, what: str) -> tuple[Callable[[str, str], Any], tuple[str, str]]:
    """A ``__reduce__`` value that pickles ``obj`` by reference, as pickle does functions."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        with contextlib.suppress(Exception):  # not importable, not found: refused below
            if find_by_qualname(module, qualname) is obj:
                return find_by_qualname, (module, qualname)
    raise pickle.PicklingError(
        f"cannot pickle {what}: it is not found as {module}.{qualname}; like functions, "
        "steps and sagas pickle by reference, so only those defined at module level or in "
        "a class body can be pickled"
    )


__all__ = [
    "by_reference",
    "check_storable",
    "declared_name",
    "find_by_qualname",
    "qualname_of",
    "unencodable",
    "written_name",
]
