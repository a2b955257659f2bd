"""The worker loop: keep claiming orphaned sagas and finishing them, until told to stop.

Many workers can share one :class:`~sagakit.stores.RecoverableStore` (PostgreSQL):
each claim takes sagas no other worker owns, so a saga is finished by exactly one.
On cancellation, SIGTERM or ``stop``, the worker releases the leases of the sagas it
runs *before* cancelling them: their next write is fenced out (:class:`~sagakit.LeaseLost`),
so they stop without running a step or a compensation, and another worker claims
them at once instead of waiting for the leases to expire. Sagas that ``execute()``
calls run on the same store are not the worker's: they go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._budgets import Budget, first_of
from ._cadence import failure_level
from ._checks import check_count, check_flag, check_seconds, is_number
from ._counted import counted
from ._hooks import SimulatedCrash, dead_process
from ._recovery import (
    _fields,
    _recover_one,
    _recoverable,
    give_back,
    log_stopped,
    tell_unregistered,
)
from ._runs import SagaRun, StepRun, still_running
from ._sagas import registered_sagas
from ._seconds import timeout_text
from ._shielding import CancellationWatch, cancel_firmly
from ._tracebacks import hide_from_pytest
from .exceptions import LeaseLost, SagaDefinitionError, StoreError
from .stores._loop_refusal import never_better

if TYPE_CHECKING:
    from ._orchestrator import SagaOrchestrator
    from .stores._protocol import OrphanedSaga, RecoverableStore

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest


logger = logging.getLogger("sagakit")

Nested = dict[str, tuple[SagaRun, StepRun | None]]
"""The sagas that ``execute()`` runs in a worker's saga tasks (a step starting an inner
saga), by id: with the run and the step record they were started in."""

worker_nested: ContextVar[Nested | None] = ContextVar("sagakit_worker_nested", default=None)
"""In a worker's saga tasks: the inner sagas their steps run, which the worker hands over
with its own when it stops, while the step that started each one runs."""


def _check(
    poll_interval: object,
    concurrency: object,
    max_attempts: object,
    stop: object,
    handle_signals: object,
) -> None:
    # Infinity polled once, then never again: orphans waited for the next restart.
    check_seconds(poll_interval, "poll_interval")
    # Past a 64-bit integer, every claim failed (taken for the database being away).
    check_count(concurrency, "concurrency")
    check_count(max_attempts, "max_attempts")
    check_flag(handle_signals, "handle_signals")
    if stop is not None and not isinstance(stop, asyncio.Event):
        # A threading.Event's wait() would block the event loop.
        raise SagaDefinitionError(
            "stop must be an asyncio.Event (set it from another thread with "
            f"loop.call_soon_threadsafe(stop.set)), got {stop!r}"
        )
    # asyncio binds an Event to the loop that first waits for it: in any other, its
    # wait() fails at once, and the worker claimed in a busy loop, never stopped.
    bound = getattr(stop, "_loop", None)
    if bound is not None and bound is not asyncio.get_running_loop():
        raise SagaDefinitionError(
            "stop is an asyncio.Event of another event loop (it was awaited there first, "
            "as by an earlier asyncio.run()): make the Event in the loop that runs the "
            "worker (from another thread, set it with loop.call_soon_threadsafe(stop.set))"
        )


@dataclass(eq=False)
class _Told:
    """What SIGTERM tells one worker: ``stop`` the first time; ``now`` the next, while
    it is still stopping (it gives up waiting for its sagas, or for its store)."""

    stop: asyncio.Event
    now: asyncio.Event
    heard: bool = False


class _Sigterm:
    """The SIGTERM handler of one event loop, shared by the workers running in it, which
    calls the handler in place before them too."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.workers: list[_Told] = []
        # What to put back when the last worker stops: the handler the application set
        # on the loop itself, if any (asyncio has no public way to read it), else the
        # process's handler.
        handlers = getattr(loop, "_signal_handlers", None)
        handle = handlers.get(signal.SIGTERM) if isinstance(handlers, dict) else None
        self.loop_handle: asyncio.Handle | None = (
            handle if isinstance(handle, asyncio.Handle) and not handle.cancelled() else None
        )
        self.previous = signal.getsignal(signal.SIGTERM)
        self.ours: object = None  # the process's handler once the worker's is set

    def in_place(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether the loop's SIGTERM handler is still this one (not removed, nor set
        anew by the application since; a loop that does not show its handlers: yes)."""
        handlers = getattr(loop, "_signal_handlers", None)
        if not isinstance(handlers, dict):
            return True
        handle = handlers.get(signal.SIGTERM)
        return (
            isinstance(handle, asyncio.Handle) and getattr(handle, "_callback", None) == self.fire
        )

    def fire(self) -> None:
        for worker in self.workers:
            (worker.now if worker.heard else worker.stop).set()
            worker.heard = True
        # The application hears of SIGTERM too (a web server serving beside the worker
        # shuts down as without it): its handler on the loop, else its Python handler (not
        # the default action, which would kill the process the worker is stopping).
        handle = self.loop_handle
        if handle is not None:
            handle._run()  # in its context; an error goes to the loop's exception handler
        elif callable(self.previous):
            self.previous(signal.SIGTERM, None)

    def restore(self, loop: asyncio.AbstractEventLoop) -> None:
        """Put back the handler in place before the workers, if theirs is still in place:
        a handler the application set or removed since (on the loop, or the process's
        with ``signal.signal()``) is its last word, left as it is."""
        if not self.in_place(loop):
            return
        current = signal.getsignal(signal.SIGTERM)
        loop.remove_signal_handler(signal.SIGTERM)
        if current is not self.ours:  # signal.signal() since: the loop's no longer runs
            signal.signal(signal.SIGTERM, current)
            return
        handle = self.loop_handle
        if handle is not None:
            callback, args = getattr(handle, "_callback"), getattr(handle, "_args")  # noqa: B009
            loop.add_signal_handler(signal.SIGTERM, callback, *args)
        else:
            signal.signal(signal.SIGTERM, self.previous)


_SIGTERM: dict[asyncio.AbstractEventLoop, _Sigterm] = {}


def _unreadable_loop_handler(loop: asyncio.AbstractEventLoop) -> bool:
    """True when ``loop`` has a SIGTERM handler that could not be put back after a worker.

    asyncio's loops keep theirs where :class:`_Sigterm` reads it; others (uvloop) only
    show that the process's handler is the loop's own, which dispatches to it.
    """
    if isinstance(getattr(loop, "_signal_handlers", None), dict):
        return False
    return getattr(signal.getsignal(signal.SIGTERM), "__self__", None) is loop


@contextlib.contextmanager
def _on_sigterm(stop: asyncio.Event, now: asyncio.Event, enabled: bool) -> Any:
    """Set ``stop`` on SIGTERM while inside (main thread only), ``now`` on the next
    SIGTERM; restore the old handler.

    Every worker of a loop is stopped by one SIGTERM; the handler in place before the
    first of them started is put back when the last one stops, unless the application
    set or removed one meanwhile (see :meth:`_Sigterm.restore`). A worker that starts
    after the application did sets a handler of its own again, over the application's.
    """
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    hook = _SIGTERM.get(loop)
    if hook is not None and not hook.in_place(loop):
        # The application set or removed the loop's handler since the workers before
        # this one started: its last word for them (they no longer hear SIGTERM), not
        # for this one, which sets its own again (calling the application's).
        hook = None
    if hook is None:
        if _unreadable_loop_handler(loop):
            logger.warning(
                "sagakit worker: SIGTERM already has a handler on this event loop, which "
                "the loop does not let sagakit read back (uvloop); it is left in place, "
                "so stop the worker from it (set stop=, or cancel the worker)"
            )
            yield
            return
        hook = _Sigterm(loop)
        try:
            loop.add_signal_handler(signal.SIGTERM, hook.fire)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - e.g. Windows loops
            yield
            return
        hook.ours = signal.getsignal(signal.SIGTERM)
        _SIGTERM[loop] = hook
    told = _Told(stop, now)
    hook.workers.append(told)
    try:
        yield
    finally:
        hook.workers.remove(told)
        if not hook.workers:
            if _SIGTERM.get(loop) is hook:  # (not replaced by a later worker's: see above)
                del _SIGTERM[loop]
            hook.restore(loop)


async def _finish_one(
    orchestrator: SagaOrchestrator,
    store: RecoverableStore,
    orphan: OrphanedSaga,
    nested: Nested,
    max_attempts: int,
) -> None:
    worker_nested.set(nested)  # this task's context: what its steps execute() joins it
    try:
        outcome = await _recover_one(orchestrator, store, orphan, max_attempts)
    except LeaseLost as lost:
        log_stopped("worker", orphan, lost)
    except SimulatedCrash as crash:
        # sagakit.testing's crash, in a saga this worker was finishing: that saga is left
        # as a crash leaves it, for the next recovery; the worker goes on (nobody awaits
        # this task, so an exception left in it would only be reported as never retrieved).
        logger.warning(
            "sagakit worker: saga %s crashed (simulated: %s); it is left for recovery",
            orphan.saga_id,
            crash,
            extra=_fields(orphan),
        )
    except Exception:
        logger.exception(
            "sagakit worker could not finish saga %s", orphan.saga_id, extra=_fields(orphan)
        )
    else:
        logger.info("sagakit worker finished %r", outcome, extra=_fields(orphan))


UNREGISTERED_EVERY = 60.0
"""Seconds between two looks for unfinished sagas of names no ``@saga`` here declares
(each name is told once; the look counts the running sagas by name)."""

MAX_BACKOFF = 30.0
"""The longest wait between two claims while the store keeps failing."""


def _backoff(poll_interval: float, failures: int) -> float:
    """Seconds to wait before the next claim: ``poll_interval``, doubled for each claim
    failed in a row, up to :data:`MAX_BACKOFF` (never below ``poll_interval``)."""
    if not failures:
        return poll_interval
    return min(poll_interval * 2.0 ** min(failures - 1, 64), max(poll_interval, MAX_BACKOFF))


class _Stopping:
    """How long a stopping worker waits for its store, all its calls together: the
    store's ``connect_timeout`` (none: no limit) from when the worker is told to stop
    or cancelled, up to a second SIGTERM (``now``). Not how long it waits for its
    sagas (SQLite: they finish first).

    A statement on a connection that went silent (a partition, with no reset) waits
    until the kernel gives up, some 15 minutes, and so may the driver's request to
    cancel it: a claim's answer, its cancellation, the hand-back of what it claimed
    all the same (see :func:`_hand_back`) and the release of the leases share this one
    wait, so the worker stops within a platform's grace period. What it gives up on is
    left to the leases: they run out by themselves."""

    def __init__(self, store: RecoverableStore, now: asyncio.Event) -> None:
        self.store = store
        self.now = now
        self._budget: Budget | None = None

    def budget(self) -> Budget:
        """The wait: it runs from its first use on (the worker is stopping), and is spent
        at a second SIGTERM (its waits end then)."""
        if self._budget is None:
            seconds: object = getattr(self.store, "connect_timeout", None)
            self._budget = Budget(float(seconds) if is_number(seconds) else None, until=self.now)
        return self._budget

    def spent(self) -> str:
        """Why a call was given up (for the warning that says so)."""
        budget = self._budget
        if self.now.is_set() or budget is None or budget.seconds is None:
            return "stopped by a second SIGTERM"  # (no limit: given up at a SIGTERM)
        return (
            f"no answer within {timeout_text(budget.seconds)} of being told to stop "
            "(connect_timeout)"
        )


async def _unless_stopped(
    stop: asyncio.Event, running: asyncio.Future[Any], stopping: _Stopping
) -> bool:
    """Wait for ``running`` to end; once ``stop`` is set, within the budget of
    ``stopping`` (see :class:`_Stopping`). Past it, or when the caller is cancelled,
    cancel it and wait it out, whatever cancels the caller. True if it ended by itself.

    A statement that answers is not cancelled: a claim cancelled on its way may have
    taken sagas that nobody runs, until their leases run out."""
    return await _until(running, stop, stopping) or await stopping.budget().within(
        running, if_cancelled="raise"
    )


async def _until(
    running: asyncio.Future[Any], event: asyncio.Event, stopping: _Stopping | None
) -> bool:
    """Wait for ``running`` to end, until ``event`` is set; when the caller is cancelled,
    cancel it and wait it out (within the budget of ``stopping``, if any: see
    :meth:`~sagakit._budgets.Budget.cancel`), then raise. True if it ended."""
    try:
        await first_of((running,), (event,), None)
    except GeneratorExit:
        raise  # its event loop closed under the worker (see run_worker): nothing to await
    except BaseException:  # the worker was cancelled
        if stopping is None:
            await cancel_firmly(running, None)
        else:
            await stopping.budget().cancel(running)
        raise
    return running.done()


async def _within(running: asyncio.Future[Any], stopping: _Stopping) -> str | None:
    """Wait for ``running`` within what is left of the budget of ``stopping``, whatever
    cancels the caller meanwhile (it re-raises its cancellation itself); past it, cancel
    it and wait it out. None if it ended by itself, else why not."""
    if await stopping.budget().within(running, if_cancelled="shield"):
        return None
    return stopping.spent()


async def _hand_back(
    store: RecoverableStore, orphans: list[OrphanedSaga], stopping: _Stopping
) -> None:
    """:func:`give_back` the ``orphans`` a stopping worker claimed and will not run,
    within what is left of the budget of ``stopping`` (a silent connection does not hold
    the stop longer): those it could not hand back stay claimed until their leases expire."""
    await give_back(store, orphans, lambda giving: _within(giving, stopping))


def _answered(claiming: asyncio.Future[list[OrphanedSaga]]) -> list[OrphanedSaga]:
    """What a claim returned (``[]`` if it failed or was cancelled)."""
    if claiming.cancelled() or claiming.exception() is not None:
        return []
    return claiming.result()


async def _claim(
    store: RecoverableStore, stop: asyncio.Event, stopping: _Stopping, **options: Any
) -> list[OrphanedSaga]:
    """``store.claim_orphans(**options)``, given up if it has not answered once ``stop``
    is set and the budget of ``stopping`` is spent (``[]``): cancelled, as a cancelled
    worker's claim is (the store gives back what it had claimed); sagas it returns all
    the same are given back, unrun, within what is left of that budget (see
    :func:`_hand_back`)."""
    claiming = asyncio.ensure_future(store.claim_orphans(**options))
    try:
        if await _unless_stopped(stop, claiming, stopping):
            return claiming.result()
    except GeneratorExit:
        raise
    except BaseException:
        await _hand_back(store, _answered(claiming), stopping)  # the worker was cancelled
        raise
    await _hand_back(store, _answered(claiming), stopping)
    return []


async def _wait(events: tuple[asyncio.Event, ...], seconds: float) -> None:
    """The pause between two claims: until one of ``events`` is set or ``seconds`` pass."""
    await first_of((), events, seconds)


def _alive(store: RecoverableStore) -> None:
    """Raise the :class:`SimulatedCrash` of ``store``'s process if a simulated crash
    killed it (``crash(..., process=True)``): its worker dies with it, rather than claim
    on as a dead process that polls (or fail at a claim as a saga would)."""
    crash = dead_process(store)
    if crash is not None:
        raise crash


async def _cancel_all(tasks: dict[asyncio.Task[None], str]) -> None:
    """Cancel the worker's saga ``tasks`` and wait for their ends."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


