"""Recording a run's transitions (durably, with a durable store), logging them and telling
the run's listeners; and what a write the saga log refused leaves the run.

Methods of :class:`~sagakit._orchestrator.SagaOrchestrator`, defined here (its class body
names them): called as ``self._emit(...)``, at the cost of a method defined there."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ._members import (
    ON_COMPENSATION_COMPLETED,
    ON_SAGA_FINISHED,
    ON_SAGA_STARTED,
    ON_STEP_COMPLETED,
    ON_STEP_STARTED,
)
from ._notify import level_of, log_unwritten, logger, tell, tell_each
from ._runs import SagaRun, StepRun, cut, describe_error
from ._tracebacks import hide_from_pytest
from .exceptions import LeaseLost, StepFailed
from .stores._protocol import CommittedThenCancelled, end_unwritten, nothing_logged
from .transitions import Transition, TransitionKind, make_transition

if TYPE_CHECKING:
    from ._orchestrator import SagaOrchestrator

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest


_LEFT_FOR_RECOVERY = "left for recovery"
"""In the note on a store's error that says the saga's end is not in the log (logged)."""
_NOTHING_LOGGED = "nothing of the saga is in the log"
"""In that note instead when no write of the saga ever reached the log (logged)."""


def _end_unwritten(run: SagaRun, transition: Transition, unrecorded: Exception) -> None:
    """The log could not record the run's end (``unrecorded``, a ``StoreError``): it still
    shows the saga running, for recovery to finish (unless the store marked the error:
    nothing of the saga is in the log). Logged at ``WARNING`` and noted on
    ``unrecorded``, which ``execute()`` raises, with how its caller learns the outcome."""
    if nothing_logged(unrecorded, run.id):
        why = f"{_NOTHING_LOGGED} (none of its writes could be made)"
        logged = f"{why}, so there is nothing for recovery to finish"
        noted = f"{why}, so recovery has nothing of it to finish"
    else:
        logged = (
            "the log still shows it running, left for recovery, which finishes it from what "
            "the log holds (a step recorded completed is not run again)"
        )
        noted = (
            f"it is {_LEFT_FOR_RECOVERY}, which finishes it from what the log holds; "
            f"get_saga({run.id!r}) tells how it ends"
        )
    log_unwritten(
        run,
        logging.WARNING,
        transition,
        describe_error(unrecorded),
        f"{logged}; check the saga log's storage",
    )
    note = (
        f"sagakit: saga {run.name} ({run.id}) ended {run.status}, but the saga log could not "
        f"record it: {noted}"
    )
    if note not in getattr(unrecorded, "__notes__", ()):
        unrecorded.add_note(note)


def _unwritten(
    self: SagaOrchestrator, run: SagaRun, level: int, then: str
) -> tuple[Transition, str] | None:
    """Log that a write of the log failed (``run.unwritten``: the transition it
    carried, and the store's error), and ``then``, what the run does about it (no
    listener hears of a transition not recorded). Returns what was not written."""
    unwritten = run.unwritten
    run.unwritten = None
    if unwritten is not None:
        log_unwritten(run, level, unwritten[0], unwritten[1], then)
    return unwritten


def _failure_unwritten(self: SagaOrchestrator, run: SagaRun, failure: StepFailed) -> None:
    """The log could not record that a step failed for good (a ``StoreError``): the
    saga fails with ``failure`` all the same, compensating, and its end writes the
    step's failure (see ``interrupted_step``). Logged, in the saga's error, and
    noted on ``failure``, which is raised as usual."""
    unwritten = self._unwritten(
        run,
        logging.WARNING,
        "the saga fails with it all the same: its completed steps are compensated, and "
        "its end records the step's failure (if the log cannot record that either, the "
        "saga is left for recovery); check the saga log's storage",
    )
    assert unwritten is not None
    late = f"the saga log could not record this failure when it happened ({unwritten[1]})"
    run.error = cut(f"{run.error}; {late}: it is written with the saga's end")
    failure.add_note(f"sagakit: {late}; it is written with the saga's end")


async def _emit(
    self: SagaOrchestrator,
    run: SagaRun,
    kind: TransitionKind,
    record: StepRun | None = None,
    attempt: int = 0,
    *,
    result: Any = None,
    events: tuple[Any, ...] = (),
    error: BaseException | None = None,
    duration: float | None = None,
) -> None:
    """Record a transition durably (if the store is), log it, then tell listeners."""
    level = level_of(kind, run.status)
    logged = logger.isEnabledFor(level)
    if not (logged or self._durable or run.listeners):
        return
    transition = make_transition(
        kind, run, run.status, record, attempt, result, events, error, duration
    )
    if self._durable:
        stage = self._stage
        if stage is not None and (
            kind is ON_STEP_COMPLETED
            or kind is ON_COMPENSATION_COMPLETED
            or kind is ON_SAGA_STARTED
        ):
            # No side effect follows it: it commits with the run's next record(),
            # and is logged and told to listeners then, once durable.
            stage(run, transition)
            if logged or run.listeners:
                self._held.setdefault(run, []).append((level, transition))
            return
        held = self._held.pop(run, None) if self._held else None
        committed: CommittedThenCancelled | None = None
        try:
            await self._store.record(run, transition)
        except CommittedThenCancelled as cancelled:
            # In the log, with what it carried, although the run was cancelled
            # meanwhile: they are told (in order) as recorded, below, then the
            # cancellation goes on, as it would have once they were told.
            committed = cancelled
        except BaseException as unrecorded:
            if kind is ON_SAGA_FINISHED:
                if run.undo_left is not None:
                    self._tell_undo_left(run, unrecorded)
                elif isinstance(unrecorded, Exception) and not isinstance(unrecorded, LeaseLost):
                    _end_unwritten(run, transition, unrecorded)
                elif (refused := end_unwritten(unrecorded, run.id)) is not None:
                    _end_unwritten(run, transition, refused)  # cancelled, written again
            if kind is ON_STEP_STARTED:
                run.unlogged_start = record  # nor told: neither is its end
            if kind is ON_SAGA_FINISHED and isinstance(
                unrecorded, Exception | asyncio.CancelledError
            ):
                # The end may not be in the log (a StoreError, LeaseLost, or cancelled
                # while it was written, not reported committed): SAGA_STOPPED instead.
                # Told here, where the write is known to have failed: cancelled while
                # listeners hear a recorded end, they must not hear SAGA_STOPPED too.
                await self._unrecorded_end(run, unrecorded)
            else:
                if held is not None:
                    # Not told yet: a store keeps what it staged for the run's next
                    # record when this one did not commit (and the run's end always
                    # carries its start), so they are told, in order, once that one
                    # is durable.
                    self._held.setdefault(run, [])[:0] = held
                if isinstance(unrecorded, Exception) and not isinstance(unrecorded, LeaseLost):
                    # What the run then does about it is logged where that is known
                    # (_unwritten): no listener hears of a transition not recorded.
                    run.unwritten = (transition, describe_error(unrecorded))
            raise
        if kind is ON_SAGA_FINISHED and run.undo_left is not None:
            self._tell_undo_left(run, None)
        if held is not None:
            if logged or run.listeners:
                held.append((level, transition))
            await tell_each(run.listeners, held, run)
        elif logged or run.listeners:
            await tell(run.listeners, level, transition, run)
        if committed is not None:
            try:
                raise committed
            finally:
                committed = None  # no cycle through this frame's traceback
        return
    if logged or run.listeners:  # recorded only: nothing to log or tell
        await tell(run.listeners, level, transition, run)
