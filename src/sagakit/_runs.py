"""Per-run mutable state, owned by one execution and snapshotted into records."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import math
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeGuard, cast

from ._members import (
    ON_STEP_FAILED,
    SAGA_COMPENSATED,
    SAGA_COMPENSATING,
    SAGA_COMPLETED,
    SAGA_EXECUTING,
    SAGA_FAILED,
    STEP_COMPLETED,
    STEP_RUNNING,
)
from ._names import record_name
from ._tracebacks import hide_from_pytest
from .exceptions import SagaDefinitionError, error_text
from .records import SagaMetadata, StepRecord

if TYPE_CHECKING:
    from ._orchestrator import SagaOrchestrator
    from ._sagas import SagaDefinition
    from .status import SagaStatus, StepStatus
    from .stores._protocol import SagaRunView
    from .transitions import Transition


# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest


def storable_text(text: str) -> str:
    """``text`` with what a store cannot keep — a lone surrogate (an undecodable byte of
    a file name, say: UTF-8 refuses it) or a NUL (PostgreSQL refuses it) — escaped."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


MAX_ERROR_TEXT = 65_536
"""Most characters of an error's text kept in records and the log (a saga's error, a
step's): as the serializer's size limit bounds results, so a huge message (a response
body, a report on a large input) is cut, saying how many more characters it had."""


def cut(text: str) -> str:
    """``text`` cut to :data:`MAX_ERROR_TEXT` characters, saying how many more it had."""
    if len(text) <= MAX_ERROR_TEXT:
        return text
    return f"{text[:MAX_ERROR_TEXT]}... ({len(text) - MAX_ERROR_TEXT} more characters)"


def describe_error(error: BaseException) -> str:
    """One line naming an exception, ready to store: ``"ValueError: boom"``, cut to
    :data:`MAX_ERROR_TEXT` characters."""
    text = cut(error_text(error))
    # storable_text(text), without its call for the common (plain) text: failures are
    # a hot path.
    if text.isascii() and "\x00" not in text:
        return text
    return storable_text(text)


def describe_optional(error: BaseException | None) -> str | None:
    """:func:`describe_error`, or ``None`` for no error."""
    return None if error is None else describe_error(error)


def events_of(result: Any, record: StepRun | None = None) -> Sequence[Any]:
    """A step's events: its result when a list or tuple (not a named tuple), none for
    ``None``, else the value.

    A list is copied: the saga, a later step or the step itself may change the list it
    returned, and the run's records must keep the events as they were returned.

    ``record``: the step (or compensation) that just returned ``result``; an awaitable
    it returned (a forgotten ``await``) raises :class:`SagaDefinitionError` instead, and
    so does an iterator (a generator, ``map(...)``): read once, and stored by no log.
    """
    if result is None:
        return ()
    if isinstance(result, list | tuple) and not hasattr(result, "_fields"):
        # (A named tuple is one value, an event like a dataclass: not its fields.)
        return result if result.__class__ is tuple else tuple(result)
    if record is not None:
        if inspect.isawaitable(result):
            raise returned_awaitable(record, result)
        if isinstance(result, Iterator | AsyncIterator):
            raise returned_iterator(record, result)
        if result.__class__.__name__ == "SagaDefinition" and is_definition(result):
            raise returned_definition(record, result)
    return (result,)


def is_definition(result: object) -> TypeGuard[SagaDefinition]:
    from ._sagas import SagaDefinition  # which imports this module

    return isinstance(result, SagaDefinition)


def _which(record: StepRun) -> str:
    """``record`` as an error names it: ``"step 1 ('charge')"``, or its compensation."""
    return record_name(record.compensation, record.index, record.name)


def returned_iterator(record: StepRun, result: Any) -> SagaDefinitionError:
    """The error of a step or compensation that returned ``result``, an iterator, as its
    events: the in-memory store would keep it as one event (read once, by whoever reads
    the events first) and a durable store cannot write it."""
    kind = result.__class__.__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    return SagaDefinitionError(
        f"{_which(record)} returned {article} {kind} instead of its events; an iterator is "
        "read only once and no saga log can store it: return a list, `return list(...)`"
    )


def returned_definition(record: StepRun, result: SagaDefinition) -> SagaDefinitionError:
    """The error of a step or compensation that returned ``result``, a saga definition,
    instead of executing it: the nested saga never ran (and no saga log can store it)."""
    written = _written(result)
    return SagaDefinitionError(
        f"{_which(record)} returned the saga definition {result!r} instead of running it; "
        f"a step runs a nested saga by executing it: `return await "
        f"current_step().orchestrator.execute({written})`"
    )


