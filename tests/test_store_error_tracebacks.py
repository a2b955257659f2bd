"""An error a store raises on purpose (a saga id already running) reaches a test once, at
the test's line: not twice, chained to itself, and without the store's frames."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

import sagakit
from sagakit import MemoryStore, SagaAlreadyExecuting, SagaOrchestrator, saga, step
from sagakit.stores import SagaStore
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart


@step
async def _reserve(item: str) -> None:
    return None


@saga(name="test_store_error_tracebacks.order")
def _order(item: str) -> list[object]:
    return [_reserve(item)]


async def _already_executing(store: SagaStore) -> pytest.ExceptionInfo[SagaAlreadyExecuting]:
    """The error of running an id again that a simulated crash left running here."""
    async with SagaOrchestrator(store) as orchestrator:
        with FaultInjector().crash(_reserve), pytest.raises(SimulatedCrash):
            await orchestrator.execute(_order("book"), saga_id="o-1")
        with pytest.raises(SagaAlreadyExecuting) as info:
            await orchestrator.execute(_order("book"), saga_id="o-1")
        if store.durable:
            await simulate_restart(store)  # leaves no lease held (PostgreSQL)
    return info


@pytest.fixture(params=["memory", "durable"])
def store(request: pytest.FixtureRequest, durable_store: Callable[[], SagaStore]) -> SagaStore:
    """A MemoryStore, then each durable store (SQLite, PostgreSQL) of ``durable_store``."""
    return MemoryStore() if request.param == "memory" else durable_store()


@pytest.mark.asyncio
async def test_an_id_already_running_is_raised_once(store: SagaStore) -> None:
    info = await _already_executing(store)
    # A durable store's first refusal (before the orchestrator tried to adopt the id as an
    # orphan) was the context of its second: pytest showed the error twice.
    assert not isinstance(info.value.__context__, SagaAlreadyExecuting)


@pytest.mark.asyncio
async def test_the_store_s_frames_are_hidden_from_pytest(store: SagaStore) -> None:
    info = await _already_executing(store)
    package = os.path.dirname(sagakit.__file__)
    frames = [entry for entry in info.traceback if str(entry.path).startswith(package)]
    assert any("stores" in str(entry.path) for entry in frames), "raised by the store"
    assert all(entry.ishidden(info) for entry in frames)
