"""Logging on the "sagakit" logger and listener hooks: one record per state change."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import subprocess
import sys
import textwrap
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    CompensationFailed,
    Retry,
    SagaDefinition,
    SagaOrchestrator,
    SQLiteStore,
    StepFailed,
    Transition,
    TransitionKind,
    saga,
    step,
)
from sagakit.stores import MemoryStore
from sagakit.testing import FaultInjector, InstantSleep, SagaRecorder

K = TransitionKind


@step
async def reserve(item: str) -> str:
    return f"reserved {item}"


@reserve.compensate
async def release(item: str) -> None:
    return None


@step(retry=Retry(attempts=2, backoff=0))
async def ship(item: str) -> None:
    return None


@saga(name="observability.order")
def order(item: str) -> Any:
    yield reserve(item)
    yield ship(item)


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "sagakit"]


@pytest.mark.asyncio
async def test_one_structured_record_per_transition_at_fitting_levels(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="sagakit")
    recorder = SagaRecorder()
    orchestrator = SagaOrchestrator(listeners=[recorder], sleep=InstantSleep())
    with FaultInjector().fail("ship", RuntimeError("down")), pytest.raises(StepFailed):
        await orchestrator.execute(order("book"), saga_id="o-1")
    records = _records(caplog)
    kinds = [r.transition for r in records]  # type: ignore[attr-defined]
    assert kinds == [str(t.kind) for t in recorder.transitions]  # one record per transition
    levels = {r.transition: r.levelno for r in records}  # type: ignore[attr-defined]
    assert levels == {
        "saga_started": logging.INFO,
        "step_started": logging.DEBUG,
        "step_completed": logging.DEBUG,
        "step_retrying": logging.INFO,
        "step_failed": logging.WARNING,
        "compensation_started": logging.DEBUG,
        "compensation_completed": logging.DEBUG,
        "saga_finished": logging.WARNING,  # compensated
    }
    failed = next(r for r in records if r.transition == "step_failed")  # type: ignore[attr-defined]
    assert failed.saga_id == "o-1"  # type: ignore[attr-defined]
    assert failed.saga_name == "observability.order"  # type: ignore[attr-defined]
    assert failed.step_name == "ship"  # type: ignore[attr-defined]
    assert failed.step_index == 1  # type: ignore[attr-defined]
    assert failed.attempt == 2  # type: ignore[attr-defined]
    assert failed.saga_status == "executing"  # type: ignore[attr-defined]
    assert failed.getMessage() == (
        "saga observability.order (o-1) step_failed step 1 'ship' attempt 2: RuntimeError: down"
    )
    finished = records[-1]
    assert finished.saga_status == "compensated"  # type: ignore[attr-defined]
    assert finished.step_name is None  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_a_saga_body_that_raises_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    # Regression: an exception of the saga's own code (no step failed) was in no record:
    # saga_finished said only "compensated".
    caplog.set_level(logging.INFO, logger="sagakit")

    @saga(name="observability.broken")
    def broken(item: str) -> Any:
        reservation = yield reserve(item)
        raise LookupError(f"no shelf for {reservation}")

    with pytest.raises(LookupError):
        await SagaOrchestrator().execute(broken("pen"), saga_id="o-body")
    [warned] = [r for r in _records(caplog) if "its own code" in r.getMessage()]
    assert warned.levelno == logging.WARNING
    assert warned.getMessage() == (
        "sagakit: saga observability.broken (o-body) raised in its own code, not in a step: "
        "LookupError: no shelf for reserved pen"
    )
    assert (warned.saga_id, warned.saga_name) == ("o-body", "observability.broken")  # type: ignore[attr-defined]
    caplog.clear()
    with FaultInjector().fail("ship"), pytest.raises(StepFailed):  # a step's: told as it is
        await SagaOrchestrator(sleep=InstantSleep()).execute(order("x"), saga_id="o-step")
    assert not [r for r in _records(caplog) if "its own code" in r.getMessage()]


@pytest.mark.asyncio
@pytest.mark.parametrize("swallow", [True, False], ids=["swallowed", "mid_step"])
async def test_a_cancellation_no_step_failure_tells_is_logged_once(
    caplog: pytest.LogCaptureFixture, swallow: bool
) -> None:
    # Regression: a cancellation that interrupted no step (here a step caught it and
    # returned) compensated the saga with no record saying why: saga_finished said only
    # "compensated". One that interrupts a step is told by its step_failed, as before.
    caplog.set_level(logging.INFO, logger="sagakit")
    entered = asyncio.Event()

    @step
    async def observability_wait(item: str) -> str:
        entered.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if not swallow:
                raise
        return item

    @saga(name="observability.waiting")
    def waiting(item: str) -> Any:
        yield reserve(item)
        yield observability_wait(item)

    running = asyncio.ensure_future(SagaOrchestrator().execute(waiting("x"), saga_id="o-c"))
    await entered.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    warnings = [r for r in _records(caplog) if r.levelno >= logging.WARNING]
    said = [r for r in warnings if "was cancelled while no step ran" in r.getMessage()]
    if not swallow:
        assert not said
        assert "step_failed" in warnings[0].getMessage()
        return
    [warned] = said
    assert warned.levelno == logging.WARNING
    assert warned.getMessage() == (
        "sagakit: saga observability.waiting (o-c) was cancelled while no step ran (between "
        "steps, or a step caught the cancellation and returned); its completed steps are "
        "compensated"
    )
    assert (warned.saga_id, warned.saga_name) == ("o-c", "observability.waiting")  # type: ignore[attr-defined]
    assert warnings[-1].getMessage() == "saga observability.waiting (o-c) saga_finished compensated"


@pytest.mark.asyncio
async def test_compensation_failure_is_an_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sagakit")
    faults = FaultInjector().fail("ship").fail_compensation("reserve", OSError("ledger"))
    with faults, pytest.raises(CompensationFailed):
        await SagaOrchestrator(sleep=InstantSleep()).execute(order("x"), saga_id="o-2")
    by_kind = {(r.transition, r.levelno) for r in _records(caplog)}  # type: ignore[attr-defined]
    assert ("compensation_retrying", logging.WARNING) in by_kind
    assert ("compensation_failed", logging.ERROR) in by_kind
    assert ("saga_finished", logging.ERROR) in by_kind  # FAILED
    # DEBUG transitions are neither built nor logged at INFO
    assert not any(r.levelno == logging.DEBUG for r in _records(caplog))


@pytest.mark.asyncio
async def test_a_completed_saga_logs_start_and_finish_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sagakit")
    await SagaOrchestrator().execute(order("x"), saga_id="o-3")
    assert [(r.levelname, r.getMessage()) for r in _records(caplog)] == [
        ("INFO", "saga observability.order (o-3) saga_started"),
        ("INFO", "saga observability.order (o-3) saga_finished completed"),
    ]


@pytest.mark.asyncio
async def test_listeners_sync_and_async_see_every_transition_in_order() -> None:
    seen_sync: list[TransitionKind] = []
    seen_async: list[TransitionKind] = []

    def sync_listener(transition: Transition) -> None:
        seen_sync.append(transition.kind)

    async def async_listener(transition: Transition) -> None:
        seen_async.append(transition.kind)

    orchestrator = SagaOrchestrator(listeners=[sync_listener])
    orchestrator.add_listener(async_listener)
    await orchestrator.execute(order("x"))
    expected = [
        K.SAGA_STARTED,
        K.STEP_STARTED,
        K.STEP_COMPLETED,
        K.STEP_STARTED,
        K.STEP_COMPLETED,
        K.SAGA_FINISHED,
    ]
    assert seen_sync == expected
    assert seen_async == expected
    orchestrator.remove_listener(sync_listener)
    await orchestrator.execute(order("y"))
    assert len(seen_sync) == 6
    assert len(seen_async) == 12


@pytest.mark.asyncio
async def test_a_listener_removed_mid_run_hears_that_run_to_its_end_and_no_other() -> None:
    heard: list[tuple[str, TransitionKind]] = []
    gate = asyncio.Event()

    def listener(transition: Transition) -> None:
        heard.append((transition.saga_id, transition.kind))

    @step
    async def held() -> None:
        await gate.wait()

    orchestrator = SagaOrchestrator(listeners=[listener])
    task = asyncio.create_task(orchestrator.execute(SagaDefinition("first").add_step(held())))
    await asyncio.sleep(0)
    orchestrator.remove_listener(listener)
    gate.set()
    await task
    await orchestrator.execute(SagaDefinition("second").add_step(held()))
    assert heard[-1] == ("first", TransitionKind.SAGA_FINISHED)  # its whole run
    assert {saga_id for saga_id, _ in heard} == {"first"}  # but no run begun after
    with pytest.raises(ValueError, match="is not a listener of this orchestrator"):
        orchestrator.remove_listener(listener)


@pytest.mark.asyncio
async def test_a_listener_removed_while_the_run_begins_still_hears_every_step() -> None:
    # Removed while the store records the run's beginning (an await, on a durable store):
    # the run was started with it, so it hears every transition, its steps' included.
    heard: list[TransitionKind] = []
    beginning = asyncio.Event()
    go_on = asyncio.Event()

    class SlowToBegin(MemoryStore):
        async def begin(self, run: Any) -> Any:
            beginning.set()
            await go_on.wait()
            return await super().begin(run)

    def listener(transition: Transition) -> None:
        heard.append(transition.kind)

    orchestrator = SagaOrchestrator(SlowToBegin(), listeners=[listener])
    task = asyncio.create_task(orchestrator.execute(order("x")))
    await beginning.wait()
    orchestrator.remove_listener(listener)
    go_on.set()
    await task
    assert heard == [
        K.SAGA_STARTED,
        K.STEP_STARTED,
        K.STEP_COMPLETED,
        K.STEP_STARTED,
        K.STEP_COMPLETED,
        K.SAGA_FINISHED,
    ]


@pytest.mark.asyncio
async def test_a_raising_listener_never_breaks_the_saga_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="sagakit")
    recorder = SagaRecorder()

    def broken(transition: Transition) -> None:
        raise ValueError(f"listener broke on {transition.kind}")

    async def broken_async(transition: Transition) -> None:
        raise KeyError("async listener broke")

    orchestrator = SagaOrchestrator(listeners=[broken, broken_async, recorder])
    assert await orchestrator.execute(order("x"), saga_id="o-4") == ["reserved x"]
    recorder.assert_status("completed")  # later listeners still called
    errors = [r for r in _records(caplog) if "raised on" in r.getMessage()]
    assert len(errors) == 12  # two listeners x six transitions
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], ValueError)
    assert errors[0].saga_id == "o-4"  # type: ignore[attr-defined]
    # the same structured fields as every other sagakit record, so one formatter fits all
    step_error = next(r for r in errors if r.transition == "step_started")  # type: ignore[attr-defined]
    assert step_error.step_name == "reserve"  # type: ignore[attr-defined]
    assert step_error.step_index == 0  # type: ignore[attr-defined]
    assert step_error.attempt == 1  # type: ignore[attr-defined]
    assert step_error.saga_status == "executing"  # type: ignore[attr-defined]
    assert "the saga goes on" in errors[0].getMessage()
    assert any(isinstance(r.exc_info[1], KeyError) for r in errors if r.exc_info)


@pytest.mark.asyncio
async def test_a_listener_raising_its_own_cancellation_is_logged_not_a_cancelled_saga(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # It awaited a future someone else cancelled: the saga's task was never cancelled.
    # That CancelledError compensated the saga and came out of execute(), which a caller
    # never cancelled then had to take for its own cancellation.
    caplog.set_level(logging.ERROR, logger="sagakit")

    async def awaits_a_cancelled_future(transition: Transition) -> None:
        if transition.kind is K.STEP_COMPLETED:
            gone = asyncio.get_running_loop().create_future()
            gone.cancel()
            await gone

    recorder = SagaRecorder()
    orchestrator = SagaOrchestrator(listeners=[awaits_a_cancelled_future, recorder])
    assert await orchestrator.execute(order("x"), saga_id="o-c") == ["reserved x"]
    recorder.assert_status("completed")
    errors = [r for r in _records(caplog) if "raised on" in r.getMessage()]
    assert len(errors) == 2  # a step_completed of each step
    assert all(r.exc_info and isinstance(r.exc_info[1], asyncio.CancelledError) for r in errors)


@pytest.mark.asyncio
async def test_a_listeners_own_cancellation_in_a_task_cancelled_before_is_not_the_sagas(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The task caught a cancellation before the saga started, without uncancel(): its
    # cancelling() stays 1. Only a rise since the saga started is the saga's cancellation;
    # tell() took any cancelling() > 0 for one and cancelled the saga.
    caplog.set_level(logging.ERROR, logger="sagakit")

    async def awaits_a_cancelled_future(transition: Transition) -> None:
        if transition.kind is K.STEP_COMPLETED:
            gone = asyncio.get_running_loop().create_future()
            gone.cancel()
            await gone

    async def caller() -> list[str]:
        me = asyncio.current_task()
        assert me is not None
        me.cancel()
        with contextlib.suppress(asyncio.CancelledError):  # caught, not uncancelled
            await asyncio.sleep(0)
        assert me.cancelling() == 1
        recorder = SagaRecorder()
        orchestrator = SagaOrchestrator(listeners=[awaits_a_cancelled_future, recorder])
        result: list[str] = await orchestrator.execute(order("x"), saga_id="o-cb")
        recorder.assert_status("completed")
        return result

    assert await asyncio.create_task(caller()) == ["reserved x"]
    errors = [r for r in _records(caplog) if "raised on" in r.getMessage()]
    assert len(errors) == 2  # a step_completed of each step
    assert all(r.exc_info and isinstance(r.exc_info[1], asyncio.CancelledError) for r in errors)


@pytest.mark.asyncio
async def test_a_cancelled_saga_still_stops_while_a_listener_is_awaited() -> None:
    # The other side: the task itself cancelled while a listener awaits goes on as a
    # cancellation (compensated, CancelledError raised).
    entered = asyncio.Event()

    async def slow(transition: Transition) -> None:
        if transition.kind is K.STEP_COMPLETED:
            entered.set()
            await asyncio.sleep(10)

    recorder = SagaRecorder()
    orchestrator = SagaOrchestrator(listeners=[slow, recorder])
    running = asyncio.ensure_future(orchestrator.execute(order("x"), saga_id="o-d"))
    await entered.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    recorder.assert_status("compensated")


@pytest.mark.asyncio
@pytest.mark.parametrize("durable", [False, True], ids=["memory", "sqlite"])
async def test_a_cancellation_while_a_listener_is_awaited_is_heard_by_the_later_listeners(
    durable: bool, tmp_path: Path
) -> None:
    # The saga's task is cancelled while the first listener hears the last step's
    # completion: the second listener still hears it, and what follows (a durable store
    # tells the saga's end together with it: the end too), before the cancellation goes on.
    entered = asyncio.Event()

    async def slow(transition: Transition) -> None:
        if transition.kind is K.STEP_COMPLETED and transition.step_name == "ship":
            entered.set()
            await asyncio.Event().wait()  # until cancelled

    heard: list[tuple[TransitionKind, str | None, str]] = []

    def later(transition: Transition) -> None:
        heard.append((transition.kind, transition.step_name, transition.status))

    store = SQLiteStore(tmp_path / "sagas.db") if durable else MemoryStore()
    async with SagaOrchestrator(store, listeners=[slow, later]) as orchestrator:
        running = asyncio.ensure_future(orchestrator.execute(order("x"), saga_id="o-e"))
        await entered.wait()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    if durable:  # its end was recorded with the step's completion
        after = [(K.SAGA_FINISHED, None, "completed")]
    else:  # cancelled, it compensates
        after = [
            (K.COMPENSATION_STARTED, "reserve", "compensating"),
            (K.COMPENSATION_COMPLETED, "reserve", "compensating"),
            (K.SAGA_FINISHED, None, "compensated"),
        ]
    assert heard == [
        (K.SAGA_STARTED, None, "executing"),
        (K.STEP_STARTED, "reserve", "executing"),
        (K.STEP_COMPLETED, "reserve", "executing"),
        (K.STEP_STARTED, "ship", "executing"),
        (K.STEP_COMPLETED, "ship", "executing"),  # heard as slow() was cancelled
        *after,
    ]


def test_nothing_is_printed_without_logging_configured() -> None:
    code = textwrap.dedent(
        """
        import asyncio
        from sagakit import SagaOrchestrator, StepFailed, saga, step

        @step
        async def reserve(item):
            return None

        @reserve.compensate
        async def release(item):
            raise RuntimeError("cannot release")

        @step
        async def ship(item):
            raise RuntimeError("down")

        @saga
        def order(item):
            return [reserve(item), ship(item)]

        async def main():
            try:
                await SagaOrchestrator(listeners=[lambda t: 1 / 0]).execute(order("x"))
            except Exception:
                pass

        asyncio.run(main())
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == ""


