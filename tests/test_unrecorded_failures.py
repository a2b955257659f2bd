"""A failure the saga log could not record (a step's failure, a compensation's start or
failure) is told to the operator: logged, in the saga's error and on the raised exception."""

from __future__ import annotations

import asyncio
import io
import logging
import traceback
from collections.abc import Callable
from typing import Any

import pytest

from sagakit import (
    SagaOrchestrator,
    SagaStatus,
    StepFailed,
    StepStatus,
    StoreError,
    TransitionKind,
    saga,
    step,
)
from sagakit.cli import main as cli
from store_helpers.refusing import refuse_record

pytestmark = pytest.mark.asyncio

calls: list[str] = []


@step
async def uf_take(account: str) -> str:
    calls.append(f"take {account}")
    return f"took {account}"


@uf_take.compensate
async def uf_untake(account: str) -> None:
    calls.append(f"untake {account}")


@step
async def uf_refuse(account: str) -> None:
    raise ValueError(f"{account} refused")


@saga(name="uf_order")
def uf_order(account: str):  # type: ignore[no-untyped-def]
    yield uf_take(account)
    yield uf_refuse(account)


async def _opened(store: Any) -> Any:
    opener = getattr(store, "open", None)
    if opener is not None:
        await opener()
    return store


async def _logged(new_store: Callable[[], Any], saga_id: str) -> Any:
    """What the log holds for ``saga_id``, read by a new store object."""
    store = await _opened(new_store())
    try:
        return await store.get(saga_id)
    finally:
        await store.close()


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


