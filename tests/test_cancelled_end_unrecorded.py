"""A cancelled ``execute()`` whose final write fails still raises ``CancelledError``.

The run is compensated (shielded) and recorded ended; when that last write raises
``StoreError`` the caller's cancellation must not be replaced by it: the store error
is kept as the cancellation's ``__context__``, the listeners hear ``SAGA_STOPPED``
(the log may not have the end) and the run leaves this process's running list.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    MemoryStore,
    SagaDefinition,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StoreError,
    Transition,
    TransitionKind,
    saga,
    step,
)
from sagakit.testing import SagaRecorder
from store_helpers.refusing import refuse_record

pytestmark = pytest.mark.asyncio

LOG: list[str] = []
GATE: dict[str, asyncio.Event] = {}


@step
async def ce_take(key: str) -> str:
    LOG.append("take")
    return f"took {key}"


@ce_take.compensate
async def ce_untake(result: str, key: str) -> None:
    LOG.append("untake")
    if key == "hold-undo" and "held" not in LOG:
        LOG.append("held")
        GATE["reached"].set()
        await asyncio.Event().wait()  # until cancelled; its re-run returns at once


@step
async def ce_wait(key: str) -> None:
    if key == "hold-step":
        GATE["reached"].set()
        await asyncio.Event().wait()  # until cancelled
    raise ValueError("refused")


@saga
def ce_pair(key: str):  # type: ignore[no-untyped-def]
    yield ce_take(key)
    yield ce_wait(key)


class EndRefusingMemory(MemoryStore):
    """A durable-looking store over memory whose run ends cannot be recorded."""

    durable = True

    async def record(self, run: Any, transition: Transition) -> None:
        if transition.kind is TransitionKind.SAGA_FINISHED:
            raise StoreError("the log cannot be written")


class FinishLostMemory(MemoryStore):
    """A memory store whose ``finish()`` fails after it moved the run to its history."""

    async def finish(self, run: Any) -> None:
        await super().finish(run)
        raise StoreError("the connection was lost after the commit")


async def _cancelled(orchestrator: SagaOrchestrator, key: str, saga_id: str) -> BaseException:
    """Run ``ce_pair(key)``, cancel it once it holds, and return what the caller got."""
    LOG.clear()
    GATE["reached"] = asyncio.Event()
    task = asyncio.create_task(orchestrator.execute(ce_pair(key), saga_id=saga_id))
    await GATE["reached"].wait()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, StoreError) as error:
        return error
    pytest.fail("the run was not cancelled")


def _chain(error: BaseException) -> list[type[BaseException]]:
    """The types of ``error`` and of the exceptions it was raised from or during."""
    seen: list[type[BaseException]] = []
    current: BaseException | None = error
    while current is not None and len(seen) < 10:
        seen.append(type(current))
        current = current.__cause__ or current.__context__
    return seen


HOLDS = ["hold-step", "hold-undo"]  # cancelled mid-step; cancelled mid-compensation


@pytest.mark.parametrize("key", HOLDS)
@pytest.mark.parametrize("store_kind", ["end-refused", "finish-lost"])
async def test_memory_store_cancelled_run_whose_end_fails_raises_cancelled(
    key: str, store_kind: str
) -> None:
    store = EndRefusingMemory() if store_kind == "end-refused" else FinishLostMemory()
    recorder = SagaRecorder()
    orchestrator = SagaOrchestrator(store, listeners=[recorder])
    raised = await _cancelled(orchestrator, key, f"ce-{key}")
    assert isinstance(raised, asyncio.CancelledError), repr(raised)
    assert StoreError in _chain(raised)
    assert LOG[0] == "take"
    assert LOG[-1] == "untake"  # compensated all the same
    assert await orchestrator.get_running_sagas() == []
    assert await orchestrator.running_count() == 0
    (meta,) = await orchestrator.get_history()
    assert meta.status is SagaStatus.COMPENSATED
    if store_kind == "end-refused":
        assert recorder.run(f"ce-{key}").trail()[-1] == "saga_stopped"
    assert not orchestrator._held


@pytest.mark.parametrize("key", HOLDS)
@pytest.mark.parametrize("after", [False, True])
async def test_sqlite_cancelled_run_whose_end_fails_raises_cancelled(
    tmp_path: Path, key: str, after: bool
) -> None:
    store = SQLiteStore(tmp_path / "sagas.db")
    refuse_record(store, TransitionKind.SAGA_FINISHED, after=after)
    recorder = SagaRecorder()
    async with SagaOrchestrator(store, listeners=[recorder]) as orchestrator:
        raised = await _cancelled(orchestrator, key, f"ce-{key}")
        assert isinstance(raised, asyncio.CancelledError), repr(raised)
        assert StoreError in _chain(raised)
        assert LOG[0] == "take"
        assert LOG[-1] == "untake"
        trail = recorder.run(f"ce-{key}")
        assert trail.trail()[-1] == "saga_stopped"
        assert not orchestrator._held


async def test_sqlite_cancelled_run_whose_rerun_compensation_fails_raises_cancelled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The compensation interrupted by the cancellation runs again, shielded; when that
    # re-run cannot be recorded, the caller still gets its cancellation.
    store = SQLiteStore(tmp_path / "sagas.db")
    record = store.record
    starts: list[int] = []

    async def failing(run: Any, transition: Transition) -> None:
        if transition.kind is TransitionKind.COMPENSATION_STARTED:
            starts.append(1)
            if len(starts) == 2:
                raise StoreError("the log cannot be written")
        await record(run, transition)

    store.record = failing  # type: ignore[method-assign]
    async with SagaOrchestrator(store) as orchestrator:
        raised = await _cancelled(orchestrator, "hold-undo", "ce-rerun")
        assert isinstance(raised, asyncio.CancelledError), repr(raised)
        meta = await orchestrator.get_saga("ce-rerun")
    assert "could not record its compensation: StoreError: the log cannot be written" in (
        caplog.text
    )
    assert meta is not None
    assert meta.status is SagaStatus.FAILED


class Shutdown(BaseException):
    """A BaseException a step raises (as KeyboardInterrupt or SystemExit would be)."""


@step
async def ce_exit() -> None:
    raise Shutdown


async def test_a_base_exception_ending_a_run_whose_end_fails_is_raised() -> None:
    orchestrator = SagaOrchestrator(EndRefusingMemory())
    definition = SagaDefinition("ce-exit").add_step(ce_take("x")).add_step(ce_exit())
    with pytest.raises(Shutdown) as caught:
        await orchestrator.execute(definition)
    assert StoreError in _chain(caught.value)
    assert await orchestrator.running_count() == 0


class _Died(Exception):
    """The first "process" dies: nothing reaches its log from here on."""


def _dead_owner() -> str:
    probe = subprocess.Popen([sys.executable, "-c", "pass"])
    probe.wait()
    return f"{socket.gethostname()}/{probe.pid}/0"


class _DyingStore(SQLiteStore):
    """Records until the first compensation starts; then nothing, ever."""

    dead = False

    async def record(self, run: Any, transition: Transition) -> None:
        if self.dead or transition.kind is TransitionKind.COMPENSATION_STARTED:
            self.dead = True
            raise _Died
        await super().record(run, transition)

    async def finish(self, run: Any) -> None:
        """Nothing reaches the log of a dead process."""


@step
async def ce_refusing(key: str) -> None:
    raise ValueError("refused")


@saga
def ce_undone(key: str):  # type: ignore[no-untyped-def]
    yield ce_take(key)
    yield ce_refusing(key)


async def test_a_cancelled_recovery_whose_end_fails_raises_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "sagas.db"
    dying = _DyingStore(path, owner=_dead_owner())
    with pytest.raises(_Died):
        await SagaOrchestrator(dying).execute(ce_undone("hold-undo"), saga_id="ce-orphan")
    await dying.close()
    LOG.clear()
    GATE["reached"] = asyncio.Event()
    store = SQLiteStore(path)
    refuse_record(store, TransitionKind.SAGA_FINISHED, after=False)
    async with SagaOrchestrator(store) as orchestrator:
        recovering = asyncio.create_task(orchestrator.recover())
        await GATE["reached"].wait()  # compensating the orphan
        recovering.cancel()
        try:
            await recovering
        except (asyncio.CancelledError, StoreError) as error:
            raised: BaseException = error
        assert isinstance(raised, asyncio.CancelledError), repr(raised)
    assert LOG == ["untake", "held", "untake"]  # run again to its end, shielded