def definition_returned_alone(which: str, result: SagaDefinition) -> SagaDefinitionError:
    """:func:`returned_definition` for a step awaited on its own, ``which``
    (``"step 'charge'"``), where no saga, and so no ``current_step()``, gives it an
    orchestrator."""
    return SagaDefinitionError(
        f"{which} returned the saga definition {result!r} instead of running it; a step "
        f"runs a nested saga by executing it on an orchestrator: `return await "
        f"orchestrator.execute({_written(result)})` (in a saga, `current_step().orchestrator`)"
    )


def _written(result: SagaDefinition) -> str:
    """``result``'s definition as the code wrote it: the @saga function, or the builder."""
    factory = result.factory
    if factory is not None:
        return f"{getattr(factory, '__name__', result.name)}(...)"
    return "SagaDefinition(...)"


def returned_awaitable(record: StepRun, result: Any) -> SagaDefinitionError:
    """The error of a step or compensation that returned ``result``, an awaitable, as its
    result: it forgot to ``await`` it. A coroutine is closed (it never runs, and Python
    would warn that it was never awaited)."""
    return awaitable_returned_by(_which(record), result)


def awaitable_returned_by(which: str, result: Any) -> SagaDefinitionError:
    """:func:`returned_awaitable` for ``which`` (``"step 'charge'"``, say)."""
    if inspect.iscoroutine(result):
        result.close()
        what = f"a coroutine of {result.__qualname__}"
    elif isinstance(result, asyncio.Task):
        what = f"a task ({result.get_name()})"
    elif isinstance(result, asyncio.Future):
        what = "a Future"
    else:
        what = f"an awaitable, {result!r},"
    return SagaDefinitionError(
        f"{which} returned {what} instead of its result; did you forget `await`? "
        "Write `return await ...`"
    )


class StepRun:
    """Mutable state of one step or compensation within one run (see :func:`new_step_run`)."""

    # No __init__, on purpose: a record is made by ``StepRun()`` in C and its slots set
    # by the caller (once per step: an __init__ would cost a frame).

    __slots__ = (
        "attempts",
        "compensation",
        "duration",
        "error",
        "events",
        "index",
        "name",
        "result",
        "status",
    )

    index: int
    name: str
    compensation: bool
    status: StepStatus
    attempts: int
    duration: float | None
    error: str | None
    events: Sequence[Any]
    result: Any

    def record(self) -> StepRecord:
        return StepRecord(
            index=self.index,
            name=self.name,
            status=self.status,
            attempts=self.attempts,
            duration=self.duration,
            error=self.error,
            events=tuple(self.events),
            compensation=self.compensation,
        )


def new_step_run(index: int, name: str, compensation: bool = False) -> StepRun:
    """A step's (or compensation's) record, running its first attempt.

    A function rather than ``StepRun.__init__``: calling a class with an ``__init__``
    costs a second frame, and a run makes a record per step. ``StepRun()`` (no
    ``__init__``: the object is made in C) costs less than ``object.__new__(StepRun)``.
    """
    record = StepRun()
    record.index = index
    record.name = name
    record.compensation = compensation
    record.status = STEP_RUNNING
    record.attempts = 1
    record.duration = None
    record.error = None
    record.events = ()
    record.result = None
    return record


CRASHED = "interrupted by a crash of its process"
"""The error of a step or compensation its process died in, as recovery records it."""

CANCELLED = "the saga was cancelled"
"""The message of the ``CancelledError`` a step the saga's cancellation interrupted is
recorded ``FAILED`` with (its error ``"CancelledError: the saga was cancelled"``): recovery
tells it from a step that raised by it, and compensates it as a timed-out step."""

CANCELLED_ERROR = f"CancelledError: {CANCELLED}"
"""The recorded error of a step (and saga) the saga's cancellation interrupted."""

UNSTARTED = "cancelled before the step started"
"""The message of the ``CancelledError`` a step cancelled before its function was called
(while its start was recorded or told) is recorded ``FAILED`` with: it never ran, so
neither the run nor recovery compensates it."""

UNSTARTED_ERROR = f"CancelledError: {UNSTARTED}"
"""The recorded error of a step cancelled before it started."""

UNRECORDED = "not recorded: "
"""The start of the error of a compensation the run ended in because one of its
transitions could not be recorded (a ``StoreError``)."""

NOT_COMPENSATED = " (not compensated)"
"""The end of the error of a compensation (or saga) a ``KeyboardInterrupt`` or
``SystemExit`` stopped: nothing more was undone."""

