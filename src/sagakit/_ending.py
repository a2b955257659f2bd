"""How a run ends: its end recorded and told (finished, stopped unfinished, ended by a
fatal error), or, after a simulated crash or with its event loop closed, nothing more
recorded, only its tracers told.

Methods of :class:`~sagakit._orchestrator.SagaOrchestrator`, defined here (its class body
names them): called as ``self._finish(...)``, at the cost of a method defined there."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, NoReturn

from ._hooks import SimulatedCrash, crash_process, note_crash
from ._members import (
    ON_SAGA_FINISHED,
    ON_SAGA_STOPPED,
    SAGA_COMPENSATING,
    SAGA_EXECUTING,
    SAGA_FAILED,
    STEP_FAILED,
    STEP_RUNNING,
)
from ._notify import level_of, logger, tell
from ._recording import _LEFT_FOR_RECOVERY, _NOTHING_LOGGED
from ._runs import ABANDONED, LOOP_CLOSED, NOT_COMPENSATED, SagaRun, StepRun, describe_error
from ._tracebacks import hide_from_pytest
from .exceptions import LeaseLost
from .status import SagaStatus
from .stores import SagaStore
from .transitions import TransitionKind, make_transition

if TYPE_CHECKING:
    from ._orchestrator import SagaOrchestrator

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest


def _end_running(records: list[StepRun], error: str) -> None:
    """Mark the last of ``records`` ``FAILED`` with ``error`` if the run left it running
    (no transition will end it)."""
    if records and records[-1].status is STEP_RUNNING:
        records[-1].status = STEP_FAILED
        records[-1].error = error


def _chain(pending: BaseException, error: BaseException) -> None:
    """Make ``error`` (raised while ``pending`` was on its way out, and not raised in
    its place) the ``__context__`` of ``pending``, before what was there."""
    if error.__context__ is pending or error.__context__ is None:
        error.__context__ = pending.__context__
    pending.__context__ = error


def _finish_unawaited(store: SagaStore, run: SagaRun) -> bool:
    """``store.finish(run)`` for a run whose event loop is closed (see
    ``SagaOrchestrator._abandoned``), run to its end here, without a loop: a store that is
    not durable moves the run to its history at once, waiting on nothing. One that waits
    on something (a lock, a connection) cannot go on: it is closed there, and the run
    stays running in it, which is logged, as is an error it raises (never raised: the
    garbage collector is closing the run). Returns whether the store ended the run."""
    steps = store.finish(run).__await__()
    try:
        for _ in range(100):  # bare yields (asyncio.sleep(0)) ask only for a turn
            if steps.send(None) is not None:
                break
    except StopIteration:
        return True
    except Exception as error:
        why = f"its finish() raised {describe_error(error)}"
    else:
        getattr(steps, "close", lambda: None)()
        why = "its finish() waited, and nothing can wait once the loop is closed"
    _warn(
        run,
        "sagakit: saga %s (%s), abandoned (%s), stays running in %r: %s",
        run.name,
        run.id,
        LOOP_CLOSED,
        store,
        why,
    )
    return False


def _warn(run: SagaRun, message: str, *args: object) -> None:
    """Log ``message`` at WARNING with the run's saga id and name as record fields."""
    logger.warning(message, *args, extra={"saga_id": run.id, "saga_name": run.name})


def _warn_unless_released(run: SagaRun, error: Exception, message: str, *args: object) -> None:
    """:func:`_warn`, but at DEBUG when ``error`` is the :class:`LeaseLost` of a lease this
    store released (a stopping worker, an exiting process): a handover, not a failure,
    which the run's ``SAGA_STOPPED`` record (at INFO) tells once."""
    released = isinstance(error, LeaseLost) and error.released
    level = logging.DEBUG if released else logging.WARNING
    logger.log(level, message, *args, extra={"saga_id": run.id, "saga_name": run.name})


async def _tell_fatal(
    self: SagaOrchestrator,
    run: SagaRun,
    kind: TransitionKind,
    record: StepRun,
    fatal: BaseException,
) -> None:
    """Tell ``kind`` (``STEP_FAILED``, ``COMPENSATION_FAILED``) for ``record``, which
    ``fatal`` (``KeyboardInterrupt``, ``SystemExit``) ended, its error ``fatal``
    itself. A durable log writes ``record`` with the run's end, in the same commit
    (see ``unended``: no write of its own delays ``fatal``, and no crash between two
    leaves the saga half ended), so it is told once that end commits, as a staged
    transition is (not at all if the end cannot be recorded: ``SAGA_STOPPED``)."""
    level = level_of(kind, run.status)
    if not (run.listeners or logger.isEnabledFor(level)):
        return
    transition = make_transition(
        kind, run, run.status, record, record.attempts, None, (), fatal, record.duration
    )
    if self._durable:
        self._held.setdefault(run, []).append((level, transition))
        return
    try:
        await tell(run.listeners, level, transition, run)
    except asyncio.CancelledError as cancelled:  # told to all: fatal is raised, not it
        _chain(fatal, cancelled)


