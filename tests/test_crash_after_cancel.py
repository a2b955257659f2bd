"""A simulated crash while compensating after a cancellation records nothing more.

Regression: the cancellation path finished the run (``saga_finished``, FAILED) even when
``FaultInjector.crash(step, compensation=True)`` fired, so recovery found nothing to
finish (docs/testing.md: "records nothing more — no compensation, no saga_finished").
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sagakit import SagaOrchestrator, SagaStatus, SQLiteStore, saga, step
from sagakit.testing import FaultInjector, SagaRecorder, SimulatedCrash, simulate_restart

effects: list[str] = []
waiting: asyncio.Event | None = None


@step
async def cac_kc_reserve(order: str) -> str:
    effects.append("reserve")
    return "r"


@cac_kc_reserve.compensate
async def cac_kc_release(order: str) -> None:
    effects.append("release")


@step
async def cac_kc_wait(order: str) -> None:
    assert waiting is not None
    waiting.set()
    await asyncio.sleep(10)  # the caller cancels the saga here


@cac_kc_wait.compensate
async def cac_kc_unwait(order: str) -> None:
    effects.append("unwait")


@saga
def cac_kc_order(order: str):  # type: ignore[no-untyped-def]
    yield cac_kc_reserve(order)
    yield cac_kc_wait(order)


@pytest.mark.asyncio
async def test_crash_in_compensation_after_cancel_records_nothing(tmp_path: Path) -> None:
    global waiting
    waiting = asyncio.Event()
    effects.clear()
    recorder = SagaRecorder()
    store = SQLiteStore(tmp_path / "sagas.db")
    orchestrator = SagaOrchestrator(store, listeners=[recorder])
    with FaultInjector().crash(cac_kc_wait, compensation=True):
        task = asyncio.create_task(orchestrator.execute(cac_kc_order("o").with_id("r2-kc-1")))
        await waiting.wait()
        task.cancel()  # the saga compensates; the "process dies" at unwait
        with pytest.raises(SimulatedCrash):
            await task
    assert not recorder.last.finished, recorder.last.trail()  # no saga_finished
    metadata = await store.get("r2-kc-1")
    assert metadata is not None
    assert metadata.status is SagaStatus.COMPENSATING  # as a killed process leaves it

    await simulate_restart(store)
    await store.close()
    restarted = SagaOrchestrator(SQLiteStore(tmp_path / "sagas.db"))
    try:
        outcomes = await restarted.recover()
        assert [o.saga_id for o in outcomes] == ["r2-kc-1"]
        assert effects == ["reserve", "unwait", "release"]
    finally:
        await restarted.close()
