"""What a ``SagaRecorder`` keeps of a saga whose event loop was closed while it ran.

Regression: such a run (its task destroyed pending with its loop, its coroutine closed by
the garbage collector) tells its listeners nothing more, and the recorder kept it as it
was, unfinished, for good: a store that is not durable had ended it ``FAILED``, but the
recorder's ``assert_status("failed")`` said it had not finished, and a durable log's
recovery of it in the same process was the only run of it that ended. The recorder (as a
tracer does) now hears the run's end as the store left it: ``saga_finished failed`` where
the store ended it, ``saga_stopped`` with the status the log keeps for recovery where it
did not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from loop_helpers import closed
from sagakit import (
    MemoryStore,
    SagaOrchestrator,
    SagaRunView,
    SagaStatus,
    SagaStore,
    SQLiteStore,
    TransitionKind,
    saga,
    step,
)
from sagakit.testing import SagaRecorder
from store_helpers.plain import PlainStore

ABANDONED = "abandoned: its event loop was closed while it ran"

held: list[str] = []


@step
async def rcl_hold(item: str) -> str:
    return item


@rcl_hold.compensate
async def rcl_release(item: str) -> None:
    await asyncio.sleep(3600)  # still undoing when the loop is closed


@step
async def rcl_wait(item: str) -> str:
    if item not in held:  # the first run waits, until its loop is closed
        held.append(item)
        await asyncio.sleep(3600)
    return item


@saga
def rcl_order(item: str) -> Any:
    yield rcl_hold(item)
    yield rcl_wait(item)


Stores = Callable[[Path], SagaStore]
NOT_DURABLE: dict[str, Stores] = {
    "memory": lambda _: MemoryStore(),
    "custom": lambda _: PlainStore(),
}


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    for _ in range(50):  # until it compensates (and waits in rcl_release)
        await asyncio.sleep(0)


def _abandon(
    orchestrator: SagaOrchestrator, recorder: SagaRecorder, then: closed.Then = closed.nothing
) -> SagaStatus | None:
    """Run one ``rcl_order`` (id ``"a"``) in a loop closed while it waits (after
    ``then``), close it as the garbage collector does in a later loop, and close the
    orchestrator there: return the saga's status in the store."""
    held.clear()
    tasks = closed.abandon([orchestrator.execute(rcl_order("a"), saga_id="a")], then)
    assert recorder.last.trail()[-1] in ("step_started rcl_wait", "compensation_started rcl_hold")

    async def read() -> SagaStatus | None:
        try:
            meta = await orchestrator.get_saga("a")
            return None if meta is None else meta.status
        finally:
            await orchestrator.close()

    status, raised = closed.close_in_a_later_loop(tasks, read)
    assert raised == []
    return status


@pytest.mark.parametrize("store", NOT_DURABLE.values(), ids=NOT_DURABLE.keys())
def test_a_run_a_store_ended_failed_as_its_loop_closed_is_recorded_failed(
    store: Stores, tmp_path: Path
) -> None:
    recorder = SagaRecorder()
    orchestrator = SagaOrchestrator(store(tmp_path), listeners=[recorder])
    assert _abandon(orchestrator, recorder) is SagaStatus.FAILED
    recorder.assert_status("failed")
    recorder.assert_trail(
        "saga_started",
        "step_started rcl_hold",
        "step_completed rcl_hold",
        "step_started rcl_wait",
        "saga_finished failed",
    )
    assert recorder.last.abandoned
    assert repr(recorder.last) == "<RecordedRun rcl_order id='a' failed, 5 transitions>"
    assert recorder.transitions[-1].kind is TransitionKind.SAGA_FINISHED


