"""The SQLite store's wall clock, set by a test: every store module that reads it."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest

from sagakit.stores import _sqlite_claims, _sqlite_operator, sqlite

SQLITE_CLOCK_READERS = (sqlite, _sqlite_claims, _sqlite_operator)
"""The modules of the SQLite store that stamp with ``time.time()``: its write path, its
claims (a saga parked by a claim) and an operator's calls (dead_letter, resolve)."""


def set_sqlite_clock(monkeypatch: pytest.MonkeyPatch, clock: Callable[[], float]) -> None:
    """Make ``clock`` the wall clock of every SQLite store (until the test ends)."""
    for module in SQLITE_CLOCK_READERS:
        monkeypatch.setattr(module, "time", SimpleNamespace(time=clock))
