"""The PostgreSQL driver, psycopg 3 and psycopg-pool, imported when a store needs it
(``sagakit[postgres]`` is an optional extra: importing sagakit never imports psycopg)."""

from __future__ import annotations

from typing import Any

from .._tracebacks import hide_from_pytest
from ..exceptions import StoreError

# pytest shows a failing test's line, not this module's code, for an error this store
# raises on purpose (see _tracebacks).
__tracebackhide__ = hide_from_pytest


def import_driver() -> tuple[Any, Any]:
    """The modules ``psycopg`` and ``psycopg_pool``, or a :class:`~sagakit.StoreError`
    saying how to install them."""
    try:
        import psycopg
        import psycopg_pool
    except ImportError as error:  # pragma: no cover - exercised without the extra only
        raise StoreError(
            "PostgresStore needs psycopg 3 and psycopg-pool: pip install 'sagakit[postgres]'"
        ) from error
    return psycopg, psycopg_pool


__all__ = ["import_driver"]
