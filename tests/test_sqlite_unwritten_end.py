"""SQLite: a run whose end could not be written is not left to its process's exit.

The saga stayed owned by its (live) process, so no recovery could take it before that
process exited. The store now clears its owner (writing what was staged to go with the
end), so the next recovery — in this process or another — finishes it as after a crash;
if the log refuses that too, it is tried again after the next successful commit, before
the id is begun again, and at ``close()``. Nothing recorded is lost or run twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    SagaDefinition,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StepStatus,
    StoreError,
    Transition,
    TransitionKind,
    saga,
    step,
)
from sagakit.stores._sqlite_sql import FINISHED

pytestmark = pytest.mark.asyncio

CALLS: list[str] = []


@step
async def ue_take(key: str) -> str:
    CALLS.append(f"take {key}")
    return f"took {key}"


@ue_take.compensate
async def ue_untake(result: str, key: str) -> str:
    CALLS.append(f"untake {key}")
    return f"untook {key}"


@step
async def ue_put(key: str) -> str:
    CALLS.append(f"put {key}")
    return f"put {key}"


@saga
def ue_move(key: str):  # type: ignore[no-untyped-def]
    yield ue_take(key)
    yield ue_put(key)


def _refuse_end_once(store: SQLiteStore) -> None:
    """The first ``record()`` of a run's end raises ``StoreError`` without writing."""
    record = store.record
    refused: list[str] = []

    async def failing(run: Any, transition: Transition) -> None:
        if transition.kind is TransitionKind.SAGA_FINISHED and not refused:
            refused.append(run.id)
            raise StoreError("the log cannot be written")
        await record(run, transition)

    store.record = failing  # type: ignore[method-assign]


def _fail_commits_with_the_end(store: SQLiteStore, times: int) -> None:
    """The next ``times`` commits carrying a run's end fail in SQLite (rolled back)."""
    commit = store._writer._commit
    left = [times]

    def failing(jobs: list[Any], wait: bool) -> list[Any]:
        carries_end = any(
            not callable(job) and any(sql == FINISHED for sql, _ in job) for job in jobs
        )
        if carries_end and left[0] > 0:
            left[0] -= 1
            raise sqlite3.OperationalError("disk I/O error (injected)")
        return commit(jobs, wait)  # type: ignore[no-any-return]

    store._writer._commit = failing  # type: ignore[method-assign]


async def _settled(store: SQLiteStore) -> None:
    retrying = store._retrying
    if retrying is not None:
        await retrying


async def _owner(path: Path, saga_id: str) -> str | None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        row = conn.execute("SELECT owner FROM sagakit_sagas WHERE id = ?", (saga_id,)).fetchone()
    return None if row is None else str(row[0]) if row[0] is not None else None


async def test_a_run_whose_end_is_refused_is_left_for_recovery_here(tmp_path: Path) -> None:
    CALLS.clear()
    path = tmp_path / "sagas.db"
    store = SQLiteStore(path)
    _refuse_end_once(store)
    async with SagaOrchestrator(store) as orchestrator:
        with pytest.raises(StoreError, match="cannot be written"):
            await orchestrator.execute(ue_move("a"), saga_id="ue-1")
        meta = await orchestrator.get_saga("ue-1")
        assert meta is not None
        assert meta.status is SagaStatus.EXECUTING
        assert await _owner(path, "ue-1") is None  # no live owner keeps recovery off
        # Recovery in this very process finishes it; nothing runs again.
        outcomes = await orchestrator.recover()
        assert [(o.saga_id, o.status) for o in outcomes] == [("ue-1", SagaStatus.COMPLETED)]
    assert CALLS == ["take a", "put a"]


async def test_a_completion_staged_with_the_refused_end_is_not_lost(tmp_path: Path) -> None:
    # The last step's completion is staged and commits with the run's end: that commit
    # failed. It is written with the hand-over, else recovery would run that step again.
    CALLS.clear()
    path = tmp_path / "sagas.db"
    store = SQLiteStore(path)
    _fail_commits_with_the_end(store, times=1)
    async with SagaOrchestrator(store) as orchestrator:
        with pytest.raises(StoreError, match="disk I/O error"):
            await orchestrator.execute(ue_move("a"), saga_id="ue-2")
        meta = await orchestrator.get_saga("ue-2")
        assert meta is not None
        assert [(s.name, s.status) for s in meta.steps] == [
            ("ue_take", StepStatus.COMPLETED),
            ("ue_put", StepStatus.COMPLETED),
        ]
        (outcome,) = await orchestrator.recover()
        assert outcome.status is SagaStatus.COMPLETED
        meta = await orchestrator.get_saga("ue-2")
    assert meta is not None
    assert meta.events == ("took a", "put a")
    assert CALLS == ["take a", "put a"]


async def test_the_id_of_a_run_whose_end_was_refused_can_be_executed_again(
    tmp_path: Path,
) -> None:
    CALLS.clear()
    store = SQLiteStore(tmp_path / "sagas.db")
    _refuse_end_once(store)
    async with SagaOrchestrator(store) as orchestrator:
        with pytest.raises(StoreError):
            await orchestrator.execute(ue_move("a"), saga_id="ue-3")
        # Not "already executing" for good: execute() adopts the orphan, finds it completed.
        assert await orchestrator.execute(ue_move("a"), saga_id="ue-3") == ["took a", "put a"]
    assert CALLS == ["take a", "put a"]