@pytest.mark.asyncio
async def test_one_formatter_can_use_the_structured_fields_of_every_record() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        logging.Formatter("%(levelname)s %(transition)s saga_id=%(saga_id)s step=%(step_name)s")
    )
    log = logging.getLogger("sagakit")
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.DEBUG)
    try:
        faults = FaultInjector().fail("ship")
        with faults, pytest.raises(StepFailed):
            await SagaOrchestrator(listeners=[lambda t: 1 / 0]).execute(order("x"), saga_id="f-1")
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    lines = stream.getvalue().splitlines()
    assert "WARNING step_failed saga_id=f-1 step=ship" in lines
    assert "ERROR step_failed saga_id=f-1 step=ship" in lines  # the listener's error


@pytest.mark.asyncio
async def test_records_of_recovery_carry_the_structured_fields_too(tmp_path: Any) -> None:
    # Regression: the records of recovery, workers and stores had none of the fields, so
    # the formatter the docs show failed on them ("--- Logging error ---", record lost).
    from sagakit import SQLiteStore
    from sagakit.testing import SimulatedCrash, simulate_restart

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        logging.Formatter(
            "%(levelname)s %(transition)s saga_id=%(saga_id)s saga=%(saga_name)s "
            "status=%(saga_status)s step=%(step_name)s %(step_index)s %(attempt)s"
        )
    )
    handler.handleError = lambda record: pytest.fail(f"a record lacked a field: {record}")
    log = logging.getLogger("sagakit")
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    store = SQLiteStore(tmp_path / "sagas.db")
    try:
        built = SagaDefinition("built-1").add_step(reserve("x")).add_step(ship("x"))
        with FaultInjector().crash("ship"), pytest.raises(SimulatedCrash):
            await SagaOrchestrator(store).execute(built)
        await simulate_restart(store)
        async with SagaOrchestrator(SQLiteStore(tmp_path / "sagas.db")) as orchestrator:
            [outcome] = await orchestrator.recover()
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        await store.close()
    assert outcome.action == "dead_lettered"
    assert stream.getvalue().splitlines()[-1] == (
        "ERROR None saga_id=built-1 saga=built-1 status=None step=None None None"
    )