@pytest.mark.parametrize("store", NOT_DURABLE.values(), ids=NOT_DURABLE.keys())
def test_a_run_compensating_as_its_loop_closed_is_recorded_failed(
    store: Stores, tmp_path: Path
) -> None:
    recorder = SagaRecorder()
    orchestrator = SagaOrchestrator(store(tmp_path), listeners=[recorder])
    assert _abandon(orchestrator, recorder, _cancel) is SagaStatus.FAILED
    recorder.assert_status("failed")
    assert recorder.last.trail()[-3:] == [
        "step_failed rcl_wait",
        "compensation_started rcl_hold",
        "saga_finished failed",
    ]


def test_a_run_a_durable_log_keeps_for_recovery_is_recorded_stopped(tmp_path: Path) -> None:
    recorder = SagaRecorder()
    db = tmp_path / "s.db"
    orchestrator = SagaOrchestrator(SQLiteStore(db), listeners=[recorder])
    assert _abandon(orchestrator, recorder) is SagaStatus.EXECUTING
    run = recorder.last
    assert run.trail()[-2:] == ["step_started rcl_wait", "saga_stopped"]
    assert (run.status, run.finished, run.abandoned) == (SagaStatus.EXECUTING, False, True)
    assert repr(run) == "<RecordedRun rcl_order id='a' executing (abandoned), 5 transitions>"
    with pytest.raises(AssertionError) as failed:
        run.assert_status("completed")
    assert str(failed.value).startswith(
        f"saga 'rcl_order' (id a) has not finished (status executing: {ABANDONED}), "
        "expected completed\n"
    )

    async def recover() -> None:  # in the same process: a run of its own
        async with SagaOrchestrator(SQLiteStore(db), listeners=[recorder]) as recovering:
            await recovering.recover()

    asyncio.run(recover())
    recorder.assert_status("completed", saga_id="a")
    assert recorder.run("a").trail()[-1] == "saga_finished completed"
    assert not recorder.run("a").abandoned


def test_a_run_compensating_in_a_durable_log_is_recorded_stopped_compensating(
    tmp_path: Path,
) -> None:
    recorder = SagaRecorder()
    orchestrator = SagaOrchestrator(SQLiteStore(tmp_path / "s.db"), listeners=[recorder])
    assert _abandon(orchestrator, recorder, _cancel) is SagaStatus.COMPENSATING
    assert recorder.last.trail()[-2:] == ["compensation_started rcl_hold", "saga_stopped"]
    assert recorder.last.status is SagaStatus.COMPENSATING


class WaitingStore(PlainStore):
    """Its ``finish()`` waits on something (as for a lock): it cannot end the run."""

    async def finish(self, run: SagaRunView) -> None:
        await asyncio.sleep(1)
        await super().finish(run)


def test_a_run_a_store_could_not_end_is_recorded_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = SagaRecorder()
    orchestrator = SagaOrchestrator(WaitingStore(), listeners=[recorder])
    _abandon(orchestrator, recorder)
    assert recorder.last.trail()[-1] == "saga_stopped"
    assert recorder.last.status is SagaStatus.EXECUTING  # as it was: the store keeps it
    assert asyncio.run(orchestrator.store.running_count()) == 1


def test_a_run_the_recorder_heard_nothing_of_is_not_made_up(tmp_path: Path) -> None:
    # Closed at their first write, whose commit tells their start: a run the recorder
    # heard nothing of (its start never committed) is not recorded as a lone saga_stopped.
    recorder = SagaRecorder()
    orchestrator = SagaOrchestrator(SQLiteStore(tmp_path / "s.db"), listeners=[recorder])
    ids = [f"f{n}" for n in range(20)]
    held.clear()
    coroutines = [orchestrator.execute(rcl_order(i), saga_id=i) for i in ids]
    tasks = closed.abandon(coroutines, turns=1)
    _, raised = closed.close_in_a_later_loop(tasks, orchestrator.close)
    assert raised == []
    for run in recorder.runs:
        assert run.trail()[0] == "saga_started", run.describe()
        assert run.trail()[-1] == "saga_stopped", run.describe()