def _crashed(self: SagaOrchestrator, run: SagaRun, crash: SimulatedCrash) -> None:
    """A simulated crash: "the process died", so what the run holds untold (staged,
    never committed) is dropped, and nothing more is recorded or told. Only the
    tracers (and test recorders) among its listeners hear of it (``_sagakit_crashed``):
    instrumentation of this process, which a real crash takes with it, ends the run's
    spans and restores the context it set, rather than hold them open for good."""
    self._held.pop(run, None)
    note_crash(self._store, run.id)  # for the error of running it again here (crash_hint)
    if crash.process:  # the whole process: every saga of the store stops at its next write
        crash_process(self._store, crash)
    self._tell_instruments(run, "the simulated crash", "_sagakit_crashed", crash)


def _tell_instruments(
    self: SagaOrchestrator, run: SagaRun, what: str, hook: str, *args: object
) -> None:
    """Call ``hook(run.id, *args, run.number)`` of the listeners that have it
    (tracers, test recorders): ``run`` stops here, ``what`` stopped it, and no
    transition will tell them. One that raises is logged, never raised."""
    for listener in run.listeners:
        told = getattr(listener, hook, None)
        if told is None:
            continue
        try:
            told(run.id, *args, run.number)
        except Exception as error:  # a tracer's bug must not replace what stopped it
            _warn(
                run,
                "sagakit: listener %r failed on %s of saga %s: %s",
                listener,
                what,
                run.id,
                describe_error(error),
            )


def _abandoned(self: SagaOrchestrator, run: SagaRun) -> None:
    """The run's coroutine is being closed (``GeneratorExit``): its task was destroyed
    pending, with the event loop it ran in, and the garbage collector closes it. It
    can await nothing more, so, as after a crash, nothing more is run, recorded or
    told: the log shows the saga as it was, for recovery (a ``KeyboardInterrupt``
    instead ends it ``FAILED``, never to be recovered). A store that is not durable
    (the default in-memory one, or one of the user's), which nothing recovers, ends it
    ``FAILED`` (not compensated) there and then, rather than keep it running for good:
    its ``finish()`` is run without an event loop (see :func:`_finish_unawaited`).
    Then its tracers and test recorders hear of its end as the store left it
    (``_sagakit_abandoned``, with a ``SAGA_FINISHED`` ``FAILED`` where the store ended
    it, else a ``SAGA_STOPPED`` with the status the log keeps)."""
    self._held.pop(run, None)
    status = run.status
    ended = False
    if self._durable:
        # A store whose runs' owner is this live process (SQLite) hands the saga
        # over to recovery, which would otherwise not take it until the process exits.
        abandoned = getattr(self._store, "_abandoned", None)
        if abandoned is not None:
            abandoned(run)
    else:
        _end_running(run.steps, f"interrupted: {LOOP_CLOSED}")
        _end_running(run.compensations, f"interrupted: {LOOP_CLOSED}")
        run.status = SAGA_FAILED
        if run.error is None:
            run.error = ABANDONED + NOT_COMPENSATED
        run.finished_mono = run.updated_mono = time.monotonic()  # (what loop.time() reads)
        memory = self._memory
        if memory is not None:
            memory._finish_now(run)
            ended = True
        else:
            ended = _finish_unawaited(self._store, run)
    kind = ON_SAGA_FINISHED if ended else ON_SAGA_STOPPED
    shown = run.status if ended else status  # (a store that could not end it keeps it)
    end = make_transition(kind, run, shown, None, 0, None, (), None, None)
    self._tell_instruments(run, "the closed event loop", "_sagakit_abandoned", end)


async def _stopped(self: SagaOrchestrator, run: SagaRun, why: BaseException) -> None:
    """The run stops here unfinished (``why``: ``LeaseLost``, or a cancelled recovery
    handing it back): tell ``SAGA_STOPPED``, record nothing, let the store drop it."""
    try:
        await self._tell_stopped(run, run.status, why)
    finally:
        await self._store.finish(run)


