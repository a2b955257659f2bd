"""The name a step or saga is recorded under: given, or its function's."""

from __future__ import annotations

from .exceptions import SagaDefinitionError


def qualname_of(fn: object) -> str:
    """How an error names ``fn`` (a ``functools.partial`` has no ``__qualname__``)."""
    return getattr(fn, "__qualname__", None) or repr(fn)


def declared_name(fn: object, name: object, *, what: str, fix: str) -> str:
    """``name``, else ``fn.__name__``; a clear error for neither (``what``: "step", "saga")."""
    if name is None:
        name = getattr(fn, "__name__", None)
        if name is None:  # a functools.partial, say
            raise SagaDefinitionError(
                f"@{what} cannot name {fn!r}, which has no __name__; give the {what} a name: {fix}"
            )
    if not isinstance(name, str) or not name:
        raise SagaDefinitionError(f"@{what}(name=...) must be a non-empty string, got {name!r}")
    return name


__all__ = ["declared_name", "qualname_of"]