ACTED_UNKNOWN = " (after an attempt that timed out: it may have acted)"
"""The end of the error of a step that failed for good by raising after an attempt of it
timed out: that attempt may have acted, so the run compensates the step as a timed-out
one (``compensate_on_timeout``), and so does recovery, which reads it in the log (where
the last attempt's error is all the step's record keeps)."""

LOOP_CLOSED = "its event loop was closed while it ran"
"""Why a run whose task was destroyed pending, with its event loop, stopped where it
waited (its coroutine closed by the garbage collector: ``GeneratorExit``)."""

ABANDONED = f"abandoned: {LOOP_CLOSED}"
"""The error of a run :data:`LOOP_CLOSED` stopped, where the store ends it (one that is
not durable, which nothing recovers), and the status of its tracer spans."""


def interrupted_compensations(run: SagaRun) -> list[StepRun]:
    """The compensations of an ended run whose end no transition carried, for a durable
    store to write with the run's end: those a crash interrupted that the run's recovery
    ended without running again (it stopped at an earlier compensation failure, or the
    code it recovered with declares no compensation for that step any more: the run
    may then end ``COMPENSATED``), and, of a ``FAILED`` run, those a
    ``KeyboardInterrupt`` stopped and the one the run ended in because a transition of
    it could not be recorded (its start or retry: ``UNRECORDED``; its failure for good:
    ``SagaRun.unrecorded``). A compensation recovery ran again is recorded by its own
    transitions."""
    if not run.compensations or run.status not in (SAGA_FAILED, SAGA_COMPENSATED):
        return []
    last = {record.index: record for record in run.compensations}
    unrecorded = run.unrecorded
    return [
        record
        for record in last.values()
        if record is unrecorded
        or (
            record.error is not None
            and (
                record.error == CRASHED
                or record.error.startswith(UNRECORDED)
                or record.error.endswith(NOT_COMPENSATED)
            )
        )
    ]


def interrupted_step(run: SagaRun) -> StepRun | None:
    """The run's last step if the run ended while it ran (a cancellation, or recovery
    finding it stopped by a crash): no transition carried that step's end, so a
    durable store writes it with the run's end."""
    if run.status is SAGA_COMPLETED or not run.steps:
        return None
    last = run.steps[-1]
    if last.status is STEP_RUNNING or last.status is STEP_COMPLETED:
        return None
    return last


def step_end_error(view: SagaRunView, transition: Transition) -> str | None:
    """The error a durable store records with ``transition``, the end of a step or
    compensation: its exception described, as the run's own record has it, with
    :data:`ACTED_UNKNOWN` where that record (of a step that failed for good) has it too.
    The built-in stores get the orchestrator's own :class:`SagaRun` (see :func:`unended`)."""
    described = describe_optional(transition.error)
    if transition.kind is ON_STEP_FAILED and described is not None:
        steps = cast("SagaRun", view).steps
        record = steps[-1] if steps else None
        if (
            record is not None
            and record.index == transition.step_index
            and record.error == described + ACTED_UNKNOWN
        ):
            return record.error
    return described


def unended(view: SagaRunView) -> list[StepRun]:
    """The step and compensation records whose end no transition carried (see
    :func:`interrupted_step` and :func:`interrupted_compensations`): a durable store
    writes them with the run's end. The built-in stores get the orchestrator's own
    :class:`SagaRun` (typed as the public view)."""
    run = cast("SagaRun", view)
    records = interrupted_compensations(run)
    interrupted = interrupted_step(run)
    if interrupted is not None:
        records.append(interrupted)
    return records


def handed_back_with(run: SagaRun) -> bool:
    """Whether ``run`` was started (by a step) inside a recovered run that its recovery's
    cancellation hands back: ``run`` is then handed back with it, not compensated, for the
    step's rerun to finish it (a cancellation from inside that step — its timeout, an
    ``asyncio.timeout`` around the inner ``execute()`` — is not such a one)."""
    parent = run.parent
    while parent is not None:
        if not still_running(run.parent_step, parent):
            return False  # by a task a step left running: no rerun of that step finishes it
        if parent.handing_back is True:
            return True
        run = parent
        parent = run.parent
    return False


def still_running(step: StepRun | None, run: SagaRun) -> bool:
    """Whether ``step`` (the context's ``running_step`` when a saga was started in ``run``)
    is the step ``run`` runs now: not one a task it created outlived."""
    return step is not None and step is run.step and step.status is STEP_RUNNING


