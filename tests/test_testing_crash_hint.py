"""A saga a simulated crash stopped, run or recovered again in the same "process" without
simulate_restart(): the store still sees this process running it, so execute() refuses it
and recover() leaves it alone — each saying why and what to do, not "already executing"
and an unexplained empty list."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from sagakit import MemoryStore, SagaAlreadyExecuting, SagaOrchestrator, SQLiteStore, saga, step
from sagakit.stores import SagaStore
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

pytestmark = pytest.mark.asyncio

gate: asyncio.Event | None = None
started: asyncio.Event | None = None


@step
async def _hold(item: str) -> None:
    if gate is not None and started is not None:
        started.set()
        await gate.wait()


@saga(name="test_testing_crash_hint.order")
def _order(item: str) -> list[object]:
    return [_hold(item)]


async def _crash(orchestrator: SagaOrchestrator, saga_id: str = "o-1") -> None:
    with FaultInjector().crash(_hold), pytest.raises(SimulatedCrash):
        await orchestrator.execute(_order("book"), saga_id=saga_id)


async def test_running_a_crashed_id_again_says_it_crashed(
    durable_store: Callable[[], SagaStore],
) -> None:
    async with SagaOrchestrator(durable_store()) as orchestrator:
        await _crash(orchestrator)
        with pytest.raises(SagaAlreadyExecuting) as info:
            await orchestrator.execute(_order("book"), saga_id="o-1")
        await simulate_restart(orchestrator.store)  # leaves no lease held (PostgreSQL)
    (note,) = info.value.__notes__
    assert note.startswith("saga 'o-1' was stopped by a simulated crash")
    assert "simulate_restart(store)" in note


async def test_running_a_crashed_id_again_in_memory_says_to_use_a_durable_store() -> None:
    async with SagaOrchestrator(MemoryStore()) as orchestrator:
        await _crash(orchestrator)
        with pytest.raises(SagaAlreadyExecuting) as info:
            await orchestrator.execute(_order("book"), saga_id="o-1")
    (note,) = info.value.__notes__
    assert note.startswith("saga 'o-1' was stopped by a simulated crash")
    assert "in-memory store" in note
    assert "durable store" in note


async def test_recovery_leaving_a_crashed_saga_alone_says_why(
    durable_store: Callable[[], SagaStore], caplog: pytest.LogCaptureFixture
) -> None:
    store = durable_store()
    async with SagaOrchestrator(store) as orchestrator:
        await _crash(orchestrator)
        with caplog.at_level(logging.WARNING, logger="sagakit"):
            assert await orchestrator.recover() == []
        (record,) = [r for r in caplog.records if "simulated crash" in r.getMessage()]
        assert "saga 'o-1' was stopped" in record.getMessage()
        assert "simulate_restart(store)" in record.getMessage()

        caplog.clear()
        await simulate_restart(store)  # done right: recovered, and nothing more to say
        with caplog.at_level(logging.WARNING, logger="sagakit"):
            outcomes = await orchestrator.recover()
        assert [(o.saga_id, o.action) for o in outcomes] == [("o-1", "resumed")]
        assert not [r for r in caplog.records if "simulated crash" in r.getMessage()]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_an_id_running_for_real_gets_no_crash_note(kind: str, tmp_path: Path) -> None:
    global gate, started
    store = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "sagas.db")
    async with SagaOrchestrator(store) as orchestrator:
        await _crash(orchestrator)  # o-1: the store has a crashed saga, not the one below
        gate, started = asyncio.Event(), asyncio.Event()
        try:
            first = asyncio.ensure_future(orchestrator.execute(_order("pen"), saga_id="o-2"))
            await started.wait()
            with pytest.raises(SagaAlreadyExecuting) as info:
                await orchestrator.execute(_order("pen"), saga_id="o-2")
            gate.set()
            await first
        finally:
            gate = started = None
    assert not getattr(info.value, "__notes__", [])


async def test_recovery_names_five_crashed_sagas_and_counts_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLiteStore(tmp_path / "sagas.db")
    async with SagaOrchestrator(store) as orchestrator:
        for number in range(6):
            await _crash(orchestrator, f"o-{number}")
        with caplog.at_level(logging.WARNING, logger="sagakit"):
            assert await orchestrator.recover() == []
        (record,) = [r for r in caplog.records if "simulated crash" in r.getMessage()]
        message = record.getMessage()
        assert "sagas 'o-0', 'o-1', 'o-2', 'o-3', 'o-4' and 1 more were stopped" in message
        assert "'o-5'" not in message
        await simulate_restart(store)
