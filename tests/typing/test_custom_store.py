"""A store written by a user, typed with public names only (read by mypy, never run)."""

from __future__ import annotations

from typing import Any, assert_type

from sagakit import (
    MemoryStore,
    RecoverableStore,
    SagaAlreadyExecuting,
    SagaMetadata,
    SagaOrchestrator,
    SagaRunView,
    SagaStatus,
    SagaStore,
    SQLiteStore,
    Transition,
)


class DictStore:
    """Running sagas and their history in two dicts, like MemoryStore."""

    durable = False

    def __init__(self) -> None:
        self._running: dict[str, SagaRunView] = {}
        self._finished: dict[str, SagaMetadata] = {}

    async def begin(self, run: SagaRunView) -> SagaMetadata | None:
        if run.id in self._running:
            raise SagaAlreadyExecuting(run.id)
        earlier = self._finished.get(run.id) if run.explicit_id else None
        self._running[run.id] = run
        return earlier

    async def record(self, run: SagaRunView, transition: Transition) -> None:
        return None

    async def finish(self, run: SagaRunView) -> None:
        self._running.pop(run.id, None)
        self._finished[run.id] = run.snapshot()

    async def get(self, saga_id: str) -> SagaMetadata | None:
        run = self._running.get(saga_id)
        return run.snapshot() if run is not None else self._finished.get(saga_id)

    async def running(self) -> list[SagaMetadata]:
        return [run.snapshot() for run in self._running.values()]

    async def history(self, limit: int | None = None) -> list[SagaMetadata]:
        done = list(self._finished.values())
        return done if limit is None else done[len(done) - limit :]

    async def running_count(self) -> int:
        return len(self._running)

    async def history_count(self) -> int:
        return len(self._finished)

    async def close(self) -> None:
        return None


def what_a_store_reads(run: SagaRunView) -> None:
    # The run's public attributes, typed; the orchestrator's internals are not part of it.
    assert_type(run.id, str)
    assert_type(run.name, str)
    assert_type(run.explicit_id, bool)
    assert_type(run.status, SagaStatus)
    assert_type(run.error, str | None)
    assert_type(run.total_steps, int | None)
    assert_type(run.steps_executed, int)
    assert_type(run.definition.args, tuple[Any, ...])
    assert_type(run.snapshot(), SagaMetadata)
    print(run.started_wall)  # type: ignore[attr-defined]
    print(run.steps)  # type: ignore[attr-defined]
    # Read-only: the orchestrator owns the run.
    run.status = SagaStatus.FAILED  # type: ignore[misc]


# The user's store is a SagaStore, so an orchestrator takes it.
store: SagaStore = DictStore()
orchestrator = SagaOrchestrator(store=DictStore())
# The built-in stores take the same run type.
memory: SagaStore = MemoryStore()
sqlite: RecoverableStore = SQLiteStore(":memory:")


class NarrowStore(DictStore):
    # A store that demands more of the run than the view gives is not a SagaStore.
    async def finish(self, run: SagaMetadata) -> None:  # type: ignore[override]
        return None


narrow: SagaStore = NarrowStore()  # type: ignore[assignment]
# Not durable, so not a RecoverableStore (it lacks claim_orphans and the rest).
not_recoverable: RecoverableStore = DictStore()  # type: ignore[assignment]