async def _shutdown(
    store: RecoverableStore,
    tasks: dict[asyncio.Task[None], str],
    nested: Nested,
    stopping: _Stopping,
) -> None:
    """Release the leases of the sagas in flight (``tasks``: their ids; ``nested``: the
    inner sagas their steps run), then stop them (they are fenced out). An inner saga
    whose step has ended (it left it running in a task) is no longer theirs: cancelling
    them does not stop it, so it keeps its lease and goes on here. ``now`` (a second
    SIGTERM) gives up waiting: for the release (the leases run out), or, with no leases,
    for the sagas (they are cancelled, each handed back for the next recovery). The
    release waits for what is left of the budget of ``stopping`` at most (the leases
    then run out by themselves). A process that a simulated crash killed releases nothing."""
    now = stopping.now
    release: Callable[..., Any] | None = getattr(store, "release_leases", None)
    if dead_process(store) is not None:
        # A simulated crash killed the process, which releases nothing, as a real crash
        # does not: its sagas are cancelled, and stop at their next write (their leases
        # kept, as a crash's, until simulate_restart() or close()).
        await _cancel_all(tasks)
        return
    if release is None:
        # No leases to hand over: let the sagas in flight finish here.
        if tasks:
            logger.info(
                "sagakit worker stopping: waiting for %s to end",
                counted(len(tasks), "running saga"),
            )
            running = asyncio.ensure_future(asyncio.gather(*tasks, return_exceptions=True))
            if not await _until(running, now, None):
                await cancel_firmly(running, None)  # cancels the sagas
        return
    # A release on a pooled connection gone silent (a partition that resets nothing)
    # waits for the kernel to give up, some 15 minutes: wait what is left of the budget
    # (even nothing: the store stops renewing the leases as the release starts), then
    # let the leases run out.
    try:
        # The inner sagas too: cancelled with their outer saga's task, they would
        # compensate what the next owner of the outer saga runs on from the log.
        inner = {saga_id for saga_id, (run, step) in nested.items() if still_running(step, run)}
        ids = sorted({*tasks.values(), *inner})
        if not ids:  # no saga in flight: no lease to hand back (nor to warn of, past the budget)
            return
        releasing = asyncio.ensure_future(release(saga_ids=ids))
        if await stopping.budget().within(releasing, if_cancelled="raise"):
            released = releasing.result()
        else:
            spent = stopping.spent()
            raise TimeoutError(spent if now.is_set() else f"{spent}; they run out by themselves")
    except Exception as error:  # the database is away: the leases run out by themselves
        logger.warning("sagakit worker could not release its saga leases: %s", error)
    else:
        logger.info("sagakit worker released %s", counted(released, "saga lease"))
    finally:
        await _cancel_all(tasks)


