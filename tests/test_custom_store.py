"""A store written against the public protocol receives runs with every attribute
``SagaRunView`` promises, at each call, and the orchestrator runs sagas through it."""

from __future__ import annotations

from typing import Any

import pytest
from typing_extensions import get_protocol_members

from sagakit import (
    SagaMetadata,
    SagaOrchestrator,
    SagaRunView,
    SagaStatus,
    SagaStore,
    StepFailed,
    Transition,
    saga,
    step,
)

pytestmark = pytest.mark.asyncio

VIEW = sorted(get_protocol_members(SagaRunView))


class SeeingStore:
    """Keeps what each call saw of the run, read through the view's members only."""

    durable = True

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self._finished: dict[str, SagaMetadata] = {}
        self._running: dict[str, SagaRunView] = {}

    def _see(self, call: str, run: SagaRunView) -> None:
        self.seen.append((call, {name: getattr(run, name) for name in VIEW}))

    async def begin(self, run: SagaRunView) -> SagaMetadata | None:
        self._see("begin", run)
        self._running[run.id] = run
        return None

    async def record(self, run: SagaRunView, transition: Transition) -> None:
        self._see("record", run)

    async def finish(self, run: SagaRunView) -> None:
        self._see("finish", run)
        self._running.pop(run.id)
        self._finished[run.id] = run.snapshot()

    async def get(self, saga_id: str) -> SagaMetadata | None:
        run = self._running.get(saga_id)
        return run.snapshot() if run is not None else self._finished.get(saga_id)

    async def running(self) -> list[SagaMetadata]:
        return [run.snapshot() for run in self._running.values()]

    async def history(self, limit: int | None = None) -> list[SagaMetadata]:
        return list(self._finished.values())

    async def running_count(self) -> int:
        return len(self._running)

    async def history_count(self) -> int:
        return len(self._finished)

    async def close(self) -> None:
        return None


@step
async def reserve(item: str) -> str:
    return f"held-{item}"


@reserve.compensate
async def release(item: str) -> None:
    return None


@step
async def charge(item: str) -> None:
    raise RuntimeError("card declined")


@saga(name="custom_store.order")
def order(item: str) -> list[Any]:
    return [reserve(item), charge(item)]


async def test_the_view_names_what_a_store_may_read() -> None:
    assert VIEW == [
        "definition",
        "error",
        "explicit_id",
        "id",
        "name",
        "snapshot",
        "started_at",
        "status",
        "steps_executed",
        "total_steps",
    ]


async def test_a_store_written_to_the_protocol_sees_the_run_through_the_view() -> None:
    store = SeeingStore()
    assert isinstance(store, SagaStore)
    async with SagaOrchestrator(store=store) as orchestrator:
        with pytest.raises(StepFailed):
            await orchestrator.execute(order("lamp").with_id("o-1"))
        metadata = await orchestrator.get_saga("o-1")
    calls = [call for call, _ in store.seen]
    assert calls[0] == "begin"
    assert calls[-1] == "finish"
    assert "record" in calls
    begun, ended = store.seen[0][1], store.seen[-1][1]
    assert (begun["id"], begun["name"], begun["explicit_id"]) == ("o-1", "custom_store.order", True)
    assert begun["definition"].args == ("lamp",)
    assert begun["status"] is SagaStatus.EXECUTING
    assert begun["total_steps"] == 2
    assert ended["status"] is SagaStatus.COMPENSATED
    assert ended["steps_executed"] == 1
    assert ended["error"] is not None
    assert "card declined" in ended["error"]
    assert ended["started_at"].tzinfo is not None
    assert metadata is not None
    assert metadata.status is SagaStatus.COMPENSATED
