"""A saga cancelled while its log write waits in the SQLite group commit.

With another saga in flight, ``GroupWriter.submit`` queues the write for the end of
the event-loop iteration (or hands it to the writer thread). A write whose caller was
cancelled is dropped if it was not sent yet; one that committed is reported to the
store (``CommittedThenCancelled``), which accounts for it. Either way nothing is left
``executing`` with no one to run it, and a step that never started is not undone.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    SagaAlreadyExecuting,
    SagaAlreadyFailed,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StoreError,
    saga,
    step,
)
from sagakit.stores._sqlite_schema import connect
from sagakit.stores._sqlite_writer import CommittedThenCancelled, GroupWriter, Job
from sagakit.testing import FaultInjector, SagaRecorder, SimulatedCrash, simulate_restart

RAN: list[str] = []
GATE: dict[str, asyncio.Event] = {}


@step
async def cw_hold(key: str) -> str:
    await GATE[key].wait()
    return key


@step
async def cw_act(n: int) -> str:
    RAN.append(f"do {n}")
    return f"did {n}"


@cw_act.compensate
async def cw_unact(result: str, n: int) -> None:
    RAN.append(f"undo {n}")


@saga
def cw_blocker(key: str):  # type: ignore[no-untyped-def]
    yield cw_hold(key)


@saga
def cw_pair():  # type: ignore[no-untyped-def]
    yield cw_act(0)
    yield cw_act(1)


async def _start_blocker(orchestrator: SagaOrchestrator) -> asyncio.Task[list[str]]:
    """Another saga in flight, so that writes go through group commit."""
    GATE["blocker"] = asyncio.Event()
    task = asyncio.create_task(orchestrator.execute(cw_blocker("blocker")))
    for _ in range(20):
        await asyncio.sleep(0)
    assert await orchestrator.running_count() == 1
    return task


async def _cancel_while_first_write_is_queued(task: asyncio.Task[list[str]]) -> None:
    # One loop iteration: ``task`` runs up to its first store write and waits on it;
    # the group-commit flush is scheduled behind this coroutine. Cancel it now.
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.asyncio
@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])  # FULL: on the writer thread
async def test_generated_id_cancelled_during_its_first_write_is_not_left_executing(
    tmp_path: Path, synchronous: Any
) -> None:
    RAN.clear()
    store = SQLiteStore(tmp_path / "sagas.db", synchronous=synchronous)
    async with SagaOrchestrator(store) as orchestrator:
        blocker = await _start_blocker(orchestrator)
        task = asyncio.create_task(orchestrator.execute(cw_pair()))
        await _cancel_while_first_write_is_queued(task)
        GATE["blocker"].set()
        await blocker
        # Only the cancelled saga could still be running; nothing runs it any more.
        running = await orchestrator.get_running_sagas()
        assert [(m.name, m.status) for m in running] == []
        # Either nothing of the cancelled run is in the log, or it is logged as ended.
        for meta in await orchestrator.get_history():
            if meta.name == "cw_pair":
                assert meta.status in (SagaStatus.COMPENSATED, SagaStatus.FAILED)
        assert RAN == []  # step 0 never started: nothing ran, nothing was undone


@pytest.mark.asyncio
@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])  # FULL: on the writer thread
async def test_a_generated_id_cancelled_during_its_first_write_is_told_as_the_log_has_it(
    tmp_path: Path, synchronous: Any
) -> None:
    # Regression: the dropped first write carried the saga's row, which the store then
    # forgot; its end wrote nothing, yet listeners and the log heard it start and finish
    # COMPENSATED while get_saga() and the history knew nothing of it.
    RAN.clear()
    recorder = SagaRecorder()
    store = SQLiteStore(tmp_path / "sagas.db", synchronous=synchronous)
    async with SagaOrchestrator(store, listeners=[recorder]) as orchestrator:
        blocker = await _start_blocker(orchestrator)
        task = asyncio.create_task(orchestrator.execute(cw_pair()))
        await _cancel_while_first_write_is_queued(task)
        GATE["blocker"].set()
        await blocker
        [saga_id] = [t.saga_id for t in recorder.transitions if t.saga_name == "cw_pair"][:1]
        meta = await orchestrator.get_saga(saga_id)
        history = [m.id for m in await orchestrator.get_history()]
    recorder.run(saga_id).assert_trail("saga_started", "saga_finished compensated")
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert [(s.name, s.status, s.error) for s in meta.steps] == [
        ("cw_act", "failed", "CancelledError: cancelled before the step started")
    ]
    assert saga_id in history
    assert RAN == []  # step 0 never started: nothing ran, nothing was undone


@pytest.mark.asyncio
async def test_a_cancelled_saga_with_nothing_in_the_log_warns_of_its_end_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Its first write dropped by the cancellation, its end (carrying its row) fails: one
    # warning, that nothing of it is in the log, not a second one for the cancelled end.
    RAN.clear()
    caplog.set_level(logging.WARNING, logger="sagakit")
    store = SQLiteStore(tmp_path / "sagas.db")
    submit = store._writer.submit
    rows: list[Job] = []

    async def fail_the_row_written_again(job: Job, *, alone: bool) -> Any:
        if any("INSERT INTO sagakit_sagas" in sql for sql, *_ in job):
            rows.append(job)
            if len(rows) > 2:  # the blocker's row, the pair's first write, then its end
                raise StoreError("disk full")
        return await submit(job, alone=alone)

    store._writer.submit = fail_the_row_written_again  # type: ignore[method-assign]
    async with SagaOrchestrator(store) as orchestrator:
        blocker = await _start_blocker(orchestrator)
        task = asyncio.create_task(orchestrator.execute(cw_pair()))
        await _cancel_while_first_write_is_queued(task)
        GATE["blocker"].set()
        await blocker
    ends = [r.getMessage() for r in caplog.records if "record" in r.getMessage()]
    assert len(ends) == 1, ends
    assert "nothing of the saga is in the log" in ends[0]
    assert RAN == []


@pytest.mark.asyncio
@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])  # FULL: on the writer thread
async def test_explicit_id_cancelled_during_begin_is_not_left_executing(
    tmp_path: Path, synchronous: Any
) -> None:
    RAN.clear()
    store = SQLiteStore(tmp_path / "sagas.db", synchronous=synchronous)
    async with SagaOrchestrator(store) as orchestrator:
        blocker = await _start_blocker(orchestrator)
        task = asyncio.create_task(orchestrator.execute(cw_pair(), saga_id="pair-1"))
        await _cancel_while_first_write_is_queued(task)
        GATE["blocker"].set()
        await blocker
        assert RAN == []  # cancelled before anything ran
        # The id was never run: it must not be left EXECUTING under this (live)
        # process, which would refuse it forever and resume it after a restart.
        meta = await orchestrator.get_saga("pair-1")
        assert meta is None or meta.status is not SagaStatus.EXECUTING
        try:
            await orchestrator.execute(cw_pair(), saga_id="pair-1")
        except SagaAlreadyExecuting:  # pragma: no cover - the bug
            pytest.fail("pair-1 is refused as executing, but nothing runs it")
        except SagaAlreadyFailed:
            pass  # acceptable: the cancelled run was recorded as ended FAILED
        else:
            assert RAN == ["do 0", "do 1"]


# ----------------------------------------------------------- the writer, directly


def _writer(tmp_path: Path, *, inline: bool) -> tuple[GroupWriter, sqlite3.Connection]:
    path = str(tmp_path / "writer.db")
    conn = connect(path, synchronous="NORMAL", busy_timeout=5.0)
    conn.execute("CREATE TABLE t (n INTEGER)")
    writer = GroupWriter(
        conn,
        path=path,
        busy_timeout=5.0,
        inline=inline,
        open_reader=lambda: connect(path, synchronous="NORMAL", busy_timeout=5.0),
    )
    return writer, conn


def _rows(conn: sqlite3.Connection) -> list[int]:
    return [n for (n,) in conn.execute("SELECT n FROM t ORDER BY n")]


async def _hold_the_writer_thread(
    writer: GroupWriter,
) -> tuple[asyncio.Task[Any], threading.Event]:
    """A write (inserting 1) that holds the writer thread until the event is set."""
    started, release = threading.Event(), threading.Event()

    def slow(conn: sqlite3.Connection) -> str:
        started.set()
        release.wait(5)
        conn.execute("INSERT INTO t VALUES (1)")
        return "written"

    task = asyncio.create_task(writer.submit(slow, alone=False))
    assert await asyncio.to_thread(started.wait, 5)
    return task, release


@pytest.mark.asyncio
async def test_a_write_committed_before_its_cancelled_caller_resumes_is_reported(
    tmp_path: Path,
) -> None:
    writer, conn = _writer(tmp_path, inline=True)
    task = asyncio.create_task(writer.submit([("INSERT INTO t VALUES (?)", (1,))], alone=False))
    await asyncio.sleep(0)  # the write is queued; the flush is scheduled
    asyncio.get_running_loop().call_soon(task.cancel)  # lands after the flush committed it
    with pytest.raises(CommittedThenCancelled) as caught:
        await task
    assert caught.value.result is None
    assert _rows(conn) == [1]
    await writer.close()


@pytest.mark.asyncio
async def test_a_queued_write_of_a_cancelled_caller_is_never_committed(tmp_path: Path) -> None:
    writer, conn = _writer(tmp_path, inline=False)
    first, release = await _hold_the_writer_thread(writer)
    queued = asyncio.create_task(writer.submit([("INSERT INTO t VALUES (2)", ())], alone=False))
    await asyncio.sleep(0)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError) as caught:
        await queued
    assert not isinstance(caught.value, CommittedThenCancelled)
    release.set()
    assert await first == "written"
    await asyncio.sleep(0.01)  # a queued write would be flushed by now
    assert _rows(conn) == [1]  # the cancelled one was dropped
    await writer.close()


@pytest.mark.asyncio
async def test_a_cancelled_caller_waits_for_its_write_on_the_writer_thread(
    tmp_path: Path,
) -> None:
    writer, conn = _writer(tmp_path, inline=False)
    task, release = await _hold_the_writer_thread(writer)
    task.cancel()
    await asyncio.sleep(0.01)
    assert not task.done()  # it waits for the outcome of its write
    release.set()
    with pytest.raises(CommittedThenCancelled) as caught:
        await task
    assert caught.value.result == "written"
    assert _rows(conn) == [1]
    await writer.close()


@step
async def cw_cancel_me(n: int) -> str:
    # The saga's own cancellation lands once this returns, while the next step's start
    # (carrying this step's staged completion) waits in the group commit.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().call_soon(task.cancel)
    RAN.append(f"do {n}")
    return f"did {n}"


@cw_cancel_me.compensate
async def cw_uncancel_me(result: str, n: int) -> None:
    RAN.append(f"undo {n} ({result})")


@saga
def cw_cancelled_after_first():  # type: ignore[no-untyped-def]
    yield cw_cancel_me(0)
    yield cw_act(1)


@pytest.mark.asyncio
@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])  # FULL: on the writer thread
async def test_a_completion_staged_in_a_dropped_write_is_still_logged_and_told(
    tmp_path: Path, synchronous: Any
) -> None:
    # Regression: the dropped write carried step 0's staged completion; it was lost.
    # The log kept step 0 "running", with no result or events, in a saga that ended
    # compensated, and listeners heard step 0's compensation but never its completion.
    RAN.clear()
    heard: list[str] = []
    store = SQLiteStore(tmp_path / "sagas.db", synchronous=synchronous)
    listener = lambda t: heard.append(f"{t.kind} {t.step_name}")  # noqa: E731
    async with SagaOrchestrator(store, listeners=[listener]) as orchestrator:
        blocker = await _start_blocker(orchestrator)
        with pytest.raises(asyncio.CancelledError):
            await orchestrator.execute(cw_cancelled_after_first(), saga_id="cw-staged")
        GATE["blocker"].set()
        await blocker
    assert RAN == ["do 0", "undo 0 (did 0)"]
    mine = [line for line in heard if "cw_hold" not in line]
    assert mine[mine.index("step_started cw_cancel_me") :][:3] == [
        "step_started cw_cancel_me",
        "step_completed cw_cancel_me",
        "compensation_started cw_cancel_me",
    ]
    async with SagaOrchestrator(SQLiteStore(tmp_path / "sagas.db")) as reader:
        meta = await reader.get_saga("cw-staged")
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    first = meta.steps[0]
    assert (first.name, first.status, first.events) == ("cw_cancel_me", "completed", ("did 0",))
    assert meta.steps_executed == 1
    assert [(c.name, c.status) for c in meta.compensations] == [("cw_cancel_me", "completed")]


@saga
def cw_cancelled_at_the_end():  # type: ignore[no-untyped-def]
    yield cw_act(0)
    yield cw_cancel_me(1)


@pytest.mark.asyncio
@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])  # FULL: on the writer thread
async def test_a_saga_cancelled_while_its_end_waits_in_the_group_commit_is_not_left_executing(
    tmp_path: Path, synchronous: Any
) -> None:
    # Regression: the cancellation landed once the last step had returned, while the
    # saga's end (with that step's staged completion) waited for the group commit: the
    # write was dropped, and the saga stayed EXECUTING (in `sagakit list`, in
    # get_running_sagas()) until some later recovery replayed it, although every step
    # had completed. A server cancelling requests (clients gone) under load hit it.
    RAN.clear()
    store = SQLiteStore(tmp_path / "sagas.db", synchronous=synchronous)
    async with SagaOrchestrator(store) as orchestrator:
        blocker = await _start_blocker(orchestrator)
        with pytest.raises(asyncio.CancelledError):
            await orchestrator.execute(cw_cancelled_at_the_end(), saga_id="cw-end")
        assert "cw-end" not in [m.id for m in await orchestrator.get_running_sagas()]
        GATE["blocker"].set()
        await blocker
        meta = await orchestrator.get_saga("cw-end")
        # Recorded ended as it ended: every step completed, so nothing is undone.
        assert meta is not None
        assert meta.status is SagaStatus.COMPLETED
        assert [(s.name, s.status, s.events) for s in meta.steps] == [
            ("cw_act", "completed", ("did 0",)),
            ("cw_cancel_me", "completed", ("did 1",)),
        ]
        assert RAN == ["do 0", "do 1"]
        assert await orchestrator.execute(cw_cancelled_at_the_end(), saga_id="cw-end") == [
            "did 0",
            "did 1",
        ]


@pytest.mark.asyncio
async def test_sagas_claimed_by_a_recovery_cancelled_as_the_claim_committed_are_let_go(
    tmp_path: Path,
) -> None:
    # Regression: recover() cancelled once its claim had committed, but before it
    # resumed (CommittedThenCancelled), let go of nothing: the orphan stayed owned by
    # this live process, which no recovery takes, until the process exited.
    RAN.clear()
    db = tmp_path / "sagas.db"
    crashed = SQLiteStore(db)
    with FaultInjector().crash(cw_act, after=True), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(crashed).execute(cw_pair(), saga_id="orphan")
    await simulate_restart(crashed)
    await crashed.close()
    store = SQLiteStore(db)
    claim = asyncio.create_task(store.claim_orphans())
    await asyncio.sleep(0)  # the claim is queued; the group-commit flush is scheduled
    asyncio.get_running_loop().call_soon(claim.cancel)  # lands once the flush committed
    with pytest.raises(CommittedThenCancelled):
        await claim
    await store.close()
    async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
        # The claim let go of counts no recovery attempt: nobody ran the saga (it counted
        # one, so a recovery allowed one attempt parked the saga, never run).
        outcomes = await orchestrator.recover(max_attempts=1)
        assert [(o.saga_id, o.action, o.status) for o in outcomes] == [
            ("orphan", "resumed", SagaStatus.COMPLETED)
        ]
    assert RAN == ["do 0", "do 0", "do 1"]  # (step 0 ran again: it crashed after acting)


@pytest.mark.asyncio
async def test_a_cancelled_caller_whose_batch_is_followed_by_the_next_learns_it_committed(
    tmp_path: Path,
) -> None:
    # Regression: once its batch had committed, the cancelled caller looked for its
    # place in the thread's *current* batch, already the next one (writes queued
    # meanwhile): ValueError "<Future cancelled> is not in list" escaped, instead of
    # CommittedThenCancelled. A saga whose begin() or step start it was stayed
    # EXECUTING under this live process (synchronous="FULL", several sagas in flight).
    writer, conn = _writer(tmp_path, inline=False)
    task, release = await _hold_the_writer_thread(writer)
    task.cancel()
    await asyncio.sleep(0)
    queued = asyncio.create_task(writer.submit([("INSERT INTO t VALUES (2)", ())], alone=False))
    await asyncio.sleep(0)  # queued behind the thread's batch
    release.set()
    with pytest.raises(CommittedThenCancelled) as caught:
        await task
    assert caught.value.result == "written"
    assert await queued is None
    assert _rows(conn) == [1, 2]
    await writer.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])  # FULL: on the writer thread
async def test_listeners_hear_the_end_written_for_a_saga_cancelled_while_it_waited(
    tmp_path: Path, synchronous: Any
) -> None:
    # Regression: the end committed (written shielded, CommittedThenCancelled), but the
    # orchestrator took any exception from recording it for "not in the log": listeners
    # heard SAGA_STOPPED, and never the last step's completion staged with the end, while
    # the log and get_saga() said COMPLETED.
    RAN.clear()
    recorder = SagaRecorder()
    store = SQLiteStore(tmp_path / "sagas.db", synchronous=synchronous)
    async with SagaOrchestrator(store, listeners=[recorder]) as orchestrator:
        blocker = await _start_blocker(orchestrator)
        with pytest.raises(asyncio.CancelledError):
            await orchestrator.execute(cw_cancelled_at_the_end(), saga_id="cw-end-told")
        GATE["blocker"].set()
        await blocker
        meta = await orchestrator.get_saga("cw-end-told")
    run = recorder.run("cw-end-told")
    assert run.trail()[-3:] == [
        "step_started cw_cancel_me",
        "step_completed cw_cancel_me",
        "saga_finished completed",
    ]
    run.assert_status(SagaStatus.COMPLETED)
    run.assert_completed(cw_act, cw_cancel_me)
    assert meta is not None
    assert meta.status is SagaStatus.COMPLETED
    assert meta.steps_executed == 2
    assert RAN == ["do 0", "do 1"]


@step
async def cw_cancel_once_written(n: int) -> str:
    # The saga's own cancellation lands once the group commit has written the next
    # step's start (carrying this step's staged completion), before the saga resumes.
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.call_soon(loop.call_soon, task.cancel)
    RAN.append(f"do {n}")
    return f"did {n}"


@cw_cancel_once_written.compensate
async def cw_uncancel_once_written(result: str, n: int) -> None:
    RAN.append(f"undo {n} ({result})")


@saga
def cw_cancelled_once_the_next_start_is_written():  # type: ignore[no-untyped-def]
    yield cw_cancel_once_written(0)
    yield cw_act(1)


@pytest.mark.asyncio
@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])  # FULL: on the writer thread
async def test_listeners_hear_a_step_start_written_for_a_saga_cancelled_while_it_waited(
    tmp_path: Path, synchronous: Any
) -> None:
    # Regression: the next step's start committed (with step 0's staged completion) as
    # the saga was cancelled; listeners heard step 0's completion only with the
    # compensation's start, and never the start the log holds.
    RAN.clear()
    recorder = SagaRecorder()
    store = SQLiteStore(tmp_path / "sagas.db", synchronous=synchronous)
    async with SagaOrchestrator(store, listeners=[recorder]) as orchestrator:
        blocker = await _start_blocker(orchestrator)
        with pytest.raises(asyncio.CancelledError):
            await orchestrator.execute(
                cw_cancelled_once_the_next_start_is_written(), saga_id="cw-start-told"
            )
        GATE["blocker"].set()
        await blocker
        meta = await orchestrator.get_saga("cw-start-told")
    assert RAN == ["do 0", "undo 0 (did 0)"]  # step 1 never ran
    recorder.run("cw-start-told").assert_trail(
        "saga_started",
        "step_started cw_cancel_once_written",
        "step_completed cw_cancel_once_written",
        "step_started cw_act",
        "step_failed cw_act",  # cancelled before it started: the start told is ended
        "compensation_started cw_cancel_once_written",
        "compensation_completed cw_cancel_once_written",
        "saga_finished compensated",
    )
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert [(s.name, s.status) for s in meta.steps] == [
        ("cw_cancel_once_written", "completed"),
        ("cw_act", "failed"),
    ]
