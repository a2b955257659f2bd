"""SQLite: a monitoring read shows each saga as it was at one instant.

``get()``, ``running()``, ``history()`` and ``list_sagas()`` read a saga's row and then
its records, in statements of their own on a connection in autocommit mode: each saw
what had committed by its start, so a commit between them (of another process on the
same log, or of this process's own writer, which commits on the event loop while a
read runs on the store's thread) showed a saga EXECUTING whose steps had all completed.
Here another store on the same file (another process's stand-in) commits right when
the reading store starts reading the records.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sagakit import SagaOrchestrator, SagaStatus, SQLiteStore, StepStatus, saga, step
from sagakit.records import SagaMetadata

GATE: dict[str, asyncio.Event] = {}


@step
async def lite_snap_act(n: int) -> list[int]:
    if n == 1:
        GATE["entered"].set()
        await GATE["go"].wait()
    return [n]


@saga
def lite_snap_two():  # type: ignore[no-untyped-def]
    yield lite_snap_act(0)
    yield lite_snap_act(1)


async def _listed(found: Awaitable[SagaMetadata | None]) -> list[SagaMetadata]:
    meta = await found
    return [] if meta is None else [meta]


READS: dict[str, Callable[[SQLiteStore], Awaitable[list[SagaMetadata]]]] = {
    "get": lambda store: _listed(store.get("snap")),
    "running": lambda store: store.running(),
    "list_sagas": lambda store: store.list_sagas(),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("read", sorted(READS))
async def test_a_saga_finishing_during_a_read_is_shown_as_it_was_when_the_read_began(
    tmp_path: Path, read: str
) -> None:
    GATE.clear()
    GATE["entered"], GATE["go"] = asyncio.Event(), asyncio.Event()
    path = tmp_path / "log.db"
    worker, reader = SQLiteStore(path), SQLiteStore(path)
    try:
        task = asyncio.create_task(
            SagaOrchestrator(worker).execute(lite_snap_two(), saga_id="snap")
        )
        await asyncio.wait_for(GATE["entered"].wait(), 30)  # step 0 completed, 1 running
        assert await reader.get("snap") is not None  # (opens the reader's connection)

        loop = asyncio.get_running_loop()
        finished = threading.Event()

        async def finish() -> None:
            GATE["go"].set()
            await task
            finished.set()

        def trace(statement: str) -> None:
            # On the reader's thread, as the first statement reading records starts.
            if "sagakit_steps" in statement and not finished.is_set():
                asyncio.run_coroutine_threadsafe(finish(), loop)
                finished.wait(30)

        conn = reader._writer._reader_conn()
        conn.set_trace_callback(trace)
        try:
            (meta,) = await READS[read](reader)
        finally:
            conn.set_trace_callback(None)
        assert finished.is_set()  # the saga's end did commit during the read
        assert task.result() == [0, 1]

        assert meta.status is SagaStatus.EXECUTING
        assert meta.finished_at is None
        assert [r.status for r in meta.steps] == [StepStatus.COMPLETED, StepStatus.RUNNING]
        assert meta.steps_executed == 1

        now = await reader.get("snap")
        assert now is not None
        assert now.status is SagaStatus.COMPLETED
        assert [r.status for r in now.steps] == [StepStatus.COMPLETED] * 2
    finally:
        GATE["go"].set()
        await worker.close()
        await reader.close()


@pytest.mark.asyncio
async def test_a_read_that_fails_leaves_no_transaction_open(tmp_path: Path) -> None:
    # Gates of this test's own, open: the saga runs straight through, whichever tests ran before.
    GATE.clear()
    GATE["entered"], GATE["go"] = asyncio.Event(), asyncio.Event()
    GATE["go"].set()
    store = SQLiteStore(tmp_path / "log.db")
    try:
        await SagaOrchestrator(store).execute(lite_snap_two(), saga_id="done")

        def broken(conn: Any) -> None:
            conn.execute("SELECT no_such_column FROM sagakit_sagas")

        with pytest.raises(Exception, match="no_such_column"):
            await store._writer.read(broken)
        assert not store._writer._reader_conn().in_transaction
        meta = await store.get("done")
        assert meta is not None
        assert meta.status is SagaStatus.COMPLETED
    finally:
        await store.close()
