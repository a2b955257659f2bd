"""Saga ids the PostgreSQL log cannot hold, which its reads answer for as unknown ids."""

from __future__ import annotations

from .._tracebacks import hide_from_pytest

# pytest shows a failing test's line, not this module's code, for an error this store
# raises on purpose (see _tracebacks).
__tracebackhide__ = hide_from_pytest


def held_by_none(saga_id: str) -> bool:
    """Whether no saga of the log can have ``saga_id`` (one the store refuses to begin
    for a NUL): a read of it answers as for any unknown id, not with the driver's
    ``DataError``."""
    return "\x00" in saga_id


__all__ = ["held_by_none"]
