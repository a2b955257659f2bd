"""The orchestrator: runs a saga's steps, times them out, compensates and records."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Self

from . import _compensating, _ending, _recording
from ._checks import (
    asyncio_loop,
    check_count,
    check_flag,
    is_number,
    no_asyncio_loop,
    not_the_class,
)
from ._deadlines import NO_DEADLINE, Watchdog, _Late, claim_timeout, timeout_error
from ._ending import _chain, _end_running, _warn
from ._hooks import (
    SIMULATED_TIMEOUT,
    CrashAfter,
    SimulatedCrash,
    active_faults,
    crash_hint,
    crash_in,
    raised_by_step,
    test_faults,
)
from ._ids import new_saga_id
from ._members import (
    ON_SAGA_FINISHED,
    ON_SAGA_STARTED,
    ON_STEP_COMPLETED,
    ON_STEP_FAILED,
    ON_STEP_RETRYING,
    ON_STEP_STARTED,
    ON_STEP_TIMED_OUT,
    SAGA_COMPENSATING,
    SAGA_COMPLETED,
    SAGA_EXECUTING,
    SAGA_FAILED,
    STEP_COMPLETED,
    STEP_FAILED,
    STEP_RUNNING,
    STEP_TIMED_OUT,
)
from ._notify import (
    Listener,
    _check_listener_not_a_generator,
    _check_listener_signature,
    level_of,
    logger,
)
from ._recovery import DEFAULT_MAX_ATTEMPTS, RecoveryOutcome, hands_back, recover
from ._retry import DEFAULT_COMPENSATION_RETRY, Retry
from ._runs import (
    ACTED_UNKNOWN,
    CANCELLED_ERROR,
    NOT_COMPENSATED,
    UNSTARTED_ERROR,
    SagaRun,
    StepRun,
    current_run,
    describe_error,
    events_of,
    handed_back_with,
    running_step,
    set_running_step,
    still_running,
)
from ._sagas import (
    SagaDefinition,
    SagaFunction,
    StepDriver,
    _check_call,
    _check_id,
    close_driver,
    delegation_error,
    returned_error,
    warn_returned,
)
from ._shielding import CancellationWatch, wait_out
from ._steps import StepCall, StepSpec
from ._tracebacks import hide_from_pytest
from ._worker import run_worker, worker_nested
from .exceptions import (
    LeaseLost,
    NonDeterminismError,
    SagaAlreadyExecuting,
    SagaDefinitionError,
    SagaRunError,
    StepFailed,
    StepTimeout,
    StoreConfigError,
    _step_failed,
)
from .records import SagaMetadata
from .stores import MemoryStore, SagaStore
from .stores._protocol import check_saga_id
from .stores.memory import DEFAULT_HISTORY_LIMIT
from .transitions import Transition

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest


_Done = tuple[StepRun, StepCall[Any], Any]


HANDED_BACK = "recovery was cancelled; the next recovery finishes the saga"
"""Why a saga whose recovery was cancelled stopped (its ``SAGA_STOPPED`` error)."""


def _end_running_step(steps: list[StepRun], acted: StepRun | None, failure: BaseException) -> None:
    """:func:`_end_running` for the run's steps, ended by ``failure`` raised in the step
    (``acted``: the record whose function was last called) or before it started."""
    if steps and steps[-1].status is STEP_RUNNING:
        described = describe_error(failure)
        _end_running(steps, described if steps[-1] is acted else f"not started: {described}")


def _undone_between_attempts(spec: StepSpec, acted_unknown: bool) -> bool:
    """Whether a step that failed between two attempts (its retry, or its next start, not
    recorded) is compensated: as one failed for good after the attempt before (by
    ``compensate_on_timeout`` if an attempt of it timed out: ``acted_unknown``)."""
    return spec.compensate_on_timeout if acted_unknown else spec.compensate_on_failure


_STEP_FAILED_LEVEL = level_of(ON_STEP_FAILED, SAGA_EXECUTING)
"""The log level of a step's failure and of its timeout: ``level_of()``'s, read once."""
assert level_of(ON_STEP_TIMED_OUT, SAGA_EXECUTING) == _STEP_FAILED_LEVEL


def _not_a_definition_fix(value: object) -> str:
    """How to get a SagaDefinition from what execute() was given instead."""
    if isinstance(value, StepCall):
        return (
            "await the step call to run that step on its own, or put it in a saga: "
            "SagaDefinition(steps=[...]) or a @saga function"
        )
    if isinstance(value, list | tuple):
        return "build the saga from the step calls: SagaDefinition(steps=[...])"
    if inspect.isgenerator(value):
        return "decorate the generator function with @saga, then call it"
    if isinstance(value, SagaFunction):
        return f"call the @saga function with its arguments first: {value.__name__}(...)"
    return "call your @saga function first: transfer('A', 'B', 10)"


class SagaOrchestrator:
    """Runs sagas: each step under its timeout, compensating in reverse on failure.

    ``store`` keeps the running sagas and their history (in memory unless given);
    ``compensation_retry`` is the retry policy of compensations whose step sets none;
    with ``continue_on_compensation_failure`` a failed compensation does not stop the
    remaining ones and every error is reported; ``listeners`` are told of every state
    change; ``sleep`` waits between retries (replace it to test backoff without waiting).
    With a durable store, ``recover_on_start`` runs :meth:`recover` in ``async with``,
    and ``max_recovery_attempts`` is how often recovery retries a saga before parking it.
    """

    def __init__(
        self,
        store: SagaStore | None = None,
        *,
        history_limit: int | None = None,
        compensation_retry: Retry = DEFAULT_COMPENSATION_RETRY,
        continue_on_compensation_failure: bool = False,
        listeners: Iterable[Listener] = (),
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        recover_on_start: bool = False,
        max_recovery_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        given = store
        if store is None:
            store = MemoryStore(
                history_limit=DEFAULT_HISTORY_LIMIT if history_limit is None else history_limit
            )
        elif history_limit is not None:
            raise SagaDefinitionError(
                "history_limit sets the default in-memory store's history; with store=... "
                "give the limit to that store instead, e.g. MemoryStore(history_limit=100)"
            )
        elif isinstance(store, type):  # a class has the protocol's methods, unbound
            raise not_the_class(store, "store")
        elif not isinstance(store, SagaStore):
            raise SagaDefinitionError(
                f"store must implement sagakit.stores.SagaStore (e.g. MemoryStore()), got {store!r}"
            )
        if not isinstance(compensation_retry, Retry):
            if isinstance(compensation_retry, type) and issubclass(compensation_retry, Retry):
                raise not_the_class(compensation_retry, "compensation_retry")
            attempts = 3  # or the number of attempts given, as @step(compensation_retry=3) takes
            if is_number(compensation_retry) and compensation_retry in range(1, 1000):
                attempts = int(compensation_retry)
            raise SagaDefinitionError(
                f"compensation_retry must be a sagakit.Retry, got {compensation_retry!r}; "
                f"pass one, e.g. Retry(attempts={attempts})"
            )
        self._store = store
        self._durable = bool(store.durable)
        # The default store, called without awaiting a coroutine per run (not a subclass:
        # that may override begin() or finish()).
        self._memory = store if type(store) is MemoryStore else None
        # A durable store may stage the transitions that no side effect follows; they
        # commit with the run's next record(), before the next step or compensation
        # runs or execute() returns.
        self._stage: Callable[[SagaRun, Transition], None] | None = (
            getattr(store, "stage", None) if self._durable else None
        )
        # Staged transitions are logged and told to listeners once durable (below).
        self._held: dict[SagaRun, list[tuple[int, Transition]]] = {}
        self._compensation_retry = compensation_retry
        self._continue = check_flag(
            continue_on_compensation_failure, "continue_on_compensation_failure"
        )
        self._listeners: tuple[Listener, ...] = ()  # replaced, never changed: runs keep theirs
        if (
            callable(listeners)  # one, not a list of them
            or isinstance(listeners, str | bytes)  # its characters: "a listener ... got 'a'"
            or not isinstance(listeners, Iterable)
        ):
            raise SagaDefinitionError(
                f"listeners must be a list of listeners, e.g. listeners=[recorder], "
                f"got {listeners!r}"
            )
        for listener in listeners:
            self.add_listener(listener)
        if isinstance(sleep, type):  # sleep=InstantSleep: called, it makes one, not a wait
            raise not_the_class(sleep, "sleep")
        if not callable(sleep) or inspect.isbuiltin(sleep):  # time.sleep: awaits nothing
            raise SagaDefinitionError(
                f"sleep must be an async function taking seconds, like asyncio.sleep, got {sleep!r}"
            )
        self._sleep = sleep
        check_count(max_recovery_attempts, "max_recovery_attempts")
        self._recover_on_start = check_flag(recover_on_start, "recover_on_start")
        if recover_on_start and not self._durable:  # recover() would find nothing, ever
            # A StoreError as well, as run_worker() refuses such a store.
            which = "the default in-memory store" if given is None else repr(store)
            raise StoreConfigError(
                f"recover_on_start=True needs a durable store, but {which} is not durable "
                "(its sagas die with their process: there is never anything to recover); "
                "pass a durable store such as SQLiteStore('sagas.db'), or leave "
                "recover_on_start off"
            )
        self._entered = False  # by `async with` (which runs recover_on_start's recovery)
        self._max_recovery_attempts = max_recovery_attempts
        # The sagas this orchestrator recovers right now (a worker's tasks), each with its
        # loop and an event set when that recovery ends: execute() of one waits for it.
        self._recovering: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}
        # The watchdog of the loop used last, which also holds that loop and its clock: one
        # attribute, so that threads sharing the orchestrator (each with its own loop) never
        # read one loop's clock or watchdog paired with another loop.
        self._watchdog: Watchdog | None = None
        # Every loop's watchdog, so that a loop used again gets its own back: a second one
        # for the same loop would not know the runs the first watches (their compensations'
        # deadlines went unenforced until the first woke for another).
        self._watchdogs: dict[asyncio.AbstractEventLoop, Watchdog] = {}
        # What a run holds of its orchestrator (current_step().orchestrator): a weak
        # reference, or each run kept in the history would keep this orchestrator alive
        # through a reference cycle, past its last use.
        self._ref: weakref.ref[SagaOrchestrator] = weakref.ref(self)

    def _first_run_on(self, loop: asyncio.AbstractEventLoop) -> Watchdog:
        """:meth:`_use_loop` for ``execute()``, saying if ``recover_on_start`` never ran."""
        if self._recover_on_start and not self._entered:
            logger.warning(
                "sagakit: SagaOrchestrator(recover_on_start=True) runs recover() when entered "
                "with `async with`; this one was not entered, so nothing was recovered "
                "(use `async with SagaOrchestrator(...) as orchestrator:`, or call recover())"
            )
            self._entered = True  # said once
        return self._use_loop(loop)

    def _use_loop(self, loop: asyncio.AbstractEventLoop) -> Watchdog:
        """Switch to the watchdog of ``loop`` (the running one), started on its first use."""
        watchdogs = self._watchdogs
        watchdog = watchdogs.get(loop)
        if watchdog is None:
            # Forget those watching nothing on a loop that is not running (closed, or left
            # unclosed and dropped: kept, it would keep that loop and its sockets alive),
            # as a later use starts one afresh. (list(): another thread's loop may add its
            # own meanwhile; each thread adds only its own loop's.)
            for old in list(watchdogs):
                kept = watchdogs.get(old)
                if kept is not None and (
                    old.is_closed() or (not old.is_running() and not kept.runs)
                ):
                    watchdogs.pop(old, None)
            watchdog = watchdogs[loop] = Watchdog(loop)
        self._watchdog = watchdog
        return watchdog

    def _watch(self, loop: asyncio.AbstractEventLoop) -> Watchdog:
        """The watchdog (and clock) of ``loop``, the running one."""
        watchdog = self._watchdog
        return watchdog if watchdog is not None and watchdog.loop is loop else self._use_loop(loop)

    @property
    def store(self) -> SagaStore:
        """The store this orchestrator records into."""
        return self._store

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(transition)`` on every state change; errors it raises are logged."""
        if not callable(listener):
            raise SagaDefinitionError(f"a listener must be callable, got {listener!r}")
        if isinstance(listener, type):  # it would be called to make one, per transition
            raise not_the_class(listener, "a listener")
        _check_listener_not_a_generator(listener)
        _check_listener_signature(listener)
        self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener`` for sagas started from now on; the runs it was told
        of go on telling it until they end (a tracer must hear the end it opened)."""
        listeners = list(self._listeners)
        try:
            listeners.remove(listener)  # by equality: a bound method is made anew each time
        except ValueError:
            raise ValueError(
                f"{listener!r} is not a listener of this orchestrator (never added, or "
                "removed already); add_listener() adds one"
            ) from None
        self._listeners = tuple(listeners)

    # ------------------------------------------------------------------ running

    async def execute(self, definition: SagaDefinition, *, saga_id: str | None = None) -> list[Any]:
        """Run ``definition`` and return the events of its steps, in order.

        On failure the completed steps are compensated in reverse order, then
        :class:`StepFailed`, :class:`StepTimeout` or :class:`CompensationFailed` is
        raised. With an explicit ``saga_id`` (here or on the definition) execution is
        idempotent: a completed id returns its recorded events without running again, to
        the same saga called with the same arguments (another saga, or other arguments,
        raise :class:`SagaIdReused`).
        """
        if not isinstance(definition, SagaDefinition):
            raise SagaDefinitionError(
                f"execute() takes a SagaDefinition, got {definition!r}; "
                f"{_not_a_definition_fix(definition)}"
            )
        # A given id as plain text; else the definition's, without a property call.
        saga_id = _check_id(saga_id) if saga_id is not None else definition._state[0]
        explicit = saga_id is not None
        try:
            loop = asyncio.get_running_loop()  # asyncio_loop("execute()"), without the call
        except RuntimeError:
            raise no_asyncio_loop("execute()") from None
        watchdog = self._watchdog
        if watchdog is None or watchdog.loop is not loop:
            watchdog = self._first_run_on(loop)
        run = SagaRun(
            saga_id if saga_id is not None else new_saga_id(),
            definition,
            explicit,
            watchdog.now(),
            self._ref,
        )
        run.listeners = self._listeners
        # Before begin(): whatever it raises leaves no run. A list or builder definition's
        # steps are read from its tuple, without a generator (see _drive).
        listed = definition._state[2]
        if listed is None:
            driver = definition._driver()
        elif listed:
            driver = None
        else:  # a builder given no step (@saga refuses an empty list when called)
            raise SagaDefinitionError(
                f"saga {definition.name!r} has no steps; add at least one with "
                ".add_step(step_call) before executing it"
            )
        # Run by a step of a saga a worker runs: a stopping worker hands it over too, while
        # that step runs. Not one a task the step left running starts after the step ended:
        # as one executed beside the worker, it is not cancelled with the worker's sagas,
        # and keeps its lease (as one the step started there does once the step ended).
        nested = worker_nested.get()
        if nested is not None:
            enclosing = current_run.get()
            started_in = running_step.get()
            if enclosing is not None and still_running(started_in, enclosing):
                nested[run.id] = (enclosing, started_in)
            else:
                nested = None
        try:
            memory = self._memory
            try:
                earlier = (
                    memory._begin_now(run) if memory is not None else await self._store.begin(run)
                )
                orphan = False
            except SagaAlreadyExecuting as running:
                # An orphan (its process died mid-run) is finished here first, as recovery
                # would; then begin() decides as for any finished id. One not taken (its
                # owner lives, or the claim parked it past its attempts): begin() says which.
                if not explicit or running.dead_letter is not None or not self._store.durable:
                    raise
                orphan = True
                earlier = None  # begun again below, once adopted
            if orphan:  # out of the except: begin()'s second refusal is not chained to its first
                await self._adopt(run.id, run.name)
                earlier = await self._store.begin(run)
            if earlier is not None:
                if driver is not None:
                    driver.close()
                return list(earlier.events)
            return await self._drive(run, driver)
        except SagaAlreadyExecuting as refused:
            hint = crash_hint(self._store, (run.id,)) if refused.saga_id == run.id else None
            if hint is not None:
                refused.add_note(hint)
            raise
        finally:
            if nested is not None:
                nested.pop(run.id, None)

    async def _adopt(self, saga_id: str, name: str) -> bool:
        from ._recovery import adopt

        return await adopt(self, saga_id, name)

    # One body on purpose, for speed (docs/performance.md): pyright gives up on its flow
    # (mypy checks it).
    async def _drive(  # pyright: ignore[reportGeneralTypeIssues]  # too complex: kept one body
        self,
        run: SagaRun,
        driver: StepDriver | None,
        replay: int = 0,
        *,
        hand_back: bool = False,
    ) -> list[Any]:
        """Run the steps ``driver`` yields; the first ``replay`` come from ``run.steps``.

        Without a ``driver``, the steps of ``run.definition``'s tuple, in order: what a
        generator over them would yield, without resuming one per step and its
        ``StopIteration``.

        ``hand_back`` (recovery): cancelled, stop as a crash would, without compensating
        (unless ``run.handing_back`` was set ``False``: see ``_recovery._drive_recovered``).
        """
        loop = asyncio.get_running_loop()
        watchdog = self._watchdog  # self._watch(loop), without the call: this runs per saga
        if watchdog is None or watchdog.loop is not loop:
            watchdog = self._use_loop(loop)
        now = watchdog.now
        run.task = task = asyncio.current_task(loop)
        assert task is not None, "sagakit runs inside an asyncio task"
        # The caller's cancellation requests at the start: more after a step (or a
        # listener) returns means it swallowed one.
        run.cancel_base = cancel_base = task.cancelling()
        watchdog.runs.add(run)
        # Every transition is built when a durable store or the run's listeners (those
        # there when it began, not the orchestrator's now) need it, or DEBUG logs it.
        # DEBUG is enabled only where INFO is: one level check when INFO is off.
        info = logger.isEnabledFor(logging.INFO)
        observe = (
            self._durable or bool(run.listeners) or (info and logger.isEnabledFor(logging.DEBUG))
        )
        announce = observe or info
        faults = active_faults.get()
        if faults is None:  # faults_here(), inline: a test's saga_faults, if any
            faults = test_faults.plan
        returned = None  # a value the saga's generator returned (ignored, warned about)
        run.parent = parent = current_run.get()  # enter_run(run), inline: once per saga
        if parent is not None:
            run.parent_step = running_step.get()
        token = current_run.set(run)
        step_token = running_step.set(None)
        steps = run.steps
        events = run.events
        done: list[_Done] = []
        acted: StepRun | None = None  # the step record whose function was last called
        index = 0
        value: Any = None
        # Read when there is no driver (whose steps are the definition's tuple, never
        # None then: see execute()); tested per step by ``driver``, without an assert.
        listed: tuple[StepCall[Any], ...] = (
            (run.definition._state[2] or ()) if driver is None else ()
        )
        try:
            if announce:
                await self._emit(run, ON_SAGA_STARTED)
            while True:
                if task.cancelling() > cancel_base:
                    # The caller's cancellation, caught and swallowed (by the step that
                    # just returned, or a listener): the saga stops all the same.
                    raise asyncio.CancelledError
                if driver is None:
                    if index == len(listed):
                        break
                    call = listed[index]
                else:
                    try:
                        call = driver.send(value)
                    except StopIteration as stopped:
                        if stopped.value is not None:  # (a step call returned is never run)
                            misuse = returned_error(stopped.value, run.name)
                            if misuse is not None:
                                raise misuse from None
                            # Warned once the saga has ended: a warning turned
                            # into an error must not undo the steps it completed.
                            returned = stopped.value
                        break
                    except Exception as broke:
                        misuse = delegation_error(broke, run.name)
                        if misuse is not None:  # a definition error, as yielding a list is
                            raise misuse from broke
                        # No transition tells it (no step failed): logged here, once.
                        _warn(
                            run,
                            "sagakit: saga %s (%s) raised in its own code, not in a step: %s",
                            run.name,
                            run.id,
                            describe_error(broke),
                        )
                        raise
                if call.__class__ is not StepCall:
                    _check_call(call, run.name, index)
                spec = call._spec
                if replay and index < replay:  # (a recovery's: most runs have none)
                    value = self._replayed(run, index, call, done)
                    index += 1
                    continue
                # new_step_run(index, spec.name), inline: a call costs a frame, per step.
                record = StepRun()
                record.index = index
                record.name = spec.name
                record.compensation = False
                record.status = STEP_RUNNING
                record.attempts = 1
                record.duration = None
                record.error = None
                record.events = ()
                record.result = None
                steps.append(record)
                run.step = record
                set_running_step(record)  # (a task the step creates keeps it)
                timeout = spec.timeout
                attempt = 1  # counted up where a retry goes back to the loop's top
                acted_unknown = False  # an earlier attempt timed out: it may have acted
                while True:
                    if observe:
                        try:
                            await self._emit(run, ON_STEP_STARTED, record, attempt)
                            if task.cancelling() > cancel_base:  # a listener swallowed it
                                raise asyncio.CancelledError
                        except LeaseLost:
                            raise  # another worker owns the saga: nothing more here
                        except Exception:
                            # A retry's start not recorded: failed after the attempt before,
                            # the last its record counts (as the log does: this one never ran).
                            if attempt > 1:
                                record.attempts = attempt - 1
                                if _undone_between_attempts(spec, acted_unknown):
                                    done.append((record, call, None))
                            raise
                        except asyncio.CancelledError:
                            # Cancelled before its call (while its start was written, or
                            # told): a retry never ran either, and is not counted.
                            if attempt > 1:
                                record.attempts = attempt - 1
                            raise
                    # ``failure`` (a StepFailed or StepTimeout to raise) and ``error``
                    # (what the step raised) are set by each way an attempt fails, not
                    # per attempt: a step that succeeds needs neither.
                    failure: StepFailed | None
                    error: BaseException | None
                    started = now()
                    deadline = started + timeout
                    if faults is None or (
                        (fault := faults.fault_for(call._step, attempt, compensation=False)) is None
                    ):
                        run.deadline = deadline
                        if deadline < watchdog.when:
                            watchdog.wake_at(deadline)
                        if not run.queued:  # seen by the next firing
                            run.queued = True
                            watchdog.fresh.add(run)
                        acted = record
                        try:
                            value = await (
                                call._fn(*call._args, **call._kwargs)
                                if call._kwargs
                                else call._fn(*call._args)
                            )
                            run.deadline = NO_DEADLINE
                            finished = now()
                            if run.timed_out:  # it swallowed the cancellation, returned late
                                if not claim_timeout(run):  # and the caller's: that one wins
                                    raise asyncio.CancelledError
                                raise _Late
                            if finished >= deadline:  # it blocked past its deadline
                                raise _Late
                        except asyncio.CancelledError:
                            run.deadline = NO_DEADLINE
                            if not claim_timeout(run):
                                raise
                            failure = timeout_error(index, spec.name, now() - started, timeout)
                            error = None
                        except _Late:
                            failure = timeout_error(index, spec.name, now() - started, timeout)
                            error = None
                        except Exception as raised:
                            run.deadline = NO_DEADLINE
                            if not run.timed_out:
                                if task.cancelling() > cancel_base:
                                    # It turned the caller's cancellation into an error:
                                    # interrupted by that cancellation, not retried.
                                    raise asyncio.CancelledError from raised
                                failure, error = None, raised
                            elif claim_timeout(run):  # it turned its timeout into another error
                                failure = timeout_error(index, spec.name, now() - started, timeout)
                                failure.__cause__ = raised
                                error = None
                            else:  # and the caller's cancellation too: that one wins
                                raise asyncio.CancelledError from raised
                        except BaseExceptionGroup as group:  # not an Exception's group
                            if (crash := crash_in(group)) is None:
                                raise
                            raise crash from group  # "the process died" in an inner saga
                        else:
                            record.duration = finished - started
                            break
                    elif fault is SIMULATED_TIMEOUT:
                        acted = record  # a faulted attempt stands for a call (see below)
                        failure, error = StepTimeout(index, spec.name, timeout, timeout), None
                    else:
                        if isinstance(fault, CrashAfter):  # the step acts, then "the process dies"
                            acted = record
                            # Failed or timed out, it still dies before its outcome is recorded.
                            with contextlib.suppress(Exception):
                                async with asyncio.timeout(timeout):
                                    await call._fn(*call._args, **call._kwargs)
                            fault = fault.crash
                        if isinstance(fault, SimulatedCrash):
                            raise fault
                        if not isinstance(fault, Exception):
                            # KeyboardInterrupt, SystemExit, CancelledError: handled as when
                            # the step itself raises it (see the call above)
                            acted = record
                            raise fault
                        # A faulted attempt stands for a call: ended by a cancellation (or a
                        # KeyboardInterrupt) while waiting to retry it, it ran since ``started``.
                        acted = record
                        failure, error = None, raised_by_step(fault)  # as the step's own raise
                    if failure is None:
                        assert error is not None
                        failure = _step_failed(index, spec.name, error)
                        failure.__cause__ = error
                    policy = spec.retry
                    if attempt < policy.attempts and policy.retries(error or failure):
                        if failure.__class__ is StepTimeout:
                            acted_unknown = True
                        # Why it is retried, in its record until the next attempt starts
                        # (as a durable store keeps it).
                        record.error = describe_error(error or failure)
                        try:
                            if announce:
                                await self._emit(
                                    run, ON_STEP_RETRYING, record, attempt, error=error or failure
                                )
                            await self._pause(policy.delay(attempt))
                        except LeaseLost:
                            raise  # another worker owns the saga: nothing more here
                        except Exception:
                            # The retry could not be recorded (or waited for).
                            if _undone_between_attempts(spec, acted_unknown):
                                done.append((record, call, None))
                            raise
                        if task.cancelling() > cancel_base:  # the sleep swallowed it
                            raise asyncio.CancelledError
                        attempt += 1
                        record.attempts = attempt
                        record.error = None  # the last attempt's, shown while it waited
                        continue
                    # Failed for good: mark it, and queue it for compensation if its
                    # options say so.
                    timed_out = failure.__class__ is StepTimeout
                    record.status = STEP_TIMED_OUT if timed_out else STEP_FAILED
                    # A timeout's duration is its error's (at least the timeout).
                    ended = now()
                    record.duration = (
                        failure.duration if isinstance(failure, StepTimeout) else ended - started
                    )
                    run.updated_mono = ended  # its metadata's updated_at: the failure
                    record.error = described = describe_error(error or failure)
                    # A step that raised in the end, after an attempt that timed out, may
                    # have acted then: compensated as a timed-out step is. Its error says
                    # so, for recovery to decide as this run does (the log keeps the last
                    # attempt's error only) and for whoever reads the log.
                    if acted_unknown and not timed_out:
                        record.error = described + ACTED_UNKNOWN
                    if (
                        spec.compensate_on_timeout
                        if timed_out
                        else spec.compensate_on_failure
                        or (acted_unknown and spec.compensate_on_timeout)
                    ):
                        done.append((record, call, None))
                    if run.error is None:
                        # Before the failure is recorded, so that a durable log keeps the
                        # saga's error with it (recovery reads it if the process dies before
                        # compensating). describe_error(failure), built from the step error's
                        # text made above: a step's name is written by repr(), which escapes
                        # what storable_text() would, and puts no line break in it.
                        run.error = (
                            describe_error(failure)
                            if timed_out
                            else f"StepFailed: step {index} ({spec.name!r}) failed: {described}"
                        )
                    kind = ON_STEP_TIMED_OUT if timed_out else ON_STEP_FAILED
                    # What _emit() checks first, without its coroutine when it has nothing to
                    # do; level_of(kind, run.status) without its call: a step's end warns.
                    if observe or logger.isEnabledFor(_STEP_FAILED_LEVEL):
                        try:
                            await self._emit(
                                run,
                                kind,
                                record,
                                attempt,
                                error=error or failure,
                                duration=record.duration,
                            )
                        except LeaseLost:
                            raise  # another worker owns the saga: nothing more here
                        except Exception:
                            if run.unwritten is None:  # not the log's write: raised as is
                                raise
                            # The log could not record the failure (StoreError): the saga
                            # still fails with it, and the run's end writes it.
                            self._failure_unwritten(run, failure)
                    raise failure
                cls = value.__class__
                # A list copied (its owner may change it later), without a call. An
                # awaitable returned by mistake raises here: the step fails, undone below.
                step_events = (  # a list first: what steps return most
                    tuple(value)
                    if cls is list
                    else value
                    if cls is tuple
                    else events_of(value, record)
                )
                record.result = value
                record.events = step_events
                record.status = STEP_COMPLETED
                events.extend(step_events)
                run.updated_mono = finished
                # Queued for compensation before its completion is told: a cancellation
                # while a listener hears of it must still undo it.
                done.append((record, call, value))
                if observe:
                    await self._step_completed(run, record)
                index += 1
            if index == 0:
                raise SagaDefinitionError(
                    f"saga {run.name!r} yielded no steps; a saga needs at least one step"
                )
        except LeaseLost as lost:
            # Fenced out: another worker owns this saga now and finishes it. Run
            # nothing more here (no step, no compensation) and record nothing.
            close_driver(driver, run.name, run.id)
            await self._stopped(run, lost)
            raise
        except asyncio.CancelledError as cancelled:
            if hand_back and run.handing_back is None:
                # Code in the run cancelled the task it runs in (a listener, a step):
                # _drive_recovered cancels its caller then, as execute()'s is; handed back
                # (or undone) as that caller's cancellation would have it.
                run.handing_back = hands_back(run.parent, run.parent_step)
            if (hand_back and run.handing_back is not False) or (
                self._durable and handed_back_with(run)
            ):
                # A cancelled recovery (Ctrl-C, a shutdown): leave the saga as a crash
                # leaves it, for the next recovery to finish per its policy, rather
                # than undo it against that policy. Nothing more is run or told. So is
                # a saga a step of it executes: that step runs again, and finishes it.
                close_driver(driver, run.name, run.id)
                await self._stopped(run, asyncio.CancelledError(HANDED_BACK))
                raise
            interrupted: StepRun | None = None
            unstarted: StepRun | None = None
            if steps and steps[-1].status is STEP_RUNNING:
                record = steps[-1]
                record.status = STEP_FAILED
                if acted is not record:  # cancelled while its start was being recorded
                    record.error = UNSTARTED_ERROR
                    if run.unlogged_start is not record:
                        # Its start is in the log, or told: so is its end, before anything
                        # is undone (recovery must not undo a step that never ran). Else
                        # its end is written with the run's (see interrupted_step).
                        unstarted = record
                else:
                    # Interrupted mid-step (``call`` is that step's): its effect is
                    # unknown, so it is undone like a timed-out step.
                    record.error = CANCELLED_ERROR
                    record.duration = now() - started
                    interrupted = record
                    if call._spec.compensate_on_timeout:
                        done.append((record, call, None))
            if interrupted is None and unstarted is None:
                # No step's STEP_FAILED tells this cancellation (a step caught it and
                # returned, or it came while a listener or the log was awaited): logged
                # here, once, or the saga's compensation would have no record saying why.
                _warn(
                    run,
                    "sagakit: saga %s (%s) was cancelled while no step ran (between steps, "
                    "or a step caught the cancellation and returned); its completed steps "
                    "are compensated",
                    run.name,
                    run.id,
                )
            close_driver(driver, run.name, run.id)
            run.error = CANCELLED_ERROR
            try:
                # To its end whatever cancels us again; then its outcome, as if awaited.
                undo = self._undo_cancelled(run, interrupted or unstarted, done, faults, observe)
                (await wait_out(undo)).result()
            except SimulatedCrash as crash:
                self._crashed(run, crash)
                raise  # "the process died": nothing more is run or recorded
            except GeneratorExit:
                self._abandoned(run)
                raise
            except LeaseLost as lost:
                # Fenced out (its lease released, as a process shutting down does, or
                # taken over): the saga's owner finishes it. It stops here as it does on
                # the way forward: nothing more undone or recorded, SAGA_STOPPED told.
                await self._stopped(run, lost)
                _chain(cancelled, lost)
                raise cancelled from None  # (its __context__: the LeaseLost, chained above)
            except Exception as unrecorded:  # a compensation's transition: the run ends FAILED
                run.status = SAGA_FAILED
                _chain(cancelled, unrecorded)
            except asyncio.CancelledError:
                # A compensation raised it itself: _compensate ran it again to its end and
                # set the status (left COMPENSATING, ended FAILED, if that run raised it
                # too). The caller's cancellation is the one raised.
                pass
            except BaseException as fatal:  # KeyboardInterrupt, SystemExit in a compensation
                run.status = SAGA_FAILED  # it ended there: nothing more is undone
                await self._finish_before(run, fatal)
                raise
            await self._finish_before(run, cancelled)
            raise
        except Exception as failure:
            # This frame is in the failure's traceback: keep no exception in its locals,
            # or each failed run leaves a reference cycle for the garbage collector.
            error = None
            if driver is not None:  # (a list or builder saga's run has none: no call)
                close_driver(driver, run.name, run.id)
            if run.error is None:
                run.error = describe_error(failure)
            if run.unwritten is not None:  # a write of the log failed: the saga fails here
                self._unwritten(
                    run, logging.WARNING, "the saga fails, and its completed steps are compensated"
                )
            # Failed outside the step's own call (recording its start or a retry): no
            # transition ends it, so the run's end does (see interrupted_step).
            if steps and steps[-1].status is STEP_RUNNING:
                _end_running_step(steps, acted, failure)
            try:
                compensation_failure = await self._compensate(run, done, failure, faults, observe)
            except asyncio.CancelledError as cancelled:
                # Cancelled while compensating: _compensate finished the work shielded and
                # set the status (COMPENSATED unless a compensation failed).
                await self._finish_before(run, cancelled)
                raise
            except SimulatedCrash as crash:
                self._crashed(run, crash)
                raise  # "the process died": nothing more is run or recorded
            except GeneratorExit:
                self._abandoned(run)
                raise
            except BaseException as stopped:
                run.status = SAGA_FAILED
                if isinstance(stopped, Exception) and task.cancelling() > cancel_base:
                    # A compensation swallowed the caller's cancellation, then the log
                    # refused a write: the cancellation is raised, as if it had come through.
                    await self._raise_swallowed(run, stopped)
                if isinstance(stopped, Exception):
                    await self._finish(run)
                else:  # KeyboardInterrupt, SystemExit: an unrecorded end must not replace it
                    await self._finish_before(run, stopped)
                raise
            if task.cancelling() > cancel_base:
                # A compensation (or a listener) swallowed the caller's cancellation: the
                # work is done, and the caller gets its CancelledError, not the failure.
                await self._raise_swallowed(run, cause=failure)
            memory = self._memory
            if memory is not None:
                # self._finish(run), inline for the default store (as a completed run's
                # end, below): two coroutines less per failed saga.
                run.finished_mono = run.updated_mono = now()
                if run.status is SAGA_EXECUTING or run.status is SAGA_COMPENSATING:
                    run.status = SAGA_FAILED
                try:
                    memory._finish_now(run)
                finally:
                    # level_of(ON_SAGA_FINISHED, status) for a run that did not complete
                    if run.listeners or logger.isEnabledFor(
                        logging.ERROR if run.status is SAGA_FAILED else logging.WARNING
                    ):
                        await self._emit(run, ON_SAGA_FINISHED)
            else:
                await self._finish(run)
            if isinstance(failure, SagaRunError):
                failure.saga_id = run.id
                failure.events = list(run.events)
                failure.compensation_events = list(run.compensation_events)
            if compensation_failure is not None:
                compensation_failure.__cause__ = failure
            if task.cancelling() > cancel_base:
                # Cancelled while its end was told (a listener of it swallowed that, or a
                # sync one left it pending): as for a completed saga, the caller gets its
                # CancelledError, the failure chained to it.
                late: asyncio.CancelledError | None = asyncio.CancelledError()
                assert late is not None
                try:
                    raise late from compensation_failure or failure
                finally:
                    late = compensation_failure = None
            if compensation_failure is not None:
                try:
                    raise compensation_failure from failure
                finally:
                    compensation_failure = None
            raise
        except SimulatedCrash as crash:
            # "The process died": nothing more is run or recorded.
            close_driver(driver, run.name, run.id)
            self._crashed(run, crash)
            raise
        except GeneratorExit:
            close_driver(driver, run.name, run.id)
            self._abandoned(run)
            raise
        except BaseException as failure:  # KeyboardInterrupt, SystemExit: no time to undo
            run.deadline = NO_DEADLINE  # raised by a step: its deadline must not cut _finish
            if run.timed_out:  # it caught its timeout's cancellation: take that back
                claim_timeout(run)
            close_driver(driver, run.name, run.id)
            # Raised by the step's own call (not while its start was told): its end is
            # told, as a cancellation's is, so that its log record, listeners and span
            # say what stopped the saga. Nothing is compensated.
            raised_here = bool(steps) and steps[-1] is acted and acted.status is STEP_RUNNING
            _end_running_step(steps, acted, failure)  # it raised: it ended there
            if raised_here:
                assert acted is not None
                acted.duration = now() - started
                await self._tell_fatal(run, ON_STEP_FAILED, acted, failure)
            run.status = SAGA_FAILED
            run.error = describe_error(failure) + NOT_COMPENSATED
            await self._finish_before(run, failure)
            raise
        finally:
            # watchdog.forget(run), inline: a call costs a frame (about 300 instructions), per saga.
            watchdog.runs.discard(run)
            if run.queued:  # no firing looked at it since its last step: forget it
                run.queued = False
                watchdog.fresh.discard(run)
            run.task = None  # a finished run in the history must not keep its task alive
            run.parent = run.parent_step = None  # leave_run(run, token), inline
            try:
                current_run.reset(token)
                running_step.reset(step_token)
            except ValueError:  # closed by the garbage collector (see _abandoned): in
                pass  # another context, which these never changed
        run.status = SAGA_COMPLETED
        run.total_steps = index
        run.finished_mono = run.updated_mono = now()
        memory = self._memory
        if memory is not None:
            # self._end(run, announce), inline for the default store: one coroutine
            # less per saga.
            memory._finish_now(run)
            if announce:
                await self._emit(run, ON_SAGA_FINISHED)
        else:
            await self._end(run, announce)
        if task.cancelling() > cancel_base:  # a listener of its end swallowed it
            raise asyncio.CancelledError
        if returned is not None:
            warn_returned(run.definition, returned)
        return events.copy()

    def _replayed(self, run: SagaRun, index: int, call: StepCall[Any], done: list[_Done]) -> Any:
        """Match a replayed step against the log and return its recorded result."""
        record = run.steps[index]
        if record.name != call._spec.name:
            raise NonDeterminismError(
                f"saga {run.name!r} ({run.id}) yielded step {call._spec.name!r} at index "
                f"{index}, but its log records {record.name!r}: the saga's code changed since "
                "this run started; finish or resolve it with the code it started with"
            )
        done.append((record, call, record.result))
        return record.result

    async def _step_completed(self, run: SagaRun, record: StepRun) -> None:
        """Emit STEP_COMPLETED; if it cannot be recorded, fail the step (already queued
        for compensation, so it is undone too)."""
        try:
            await self._emit(
                run,
                ON_STEP_COMPLETED,
                record,
                record.attempts,
                result=record.result,
                events=tuple(record.events),
                duration=record.duration,
            )
        except LeaseLost:
            raise  # another worker owns the saga: it must not be undone from here
        except Exception as unrecorded:
            # The step acted but its completion could not be recorded: undo it too.
            if record.events:
                del run.events[-len(record.events) :]
            record.status = STEP_FAILED
            record.error = describe_error(unrecorded)
            raise StepFailed(record.index, record.name, unrecorded) from unrecorded

    # Recording transitions: see _recording.
    _unwritten = _recording._unwritten
    _failure_unwritten = _recording._failure_unwritten
    _emit = _recording._emit

    # How a run ends: see _ending.
    _tell_fatal = _ending._tell_fatal
    _crashed = _ending._crashed
    _tell_instruments = _ending._tell_instruments
    _abandoned = _ending._abandoned
    _stopped = _ending._stopped
    _tell_stopped = _ending._tell_stopped
    _finish = _ending._finish
    _end = _ending._end
    _finish_before = _ending._finish_before
    _raise_swallowed = _ending._raise_swallowed
    _unrecorded_end = _ending._unrecorded_end

    # How a run compensates: see _compensating.
    _compensation_unwritten = _compensating._compensation_unwritten
    _tell_undo_left = _compensating._tell_undo_left
    _undo_cancelled = _compensating._undo_cancelled
    _compensate = _compensating._compensate
    _undo = _compensating._undo
    _compensation_failed = _compensating._compensation_failed

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` before a retry, with the ``sleep`` the orchestrator was given."""
        waiting = self._sleep(seconds)
        if not inspect.isawaitable(waiting):  # a plain function: known only once called
            raise SagaDefinitionError(
                f"SagaOrchestrator(sleep=...) must return an awaitable, as asyncio.sleep does, "
                f"but {self._sleep!r} returned {waiting!r}; make it an 'async def'"
            )
        await waiting

    # --------------------------------------------------------------- monitoring

    async def running_count(self) -> int:
        """How many sagas are executing or compensating now."""
        return await self._store.running_count()

    async def history_count(self) -> int:
        """How many finished sagas are kept in the history."""
        return await self._store.history_count()

    async def get_running_sagas(self) -> list[SagaMetadata]:
        """Metadata of the sagas executing or compensating now."""
        return await self._store.running()

    async def get_saga(self, saga_id: str) -> SagaMetadata | None:
        """Metadata of one saga, running or finished, or ``None`` if unknown."""
        check_saga_id(saga_id, "get_saga()")  # before a custom store is asked
        return await self._store.get(saga_id)

    async def get_history(self, limit: int | None = None) -> list[SagaMetadata]:
        """Metadata of finished sagas, oldest first (only the newest ``limit`` if given)."""
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise SagaDefinitionError(
                f"get_history(limit=...) must be a whole number >= 0 or None, got {limit!r}"
            )
        return await self._store.history(limit)

    async def recover(
        self, *, max_attempts: int | None = None, limit: int | None = None
    ) -> list[RecoveryOutcome]:
        """Finish the sagas a dead process left ``EXECUTING`` or ``COMPENSATING``.

        Each is resumed or compensated (see ``docs/durability.md``); one that cannot
        be (unknown name, changed code, ``max_attempts`` crashes) is dead-lettered.
        Returns what was done with each: nothing with a store that is not durable (its
        sagas died with their process); a durable one must be a
        :class:`~sagakit.stores.RecoverableStore`.
        Cancelled, it leaves the saga it was resuming as a crash would, for the next one.
        """
        asyncio_loop("recover()")
        attempts = self._max_recovery_attempts if max_attempts is None else max_attempts
        return await recover(self, max_attempts=attempts, limit=limit)

    async def run_worker(
        self,
        *,
        poll_interval: float = 1.0,
        concurrency: int = 100,
        max_attempts: int | None = None,
        handle_signals: bool = True,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Keep claiming and finishing orphaned sagas until cancelled, SIGTERM or ``stop``.

        On the way out the worker releases the leases it holds, so other workers take
        its sagas over at once (see ``docs/postgres.md``).
        """
        asyncio_loop("run_worker()")
        attempts = self._max_recovery_attempts if max_attempts is None else max_attempts
        await run_worker(
            self,
            poll_interval=poll_interval,
            concurrency=concurrency,
            max_attempts=attempts,
            handle_signals=handle_signals,
            stop=stop,
        )

    async def close(self) -> None:
        """Close the store."""
        await self._store.close()

    async def __aenter__(self) -> Self:
        self._entered = True
        if self._recover_on_start:
            try:
                await self.recover()
            except BaseException as error:
                await self._close_after(error)  # __aexit__ does not run when entering fails
                raise
        return self

    async def __aexit__(
        self, exc_type: object, error: BaseException | None, traceback: object
    ) -> None:
        await self._close_after(error)

    async def _close_after(self, error: BaseException | None) -> None:
        """Close the store on the way out of ``async with``. After a simulated crash "the
        process died": its leases are given up as a crash's (as ``simulate_restart()``
        does), not handed back as a shutdown's, or the next claim of those sagas would
        not count as a recovery attempt. Left by a ``GeneratorExit`` (the block's task
        destroyed with its closed event loop, its coroutine closed by the garbage
        collector: see :meth:`_abandoned`), nothing can be awaited: the store is left
        open, for ``close()`` from a loop that runs."""
        if isinstance(error, GeneratorExit):
            return
        release_leases = getattr(self._store, "release_leases", None)
        watch = CancellationWatch()
        try:
            # (A crash in a TaskGroup of the block comes wrapped in its exception group.)
            if error is not None and crash_in(error) is not None and release_leases is not None:
                await release_leases(as_crash=True)
        finally:
            await self.close()
        if error is None and watch.came():
            # Cancelled while the store closed, and the store caught it (a store's own
            # close(), the driver's pool): leaving the block normally would run the code
            # after it in a cancelled task.
            raise asyncio.CancelledError

    def __repr__(self) -> str:
        return f"<SagaOrchestrator store={self._store!r}>"


# The methods its class body takes from _recording, _ending and _compensating are named as
# its own, as if defined there: in coroutine and task reprs and in their frames' code.
def _name_as_own(cls: type) -> None:
    for name, method in vars(cls).items():
        if inspect.isfunction(method) and method.__module__ != __name__:
            method.__qualname__ = f"{cls.__name__}.{name}"
            method.__code__ = method.__code__.replace(co_qualname=method.__qualname__)


_name_as_own(SagaOrchestrator)
del _name_as_own


__all__ = ["Listener", "SagaOrchestrator"]
