"""A store of one's own that is not durable: written against the public protocol only."""

from __future__ import annotations

from sagakit import SagaMetadata, SagaRunView, Transition


class PlainStore:
    """Keeps the live runs, then the finished ones, in dicts (not a ``MemoryStore``)."""

    durable = False

    def __init__(self) -> None:
        self._running: dict[str, SagaRunView] = {}
        self._finished: dict[str, SagaRunView] = {}

    async def begin(self, run: SagaRunView) -> SagaMetadata | None:
        self._running[run.id] = run
        return None

    async def record(self, run: SagaRunView, transition: Transition) -> None:
        return None

    async def finish(self, run: SagaRunView) -> None:
        self._finished[run.id] = self._running.pop(run.id)

    async def get(self, saga_id: str) -> SagaMetadata | None:
        run = self._running.get(saga_id) or self._finished.get(saga_id)
        return None if run is None else run.snapshot()

    async def running(self) -> list[SagaMetadata]:
        return [run.snapshot() for run in self._running.values()]

    async def history(self, limit: int | None = None) -> list[SagaMetadata]:
        return [run.snapshot() for run in self._finished.values()]

    async def running_count(self) -> int:
        return len(self._running)

    async def history_count(self) -> int:
        return len(self._finished)

    async def close(self) -> None:
        return None