async def run_worker(
    orchestrator: SagaOrchestrator,
    *,
    poll_interval: float = 1.0,
    concurrency: int = 100,
    max_attempts: int = 3,
    handle_signals: bool = True,
    stop: asyncio.Event | None = None,
) -> None:
    """Claim orphaned sagas and finish them, ``concurrency`` at a time, until stopped.

    Polls every ``poll_interval`` seconds (at once while orphans keep coming and
    capacity is free; while claims keep failing, the wait doubles up to 30 s). Only
    sagas registered with ``@saga`` in this process are claimed (the others are named
    once each, at INFO, as left for a process that declares them). Stops when
    cancelled, when ``stop`` is set, or on SIGTERM (with ``handle_signals``, in the
    main thread; each SIGTERM is passed on to the handler in place before, which is put
    back when the worker stops); a stopped worker releases its leases. A second SIGTERM
    while it stops gives up waiting: for its sagas (SQLite: they are handed back), or
    for its store. Once stopping, it waits for its store's ``connect_timeout`` at most,
    all calls together (see :class:`_Stopping`); what it gives up on, the leases settle
    (sagas a claim answered too late to run, and that it could not hand back in time,
    stay claimed until their leases expire: then any worker claims them).
    """
    _check(poll_interval, concurrency, max_attempts, stop, handle_signals)
    store = _recoverable(orchestrator.store)
    stop = stop if stop is not None else asyncio.Event()
    now = asyncio.Event()  # a second SIGTERM: stop waiting for the sagas, or the store
    stopping = _Stopping(store, now)  # how long it waits for its store once stopping
    freed = asyncio.Event()
    tasks: dict[asyncio.Task[None], str] = {}  # the sagas in flight, with their ids
    nested: Nested = {}  # the sagas their steps run with execute()
    failures = 0  # claims failed in a row
    told: set[str] = set()  # the unregistered saga names told of (tell_unregistered)
    next_look = 0.0  # when to look for them again (the loop's time)

    def done(task: asyncio.Task[None]) -> None:
        tasks.pop(task, None)
        freed.set()

    watch = CancellationWatch()
    abandoned = False  # its task destroyed with its closed event loop (GeneratorExit)
    with _on_sigterm(stop, now, handle_signals):
        try:
            while not stop.is_set():
                _alive(store)
                free = concurrency - len(tasks)
                claimed = 0
                if free > 0:
                    names = {function.name for function in registered_sagas()}
                    try:
                        orphans = await _claim(
                            store,
                            stop,
                            stopping,
                            names=names,
                            limit=free,
                            max_attempts=max_attempts,
                        )
                    except StoreError as error:  # the database is away: try again later
                        if never_better(error):  # (another loop's store, or closed)
                            raise
                        failures += 1
                        logger.log(
                            failure_level(failures),
                            "sagakit worker could not claim sagas (%d in a row; next try in "
                            "%.3g s): %s",
                            failures,
                            _backoff(poll_interval, failures),
                            error,
                        )
                        orphans = []
                    else:
                        if failures:
                            logger.info(
                                "sagakit worker claims sagas again (after %d failed claims)",
                                failures,
                            )
                        failures = 0
                    if watch.came():
                        # Cancelled while claiming, and the cancellation was lost on the
                        # way (Python 3.11's asyncio.wait_for, in the driver's connection
                        # pool, can swallow one): stop anyway, or the loop runs on; and
                        # give back what was just claimed, unrun (on SQLite, the shutdown
                        # below would let it run to its end).
                        await _hand_back(store, orphans, stopping)
                        raise asyncio.CancelledError
                    _alive(store)  # (what it claimed stays claimed, as at a real crash)
                    claimed = len(orphans)
                    for orphan in orphans:
                        task = asyncio.create_task(
                            _finish_one(orchestrator, store, orphan, nested, max_attempts),
                            name=f"sagakit-recover-{orphan.saga_id}",
                        )
                        tasks[task] = orphan.saga_id
                        task.add_done_callback(done)
                if claimed and claimed == free:
                    continue  # more may be waiting: claim again while capacity lasts
                if stop.is_set():
                    break  # (told while claiming: no look, on what is left of the budget)
                if not failures and asyncio.get_running_loop().time() >= next_look:
                    next_look = asyncio.get_running_loop().time() + UNREGISTERED_EVERY
                    looking = asyncio.ensure_future(tell_unregistered(store, told))
                    if await _unless_stopped(stop, looking, stopping):
                        looking.result()
                freed.clear()
                wait = _backoff(poll_interval, failures)
                events = (stop, freed) if len(tasks) >= concurrency else (stop,)
                await _wait(events, wait)
        except GeneratorExit:
            # The garbage collector closes it, its event loop closed under it: nothing
            # can be awaited. Its sagas stop as their own tasks are closed, left as a
            # crash leaves them (see SagaOrchestrator._abandoned), their leases to run out.
            abandoned = True
            raise
        finally:
            if not abandoned:
                await _shutdown(store, tasks, nested, stopping)
    if watch.came():
        # Stopped, then cancelled while handing its sagas back, and the cancellation was
        # caught on the way (by the store's release_leases(): a driver's pool can): never
        # return as if not cancelled, or the caller goes on.
        raise asyncio.CancelledError


__all__ = ["run_worker"]