@pytest.mark.parametrize("after", [False, True])
async def test_a_step_failure_the_log_could_not_record_is_told_and_raised(
    durable_store: Callable[..., Any], after: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # The step's STEP_FAILED could not be written: execute() raised the StoreError alone
    # (nothing chained: the step's ValueError was lost), no record logged the step's
    # failure nor the store's error, and the saga's error did not mention the store.
    caplog.set_level(logging.WARNING, logger="sagakit")
    store = await _opened(durable_store())
    refuse_record(store, TransitionKind.STEP_FAILED, 1, after=after, message="the disk is full")
    calls.clear()
    orchestrator = SagaOrchestrator(store)
    with pytest.raises(StepFailed) as raised:
        await orchestrator.execute(uf_order("a"), saga_id="uf-step")
    await store.close()
    failure = raised.value
    assert isinstance(failure.error, ValueError)  # the saga's own failure, as raised
    assert failure.__cause__ is failure.error
    assert failure.saga_id == "uf-step"
    [note] = failure.__notes__
    assert "StoreError: the disk is full" in note
    assert calls == ["take a", "untake a"]  # compensated all the same
    [told] = [r for r in caplog.records if "could not record" in r.getMessage()]
    message = told.getMessage()
    assert told.levelno == logging.WARNING
    assert "uf-step" in message
    assert "step 1 ('uf_refuse') failed (ValueError: a refused)" in message
    assert "StoreError: the disk is full" in message
    assert (told.saga_id, told.step_name, told.step_index) == ("uf-step", "uf_refuse", 1)  # type: ignore[attr-defined]
    meta = await _logged(durable_store, "uf-step")
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert [(r.index, r.status) for r in meta.steps] == [
        (0, StepStatus.COMPLETED),
        (1, StepStatus.FAILED),
    ]
    assert meta.steps[1].error == "ValueError: a refused"
    assert meta.error is not None
    assert meta.error.startswith("StepFailed: step 1 ('uf_refuse') failed: ValueError: a refused")
    assert "StoreError: the disk is full" in meta.error


@pytest.mark.parametrize("kind", ["compensation_started", "compensation_failed"])
@pytest.mark.parametrize("after", [False, True])
async def test_a_compensation_the_log_could_not_record_is_told_in_the_saga_error(
    durable_store: Callable[..., Any],
    after: bool,
    kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Compensating stopped at a write the log refused and the saga ended FAILED, but its
    # error (the metadata, `sagakit show`) named only the step's failure, nothing was
    # logged about the store's error, and nothing said what was left undone.
    caplog.set_level(logging.WARNING, logger="sagakit")
    failing_undo = kind == "compensation_failed"

    @step
    async def uf_hold(account: str) -> str:
        calls.append(f"hold {account}")
        return f"held {account}"

    @uf_hold.compensate
    async def uf_unhold(account: str) -> None:
        calls.append(f"unhold {account}")
        if failing_undo:
            raise OSError(f"{account} cannot be released")

    @saga(name="uf_trip")
    def uf_trip(account: str):  # type: ignore[no-untyped-def]
        yield uf_take(account)
        yield uf_hold(account)
        yield uf_refuse(account)

    store = await _opened(durable_store())
    refuse_record(store, TransitionKind(kind), 1, after=after, message="the disk is full")
    calls.clear()
    from sagakit import Retry

    orchestrator = SagaOrchestrator(store, compensation_retry=Retry(attempts=1))
    with pytest.raises(StoreError, match="the disk is full") as raised:
        await orchestrator.execute(uf_trip("a"), saga_id="uf-undo")
    await store.close()
    error = raised.value
    # The step's failure, which started compensating, is still in the chain.
    assert any(isinstance(e, StepFailed) for e in _chain(error)), _chain(error)
    [note] = error.__notes__
    assert "uf-undo" in note
    assert "FAILED" in note
    assert "left uncompensated: uf_hold, uf_take" in note
    assert "resolve" in note
    printed = "".join(traceback.format_exception(error))
    assert "ValueError: a refused" in printed
    [told] = [r for r in caplog.records if "could not record" in r.getMessage()]
    message = told.getMessage()
    assert told.levelno == logging.ERROR
    assert "uf-undo" in message
    assert "that the compensation of step 1 ('uf_hold') " in message
    assert "StoreError: the disk is full" in message
    assert "left uncompensated: uf_hold, uf_take" in message
    assert "resolve" in message
    assert (told.saga_id, told.step_name, told.step_index) == ("uf-undo", "uf_hold", 1)  # type: ignore[attr-defined]
    meta = await _logged(durable_store, "uf-undo")
    assert meta is not None
    assert meta.status is SagaStatus.FAILED
    assert meta.error is not None
    assert meta.error.startswith("StepFailed: step 2 ('uf_refuse') failed: ValueError: a refused")
    assert "StoreError: the disk is full" in meta.error
    assert "left uncompensated: uf_hold, uf_take" in meta.error
    assert calls == (["take a", "hold a", "unhold a"] if failing_undo else ["take a", "hold a"])


async def test_sagakit_show_prints_why_compensating_stopped(tmp_path: Any) -> None:
    # `sagakit show` printed a FAILED saga with its step's error only: nothing said that
    # the log refused a write, or that the saga's steps were never undone.
    from sagakit import SQLiteStore

    store = SQLiteStore(tmp_path / "sagas.db")
    refuse_record(
        store, TransitionKind.COMPENSATION_STARTED, 0, after=False, message="the disk is full"
    )
    orchestrator = SagaOrchestrator(store)
    with pytest.raises(StoreError):
        await orchestrator.execute(uf_order("a"), saga_id="uf-show")
    await store.close()
    out = io.StringIO()
    argv = ["--db", str(tmp_path / "sagas.db"), "show", "uf-show"]
    assert await asyncio.to_thread(cli, argv, out) == 0
    shown = out.getvalue()
    assert "failed" in shown
    assert "StoreError: the disk is full" in shown
    assert "left uncompensated: uf_take" in shown


async def test_a_step_start_the_log_could_not_record_is_logged(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # The saga failed with the StoreError and was compensated, but no record said that
    # the log refused the step's start (`saga_finished compensated` only).
    from sagakit import SQLiteStore

    caplog.set_level(logging.WARNING, logger="sagakit")
    store = SQLiteStore(tmp_path / "sagas.db")
    refuse_record(store, TransitionKind.STEP_STARTED, 1, after=False, message="the disk is full")
    calls.clear()
    orchestrator = SagaOrchestrator(store)
    with pytest.raises(StoreError, match="the disk is full"):
        await orchestrator.execute(uf_order("a"), saga_id="uf-start")
    await store.close()
    assert calls == ["take a", "untake a"]
    [told] = [r for r in caplog.records if "could not record" in r.getMessage()]
    assert told.levelno == logging.WARNING
    assert told.getMessage() == (
        "sagakit: saga uf_order (uf-start) could not record that step 1 ('uf_refuse') "
        "started: StoreError: the disk is full; the saga fails, and its completed steps "
        "are compensated"
    )


async def test_a_stopped_compensation_whose_end_is_unrecorded_is_left_to_recovery(
    durable_store: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Neither a compensation's start nor the saga's end could be written (a lock held
    # past the role's statement_timeout, say): the log still shows the saga running, and
    # recovery compensates it. But an ERROR record and a note on the raised error said the
    # saga "ended FAILED" and to undo its steps by hand: an operator who did so had them
    # undone twice once recovery ran.
    caplog.set_level(logging.WARNING, logger="sagakit")
    store = await _opened(durable_store())
    refuse_record(store, TransitionKind.COMPENSATION_STARTED, 0, after=False, message="timed out")
    refuse_record(store, TransitionKind.SAGA_FINISHED, after=False, message="timed out")
    calls.clear()
    with pytest.raises(StoreError, match="timed out") as raised:
        await SagaOrchestrator(store).execute(uf_order("a"), saga_id="uf-left")
    await store.close()
    said = [r.getMessage() for r in caplog.records] + [
        note for e in _chain(raised.value) for note in getattr(e, "__notes__", ())
    ]
    wrong = ("undo those steps by hand", "ends FAILED", "ended FAILED")
    assert not [text for text in said if any(w in text for w in wrong)], said
    unrecorded = "could not record that the compensation of step"
    [told] = [r for r in caplog.records if unrecorded in r.getMessage()]
    assert told.levelno == logging.WARNING
    assert "left for recovery" in told.getMessage()
    assert any("left for recovery" in note for note in raised.value.__notes__)
    meta = await _logged(durable_store, "uf-left")
    assert meta is not None
    assert meta.finished_at is None  # what the message says: still running
    recovering = await _opened(durable_store())
    try:
        [outcome] = await SagaOrchestrator(recovering).recover()
    finally:
        await recovering.close()
    assert outcome.status is SagaStatus.COMPENSATED
    assert calls == ["take a", "untake a"]  # undone once, by recovery


@saga(name="uf_single")
def uf_single(account: str):  # type: ignore[no-untyped-def]
    yield uf_take(account)


async def test_an_end_the_log_could_not_record_is_told_and_left_to_recovery(
    durable_store: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    # The saga ran to its end, but the log refused to record it (a connection lost for
    # good, a disk full): execute() raised the bare StoreError and only an INFO
    # "saga_stopped" record told of it; nothing said that the saga is left for recovery,
    # nor how its caller learns how it ends.
    caplog.set_level(logging.INFO, logger="sagakit")
    store = await _opened(durable_store())
    refuse_record(store, TransitionKind.SAGA_FINISHED, after=False, message="the disk is full")
    calls.clear()
    with pytest.raises(StoreError, match="the disk is full") as raised:
        await SagaOrchestrator(store).execute(uf_single("a"), saga_id="uf-end")
    await store.close()
    [told] = [r for r in caplog.records if "could not record" in r.getMessage()]
    message = told.getMessage()
    assert told.levelno == logging.WARNING
    assert "uf-end" in message
    assert "completed" in message
    assert "StoreError: the disk is full" in message
    assert "left for recovery" in message
    [note] = raised.value.__notes__
    assert "left for recovery" in note
    assert "get_saga('uf-end')" in note
    recovering = await _opened(durable_store())
    try:
        [outcome] = await SagaOrchestrator(recovering).recover()
    finally:
        await recovering.close()
    assert outcome.status is SagaStatus.COMPLETED
    assert calls == ["take a"]  # as the message says: finished from the log, not run again


async def test_a_cancelled_run_whose_end_the_log_could_not_record_is_told_once(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from sagakit import SQLiteStore

    entered = asyncio.Event()

    @step
    async def uf_wait() -> None:
        entered.set()
        await asyncio.Event().wait()

    @saga(name="uf_waiting")
    def uf_waiting():  # type: ignore[no-untyped-def]
        yield uf_wait()

    caplog.set_level(logging.WARNING, logger="sagakit")
    store = SQLiteStore(tmp_path / "sagas.db")
    refuse_record(store, TransitionKind.SAGA_FINISHED, after=False, message="the disk is full")
    run = asyncio.create_task(SagaOrchestrator(store).execute(uf_waiting(), saga_id="uf-cut"))
    await entered.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await store.close()
    told = [r.getMessage() for r in caplog.records if "the disk is full" in r.getMessage()]
    assert len(told) == 1, told
    assert "left for recovery" in told[0]