class _Opaque:
    """A listener object whose repr() raises (a proxy, say)."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr here")

    def __call__(self, transition: Transition) -> None:
        raise ValueError("listener broke")


@pytest.mark.asyncio
async def test_a_raising_listener_whose_repr_raises_is_still_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The "listener raised" record formatted the listener with %r: its repr() raising
    # made logging print its own error instead of the record.
    caplog.set_level(logging.ERROR, logger="sagakit")
    orchestrator = SagaOrchestrator(listeners=[_Opaque()])
    assert await orchestrator.execute(order("y"), saga_id="o-5") == ["reserved y"]
    messages = [r.getMessage() for r in _records(caplog) if "raised on" in r.getMessage()]
    assert messages
    assert messages[0].startswith("sagakit listener <_Opaque object> raised on saga_started")


def _about(caplog: pytest.LogCaptureFixture, text: str) -> logging.LogRecord:
    [record] = [r for r in _records(caplog) if text in r.getMessage()]
    return record


@pytest.mark.asyncio
async def test_records_about_one_saga_outside_its_transitions_carry_its_id(
    caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    # Regression: the records of a worker finishing (or failing to finish) a saga, of a
    # store parking one, and of a saga's generator failing to close named the saga in
    # their message only: their saga_id and saga_name fields were None, so a handler
    # filtering or indexing by saga_id lost them.
    from sagakit import SQLiteStore
    from sagakit.testing import SimulatedCrash, simulate_restart

    caplog.set_level(logging.INFO, logger="sagakit")

    @saga(name="observability.unclosable")
    def unclosable(item: str) -> Any:
        try:
            yield reserve(item)
            yield ship(item)
        finally:
            raise RuntimeError("cleanup broke")

    with FaultInjector().fail(ship, ValueError("no")), pytest.raises(StepFailed):
        await SagaOrchestrator().execute(unclosable("x"), saga_id="u-1")
    record = _about(caplog, "while being closed")
    assert (record.saga_id, record.saga_name) == ("u-1", "observability.unclosable")  # type: ignore[attr-defined]

    path = tmp_path / "sagas.db"
    store = SQLiteStore(path)
    with FaultInjector().crash(ship), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).execute(order("x"), saga_id="p-1")
    await simulate_restart(store)
    await store.close()
    store = SQLiteStore(path)
    with FaultInjector().crash(ship), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).recover()  # its first recovery dies too
    await simulate_restart(store)
    await store.close()
    store = SQLiteStore(path)
    try:
        assert await SagaOrchestrator(store).recover(max_attempts=1) == []  # parked
    finally:
        await store.close()
    record = _about(caplog, "parked saga observability.order (p-1)")
    assert (record.saga_id, record.saga_name) == ("p-1", "observability.order")  # type: ignore[attr-defined]

    caplog.clear()
    store = SQLiteStore(tmp_path / "worker.db")
    with FaultInjector().crash(ship), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).execute(order("x"), saga_id="w-2")
    await simulate_restart(store)
    await store.close()
    stop = asyncio.Event()

    def stop_when_finished(transition: Transition) -> None:
        if transition.kind is K.SAGA_FINISHED:
            stop.set()

    orchestrator = SagaOrchestrator(
        SQLiteStore(tmp_path / "worker.db"), listeners=[stop_when_finished]
    )
    async with orchestrator:
        await orchestrator.run_worker(poll_interval=0.01, handle_signals=False, stop=stop)
    record = _about(caplog, "worker finished")
    assert (record.saga_id, record.saga_name) == ("w-2", "observability.order")  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_a_saga_id_with_a_line_break_cannot_forge_a_log_line() -> None:
    # Regression: the id (any text, often from a request) was put in the message as it
    # was, so an id holding a line break wrote a second, made-up record ("completed")
    # into the log, and an escape sequence went to the terminal as it was.
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("sagakit")
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    forged = "o-1) saga_finished completed\nINFO saga x (o-1"
    heard: list[Transition] = []
    try:
        with FaultInjector().fail("ship", RuntimeError("red \x1b[31m")), pytest.raises(StepFailed):
            await SagaOrchestrator(listeners=[heard.append]).execute(order("x"), saga_id=forged)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    lines = stream.getvalue().splitlines()
    shown = "o-1) saga_finished completed\\nINFO saga x (o-1"
    assert lines == [
        f"INFO saga observability.order ({shown}) saga_started",
        f"INFO saga observability.order ({shown}) step_retrying step 1 'ship': "
        "RuntimeError: red \\x1b[31m",
        f"WARNING saga observability.order ({shown}) step_failed step 1 'ship' attempt 2: "
        "RuntimeError: red \\x1b[31m",
        f"WARNING saga observability.order ({shown}) saga_finished compensated",
    ]
    assert {t.saga_id for t in heard} == {forged}  # the id itself is unchanged


@pytest.mark.asyncio
async def test_the_structured_fields_keep_the_text_a_message_escapes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sagakit")
    await SagaOrchestrator().execute(order("x"), saga_id="é 中\t1")
    (started, *_) = _records(caplog)
    assert started.getMessage() == "saga observability.order (é 中\\t1) saga_started"
    assert started.saga_id == "é 中\t1"  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_a_listener_raising_while_compensating_is_logged_without_the_sagas_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The listener is called while sagakit handles the step's error: its own error must
    # not be logged as raised "during handling of" that one (a huge, misleading record).
    caplog.set_level(logging.ERROR, logger="sagakit")

    def broken(transition: Transition) -> None:
        if transition.status != "executing":
            raise ValueError(f"listener broke on {transition.kind}")

    def broken_in_its_handler(transition: Transition) -> None:
        if transition.status != "executing":
            try:
                raise KeyError("listener's own lookup")
            except KeyError:
                raise ValueError(f"listener broke on {transition.kind}")  # noqa: B904

    orchestrator = SagaOrchestrator(listeners=[broken, broken_in_its_handler])
    step_error = RuntimeError("step exploded " + "x" * 50)
    with FaultInjector().fail("ship", step_error), pytest.raises(StepFailed) as failed:
        await orchestrator.execute(order("book"), saga_id="o-ctx")
    errors = [r for r in _records(caplog) if "raised on" in r.getMessage()]
    assert {r.transition for r in errors} >= {"compensation_started", "saga_finished"}  # type: ignore[attr-defined]
    formatter = logging.Formatter()
    for record in errors:
        assert record.exc_info is not None
        text = formatter.format(record)
        assert "listener broke on" in text
        assert "step exploded" not in text
        assert "StepFailed" not in text
        # as any handler formatting the record's exception itself shows it
        shown = "".join(traceback.format_exception(record.exc_info[1]))
        assert "step exploded" not in shown
        assert "StepFailed" not in shown
    for record in errors[1::2]:  # the context the listener itself created is kept
        text = formatter.format(record)
        assert text.count("During handling of the above exception") == 1
        assert "listener's own lookup" in text
    assert not step_error.__suppress_context__  # the saga's errors are left as they were
    assert failed.value.__cause__ is step_error


def _raises_from_its_own_error(transition: Transition) -> None:
    try:
        raise KeyError("listener's own lookup")
    except KeyError as lookup:
        raise ValueError(f"listener broke on {transition.kind}") from lookup


async def _cancelled_on_its_own(transition: Transition) -> None:
    raise asyncio.CancelledError(f"listener broke on {transition.kind}")  # not the saga's


@pytest.mark.asyncio
@pytest.mark.parametrize("listener", [_raises_from_its_own_error, _cancelled_on_its_own])
async def test_a_listeners_chained_or_cancelled_error_is_logged_without_the_sagas_error(
    caplog: pytest.LogCaptureFixture, listener: Callable[[Transition], Any]
) -> None:
    # The cause a listener gives, and a cancellation of its own, are unchained as well.
    caplog.set_level(logging.ERROR, logger="sagakit")
    orchestrator = SagaOrchestrator(listeners=[listener])
    with FaultInjector().fail("ship", RuntimeError("step exploded")), pytest.raises(StepFailed):
        await orchestrator.execute(order("book"), saga_id="o-chain")
    errors = [r for r in _records(caplog) if "raised on" in r.getMessage()]
    assert {r.transition for r in errors} >= {"compensation_started", "saga_finished"}  # type: ignore[attr-defined]
    for record in errors:
        assert record.exc_info is not None
        shown = "".join(traceback.format_exception(record.exc_info[1]))
        assert "listener broke on" in shown
        assert "step exploded" not in shown
