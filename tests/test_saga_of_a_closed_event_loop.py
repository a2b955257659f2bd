"""A saga whose task is destroyed with its event loop is left as a crash leaves it.

Regression: an event loop closed while a saga's task was still pending (``loop.close()``
after ``run_until_complete``, a framework's loop per request torn down early) leaves the
task to the garbage collector, which closes its coroutine: ``GeneratorExit`` at the
``await`` it waited in, often while a later ``asyncio.run()`` is running. sagakit took it
for a ``KeyboardInterrupt``: it recorded the saga ``FAILED`` (``"GeneratorExit (not
compensated)"``, a step that never ran ``"not started: GeneratorExit"``), a terminal
status recovery never finishes, its completed steps never undone, and told listeners of
that end from the collector; or, where it had to wait for the log, the close raised
``RuntimeError: coroutine ignored GeneratorExit``. Closing then raised ``ValueError``
(a context variable's token reset in another context). Now nothing more is run, recorded
or told: the log shows the saga as the closed loop left it, for recovery (a SQLite store
hands it over, so a recovery of this live process takes it too; a store that is not
durable, which nothing recovers, ends it FAILED, not compensated, rather than keep it
running for good). A worker, and an ``async with`` block of the orchestrator, closed the
same way stop where they waited too, awaiting nothing more.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from loop_helpers import closed
from loop_helpers.closed import Then, nothing
from sagakit import (
    MemoryStore,
    SagaOrchestrator,
    SagaRunView,
    SagaStatus,
    SagaStore,
    SQLiteStore,
    StepStatus,
    Transition,
    TransitionKind,
    saga,
    step,
)
from store_helpers.crashing import Crash, CrashingStore
from store_helpers.plain import PlainStore

undone: list[str] = []


@step
async def cel_reserve(item: str) -> str:
    return item


@cel_reserve.compensate
async def cel_release(item: str) -> None:
    undone.append(item)
    await asyncio.sleep(3600)  # still undoing when the loop is closed


waiting: list[str] = []


@step
async def cel_wait(item: str) -> None:
    waiting.append(item)
    await asyncio.sleep(3600)


@saga
def cel_order(item: str):  # type: ignore[no-untyped-def]
    yield cel_reserve(item)
    yield cel_wait(item)


CLOSED = "its event loop was closed while it ran"

Stores = Callable[[Path], SagaStore]
STORES: dict[str, Stores] = {
    "memory": lambda _: MemoryStore(),
    "custom": lambda _: PlainStore(),  # of one's own, not durable either
    "sqlite": lambda tmp_path: SQLiteStore(tmp_path / "s.db"),
}


def abandon(
    orchestrator: SagaOrchestrator, ids: list[str], then: Then = nothing, turns: int = 50
) -> list[asyncio.Task[Any]]:
    """Start ``ids`` in a loop closed while they wait (see ``closed.abandon``)."""
    return closed.abandon([orchestrator.execute(cel_order(i), saga_id=i) for i in ids], then, turns)


async def cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    for _ in range(50):  # until each compensates (and waits in cel_release)
        await asyncio.sleep(0)


def close_in_a_later_loop(
    orchestrator: SagaOrchestrator, tasks: list[asyncio.Task[Any]], ids: list[str]
) -> tuple[list[Any], list[str]]:
    """Close the pending ``tasks`` as the garbage collector does, in the next
    ``asyncio.run()``, then read the sagas back. Returns them and what closing raised."""

    async def read() -> list[Any]:
        found = []
        for saga_id in ids:
            meta = await orchestrator.get_saga(saga_id)
            assert meta is not None
            found.append(
                (meta.status, meta.error, [(s.name, s.status, s.error) for s in meta.steps])
            )
        await orchestrator.close()
        return found

    return closed.close_in_a_later_loop(tasks, read)


@pytest.mark.parametrize("store", STORES.values(), ids=STORES.keys())
def test_a_saga_waiting_in_a_step_when_its_loop_closed_stays_executing(
    store: Stores, tmp_path: Path
) -> None:
    heard: list[Transition] = []
    orchestrator = SagaOrchestrator(store(tmp_path), listeners=[heard.append])
    ids = ["a", "b", "c"]  # at once: the SQLite store queues their writes
    tasks = abandon(orchestrator, ids, nothing)
    told = len(heard)
    found, raised = close_in_a_later_loop(orchestrator, tasks, ids)
    if not orchestrator.store.durable:  # nothing would recover it: ended
        waiting = [
            ("cel_reserve", StepStatus.COMPLETED, None),
            ("cel_wait", StepStatus.FAILED, f"interrupted: {CLOSED}"),
        ]
        expected = (SagaStatus.FAILED, f"abandoned: {CLOSED} (not compensated)", waiting)
    else:
        waiting = [
            ("cel_reserve", StepStatus.COMPLETED, None),
            ("cel_wait", StepStatus.RUNNING, None),
        ]
        expected = (SagaStatus.EXECUTING, None, waiting)
    assert found == [expected] * len(ids)
    if not orchestrator.store.durable:
        assert asyncio.run(orchestrator.store.running()) == []  # not running for good
    assert len(heard) == told  # nothing told by the collector
    assert undone == []
    assert raised == []


@pytest.mark.parametrize("store", STORES.values(), ids=STORES.keys())
def test_a_saga_waiting_on_its_log_when_its_loop_closed_is_not_failed(
    store: Stores, tmp_path: Path
) -> None:
    orchestrator = SagaOrchestrator(store(tmp_path))
    ids = [f"s{n}" for n in range(20)]  # at once: the SQLite store queues their writes
    tasks = abandon(orchestrator, ids, nothing, turns=1)  # each at its first write
    found, raised = close_in_a_later_loop(orchestrator, tasks, ids)
    memory = not orchestrator.store.durable  # nothing would recover it: ended
    assert {status for status, _, _ in found} == {
        SagaStatus.FAILED if memory else SagaStatus.EXECUTING
    }
    failed = [s for *_, steps in found for s in steps if s[1] is StepStatus.FAILED]
    assert failed == ([] if not memory else [failed[0]] * len(failed))
    assert all(error == f"interrupted: {CLOSED}" for *_, error in failed)
    assert raised == []


@pytest.mark.parametrize("store", STORES.values(), ids=STORES.keys())
def test_a_saga_compensating_when_its_loop_closed_stays_compensating(
    store: Stores, tmp_path: Path
) -> None:
    orchestrator = SagaOrchestrator(store(tmp_path))
    tasks = abandon(orchestrator, ["x"], cancel)
    assert undone == ["x"]
    undone.clear()
    [(status, error, steps)], raised = close_in_a_later_loop(orchestrator, tasks, ["x"])
    memory = not orchestrator.store.durable  # nothing would recover it: ended
    assert (status, error) == (
        SagaStatus.FAILED if memory else SagaStatus.COMPENSATING,
        "CancelledError: the saga was cancelled",
    )
    assert [(name, step_status) for name, step_status, _ in steps] == [
        ("cel_reserve", StepStatus.COMPLETED),
        ("cel_wait", StepStatus.FAILED),
    ]
    assert raised == []


@step
async def cel_fail(item: str) -> None:
    raise ValueError("out of stock")


@saga
def cel_failing(item: str):  # type: ignore[no-untyped-def]
    yield cel_reserve(item)
    yield cel_fail(item)


def test_a_recovery_compensating_when_its_loop_closed_leaves_the_saga_compensating(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "s.db")
    crashing = CrashingStore(db, lambda t: t.kind is TransitionKind.COMPENSATION_STARTED)

    async def crashed() -> None:
        orchestrator = SagaOrchestrator(crashing)
        with pytest.raises(Crash):
            await orchestrator.execute(cel_failing("y"), saga_id="y")
        await orchestrator.close()

    asyncio.run(crashed())  # its log: COMPENSATING, its process "dead"
    orchestrator = SagaOrchestrator(SQLiteStore(db))
    loop = asyncio.new_event_loop()
    recovering = loop.create_task(orchestrator.recover())
    for _ in range(50):  # until the compensation waits
        loop.run_until_complete(asyncio.sleep(0))
        if undone:
            break
    assert undone == ["y"]
    assert not recovering.done()
    undone.clear()
    left = list(asyncio.all_tasks(loop))
    loop.close()
    [(status, error, _)], raised = close_in_a_later_loop(orchestrator, left, ["y"])
    assert status is SagaStatus.COMPENSATING
    assert error == "StepFailed: step 1 ('cel_fail') failed: ValueError: out of stock"
    assert raised == []


def test_a_step_awaited_on_its_own_when_its_loop_closed_closes_cleanly() -> None:
    # Closing it raised ValueError too (its own context variable's token).
    async def direct() -> None:
        await cel_wait("z")

    async def later() -> None:
        pass

    _, raised = closed.close_in_a_later_loop(closed.abandon([direct()], turns=1), later)
    assert raised == []


class TurningStore(PlainStore):
    """Its ``finish()`` first gives the loop a turn (``asyncio.sleep(0)``)."""

    async def finish(self, run: SagaRunView) -> None:
        await asyncio.sleep(0)
        await super().finish(run)


class WaitingStore(PlainStore):
    """Its ``finish()`` waits on something (as for a lock, a connection)."""

    async def finish(self, run: SagaRunView) -> None:
        await asyncio.sleep(1)
        await super().finish(run)


class RaisingStore(PlainStore):
    async def finish(self, run: SagaRunView) -> None:
        raise RuntimeError("the store is broken")


def test_a_store_whose_finish_gives_a_turn_ends_the_saga() -> None:
    orchestrator = SagaOrchestrator(TurningStore())
    [(status, _, _)], raised = close_in_a_later_loop(
        orchestrator, abandon(orchestrator, ["t"]), ["t"]
    )
    assert status is SagaStatus.FAILED
    assert raised == []


@pytest.mark.parametrize(
    ("store", "why"),
    [
        (WaitingStore, "its finish() waited, and nothing can wait once the loop is closed"),
        (RaisingStore, "its finish() raised RuntimeError: the store is broken"),
    ],
    ids=["waiting", "raising"],
)
def test_a_store_whose_finish_cannot_end_the_saga_says_so(
    store: type[PlainStore], why: str, caplog: pytest.LogCaptureFixture
) -> None:
    orchestrator = SagaOrchestrator(store())
    tasks = abandon(orchestrator, ["w"])
    [(status, _, _)], raised = close_in_a_later_loop(orchestrator, tasks, ["w"])
    assert status is SagaStatus.FAILED  # its record ended, but the store keeps it running
    assert asyncio.run(orchestrator.store.running_count()) == 1
    assert raised == []
    [message] = [r.getMessage() for r in caplog.records if "abandoned" in r.getMessage()]
    assert message == (
        f"sagakit: saga cel_order (w), abandoned ({CLOSED}), stays running in "
        f"{orchestrator.store!r}: {why}"
    )


@pytest.mark.parametrize("handle_signals", [False, True], ids=["no-signals", "signals"])
def test_a_worker_whose_loop_closed_leaves_its_sagas_as_a_crash_does(
    handle_signals: bool, tmp_path: Path
) -> None:
    # Closing the worker raised "RuntimeError: coroutine ignored GeneratorExit": its
    # shutdown waited for the sagas it was finishing, in a loop already closed.
    db = str(tmp_path / "s.db")
    crashing = CrashingStore(db, lambda t: t.kind is TransitionKind.STEP_STARTED)

    async def crashed() -> None:  # its log: cel_wait started, its process "dead"
        orchestrator = SagaOrchestrator(crashing)
        with pytest.raises(Crash):
            await orchestrator.execute(cel_order("w"), saga_id="w")
        await orchestrator.close()

    asyncio.run(crashed())
    orchestrator = SagaOrchestrator(SQLiteStore(db))
    sigterm = signal.getsignal(signal.SIGTERM)

    def worker_waits() -> bool:  # for its next poll, in _wait(), the saga in cel_wait
        polling = [task.get_coro() for task in asyncio.all_tasks()]
        return bool(waiting) and "Event.wait" in [c.__qualname__ for c in polling]  # type: ignore[union-attr]

    async def until_worker_waits(tasks: list[asyncio.Task[Any]]) -> None:
        for _ in range(1000):  # (the claim is written on the store's thread)
            if worker_waits():
                break
            await asyncio.sleep(0.01)

    waiting.clear()
    worker = orchestrator.run_worker(poll_interval=3600, handle_signals=handle_signals)
    tasks = closed.abandon([worker], until_worker_waits)
    assert waiting == ["w"]
    [(status, error, steps)], raised = close_in_a_later_loop(orchestrator, tasks, ["w"])
    assert (status, error) == (SagaStatus.EXECUTING, None)  # for the next recovery
    assert [(name, step_status) for name, step_status, _ in steps] == [
        ("cel_reserve", StepStatus.COMPLETED),
        ("cel_wait", StepStatus.RUNNING),
    ]
    assert raised == []
    assert signal.getsignal(signal.SIGTERM) == sigterm


def test_async_with_an_orchestrator_whose_loop_closed_leaves_its_store_open(
    tmp_path: Path,
) -> None:
    # Leaving the block closed the store, which awaited its thread, in a coroutine the
    # garbage collector closes: "RuntimeError: coroutine ignored GeneratorExit".
    orchestrator = SagaOrchestrator(SQLiteStore(tmp_path / "s.db"))

    async def main() -> None:
        async with orchestrator:
            await orchestrator.execute(cel_order("aw"), saga_id="aw")

    [(status, _, _)], raised = close_in_a_later_loop(
        orchestrator, closed.abandon([main()]), ["aw"]
    )  # (which reads the saga with the store still open, then closes it)
    assert status is SagaStatus.EXECUTING
    assert raised == []


held: list[str] = []


@step
async def cel_hold_once(item: str) -> str:
    if item not in held:  # the first run waits, until its loop is closed
        held.append(item)
        await asyncio.sleep(3600)
    return item


@saga
def cel_held(item: str):  # type: ignore[no-untyped-def]
    yield cel_reserve(item)
    yield cel_hold_once(item)


@pytest.mark.parametrize("turns", [50, 1], ids=["in-a-step", "at-its-first-write"])
def test_a_sqlite_saga_whose_loop_closed_is_recovered_by_this_live_process(
    turns: int, tmp_path: Path
) -> None:
    # It stayed executing under this process, which no recovery takes, until the
    # process exited: a service tearing its loops down early never finished it.
    orchestrator = SagaOrchestrator(SQLiteStore(tmp_path / "s.db"))
    held.clear()
    tasks = closed.abandon([orchestrator.execute(cel_held("h"), saga_id="h")], turns=turns)

    async def recover() -> tuple[list[Any], Any]:
        try:
            recovered = [(o.saga_id, o.status) for o in await orchestrator.recover()]
            meta = await orchestrator.get_saga("h")
            return recovered, None if meta is None else meta.status
        finally:
            await orchestrator.close()

    (recovered, status), raised = closed.close_in_a_later_loop(tasks, recover)
    if turns > 1 or status is not None:  # (its first write may never have been made)
        assert (recovered, status) == ([("h", SagaStatus.COMPLETED)], SagaStatus.COMPLETED)
    assert raised == []