async def _tell_stopped(
    self: SagaOrchestrator, run: SagaRun, status: SagaStatus, why: BaseException
) -> None:
    """Tell ``SAGA_STOPPED`` (``status``: the run's as the log may still have it); what
    the run holds untold is dropped: it may never have committed."""
    self._held.pop(run, None)
    transition = make_transition(ON_SAGA_STOPPED, run, status, None, 0, None, (), why, None)
    if isinstance(why, LeaseLost):
        why._stop_told = run.id  # recovery and workers need not tell it again
    await tell(run.listeners, level_of(ON_SAGA_STOPPED, status), transition, run)


async def _finish(self: SagaOrchestrator, run: SagaRun) -> None:
    """Record the end of a run that did not complete and move it to history."""
    loop = asyncio.get_running_loop()
    watchdog = self._watchdog  # self._watch(loop), without the call
    if watchdog is None or watchdog.loop is not loop:
        watchdog = self._use_loop(loop)
    run.finished_mono = run.updated_mono = watchdog.now()
    if run.status is SAGA_EXECUTING or run.status is SAGA_COMPENSATING:
        run.status = SAGA_FAILED
    # What _emit() checks first, without its coroutine when it has nothing to do.
    await self._end(
        run,
        self._durable
        or bool(run.listeners)
        or logger.isEnabledFor(level_of(ON_SAGA_FINISHED, run.status)),
    )


async def _end(self: SagaOrchestrator, run: SagaRun, announce: bool) -> None:
    """Move the ended ``run`` to the store's history and tell ``SAGA_FINISHED`` (if
    ``announce``): a durable store records the end first; any other store has the
    run in its history before the listeners hear of its end, as a durable one does
    once the end is recorded."""
    if not self._durable:
        memory = self._memory
        try:
            if memory is not None:
                memory._finish_now(run)
            else:
                await self._store.finish(run)
        finally:
            if announce:
                await self._emit(run, ON_SAGA_FINISHED)
        return
    try:
        try:
            if announce:
                await self._emit(run, ON_SAGA_FINISHED)
        finally:
            # Even if cancelled while a listener hears of it: the run has ended.
            await self._store.finish(run)
    except SimulatedCrash as crash:  # its process died (crash(process=True)) meanwhile
        self._crashed(run, crash)
        raise


async def _finish_before(self: SagaOrchestrator, run: SagaRun, pending: BaseException) -> None:
    """:meth:`_finish` a run that ends raising ``pending`` (a cancellation,
    ``KeyboardInterrupt``): an end that cannot be recorded is logged and chained to
    ``pending`` (its ``__context__``), never raised in its place."""
    try:
        await self._finish(run)
    except Exception as unrecorded:
        notes = getattr(unrecorded, "__notes__", ())
        if not any(  # else logged already
            _LEFT_FOR_RECOVERY in note or _NOTHING_LOGGED in note for note in notes
        ):
            _warn_unless_released(
                run,
                unrecorded,
                "sagakit: the end of saga %s (%s) could not be recorded: %s",
                run.name,
                run.id,
                describe_error(unrecorded),
            )
        _chain(pending, unrecorded)


async def _raise_swallowed(
    self: SagaOrchestrator,
    run: SagaRun,
    unrecorded: Exception | None = None,
    *,
    cause: BaseException | None = None,
) -> NoReturn:
    """End ``run``, whose caller's cancellation a compensation swallowed, and raise a
    ``CancelledError`` for it: ``unrecorded`` (a write the log refused after that) and an
    end the log refuses are chained to it (``__context__``), never raised in its place;
    ``cause``: the failure the run was compensated for (its ``__cause__``)."""
    swallowed: asyncio.CancelledError | None = asyncio.CancelledError()
    assert swallowed is not None
    if unrecorded is not None:
        _chain(swallowed, unrecorded)
    if cause is not None:
        swallowed.__cause__ = cause  # as ``raise ... from cause``
    await self._finish_before(run, swallowed)
    chained = swallowed.__context__
    try:
        raise swallowed
    finally:
        if chained is not None:
            # Raised in the handler of another exception (the failure), which Python
            # makes its __context__ in place of what was chained above: put back.
            swallowed.__context__ = chained
        swallowed = cause = chained = None  # no exception kept in this frame's locals


async def _unrecorded_end(self: SagaOrchestrator, run: SagaRun, why: BaseException) -> None:
    """The run's end could not be recorded (``StoreError``, ``LeaseLost``, or the run
    was cancelled while it was written, and the store did not report it committed
    with :class:`~sagakit.stores.CommittedThenCancelled`): the log may still show it
    running, for recovery (or the new owner) to finish. Its listeners hear
    ``SAGA_STOPPED`` instead of an end the log may not have."""
    status = SAGA_COMPENSATING if run.compensations else SAGA_EXECUTING
    await self._tell_stopped(run, status, why)
