"""Shared fixtures for the sagakit test suite."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

# tests/typing holds assert_type checks for mypy; they are never run by pytest.
collect_ignore_glob = ["typing/*"]


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
