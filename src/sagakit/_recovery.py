"""Crash recovery: finish the sagas a dead process left running.

For each orphan claimed from a :class:`~sagakit.stores.RecoverableStore`, the saga is
rebuilt from the ``@saga`` registry with its logged arguments, and its generator is
replayed against the log (fed the recorded results; a mismatch is a
:class:`~sagakit.NonDeterminismError` and dead-letters the saga before anything
runs). Then, by the saga's state and policy, it either resumes at the first step
not recorded as completed, or compensates the completed steps not yet compensated,
in reverse order. Completed steps never run again, nor do compensations that completed
or failed for good (the saga then ends ``FAILED`` at the failed one, as its run would
have); one the crash interrupted runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from ._checks import check_count
from ._counted import counted
from ._hooks import SimulatedCrash, crash_hint, faults_here, forget_crashes
from ._runs import (
    ACTED_UNKNOWN,
    CANCELLED_ERROR,
    CRASHED,
    UNSTARTED_ERROR,
    SagaRun,
    StepRun,
    current_run,
    describe_error,
    enter_run,
    handed_back_with,
    leave_run,
    new_step_run,
    running_step,
    still_running,
)
from ._sagas import (
    SagaDefinition,
    StepDriver,
    close_driver,
    registered_saga,
    registered_sagas,
)
from ._shielding import CancellationWatch, wait_out
from ._steps import StepCall
from ._tracebacks import hide_from_pytest
from .exceptions import (
    LeaseLost,
    NonDeterminismError,
    SagaDefinitionError,
    SagaError,
    StoreError,
    _LoggedError,
)
from .records import one_line, shown_line
from .status import SagaStatus, StepStatus
from .stores._fingerprint import definition_fingerprint
from .stores._protocol import LoggedStep, OrphanedSaga, RecoverableStore

if TYPE_CHECKING:
    from ._orchestrator import SagaOrchestrator
    from .stores import SagaStore

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest


logger = logging.getLogger("sagakit")

DEFAULT_MAX_ATTEMPTS = 3

recovery_limit: ContextVar[int | None] = ContextVar("sagakit_recovery_limit", default=None)
"""While a recovery (``recover()``, a worker, :func:`adopt`) finishes an orphan: the
``max_attempts`` it was given, which :func:`adopt` applies to the inner sagas the resumed
steps execute again, whichever orchestrator executes them (not its
``max_recovery_attempts``): they are finished as part of that recovery. Nothing is set
on the ``execute()`` path."""

RecoveryAction: TypeAlias = Literal["resumed", "compensated", "dead_lettered"]
"""What recovery did with an orphaned saga (:attr:`RecoveryOutcome.action`)."""

_FAILED_FOR_GOOD = (StepStatus.FAILED, StepStatus.TIMED_OUT)
"""The logged statuses of a compensation that ended, not completed (a running one ends
``FAILED`` only with its saga's end, which an orphan's log lacks)."""


@dataclass(frozen=True, slots=True)
class RecoveryOutcome:
    """What recovery did with one orphaned saga, and how it ended."""

    saga_id: str
    name: str
    action: RecoveryAction
    status: SagaStatus
    error: str | None = None

    def __repr__(self) -> str:
        name = one_line(self.name)
        text = f"<RecoveryOutcome {name} id={self.saga_id!r} {self.action} -> {self.status}"
        return text + (f" ({shown_line(self.error)})" if self.error else "") + ">"


def _fields(orphan: OrphanedSaga) -> dict[str, Any]:
    """The structured log fields of a record about ``orphan`` (the rest are ``None``)."""
    return {"saga_id": orphan.saga_id, "saga_name": orphan.name}


def _recoverable(store: object) -> RecoverableStore:
    if not isinstance(store, RecoverableStore):
        raise StoreError(
            f"{store!r} cannot recover sagas; use a durable store such as "
            "SQLiteStore('sagas.db') to survive crashes"
        )
    return store


async def recover(
    orchestrator: SagaOrchestrator,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    limit: int | None = None,
) -> list[RecoveryOutcome]:
    """Claim and finish orphaned sagas until none are left (or ``limit`` are done)."""
    check_count(max_attempts, "max_attempts")  # 0 would park every orphan, untried
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise SagaDefinitionError(f"limit must be a whole number >= 0 or None, got {limit!r}")
    store = orchestrator.store
    if not store.durable:
        _warn_crashed_left(store)
        return []  # an in-memory store's sagas died with their process
    recoverable = _recoverable(store)
    watch = CancellationWatch()
    outcomes: list[RecoveryOutcome] = []
    while limit is None or len(outcomes) < limit:
        orphans = await _claim_next(recoverable, max_attempts)
        if watch.came():
            # Cancelled while claiming, and the claim caught it (Python 3.11's
            # asyncio.wait_for in the driver's pool can): recovery would return as if
            # never cancelled (and `async with` with recover_on_start run its block), or
            # run what the claim returned to its end first. That is given back, unrun.
            await give_back(recoverable, orphans)
            raise asyncio.CancelledError
        if not orphans:
            break
        for orphan in orphans:
            outcome = await _finish_orphan(orchestrator, recoverable, orphan, max_attempts)
            if outcome is not None:
                outcomes.append(outcome)
            if watch.came():
                # Its cancellation, caught and swallowed (by a compensation, which runs to
                # its end): the saga is finished, and recovery stops there all the same.
                raise asyncio.CancelledError
    await tell_unregistered(recoverable, set())
    _warn_crashed_left(store)
    return outcomes


async def tell_unregistered(store: RecoverableStore, told: set[str]) -> None:
    """Say, once per name (``told`` holds the names said already), that the log holds
    unfinished sagas of a name no ``@saga`` here declares: claims never take them (a saga
    only a newer version of the code declares, in a rolling deploy), so a process that
    declares it must. Without that word, an operator sees them wait and nothing said."""
    running: Callable[[], Awaitable[list[tuple[str, int, str]]]] | None = getattr(
        store, "_running_names", None
    )
    if running is None:
        return
    try:
        found = await running()
    except StoreError:
        return  # the database is away: the next claim says so
    known = {function.name for function in registered_sagas()}
    for name, count, _ in found:
        if name in known or name in told:
            continue
        told.add(name)
        logger.info(
            "sagakit recovery: the log holds %s named %r, and no @saga of that name is "
            "registered here: %s left for a process that declares it",
            counted(count, "unfinished saga"),
            name,
            "it is" if count == 1 else "they are",
        )


def _warn_crashed_left(store: SagaStore) -> None:
    """Say why recovery left alone the sagas a simulated crash stopped in this process
    (no restart simulated): a test would find ``recover()`` returning nothing, unexplained."""
    hint = crash_hint(store)
    if hint is not None:
        logger.warning("sagakit recovery: %s", hint)


async def _claim_next(
    store: RecoverableStore, max_attempts: int, saga_ids: Collection[str] | None = None
) -> list[OrphanedSaga]:
    """Claim the oldest orphan this process can run (of ``saga_ids``, if given).

    One claim at a time: a claim counts as a recovery attempt, so claiming a batch
    would spend the attempts of sagas a crash then leaves untried.
    """
    names = {function.name for function in registered_sagas()}
    orphans = await store.claim_orphans(
        names=names, limit=1, max_attempts=max_attempts, saga_ids=saga_ids
    )
    forget_crashes(store, [orphan.saga_id for orphan in orphans])  # run again: no crash hint
    return orphans


async def give_back(
    store: RecoverableStore,
    orphans: Collection[OrphanedSaga],
    within: Callable[[asyncio.Future[Any]], Awaitable[str | None]] | None = None,
) -> None:
    """Give back claimed ``orphans`` that will not be run here (their claimer was
    cancelled), whatever cancels the caller meanwhile: the next recovery takes them,
    and their claim here counts no recovery attempt (see ``give_back()`` of the
    stores). A store without ``give_back()`` keeps them as this process's until it
    sees this process gone (it exits, or a lease runs out), as after a crash.

    ``within`` (a stopping worker's budget): waits for the store's call, or gives it
    up (cancels it and says why, a string); given up, the sagas stay claimed until
    their leases expire, then any worker claims them."""
    if not orphans:
        return
    saga_ids = [orphan.saga_id for orphan in orphans]
    giving: Callable[[list[str]], Awaitable[Any]] | None = getattr(store, "give_back", None)
    if giving is None:
        logger.warning(
            "sagakit recovery was cancelled with sagas %s claimed and not run; %r has no "
            "give_back(), so they stay this process's until it sees the process gone",
            saga_ids,
            store,
        )
        return
    if within is None:
        done = await wait_out(giving(saga_ids))
    else:
        done = asyncio.ensure_future(giving(saga_ids))
        given_up = await within(done)
        if given_up is not None:
            logger.warning(
                "sagakit worker could not hand back sagas %s it claimed and did not run: "
                "%s; they stay claimed until their leases expire, then any worker claims them",
                saga_ids,
                given_up,
            )
            return
    if not done.cancelled() and done.exception() is not None:
        logger.warning(
            "sagakit recovery could not give back sagas %s it claimed and did not run: %s",
            saga_ids,
            done.exception(),
        )
    else:
        logger.info("sagakit recovery gave back sagas %s, unrun (it was cancelled)", saga_ids)


async def _finish_orphan(
    orchestrator: SagaOrchestrator,
    store: RecoverableStore,
    orphan: OrphanedSaga,
    max_attempts: int,
) -> RecoveryOutcome | None:
    """Recover a claimed orphan; ``None`` if another worker took it over meanwhile (that
    worker finishes it)."""
    try:
        return await _recover_one(orchestrator, store, orphan, max_attempts)
    except LeaseLost as lost:
        log_stopped("recovery", orphan, lost)
        return None


def log_stopped(who: str, orphan: OrphanedSaga, lost: LeaseLost) -> None:
    """Log that ``who`` (recovery, a worker) stopped finishing ``orphan``, fenced out:
    at WARNING when its lease was lost to another worker. Released by this store (a
    stop, an exit), an orderly handover, its ``SAGA_STOPPED`` record (at INFO) is the
    one telling it; logged here at INFO only if no run told one (fenced out before)."""
    if lost.released and lost._stop_told == orphan.saga_id:
        return
    logger.log(
        logging.INFO if lost.released else logging.WARNING,
        "sagakit %s stopped saga %s: %s",
        who,
        orphan.saga_id,
        lost,
        extra=_fields(orphan),
    )


async def adopt(orchestrator: SagaOrchestrator, saga_id: str, name: str) -> bool:
    """Finish ``saga_id`` (of the saga ``name``) here, as recovery would, if it is an
    orphan (its process died mid-run and no one recovers it yet); whether it was one.

    ``execute()`` of an explicit id calls this when the log has that id executing: a
    step re-run by recovery that executes an inner saga under a derived id (the
    idempotency-key pattern) would otherwise fail with ``SagaAlreadyExecuting``, and
    that inner saga be finished later, behind its outer one's back.
    """
    store = orchestrator.store
    if not store.durable or not isinstance(store, RecoverableStore):
        return False
    recovering = orchestrator._recovering.get(saga_id)
    run = current_run.get()
    if (
        recovering is not None
        and recovering[0] is asyncio.get_running_loop()
        and (run is None or run.id != saga_id)
    ):
        # Another task of this orchestrator recovers it now: a worker claimed an outer
        # saga and its inner one together. Claiming fails (this store holds it), and
        # SagaAlreadyExecuting would compensate the outer saga while the inner one goes
        # on: wait for that recovery to end instead (execute() then answers from it).
        logger.info(
            "sagakit: saga %s (%s) is being recovered here; execute() waits for it to end",
            name,
            saga_id,
            extra={"saga_id": saga_id, "saga_name": name},
        )
        await recovering[1].wait()
        return True
    # A claim past the limit parks the saga: that of the recovery (recover(), a worker)
    # whose resumed step executes this inner saga again, on this orchestrator or another,
    # else this orchestrator's, as its recover() would apply.
    limit = recovery_limit.get()
    max_attempts = orchestrator._max_recovery_attempts if limit is None else limit
    watch = CancellationWatch()
    orphans = await _claim_next(store, max_attempts, (saga_id,))
    if watch.came() and hands_back(run, running_step.get()):
        # Cancelled while claiming, and the claim swallowed it (see recover()): execute()
        # ran the orphan to its end, then returned as if never cancelled. (Cancelled from
        # inside the step executing it — its timeout — the orphan is finished below, as
        # before: given back, it would be resumed later behind the back of a step undone.)
        await give_back(store, orphans)
        raise asyncio.CancelledError
    for orphan in orphans:
        await _finish_orphan(orchestrator, store, orphan, max_attempts)
    if watch.came():
        # Swallowed by a compensation, which ran to its end: the orphan is finished, and
        # execute() must not go on (it would run a compensated id again, as if not cancelled).
        raise asyncio.CancelledError
    return bool(orphans)


async def _park(store: RecoverableStore, orphan: OrphanedSaga, reason: str) -> RecoveryOutcome:
    try:
        await store.dead_letter(orphan.saga_id, reason)
    except BaseException:
        # Not parked (the log refused it, its lease was lost, or recovery was cancelled
        # while it was written), so not logged as parked: give it back, or SQLite's claim
        # kept it this live process's, which no recovery takes until it exits. The next
        # claim parks it.
        await give_back(store, (orphan,))
        raise
    logger.error(
        "sagakit recovery parked saga %s (%s): %s",
        orphan.name,
        orphan.saga_id,
        reason,
        extra=_fields(orphan),
    )
    return RecoveryOutcome(orphan.saga_id, orphan.name, "dead_lettered", orphan.status, reason)


def _definition(orphan: OrphanedSaga) -> SagaDefinition | str:
    """The saga rebuilt from the registry, or why it cannot be."""
    if not orphan.factory:
        return (
            "it was built with SagaDefinition(...).add_step(...) (or extended with add_step()), "
            "which recovery cannot rebuild; declare it with @saga so recovery can find it by name"
        )
    function = registered_saga(orphan.name)
    if function is None:
        return f"no @saga named {orphan.name!r} is registered; import the module defining it"
    try:
        return function(*orphan.args, **orphan.kwargs)
    except Exception as error:
        return f"calling {orphan.name}(...) with its logged arguments raised {error!r}"


def _replay(
    definition: SagaDefinition, orphan: OrphanedSaga, done: tuple[LoggedStep, ...]
) -> tuple[list[StepCall[Any]], StepDriver]:
    """Run the saga body against the log: the step calls of ``done`` and of the next one,
    and the body's generator, left open where it yielded the last of them."""
    driver = definition._driver()
    calls: list[StepCall[Any]] = []
    value: Any = None
    try:
        wanted = list(done)
        if len(orphan.steps) > len(done):
            wanted.append(orphan.steps[len(done)])
        for logged in wanted:
            try:
                call = driver.send(value)
            except StopIteration:
                raise NonDeterminismError(
                    f"saga {orphan.name!r} ({orphan.saga_id}) ended after "
                    f"{counted(len(calls), 'step')} on replay, but its log records step "
                    f"{logged.index} {logged.name!r}: the saga's code changed since this run "
                    "started; finish or resolve it with the old code"
                ) from None
            name = call._spec.name if isinstance(call, StepCall) else repr(call)
            if name != logged.name:
                raise NonDeterminismError(
                    f"saga {orphan.name!r} ({orphan.saga_id}) yielded step {name!r} at index "
                    f"{logged.index} on replay, but its log records {logged.name!r}: the "
                    "saga's code changed since this run started; finish or resolve it with "
                    "the old code"
                )
            calls.append(call)
            value = logged.result
    except BaseException:
        close_driver(driver, orphan.name, orphan.saga_id)
        raise
    return calls, driver


def _continued(calls: list[StepCall[Any]], body: StepDriver) -> StepDriver:
    """The step calls the replay drew from ``body`` again (the values sent for them are
    dropped: ``body`` was fed the logged results), then ``body`` itself, where it stands:
    the body of a resumed saga runs once."""
    value: Any = None
    for call in calls:
        value = yield call
    try:
        while True:
            try:
                call = body.send(value)
            except StopIteration as stop:
                return stop.value
            value = yield call
    finally:
        body.close()


def _rebuild(
    orchestrator: SagaOrchestrator,
    definition: SagaDefinition,
    orphan: OrphanedSaga,
    done: tuple[LoggedStep, ...],
) -> SagaRun:
    loop = asyncio.get_running_loop()
    run = SagaRun(orphan.saga_id, definition, orphan.explicit_id, loop.time(), orchestrator._ref)
    if orphan.started_at is not None:
        run.started_wall = orphan.started_at.timestamp()
        run.started_mono = loop.time() - (time.time() - run.started_wall)
    run.status = orphan.status
    run.error = orphan.error
    for logged in done:
        record = new_step_run(logged.index, logged.name)
        record.status = StepStatus.COMPLETED
        record.attempts = logged.attempts
        record.duration = logged.duration
        record.result = logged.result
        record.events = logged.events
        run.steps.append(record)
        run.events.extend(logged.events)
    for logged in orphan.compensations:
        record = new_step_run(logged.index, logged.name, compensation=True)
        record.status = logged.status
        record.attempts = logged.attempts
        record.duration = logged.duration
        record.error = logged.error
        record.result = logged.result
        record.events = logged.events
        if logged.status is StepStatus.RUNNING:  # its process died in it: it ended there
            record.status = StepStatus.FAILED
            record.error = CRASHED
        run.compensations.append(record)
        if logged.status is StepStatus.COMPLETED:
            run.compensation_events.extend(logged.events)
    return run


def hands_back(enclosing: SagaRun | None, started_in: StepRun | None) -> bool:
    """Whether a cancellation of this task hands back what it recovers: at the top level
    (its caller's), or inside a run (a step executing an orphan's id) that its own
    recovery's cancellation hands back — not one from inside that step (its timeout).
    ``started_in``: the step of ``enclosing`` it was started in; a task that step left
    running, after it ended, is at the top level."""
    if enclosing is None or not still_running(started_in, enclosing):
        return True
    return enclosing.handing_back is True or handed_back_with(enclosing)


async def _drive_recovered(
    orchestrator: SagaOrchestrator, run: SagaRun, driver: StepDriver, replay: int
) -> None:
    """Resume ``run`` in a task of its own, so that a cancellation of this one (the
    recovery's caller's) is told apart from one inside the run (a step's timeout): the run
    is marked ``handing_back`` before it is cancelled, and a saga its step executes is
    handed back with it rather than compensated (see ``handed_back_with``).

    Recovered by a step (``execute()`` of an orphan's id, see :func:`adopt`), ``run`` is
    handed back only with the run of that step; a cancellation from inside that step (its
    timeout, an ``asyncio.timeout``) undoes it, as it would a saga the step executed
    afresh: handed back, it would be resumed later behind that run's back.

    Code in the run that cancels the task it runs in (a sync listener, a step calling
    ``asyncio.current_task().cancel()``) cancels this one, as it cancels the caller of
    ``execute()`` running the saga afresh: the ``CancelledError`` raised here is this
    task's own, not one its caller never asked for."""
    watch = CancellationWatch()
    enclosing = current_run.get()
    started_in = running_step.get()
    ran: list[asyncio.CancelledError] = []  # the CancelledError the run raised, if it did

    async def drive() -> None:
        try:
            await orchestrator._drive(run, driver, replay, hand_back=True)
        except asyncio.CancelledError as cancelled:
            ran.append(cancelled)
            raise

    driving = asyncio.ensure_future(drive())
    cancelled: asyncio.CancelledError | None = None
    try:
        try:
            await asyncio.shield(driving)
            return
        except asyncio.CancelledError as caught:
            if watch.came():
                run.handing_back = hands_back(enclosing, started_in)
                driving.cancel()
                await wait_out(driving)  # until it has handed the saga back, whatever cancels us
                if not driving.cancelled():
                    ended = driving.exception()
                    if ended is not None and not isinstance(ended, Exception):
                        raise ended from None  # "the process died" (a simulated crash) meanwhile
                cancelled = caught
            elif not driving.cancelling():
                # The run's own outcome, with no cancellation of its task (a step raised
                # CancelledError itself): raised as execute() raises it.
                raise
        if cancelled is None:
            # Code in the run cancelled its task (handed back, as it saw a cancellation
            # of this one): in execute() that task is the caller's, cancelled. So is it.
            cancelled = await _cancel_current_task()
        if ran:
            # What the run chained to its cancellation (a write the log refused after a
            # compensation swallowed it, an end it refused; the failure it was undone
            # for), as execute() chains it to the caller's: chained to this one.
            if ran[0].__context__ is not None:
                cancelled.__context__ = ran[0].__context__
            if ran[0].__cause__ is not None:
                cancelled.__cause__ = ran[0].__cause__
        raise cancelled
    finally:
        # Their tracebacks hold this frame: no cycle left for the garbage collector.
        ran.clear()
        cancelled = None


async def _cancel_current_task() -> asyncio.CancelledError:
    """Cancel the current task, as code in a run does ``execute()``'s caller's; the
    ``CancelledError`` that then lands, once (to raise: a request left pending would land
    again at its caller's next ``await``)."""
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    try:
        await asyncio.sleep(0)
    except asyncio.CancelledError as landed:
        return landed
    raise AssertionError("a cancelled task's await returned")  # pragma: no cover


async def _recover_one(
    orchestrator: SagaOrchestrator,
    store: RecoverableStore,
    orphan: OrphanedSaga,
    max_attempts: int,
) -> RecoveryOutcome:
    """Finish a claimed orphan; meanwhile ``execute()`` of its id waits for it (see
    :func:`adopt`), and the inner sagas its steps execute again are claimed with
    ``max_attempts``, the recovery's limit (see :data:`recovery_limit`)."""
    recovering = orchestrator._recovering
    mine = (asyncio.get_running_loop(), asyncio.Event())
    recovering[orphan.saga_id] = mine
    token = recovery_limit.set(max_attempts)
    try:
        return await _finish_claimed(orchestrator, store, orphan)
    finally:
        with contextlib.suppress(ValueError):  # closed by the garbage collector, elsewhere
            recovery_limit.reset(token)
        if recovering.get(orphan.saga_id) is mine:
            del recovering[orphan.saga_id]
        mine[1].set()


async def _finish_claimed(
    orchestrator: SagaOrchestrator, store: RecoverableStore, orphan: OrphanedSaga
) -> RecoveryOutcome:
    definition = _definition(orphan)
    if isinstance(definition, str):
        return await _park(store, orphan, definition)
    done = orphan.completed_steps
    if orphan.fingerprint is not None and orphan.fingerprint != definition_fingerprint(definition):
        logger.warning(
            "sagakit recovery: the code of saga %s (%s) changed since it started; its replay "
            "is checked against the log step by step",
            orphan.name,
            orphan.saga_id,
            extra=_fields(orphan),
        )
    try:
        calls, body = _replay(definition, orphan, done)
    except NonDeterminismError as error:
        return await _park(store, orphan, f"NonDeterminismError: {error}")
    except Exception as error:
        return await _park(store, orphan, f"replaying its saga body raised {error!r}")
    stopped = orphan.steps[len(done)] if len(orphan.steps) > len(done) else None
    failed = stopped is not None and stopped.status in (StepStatus.FAILED, StepStatus.TIMED_OUT)
    compensate = orphan.status is SagaStatus.COMPENSATING or failed or orphan.policy == "compensate"
    if compensate:
        close_driver(body, orphan.name, orphan.saga_id)  # only its step calls are needed
    run = _rebuild(orchestrator, definition, orphan, done)
    bind: Callable[[OrphanedSaga, SagaRun], None] | None = getattr(store, "_bind_claim", None)
    if bind is not None:  # its claim's lease is this run's, whatever happens to it later
        bind(orphan, run)
    run.listeners = orchestrator._listeners  # told of the whole recovered run
    # Released: the saga was handed over (its lease given up by a stopping worker or an
    # exiting process), the normal lifecycle of a deploy, whatever crashes it had before.
    # (Attempt 0: a store that does not say so, but whose claim counted no crash.)
    logger.log(
        logging.INFO if orphan.released or orphan.recovery_attempts == 0 else logging.WARNING,
        "sagakit recovery %s saga %s (%s) after %s (attempt %d)",
        "compensates" if compensate else "resumes",
        orphan.name,
        orphan.saga_id,
        counted(len(done), "completed step"),
        orphan.recovery_attempts,
        extra=_fields(orphan),
    )
    if not compensate:
        try:
            driver = _continued(calls, body)
            await _drive_recovered(orchestrator, run, driver, len(done))
        except LeaseLost:
            raise  # another worker owns the saga now: its outcome is that worker's
        except SagaError as error:
            return RecoveryOutcome(orphan.saga_id, orphan.name, "resumed", run.status, str(error))
        except Exception as error:  # raised by the saga's body: it was compensated all the same
            text = describe_error(error)
            return RecoveryOutcome(orphan.saga_id, orphan.name, "resumed", run.status, text)
        return RecoveryOutcome(orphan.saga_id, orphan.name, "resumed", run.status)
    undo: list[tuple[StepRun, StepCall[Any], Any]] = [
        (record, call, record.result) for record, call in zip(run.steps, calls, strict=False)
    ]
    if stopped is not None and len(calls) > len(done):
        # The step that failed, timed out or was interrupted (by a crash, or by the
        # saga's cancellation): compensate it when its options say so (an interrupted
        # step's effect is unknown, like a timeout).
        step = calls[len(done)]._step
        if stopped.status is StepStatus.FAILED and stopped.error == UNSTARTED_ERROR:
            wanted = False  # cancelled before it started: it never ran
        elif stopped.status is StepStatus.FAILED and stopped.error != CANCELLED_ERROR:
            wanted = step.compensate_on_failure or (
                # It raised in the end, after an attempt that timed out (which may have
                # acted): the run compensates it as a timed-out step, and so does this.
                step.compensate_on_timeout
                and stopped.error is not None
                and stopped.error.endswith(ACTED_UNKNOWN)
            )
        else:
            wanted = step.compensate_on_timeout
        record = new_step_run(stopped.index, stopped.name)
        interrupted = stopped.status is StepStatus.RUNNING
        record.status = StepStatus.FAILED if interrupted else stopped.status
        record.attempts = stopped.attempts
        record.duration = None if interrupted else stopped.duration
        # Interrupted: a running step's logged error is an earlier attempt's, kept by a
        # store that records retries; it did not end the step.
        record.error = CRASHED if interrupted else stopped.error or CRASHED
        run.steps.append(record)
        if wanted:
            undo.append((record, calls[len(done)], None))
    for logged in orphan.compensations:
        if (
            logged.status is StepStatus.RUNNING
            and logged.index < len(calls)
            and calls[logged.index]._spec.compensation is None
        ):
            # Its end is written with the saga's (interrupted_compensations).
            logger.warning(
                "sagakit recovery: the compensation of step %d (%r) of saga %s (%s) was "
                "interrupted by a crash, and the code recovering it declares no compensation "
                "for that step any more: it is not run again; check what it had done",
                logged.index,
                logged.name,
                orphan.name,
                orphan.saga_id,
                extra=_fields(orphan),
            )
    compensated = {
        logged.index for logged in orphan.compensations if logged.status is StepStatus.COMPLETED
    }
    undo = [entry for entry in undo if entry[0].index not in compensated]
    # A compensation that failed for good (retries spent) is not run again: the saga ends
    # FAILED at it, as the run would have. One that was running (the process died in it)
    # is run again. A later record shows the run went on past a failure
    # (continue_on_compensation_failure): recovery goes on too, whatever its own setting,
    # or a compensation the crash interrupted would be left half done.
    gave_up: dict[int, BaseException] = {}
    keep_going = False
    for logged in orphan.compensations:
        if gave_up:
            keep_going = True
        if logged.status in _FAILED_FOR_GOOD:
            gave_up[logged.index] = _LoggedError(logged.error or f"{logged.status}")
    if run.error is None:
        run.error = "its process died; compensated by recovery"
    watch = CancellationWatch()
    token = enter_run(run)
    try:
        failure = await orchestrator._compensate(
            run, undo, None, faults_here(), True, gave_up, keep_going
        )
    except SimulatedCrash as crash:
        orchestrator._crashed(run, crash)  # "the process died": nothing more is recorded
        raise
    except GeneratorExit:
        orchestrator._abandoned(run)  # closed with its event loop: nor is anything here
        raise
    except LeaseLost as lost:
        await orchestrator._stopped(run, lost)  # another worker owns it now
        raise
    except BaseException as failure:
        # Recording failed (or cancelled): end the run as execute() does, so the store
        # hands the saga back (its lease runs out) instead of keeping it forever.
        if run.status is SagaStatus.COMPENSATING:
            run.status = SagaStatus.FAILED
        if isinstance(failure, Exception) and watch.came():
            # A compensation swallowed the caller's cancellation, then the log refused a
            # write: the cancellation is raised, as execute() raises it.
            await orchestrator._raise_swallowed(run, failure)
        if isinstance(failure, Exception):
            await orchestrator._finish(run)
        else:  # a cancellation: an end that cannot be recorded must not replace it
            await orchestrator._finish_before(run, failure)
        raise
    finally:
        leave_run(run, token)
    if watch.came():
        # A compensation swallowed the caller's cancellation, and ran to its end: as in
        # execute(), the end is recorded and the cancellation raised (an end the log
        # refuses logged and chained to it, not raised in its place).
        await orchestrator._raise_swallowed(run)
    await orchestrator._finish(run)
    problem = None if failure is None else str(failure)
    return RecoveryOutcome(orphan.saga_id, orphan.name, "compensated", run.status, problem)


__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "RecoveryAction",
    "RecoveryOutcome",
    "adopt",
    "recover",
    "tell_unregistered",
]