_next_number = itertools.count(1).__next__
"""The number of the next run in this process (``Transition.run_number``)."""


class SagaRun:
    """Mutable state of one saga execution; :meth:`snapshot` gives its metadata."""

    __slots__ = (
        "cancel_base",
        "cancel_owed",
        "compensating",
        "compensation_events",
        "compensations",
        "deadline",
        "definition",
        "error",
        "events",
        "explicit_id",
        "finished_mono",
        "handing_back",
        "id",
        "listeners",
        "name",
        "number",
        "orchestrator",
        "parent",
        "parent_step",
        "queued",
        "started_mono",
        "started_wall",
        "status",
        "step",
        "steps",
        "task",
        "timed_out",
        "total_steps",
        "undo_left",
        "unlogged_start",
        "unrecorded",
        "unwritten",
        "updated_mono",
    )

    cancel_base: int
    cancel_owed: bool
    compensating: bool
    compensation_events: list[Any]
    compensations: list[StepRun]
    deadline: float
    definition: SagaDefinition
    error: str | None
    events: list[Any]
    explicit_id: bool
    finished_mono: float | None
    handing_back: bool | None
    id: str
    listeners: Sequence[Any]
    name: str
    number: int
    orchestrator: weakref.ref[SagaOrchestrator]
    parent: SagaRun | None
    parent_step: StepRun | None
    queued: bool
    started_mono: float
    started_wall: float
    status: SagaStatus
    step: StepRun | None
    steps: list[StepRun]
    task: asyncio.Task[Any] | None
    timed_out: bool
    total_steps: int | None
    undo_left: tuple[Transition, str, str, BaseException] | None
    unlogged_start: StepRun | None
    unrecorded: StepRun | None
    unwritten: tuple[Transition, str] | None
    updated_mono: float

    def __init__(
        self,
        saga_id: str,
        definition: SagaDefinition,
        explicit_id: bool,
        mono: float,
        orchestrator: weakref.ref[SagaOrchestrator],
    ) -> None:
        # The definition's values read directly: a property read costs a call, per run.
        state = definition._state
        calls = state[2]
        self.id = saga_id
        # Tells this run from every other of this process, of the same id too (run again,
        # recovered, or at once by orchestrators with stores of their own): listeners key
        # runs by it (Transition.run_number).
        self.number = _next_number()
        self.name = state[1]
        self.definition = definition
        self.orchestrator = orchestrator  # that runs it (weakly): current_step().orchestrator
        self.explicit_id = explicit_id
        self.status = SAGA_EXECUTING
        self.total_steps = None if calls is None else len(calls)
        self.steps = []
        self.compensations = []
        self.events = []
        self.compensation_events = []
        self.error = None
        self.started_wall = time.time()
        self.started_mono = mono
        self.updated_mono = mono
        self.finished_mono = None
        self.step = None  # the step or compensation running now
        self.compensating = False
        # The compensation whose failure for good could not be recorded (StoreError): the
        # run ends FAILED there, and its end writes that record (interrupted_compensations).
        self.unrecorded = None
        # The step whose start the store did not record (its record() raised): its end
        # is not told either, the run's end writes it (see interrupted_step).
        self.unlogged_start = None
        # The last transition whose write the store refused (StoreError), until the run
        # tells the operator what that changed (see SagaOrchestrator._unwritten).
        self.unwritten = None
        # A compensation's transition that the store refused, which stopped compensating
        # (the transition, the store's error, the steps left undone, the error raised):
        # told once the run's end is known to be in the log or not (see
        # SagaOrchestrator._tell_undo_left).
        self.undo_left = None
        self.deadline = math.inf  # loop time the running step must finish by
        self.timed_out = False  # the watchdog cancelled ``task`` for ``deadline``
        self.queued = False  # in its watchdog's ``fresh``: it looks at ``deadline`` next firing
        self.task = None
        self.cancel_base = 0  # task.cancelling() when the run started
        # Timed out (``timed_out``) with its cancellation taken back, not yet made again:
        # an inner saga's step timed out with it and claimed the one delivery (see
        # _deadlines.claim_timeout).
        self.cancel_owed = False
        self.listeners = ()  # told of this run: those there when it began
        # While it runs: the run in whose step (or a task started there) it was started,
        # None at the top level. Fault injection aims ``index`` faults by it.
        self.parent = None
        # The step (or compensation) record of ``parent`` it was started in: a task that
        # step created may start it after the step ended (see handed_back_with).
        self.parent_step = None
        # A recovered run whose recovery was cancelled by its caller: it is being handed
        # back (True), and so is any saga a step of it executes on a durable store (see
        # handed_back_with); False: a recovered run cancelled from inside
        # the step that recovers it (adopt), undone as that step's execute() would be.
        self.handing_back = None

    @property
    def steps_executed(self) -> int:
        """How many forward steps completed."""
        completed = STEP_COMPLETED
        return sum(1 for step in self.steps if step.status is completed)

    @property
    def started_at(self) -> datetime:
        return datetime.fromtimestamp(self.started_wall, UTC)

    def _wall(self, mono: float | None) -> datetime | None:
        if mono is None:
            return None
        return datetime.fromtimestamp(self.started_wall + (mono - self.started_mono), UTC)

    def snapshot(self) -> SagaMetadata:
        status = self.status
        if self.finished_mono is None and (status is SAGA_COMPENSATED or status is SAGA_FAILED):
            # Compensated (in a task of its own, when cancelled), its end not written yet:
            # still running, as a durable log has it until then.
            status = SAGA_COMPENSATING
        return SagaMetadata(
            id=self.id,
            name=self.name,
            status=status,
            steps_executed=self.steps_executed,
            total_steps=self.total_steps,
            started_at=self.started_at,
            updated_at=self._wall(self.updated_mono),
            finished_at=self._wall(self.finished_mono),
            error=self.error,
            steps=tuple(s.record() for s in self.steps),
            compensations=tuple(c.record() for c in self.compensations),
            events=tuple(self.events),
            compensation_events=tuple(self.compensation_events),
        )


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a running step can know about itself (see :func:`current_step`)."""

    saga_id: str
    saga_name: str
    step_index: int
    step_name: str
    attempt: int
    compensating: bool
    orchestrator: SagaOrchestrator = field(repr=False, compare=False)
    """The orchestrator running the saga: a step that runs a saga of its own (a nested
    saga) executes it with this one, so whatever runs the outer saga (the application,
    a worker, ``sagakit recover``) runs the inner one with the same store."""

    @property
    def idempotency_key(self) -> str:
        """``"<saga id>:<step index>"``: stable across retries and crash recovery.

        Pass it to external services so a step re-run after a crash does not act twice.
        """
        return f"{self.saga_id}:{self.step_index}"


current_run: ContextVar[SagaRun | None] = ContextVar("sagakit_current_run", default=None)

running_step: ContextVar[StepRun | None] = ContextVar("sagakit_running_step", default=None)
"""The step (or compensation) record this context runs, set as each starts: a task the step
creates keeps it, so :func:`current_step` there describes no later step of the run."""

set_running_step = running_step.set
"""``running_step.set``, bound once: called as each step and compensation starts."""

alone_in: ContextVar[SagaRun | None] = ContextVar("sagakit_alone_in", default=None)
"""The run whose step awaits a step on its own here (``await charge(...)`` inside a saga's
step): that step is not the saga's, so :func:`current_step` describes none."""