async def test_a_cancelled_run_whose_end_was_refused_is_finished_by_recovery(
    tmp_path: Path,
) -> None:
    CALLS.clear()
    store = SQLiteStore(tmp_path / "sagas.db")
    _refuse_end_once(store)
    gate = asyncio.Event()

    @step
    async def ue_hold(key: str) -> None:
        gate.set()
        await asyncio.Event().wait()

    @saga
    def ue_held(key: str):  # type: ignore[no-untyped-def]
        yield ue_take(key)
        yield ue_hold(key)

    async with SagaOrchestrator(store) as orchestrator:
        task = asyncio.create_task(orchestrator.execute(ue_held("a"), saga_id="ue-4"))
        await gate.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (outcome,) = await orchestrator.recover()
        assert outcome.status is SagaStatus.COMPENSATED
        meta = await orchestrator.get_saga("ue-4")
    assert meta is not None
    assert [(c.name, c.status) for c in meta.compensations] == [("ue_take", StepStatus.COMPLETED)]
    assert CALLS == ["take a", "untake a"]  # undone once


def _refuse_hand_overs(store: SQLiteStore, times: int | None) -> None:
    """The next ``times`` (all if ``None``) hand-overs fail in SQLite."""
    commit = store._writer._commit
    left = [times]

    def failing(jobs: list[Any], wait: bool) -> list[Any]:
        hands_over = any("_hand_over" in getattr(job, "__qualname__", "") for job in jobs)
        if hands_over and (left[0] is None or left[0] > 0):
            if left[0] is not None:
                left[0] -= 1
            raise sqlite3.OperationalError("disk I/O error (injected)")
        return commit(jobs, wait)  # type: ignore[no-any-return]

    store._writer._commit = failing  # type: ignore[method-assign]


async def test_a_refused_hand_over_is_tried_again_after_the_next_commit(tmp_path: Path) -> None:
    CALLS.clear()
    path = tmp_path / "sagas.db"
    store = SQLiteStore(path)
    _fail_commits_with_the_end(store, times=1)
    _refuse_hand_overs(store, times=1)
    async with SagaOrchestrator(store) as orchestrator:
        with pytest.raises(StoreError):
            await orchestrator.execute(ue_move("a"), saga_id="ue-5")
        assert await _owner(path, "ue-5") == store.owner  # still this process's
        assert await orchestrator.execute(ue_move("b"), saga_id="ue-6") == ["took b", "put b"]
        await _settled(store)
        assert await _owner(path, "ue-5") is None
        (outcome,) = await orchestrator.recover()
        assert (outcome.saga_id, outcome.status) == ("ue-5", SagaStatus.COMPLETED)
    assert CALLS == ["take a", "put a", "take b", "put b"]


async def test_a_hand_over_refused_until_close_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "sagas.db"
    store = SQLiteStore(path)
    _fail_commits_with_the_end(store, times=1)
    _refuse_hand_overs(store, times=None)
    orchestrator = SagaOrchestrator(store)
    with pytest.raises(StoreError):
        await orchestrator.execute(ue_move("a"), saga_id="ue-7")
    with caplog.at_level(logging.ERROR, logger="sagakit"):
        await store.close()
    assert "['ue-7']" in caplog.text
    assert "recovery finishes them once it exits" in caplog.text
    assert await _owner(path, "ue-7") == store.owner  # for recovery once this process exits


async def test_a_run_that_outlives_its_closed_store_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: a saga still running when its store was closed (an application's
    # shutdown leaving `async with SagaOrchestrator(...)` with requests in flight) was
    # logged as "tried again after the next write": there is none, the store is closed.
    path = tmp_path / "sagas.db"
    store = SQLiteStore(path)
    orchestrator = SagaOrchestrator(store)
    reached, gate = asyncio.Event(), asyncio.Event()

    @step
    async def ue_wait(key: str) -> str:
        reached.set()
        await gate.wait()
        return key

    definition = SagaDefinition("ue-8").add_step(ue_wait("a"))
    task = asyncio.create_task(orchestrator.execute(definition))
    await reached.wait()
    await store.close()
    gate.set()
    with caplog.at_level(logging.WARNING, logger="sagakit"), pytest.raises(StoreError):
        await task
    assert "ue-8" in caplog.text
    # One WARNING, the run's on its refused end, telling the store's facts too.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "is closed" in warnings[0]
    assert "stays executing under this process" in warnings[0]
    assert "tried again" not in caplog.text
    reader = SQLiteStore(path, read_only=True)
    meta = await reader.get("ue-8")
    await reader.close()
    assert meta is not None
    assert meta.status is SagaStatus.EXECUTING  # for recovery once this process exits


async def test_a_recovery_here_takes_a_saga_whose_hand_over_was_refused(tmp_path: Path) -> None:
    # Regression: the hand-over was tried again only after another run's commit (or at
    # close()): a recover() or run_worker() here, with no saga writing meanwhile (the lock
    # another process held is gone by now), claimed nothing, the saga still owned by this
    # live process, until some unrelated saga happened to commit.
    CALLS.clear()
    path = tmp_path / "sagas.db"
    store = SQLiteStore(path)
    _fail_commits_with_the_end(store, times=1)
    _refuse_hand_overs(store, times=1)
    async with SagaOrchestrator(store) as orchestrator:
        with pytest.raises(StoreError):
            await orchestrator.execute(ue_move("a"), saga_id="ue-9")
        assert await _owner(path, "ue-9") == store.owner
        outcomes = await orchestrator.recover()
        assert [(o.saga_id, o.status) for o in outcomes] == [("ue-9", SagaStatus.COMPLETED)]
    assert CALLS == ["take a", "put a"]
