"""How a run compensates: its completed steps undone in reverse order, each compensation
under its timeout and retry policy, finished in a task of its own if the run is cancelled;
and what a compensation the saga log could not record leaves undone.

Methods of :class:`~sagakit._orchestrator.SagaOrchestrator`, defined here (its class body
names them): called as ``self._compensate(...)``, at the cost of a method defined there."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ._commands import command_line
from ._deadlines import NO_DEADLINE, _Late, claim_timeout, timeout_error
from ._ending import _end_running
from ._hooks import (
    SIMULATED_TIMEOUT,
    CrashAfter,
    FaultPlan,
    SimulatedCrash,
    crash_in,
    raised_by_step,
)
from ._members import (
    ON_COMPENSATION_COMPLETED,
    ON_COMPENSATION_FAILED,
    ON_COMPENSATION_RETRYING,
    ON_COMPENSATION_STARTED,
    ON_STEP_FAILED,
    SAGA_COMPENSATED,
    SAGA_COMPENSATING,
    SAGA_FAILED,
    STEP_COMPLETED,
    STEP_FAILED,
    STEP_RUNNING,
    STEP_TIMED_OUT,
)
from ._notify import level_of, log_unwritten, logger, unwritten_what
from ._recording import _LEFT_FOR_RECOVERY
from ._runs import (
    CANCELLED,
    NOT_COMPENSATED,
    UNRECORDED,
    UNSTARTED,
    UNSTARTED_ERROR,
    SagaRun,
    StepRun,
    cut,
    describe_error,
    events_of,
    set_running_step,
    storable_text,
)
from ._shielding import wait_out
from ._tracebacks import compensation_notes, hide_from_pytest
from .exceptions import CompensationFailed, LeaseLost, SagaDefinitionError, StepTimeout

if TYPE_CHECKING:
    from ._orchestrator import SagaOrchestrator, _Done

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest


def _cancelled_unrecorded(run: SagaRun, unrecorded: Exception) -> None:
    """Log a compensation's transition the log refused while the run was cancelled (the
    cancellation goes on, the run ends ``FAILED``). A lost lease at ``DEBUG``: the run's
    end is refused with it too, and warned once."""
    logger.log(
        logging.DEBUG if isinstance(unrecorded, LeaseLost) else logging.WARNING,
        "sagakit: saga %s (%s), cancelled, could not record its compensation: %s",
        run.name,
        run.id,
        describe_error(unrecorded),
        extra={"saga_id": run.id, "saga_name": run.name},
    )


def _gave_up(
    done: list[_Done],
    errors: list[tuple[int, str, BaseException]],
    uncompensated: list[str],
    record: StepRun,
    error: BaseException,
    go_on: bool,
) -> None:
    """Count ``record``'s compensation as failed for good with ``error``; unless
    ``go_on``, the rest of ``done`` is left uncompensated."""
    errors.append((record.index, record.name, error))
    uncompensated.append(record.name)
    if not go_on:
        uncompensated.extend(
            r.name for r, c, _ in reversed(done) if c._spec.compensation is not None
        )
        done.clear()


def _compensation_unwritten(
    self: SagaOrchestrator, run: SagaRun, unrecorded: Exception, left: list[str]
) -> None:
    """The log could not record a transition of a compensation (``unrecorded``, a
    ``StoreError``): compensating stops and the saga ends ``FAILED`` with ``left``
    uncompensated, in its error. What the operator must do depends on whether that
    end is written: told then (:meth:`_tell_undo_left`)."""
    unwritten = run.unwritten
    if unwritten is None:
        return
    run.unwritten = None
    transition, stored = unwritten
    names = ", ".join(left) or "none"
    prefix = "" if run.error is None else f"{run.error}; then "
    run.error = storable_text(
        cut(
            f"{prefix}the saga log could not record {unwritten_what(transition)} "
            f"({stored}): compensating stopped, left uncompensated: {names}"
        )
    )
    run.undo_left = (transition, stored, names, unrecorded)
    if not self._durable:  # no end to write
        self._tell_undo_left(run, None)


def _tell_undo_left(self: SagaOrchestrator, run: SagaRun, unended: BaseException | None) -> None:
    """Tell what :meth:`_compensation_unwritten` left undone, once the run's end is
    written (``unended`` ``None``; at ``ERROR``, with a note on the compensation's
    error: the operator undoes the steps) or could not be (``unended``, the end's
    error: at ``WARNING``, with a note on it: the log still shows the saga running,
    and recovery finishes it, so undoing its steps by hand would undo them twice; at
    ``DEBUG``, with no note, if this store released the lease: a handover, which the
    run's ``SAGA_STOPPED`` tells)."""
    left = run.undo_left
    if left is None:
        return
    run.undo_left = None
    transition, stored, names, unrecorded = left
    if unended is None:
        resolve = command_line("LOG", "resolve", run.id, options=("--note", "..."))
        fix = f"undo those steps by hand, then mark the saga resolved (`{resolve}`)"
        log_unwritten(
            run,
            logging.ERROR,
            transition,
            stored,
            f"compensating stopped there and the saga ends FAILED, left uncompensated: "
            f"{names}; {fix}",
        )
        note = f"sagakit: saga {run.name} ({run.id}) ended FAILED: {run.error}; {fix}"
        told = unrecorded
    elif isinstance(unended, LeaseLost) and unended.released:
        # An orderly handover, told once by the run's SAGA_STOPPED (at INFO): the
        # worker taking the saga over finishes it from what the log holds.
        log_unwritten(
            run,
            logging.DEBUG,
            transition,
            stored,
            "compensating stopped there, and this store released the saga's lease: the "
            "worker taking it over finishes it from what the log holds",
        )
        return
    else:
        log_unwritten(
            run,
            logging.WARNING,
            transition,
            stored,
            "compensating stopped there, and the saga's end could not be recorded either: "
            "the log still shows it running, left for recovery, which finishes it from "
            "what the log holds (do not undo its steps by hand); check the saga log's storage",
        )
        note = (
            f"sagakit: saga {run.name} ({run.id}) is {_LEFT_FOR_RECOVERY}: the log could not "
            f"record {unwritten_what(transition)} ({stored}), nor the saga's end; recovery "
            "finishes it from what the log holds (do not undo its steps by hand)"
        )
        told = unended
    if note not in getattr(told, "__notes__", ()):  # a store may raise one twice
        told.add_note(note)


async def _undo_cancelled(
    self: SagaOrchestrator,
    run: SagaRun,
    interrupted: StepRun | None,
    done: list[_Done],
    faults: FaultPlan | None,
    observe: bool,
) -> CompensationFailed | None:
    """A cancelled run: record the end of the step the cancellation ``interrupted``
    (``STEP_FAILED``, before anything is undone: a log that keeps it shows why the step
    ended, whatever stops the compensations), then compensate ``done``. (Cancelled
    before it started, that step ends ``"cancelled before the step started"``.)"""
    if interrupted is not None and (
        observe or logger.isEnabledFor(level_of(ON_STEP_FAILED, run.status))
    ):
        why = UNSTARTED if interrupted.error == UNSTARTED_ERROR else CANCELLED
        try:
            await self._emit(
                run,
                ON_STEP_FAILED,
                interrupted,
                interrupted.attempts,
                error=asyncio.CancelledError(why),
                duration=interrupted.duration,
            )
        except LeaseLost:
            raise  # fenced out: another worker owns the saga, nothing is undone here
        except Exception as unrecorded:  # StoreError: the run's end writes it again
            run.unwritten = None  # told here
            # At DEBUG: the run's end writes it again, and tells at WARNING if the log
            # refuses that too (one record for one failure of the log).
            logger.debug(
                "sagakit: saga %s (%s), cancelled, could not record the end of step %d: %s",
                run.name,
                run.id,
                interrupted.index,
                describe_error(unrecorded),
                extra={"saga_id": run.id, "saga_name": run.name},
            )
    return await self._compensate(run, done, None, faults, observe)


async def _compensate(
    self: SagaOrchestrator,
    run: SagaRun,
    done: list[_Done],
    trigger: BaseException | None,
    faults: FaultPlan | None,
    observe: bool,
    failed: Mapping[int, BaseException] | None = None,
    keep_going: bool = False,
) -> CompensationFailed | None:
    """Compensate ``done`` in reverse order; finish in a shielded task if cancelled (a
    nested saga's, in a task of its own from the start).

    Recovery: ``failed`` are the compensations (by step index) that failed for good
    before the crash, not run again; ``keep_going``, the run had gone on past one.
    """
    # Kept across the restart below, so failures before the cancellation still count.
    errors: list[tuple[int, str, BaseException]] = []
    uncompensated: list[str] = []
    go_on = self._continue or keep_going
    try:
        if run.parent is None:
            return await self._undo(
                run, done, trigger, faults, observe, errors, uncompensated, failed, go_on
            )
        # Nested (run by a step of another saga, or a task it started): in a task of its
        # own, to its end. The outer step's cancellation (its timeout, or the outer
        # saga's caller) would interrupt the running compensation, which the restart
        # below would then run again from its start: an external action done twice.
        task = asyncio.current_task()
        assert task is not None, "sagakit runs inside an asyncio task"
        base = task.cancelling()
        held, held_base = run.task, run.cancel_base
        undo = self._undo(run, done, trigger, faults, observe, errors, uncompensated, failed, go_on)
        ended = await wait_out(undo)
        run.task, run.cancel_base = held, held_base
        if ended.cancelled() or task.cancelling() <= base:
            outcome: CompensationFailed | None = ended.result()  # cancelled: the
            return outcome  # compensation raised it itself, restarted below
    except asyncio.CancelledError:
        # Wherever it was cancelled (in the compensation's call, telling its start,
        # waiting to retry it), its record must not stay RUNNING; the restart retries it.
        _end_running(run.compensations, "CancelledError: interrupted; compensation retried")
        undo = self._undo(run, done, trigger, faults, observe, errors, uncompensated, failed, go_on)
        rerun = await wait_out(undo)  # to its end, in its own task
        try:
            rerun.result()
        except SimulatedCrash:
            raise  # "the process died"
        except asyncio.CancelledError:
            # Cancelled again in its restart (the compensation raised it): nothing
            # restarts it now, and its record must not stay RUNNING.
            _end_running(run.compensations, "CancelledError: interrupted" + NOT_COMPENSATED)
            raise
        except Exception as unrecorded:  # not recorded: the run ends FAILED
            # Logged, not raised: the cancellation goes on. (Not chained either: the
            # frames it passes through on its way out reset its __context__.)
            _cancelled_unrecorded(run, unrecorded)
        raise
    # Nested, and cancelled while its compensations ran to their end: as after the
    # restart above, what the log refused is logged, and the cancellation raised.
    try:
        ended.result()
    except Exception as unrecorded:
        _cancelled_unrecorded(run, unrecorded)
    raise asyncio.CancelledError


async def _undo(
    self: SagaOrchestrator,
    run: SagaRun,
    done: list[_Done],
    trigger: BaseException | None,
    faults: FaultPlan | None,
    observe: bool,
    errors: list[tuple[int, str, BaseException]],
    uncompensated: list[str],
    failed: Mapping[int, BaseException] | None,
    go_on: bool,
) -> CompensationFailed | None:
    """Pop and compensate ``done`` from its end; return the failure to raise, if any.

    ``errors`` and ``uncompensated`` collect the compensations that failed for good,
    ``failed`` those that had before a crash (with ``go_on``: go on past them).
    """
    run.status = SAGA_COMPENSATING
    loop = asyncio.get_running_loop()
    watchdog = self._watchdog  # self._watch(loop), without the call
    if watchdog is None or watchdog.loop is not loop:
        watchdog = self._use_loop(loop)
    now = watchdog.now
    task = asyncio.current_task(loop)
    assert task is not None, "sagakit runs inside an asyncio task"
    if run.task is not task:  # recovering, or finishing in a shielded task
        run.task = task
        run.cancel_base = task.cancelling()
    watched = run in watchdog.runs
    watchdog.runs.add(run)
    error: BaseException | None = None
    calling: StepRun | None = None  # the compensation whose function is being called
    # The last record, left unfinished by a cancellation or a crash: the first compensation
    # run here replaces it if it is that compensation's (see below).
    records = run.compensations
    interrupted = records[-1] if records and records[-1].status is not STEP_COMPLETED else None
    run.compensating = True
    try:
        while done:
            step_record, call, result = done[-1]
            spec = call._spec
            compensation = spec.compensation
            if failed is not None and step_record.index in failed:
                # It failed for good before the process died (its record is in the
                # log): it ends the saga as it did that run, and is not run again
                # (even if the code recovering it declares no compensation any more).
                done.pop()
                error = failed[step_record.index]
                _gave_up(done, errors, uncompensated, step_record, error, go_on)
                continue
            if compensation is None:
                done.pop()
                continue
            # new_step_run(step_record.index, step_record.name, True), inline (as above)
            record = StepRun()
            record.index = step_record.index
            record.name = step_record.name
            record.compensation = True
            record.status = STEP_RUNNING
            record.attempts = 1
            record.duration = None
            record.error = None
            record.events = ()
            record.result = None
            if interrupted is not None and interrupted.index == record.index:
                # Run again (after a cancellation or a crash interrupted it): this run
                # replaces the interrupted one, as in a durable log (one row each).
                records[-1] = record
            else:
                records.append(record)
            interrupted = None  # only the first compensation run here can be that one
            run.step = record
            set_running_step(record)
            timeout = spec.compensation_timeout
            attempt = 1  # counted up where a retry goes back to the loop's top
            while True:
                if observe:
                    try:
                        await self._emit(run, ON_COMPENSATION_STARTED, record, attempt)
                    except Exception:
                        if attempt > 1:  # a retry's start not recorded: it never ran
                            record.attempts = attempt - 1  # (the log's count)
                        raise
                started = run.updated_mono = now()  # updated_at: the compensation's start
                deadline = started + timeout
                if faults is None or (
                    (fault := faults.fault_for(call._step, attempt, compensation=True)) is None
                ):
                    run.deadline = deadline
                    if deadline < watchdog.when:
                        watchdog.wake_at(deadline)
                    if not run.queued:  # seen by the next firing
                        run.queued = True
                        watchdog.fresh.add(run)
                    calling = record
                    try:
                        # Called directly when the call left out at most trailing
                        # defaults: the step's, added to the call's tuple (``args + ()``
                        # is ``args``), read by its length (see _compensation_tails).
                        args = call._args
                        count = len(args)
                        tails = spec.compensation_tails
                        if (
                            count < len(tails)
                            and (tail := tails[count]) is not None
                            and not call._kwargs
                        ):
                            value = await compensation(*(args + tail))
                        else:
                            value = await call.compensation_call(result)  # type: ignore[misc]
                        run.deadline = NO_DEADLINE
                        finished = now()
                        if run.timed_out:
                            if not claim_timeout(run):  # and the caller's: that one wins
                                raise asyncio.CancelledError
                            raise _Late
                        if finished >= deadline:
                            raise _Late
                    except _Late:
                        error = timeout_error(
                            record.index,
                            record.name,
                            now() - started,
                            timeout,
                            compensation=True,
                        )
                    except asyncio.CancelledError:
                        run.deadline = NO_DEADLINE
                        if not claim_timeout(run):
                            raise  # _compensate records it interrupted and restarts it
                        error = timeout_error(
                            record.index,
                            record.name,
                            now() - started,
                            timeout,
                            compensation=True,
                        )
                    except Exception as raised:
                        run.deadline = NO_DEADLINE
                        error = raised
                        if run.timed_out:  # it turned its timeout into another error
                            if not claim_timeout(run):  # and the caller's cancel: it wins
                                raise asyncio.CancelledError from raised
                            error = timeout_error(
                                record.index,
                                record.name,
                                now() - started,
                                timeout,
                                compensation=True,
                            )
                            error.__cause__ = raised
                    except BaseExceptionGroup as group:  # not an Exception's group
                        if (crash := crash_in(group)) is None:
                            raise
                        raise crash from group  # "the process died" in an inner saga
                    else:
                        record.duration = finished - started
                        break
                elif fault is SIMULATED_TIMEOUT:
                    calling = record  # a faulted attempt stands for a call (see below)
                    error = StepTimeout(
                        record.index, record.name, timeout, timeout, compensation=True
                    )
                else:
                    # A faulted attempt stands for a call of it: ended by a cancellation
                    # (or a KeyboardInterrupt) in it or while waiting to retry it, it ran
                    # since ``started``, as one called does.
                    calling = record
                    if isinstance(fault, CrashAfter):
                        with contextlib.suppress(Exception):  # as for a step, above
                            async with asyncio.timeout(timeout):
                                await call.compensation_call(result)  # type: ignore[misc]
                        fault = fault.crash
                    if isinstance(fault, SimulatedCrash):
                        raise fault
                    if not isinstance(fault, Exception):
                        raise fault  # as if the compensation raised it
                    error = raised_by_step(fault)  # as the compensation's raise
                policy = spec.compensation_retry or self._compensation_retry
                assert error is not None
                if attempt < policy.attempts and policy.retries(error):
                    record.error = describe_error(error)  # as for a step, above
                    await self._emit(run, ON_COMPENSATION_RETRYING, record, attempt, error=error)
                    await self._pause(policy.delay(attempt))
                    attempt += 1
                    record.attempts = attempt
                    record.error = None  # the last attempt's, shown while it waited
                    continue
                ran = error.duration if isinstance(error, StepTimeout) else now() - started
                # Given up before its failure is told: cancelled while a listener hears
                # of it (the failure recorded), the restart must not run it again.
                done.pop()
                _gave_up(done, errors, uncompensated, record, error, go_on)
                await self._compensation_failed(run, record, error, ran)
                break
            if record.status is not STEP_RUNNING:  # it failed for good: given up above
                continue
            done.pop()
            # Only a call that returned gets here (one given up breaks out of its loop
            # with its record ended), so ``value`` and ``finished`` are bound, as
            # ``started`` is below for the ``calling`` record; binding them first for
            # pyright costs ~120 instructions per failed saga (measured).
            # Most compensations return nothing: no events.
            if value is not None:  # pyright: ignore[reportPossiblyUnboundVariable]
                cls = value.__class__  # pyright: ignore[reportPossiblyUnboundVariable]
                if cls is tuple:
                    comp_events = value  # pyright: ignore[reportPossiblyUnboundVariable]
                elif cls is list:
                    comp_events = tuple(value)  # pyright: ignore[reportPossiblyUnboundVariable]
                else:
                    try:
                        comp_events = events_of(value, record)  # pyright: ignore[reportPossiblyUnboundVariable]
                    except SagaDefinitionError as misuse:  # an awaitable or an iterator
                        error = misuse
                        _gave_up(done, errors, uncompensated, record, error, go_on)  # as above
                        await self._compensation_failed(run, record, error, finished - started)  # pyright: ignore[reportPossiblyUnboundVariable]
                        continue
                record.result = value  # pyright: ignore[reportPossiblyUnboundVariable]
                record.events = comp_events
                run.compensation_events.extend(comp_events)
            else:
                comp_events = ()
            record.status = STEP_COMPLETED
            run.updated_mono = finished  # pyright: ignore[reportPossiblyUnboundVariable]
            if observe:
                await self._emit(
                    run,
                    ON_COMPENSATION_COMPLETED,
                    record,
                    attempt,
                    result=value,  # pyright: ignore[reportPossiblyUnboundVariable]
                    events=tuple(comp_events),
                    duration=record.duration,
                )
    except Exception as unrecorded:
        # A transition of this compensation could not be recorded (StoreError): the
        # run ends FAILED here, and its record must not stay RUNNING.
        _end_running(run.compensations, f"{UNRECORDED}{describe_error(unrecorded)}")
        if run.unwritten is not None:
            left = [
                *uncompensated,
                *(r.name for r, c, _ in reversed(done) if c._spec.compensation is not None),
            ]
            self._compensation_unwritten(run, unrecorded, left)
        raise
    except asyncio.CancelledError:
        # _compensate ends its record and restarts it: how long it ran, as a fatal's.
        running = run.compensations[-1] if run.compensations else None
        if running is not None and running is calling and running.status is STEP_RUNNING:
            running.duration = now() - started  # pyright: ignore[reportPossiblyUnboundVariable]
        raise
    except (SimulatedCrash, GeneratorExit):
        raise  # a crash records nothing more, nor does a closed run (see _abandoned)
    except BaseException as fatal:  # KeyboardInterrupt, SystemExit: it ended there
        # As for a step's (see _drive): its deadline must not cut telling its end, and
        # a timeout's cancellation it turned into this is taken back.
        run.deadline = NO_DEADLINE
        if run.timed_out:
            claim_timeout(run)
        running = run.compensations[-1] if run.compensations else None
        if running is not None and running.status is not STEP_RUNNING:
            running = None  # it had ended: raised while its end was told
        _end_running(run.compensations, describe_error(fatal) + NOT_COMPENSATED)
        if running is not None and running is calling:  # raised by its own call
            running.duration = now() - started  # pyright: ignore[reportPossiblyUnboundVariable]
            await self._tell_fatal(run, ON_COMPENSATION_FAILED, running, fatal)
        raise
    finally:
        run.deadline = NO_DEADLINE  # a BaseException raised by a compensation skips it
        if not watched:
            watchdog.forget(run)
            run.task = None
        run.step = None
        run.compensating = False
    if not errors:
        run.status = SAGA_COMPENSATED
        return None
    run.status = SAGA_FAILED
    failure = CompensationFailed(*errors[0], trigger, uncompensated, errors)
    failure.saga_id = run.id
    failure.events = list(run.events)
    failure.compensation_events = list(run.compensation_events)
    run.error = storable_text(cut(str(failure)))
    # Its __cause__ is the trigger: the compensations' own lines are shown in notes.
    for note in compensation_notes(errors, trigger):
        failure.add_note(note)
    # The errors' tracebacks hold this frame: drop them from its locals (no cycles).
    error = None
    errors.clear()
    return failure


async def _compensation_failed(
    self: SagaOrchestrator, run: SagaRun, record: StepRun, error: BaseException, duration: float
) -> None:
    """Record a compensation's final failure."""
    record.status = STEP_TIMED_OUT if isinstance(error, StepTimeout) else STEP_FAILED
    record.duration = duration
    record.error = describe_error(error)
    try:
        await self._emit(
            run,
            ON_COMPENSATION_FAILED,
            record,
            record.attempts,
            error=error,
            duration=duration,
        )
    except Exception:
        # Not recorded: the run ends FAILED here, and the log may still show the
        # compensation running; the run's end writes its failure.
        run.unrecorded = record
        raise
