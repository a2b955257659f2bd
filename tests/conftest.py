"""Shared fixtures for the sagakit test suite."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pg_helpers.db import dsn_or_skip, fresh_schema
from pg_helpers.roles import fresh_role
from sagakit import SQLiteStore

# tests/typing holds assert_type checks for mypy; they are never run by pytest.
collect_ignore_glob = ["typing/*"]


def pytest_configure(config: pytest.Config) -> None:
    """``SAGAKIT_TEST_LOOP=uvloop`` runs the whole suite on uvloop's event loop."""
    loop = os.environ.get("SAGAKIT_TEST_LOOP", "asyncio")
    if loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    elif loop != "asyncio":
        raise pytest.UsageError(f"SAGAKIT_TEST_LOOP must be 'asyncio' or 'uvloop', got {loop!r}")


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """An inner pytest that prints the same wherever the suite runs.

    pytest prints whole short-summary lines when ``CI`` or ``BUILD_NUMBER`` is set, and cuts
    them at the terminal width (``COLUMNS``) otherwise, so tests reading its output would
    pass or fail by where they run.
    """
    for name in ("CI", "BUILD_NUMBER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "80")
    return pytester


class RecordingSleep:
    """A ``sleep`` for the orchestrator that records the delays and does not wait."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def sleep() -> RecordingSleep:
    """A recording, non-waiting ``sleep`` to give ``SagaOrchestrator(sleep=...)``."""
    return RecordingSleep()


SleepFn = Callable[[float], Awaitable[None]]


@pytest.fixture
def dsn() -> str:
    """The PostgreSQL test DSN; the test is skipped, with the reason, without one."""
    return dsn_or_skip()


@pytest.fixture
def schema(dsn: str) -> Iterator[str]:
    """A fresh PostgreSQL schema for one test, dropped after it."""
    yield from fresh_schema(dsn)


@pytest.fixture
def role(dsn: str) -> Iterator[str]:
    """A new PostgreSQL login role without the right to create schemas; dropped afterwards."""
    yield from fresh_role(dsn)


@pytest.fixture(params=["sqlite", "postgres"])
def durable_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Makes stores on one fresh log: one per simulated process (keywords: the store's
    options, ``serializer=`` say)."""
    if request.param == "sqlite":
        yield lambda **options: SQLiteStore(tmp_path / "s.db", **options)
        return
    from sagakit import PostgresStore

    dsn = dsn_or_skip()
    schemas = fresh_schema(dsn)
    schema = next(schemas)
    yield lambda **options: PostgresStore(dsn, schema=schema, **options)
    for _ in schemas:  # drops the schema
        pass
