"""A compensation the log could not record: the ERROR telling the operator to undo steps
by hand is logged only once the saga's FAILED end is in the log.

Regression: a SQLiteStore closed while an ``execute()`` was being cancelled mid-run
logged ``... the saga ends FAILED, left uncompensated: ...; undo those steps by hand`` at
``ERROR`` next to the store's ``WARNING`` that the saga stays executing for recovery.
Only the warning was true: the end could not be written either, the log still has the
saga running, and recovery finishes it. The same whenever the log refuses the end too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    SagaDefinition,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StoreError,
    Transition,
    TransitionKind,
    step,
)

pytestmark = pytest.mark.asyncio

REACHED = asyncio.Event()


@step
async def sl_take(key: str) -> str:
    return key


@sl_take.compensate
async def sl_untake(result: str, key: str) -> None:
    pass


@step
async def sl_wait(key: str) -> str:
    REACHED.set()
    await asyncio.sleep(3600)
    return key


@step
async def sl_fail(key: str) -> str:
    raise ValueError(f"no {key}")


def _records(caplog: pytest.LogCaptureFixture, saga_id: str) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "sagakit" and getattr(r, "saga_id", None) == saga_id
    ]


async def test_a_store_closed_while_a_run_is_cancelled_tells_one_story(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    REACHED.clear()
    caplog.set_level(logging.INFO, logger="sagakit")
    store = SQLiteStore(tmp_path / "s.db")
    orchestrator = SagaOrchestrator(store)
    definition = SagaDefinition("sl").add_step(sl_take("a")).add_step(sl_wait("b"))
    task = asyncio.create_task(orchestrator.execute(definition, saga_id="sl-1"))
    await REACHED.wait()
    task.cancel()
    await store.close()  # an application shutting down with a request in flight
    with pytest.raises(asyncio.CancelledError):
        await task
    records = _records(caplog, "sl-1")
    assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == []
    # One shutdown, one WARNING (the step's end, the compensation's start and the saga's
    # end all refused by the closed store), with the store's advice and the step's fields.
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "close the store only once its sagas have finished" in warnings[0].getMessage()
    assert getattr(warnings[0], "step_index", None) == 0
    reader = SQLiteStore(tmp_path / "s.db", read_only=True)
    meta = await reader.get("sl-1")
    await reader.close()
    assert meta is not None
    assert meta.status is SagaStatus.EXECUTING


def _refuse(store: Any, kinds: set[TransitionKind]) -> None:
    """``record()`` of a transition of ``kinds`` raises ``StoreError`` without writing."""
    record = store.record

    async def refusing(run: Any, transition: Transition) -> None:
        if transition.kind in kinds:
            raise StoreError("the log cannot be written")
        await record(run, transition)

    store.record = refusing


async def test_no_error_for_an_end_the_log_refused_too(
    durable_store: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sagakit")
    store = durable_store()
    orchestrator = SagaOrchestrator(store)
    _refuse(store, {TransitionKind.COMPENSATION_STARTED, TransitionKind.SAGA_FINISHED})
    definition = SagaDefinition("sl").add_step(sl_take("a")).add_step(sl_fail("b"))
    try:
        with pytest.raises(StoreError) as raised:
            await orchestrator.execute(definition, saga_id="sl-2")
        meta = await orchestrator.get_saga("sl-2")
    finally:
        await orchestrator.close()
    records = _records(caplog, "sl-2")
    assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == []
    notes = getattr(raised.value, "__notes__", ())
    assert not any("undo those steps by hand" in note for note in notes)
    assert any("left for recovery" in note for note in notes)
    assert meta is not None
    assert meta.status is SagaStatus.EXECUTING


async def test_the_error_is_logged_once_the_failed_end_is_recorded(
    durable_store: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sagakit")
    store = durable_store()
    orchestrator = SagaOrchestrator(store)
    _refuse(store, {TransitionKind.COMPENSATION_STARTED})
    definition = SagaDefinition("sl").add_step(sl_take("a")).add_step(sl_fail("b"))
    try:
        with pytest.raises(StoreError) as raised:
            await orchestrator.execute(definition, saga_id="sl-3")
        meta = await orchestrator.get_saga("sl-3")
    finally:
        await orchestrator.close()
    records = _records(caplog, "sl-3")
    errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    assert len([m for m in errors if "undo those steps by hand" in m]) == 1, errors
    assert any("by hand" in note for note in getattr(raised.value, "__notes__", ()))
    assert meta is not None
    assert meta.status is SagaStatus.FAILED
