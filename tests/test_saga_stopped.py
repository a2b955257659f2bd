"""SAGA_STOPPED: a run that stops in this process without finishing tells its listeners."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    LeaseLost,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    Transition,
    TransitionKind,
    saga,
    step,
)
from sagakit._runs import SagaRun
from sagakit.testing import FaultInjector, SagaRecorder, SimulatedCrash, simulate_restart

undone: list[str] = []


@step
async def st_first(item: str) -> str:
    return item


@st_first.compensate
async def st_undo_first(item: str) -> None:
    undone.append(item)


@step
async def st_second(item: str) -> str:
    return item


@saga
def st_fenced(item: str) -> Any:
    yield st_first(item)
    yield st_second(item)


class FencedOutStore(SQLiteStore):
    """Another worker takes the saga over before its second step starts."""

    finished: list[str]

    async def record(self, run: SagaRun, transition: Transition) -> None:
        if transition.kind is TransitionKind.STEP_STARTED and transition.step_index == 1:
            raise LeaseLost(transition.saga_id)
        await super().record(run, transition)

    async def finish(self, run: SagaRun) -> None:
        self.finished.append(run.id)
        await super().finish(run)


def fenced_store(tmp_path: Path) -> FencedOutStore:
    store = FencedOutStore(tmp_path / "log.db")
    store.finished = []
    return store


@pytest.fixture(autouse=True)
def _clear() -> None:
    undone.clear()


@pytest.mark.asyncio
async def test_a_fenced_out_run_tells_saga_stopped_and_nothing_after(tmp_path: Path) -> None:
    recorder = SagaRecorder()
    async with SagaOrchestrator(fenced_store(tmp_path), listeners=[recorder]) as orchestrator:
        with pytest.raises(LeaseLost):
            await orchestrator.execute(st_fenced("x"), saga_id="fenced-1")
    run = recorder.run("fenced-1")
    # st_first's completion was staged to commit with st_second's start, which the lease
    # refused: never durable here, so never told.
    run.assert_trail("saga_started", "step_started st_first", "saga_stopped")
    assert not run.finished
    assert run.status is SagaStatus.EXECUTING  # another worker finishes it
    stopped = run.transitions[-1]
    assert isinstance(stopped.error, LeaseLost)
    assert stopped.step_name is None
    assert stopped.idempotency_key is None
    assert "saga_stopped: LeaseLost: lost the lease of saga 'fenced-1'" in run.describe()
    assert undone == []  # fenced out: nothing is undone from here


@pytest.mark.asyncio
async def test_a_cancelled_listener_of_saga_stopped_still_lets_the_store_drop_the_run(
    tmp_path: Path,
) -> None:
    # An async listener cancelled while it hears SAGA_STOPPED must not keep the run in
    # the store's live set (finish() still runs) and must not hide the LeaseLost's
    # cancellation from the caller.
    hearing = asyncio.Event()
    later: list[Transition] = []

    async def slow(transition: Transition) -> None:
        if transition.kind is TransitionKind.SAGA_STOPPED:
            hearing.set()
            await asyncio.Event().wait()  # until cancelled

    store = fenced_store(tmp_path)
    orchestrator = SagaOrchestrator(store, listeners=[slow, later.append])
    task = asyncio.create_task(orchestrator.execute(st_fenced("y"), saga_id="fenced-2"))
    await hearing.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.finished == ["fenced-2"]
    assert later[-1].kind is TransitionKind.SAGA_STOPPED  # the listener after it still heard
    await orchestrator.close()


@pytest.mark.asyncio
async def test_a_crash_simulation_tells_nothing(tmp_path: Path) -> None:
    # A simulated crash is a process dying: no SAGA_STOPPED (a dead process says nothing).
    heard: list[Transition] = []
    store = SQLiteStore(tmp_path / "log.db")
    with FaultInjector().crash(st_second, after=True), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store, listeners=[heard.append]).execute(st_fenced("z"))
    await simulate_restart(store)
    assert [t.kind for t in heard][-1] is TransitionKind.STEP_STARTED
    assert TransitionKind.SAGA_STOPPED not in [t.kind for t in heard]
    await store.close()


class EndlessEndStore(SQLiteStore):
    """Recording a run's end never returns (the database hangs), until cancelled."""

    ending: asyncio.Event

    async def record(self, run: SagaRun, transition: Transition) -> None:
        if transition.kind is TransitionKind.SAGA_FINISHED:
            self.ending.set()
            await asyncio.Event().wait()
        await super().record(run, transition)


@step
async def st_refuse(item: str) -> str:
    raise ValueError(f"{item} refused")


@saga
def st_refused(item: str) -> Any:
    yield st_first(item)
    yield st_refuse(item)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("form", "status"), [(st_fenced, "executing"), (st_refused, "compensating")]
)
async def test_a_run_cancelled_while_its_end_is_recorded_tells_saga_stopped(
    tmp_path: Path, form: Any, status: str
) -> None:
    # Regression: cancelled while its SAGA_FINISHED was being recorded (a worker stopping
    # while a recovery's end is in flight, or a caller cancelling twice), a run told its
    # listeners neither SAGA_FINISHED nor SAGA_STOPPED, although its process lived on.
    recorder = SagaRecorder()
    store = EndlessEndStore(tmp_path / "log.db")
    store.ending = asyncio.Event()
    orchestrator = SagaOrchestrator(store, listeners=[recorder])
    task = asyncio.create_task(orchestrator.execute(form("w"), saga_id="ending-1"))
    await store.ending.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    run = recorder.run("ending-1")
    stopped = run.transitions[-1]
    assert stopped.kind is TransitionKind.SAGA_STOPPED, run.describe()
    assert isinstance(stopped.error, asyncio.CancelledError)
    assert stopped.status == status  # as the log may still have it
    assert [t.kind for t in run.transitions].count(TransitionKind.SAGA_STOPPED) == 1
    assert TransitionKind.SAGA_FINISHED not in [t.kind for t in run.transitions]
    assert not orchestrator._held
    await orchestrator.close()