RunTokens = tuple[Token[SagaRun | None], Token[StepRun | None]]


def enter_run(run: SagaRun) -> RunTokens:
    """Make ``run`` this task's current run, noting the run it was started in."""
    run.parent = current_run.get()
    run.parent_step = running_step.get()
    return current_run.set(run), running_step.set(None)


def leave_run(run: SagaRun, tokens: RunTokens) -> None:
    """Undo :func:`enter_run` (the run keeps no reference to its parent once ended)."""
    run.parent = run.parent_step = None
    try:
        current_run.reset(tokens[0])
        running_step.reset(tokens[1])
    except ValueError:  # its coroutine closed by the garbage collector, in another context
        pass


def current_step() -> StepContext | None:
    """The saga step running in this task, or ``None`` outside a saga step.

    >>> ctx = current_step()
    >>> await payments.charge(amount, idempotency_key=ctx.idempotency_key)
    """
    run = current_run.get()
    if run is None or run is alone_in.get():  # none, or a step awaited on its own in it
        return None
    step = run.step
    if step is None or step.status is not STEP_RUNNING:  # between steps: none runs
        return None
    if step is not running_step.get():  # a task an earlier step created: not this step's
        return None
    orchestrator = run.orchestrator()
    if orchestrator is None:  # a task a step started, outliving the orchestrator
        return None
    return StepContext(
        saga_id=run.id,
        saga_name=run.name,
        step_index=step.index,
        step_name=step.name,
        attempt=step.attempts,
        compensating=run.compensating,
        orchestrator=orchestrator,
    )


__all__ = ["SagaRun", "StepContext", "StepRun", "current_step", "new_step_run"]
