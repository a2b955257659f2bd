"""Step deadlines: one timer per orchestrator and event loop, for all running sagas.

``asyncio.timeout`` schedules and cancels a timer handle for every step it guards.
Here each running saga only writes its current step's deadline onto its run record,
and one watchdog timer, scheduled for the soonest deadline it knows of, cancels the
tasks whose deadline has passed when it fires. A step that never suspends costs two
attribute writes (and its run is noted once between two firings); the timer is
rescheduled only when a deadline sooner than the one it waits for appears (steps with
shorter timeouts than the rest).

A firing looks only at the runs that started a step since the firing before (``fresh``)
and at the head of a heap of the deadlines it has seen still in force: a run waiting in
a long step is put in the heap once, not looked at again by every firing. Looking at
every running saga at each firing cost a firing time in proportion to the sagas running,
and steps with short timeouts make it fire often: 50,000 sagas waiting in long steps
beside a few with 50 ms timeouts took most of the loop's time.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._tracebacks import hide_from_pytest
from .exceptions import StepTimeout

if TYPE_CHECKING:
    from ._runs import SagaRun

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest


NO_DEADLINE = math.inf


class Watchdog:
    """Cancels the task of every watched run whose ``deadline`` (loop time) has passed.

    ``loop`` is the event loop it watches on, and ``now`` that loop's clock
    (``time.monotonic`` itself for asyncio's loops). ``runs`` are the runs it watches;
    ``fresh`` those that set a deadline since it last fired: whoever sets
    ``run.deadline`` adds the run there unless ``run.queued`` says it is, and sets it.
    """

    __slots__ = (
        "_context",
        "_handle",
        "_heap",
        "_resolution",
        "fresh",
        "loop",
        "now",
        "runs",
        "when",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.now: Callable[[], float] = (
            time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time
        )
        self.runs: set[SagaRun] = set()
        self.fresh: set[SagaRun] = set()
        # (deadline, run number, run) of the runs seen in a step at a firing; an entry
        # whose run no longer has that deadline (its step ended) is dropped when met.
        self._heap: list[tuple[float, int, SagaRun]] = []
        self.when = NO_DEADLINE
        self._handle: asyncio.TimerHandle | None = None
        # How early a timer may run: asyncio's loop says (a deadline that close is due, as
        # asyncio itself decides). A loop that does not — uvloop, whose clock counts whole
        # milliseconds and runs a timer once that millisecond is reached — is taken at 1 ms:
        # otherwise a firing before the deadline (in that last millisecond) rescheduled
        # itself for it, ran at once again and so on, spinning the loop until the clock
        # ticked (hundreds of firings for one short step).
        self._resolution: float = getattr(loop, "_clock_resolution", 0.001)
        # The timer runs in an empty context: by default call_at() would copy the context of
        # the step that set it (its run, the caller's context variables) and keep it alive
        # until the timer is due, and every timer set when it fires copies it again.
        self._context = contextvars.Context()

    def forget(self, run: SagaRun) -> None:
        """Stop watching ``run`` (its saga ended): out of ``runs``, and out of ``fresh``
        if no firing looked at it since its last step."""
        self.runs.discard(run)
        if run.queued:
            run.queued = False
            self.fresh.discard(run)

    def wake_at(self, deadline: float) -> None:
        """Fire at ``deadline`` (sooner than the time the watchdog waits for now)."""
        if self._handle is not None:
            self._handle.cancel()
        self.when = deadline
        self._handle = self.loop.call_at(deadline, self._fire, context=self._context)

    def _fire(self) -> None:
        self._handle = None
        self.when = NO_DEADLINE
        limit = self.loop.time() + self._resolution
        heap = self._heap
        fresh = self.fresh
        if fresh:
            self.fresh = set()
            entries: list[tuple[float, int, SagaRun]] = []
            for run in fresh:
                run.queued = False
                deadline = run.deadline
                if deadline <= limit:
                    _expire(run)
                elif deadline != NO_DEADLINE:
                    entries.append((deadline, run.number, run))
            if len(entries) > len(heap):  # many at once (sagas started together): O(n)
                heap.extend(entries)
                heapq.heapify(heap)
            else:
                for entry in entries:
                    heapq.heappush(heap, entry)
        while heap:
            deadline, _, run = heap[0]
            if run.deadline != deadline:  # that step ended (a later one is in the heap too)
                heapq.heappop(heap)
            elif deadline <= limit:
                heapq.heappop(heap)
                _expire(run)
            else:
                break
        if len(heap) > 2 * len(self.runs) + 64:  # ended steps' entries: drop them all
            heap[:] = [entry for entry in heap if entry[2].deadline == entry[0]]
            heapq.heapify(heap)
        if heap:
            self.wake_at(heap[0][0])


def _expire(run: SagaRun) -> None:
    """Cancel ``run``'s task for its deadline, marking the run as timed out."""
    run.deadline = NO_DEADLINE
    run.timed_out = True
    if run.task is not None:
        run.task.cancel()


def claim_timeout(run: SagaRun) -> bool:
    """After a ``CancelledError``: True when the watchdog caused it (it is then undone).

    A task cancelled for this run's deadline and for those of enclosing runs on the same
    task (a step awaiting an inner saga, both deadlines passed at one firing) gets one
    ``CancelledError`` for all of them. That is this run's timeout: the enclosing runs'
    cancellations are taken back and made again once the task runs on (``_redeliver``),
    and each enclosing run claims its own timeout however its step ends. Read as the
    caller's, they left the inner step recorded as cancelled though its deadline passed.
    A cancellation by anyone else still wins, as before.
    """
    if not run.timed_out:
        return False
    run.timed_out = False
    task = run.task
    assert task is not None
    if run.cancel_owed:  # taken back by an inner run's claim, not made again yet
        run.cancel_owed = False
        return task.cancelling() <= run.cancel_base
    if task.uncancel() <= run.cancel_base:
        return True
    enclosing: list[SagaRun] = []
    outer = run.parent
    while outer is not None:
        if outer.task is task and outer.timed_out and not outer.cancel_owed:
            enclosing.append(outer)
        outer = outer.parent
    if task.cancelling() - run.cancel_base != len(enclosing):
        return False  # cancelled by someone else too: that cancellation wins
    for outer in enclosing:
        task.uncancel()
        outer.cancel_owed = True
        task.get_loop().call_soon(_redeliver, outer, task, context=contextvars.Context())
    return True


def _redeliver(run: SagaRun, task: asyncio.Task[Any]) -> None:
    """Make again the cancellation of ``run``'s timeout that an inner run's claim took
    back, unless ``run`` claimed its timeout meanwhile: its step's timeout holds."""
    if run.cancel_owed:
        run.cancel_owed = False
        task.cancel()


class _Late(Exception):
    """Internal: an attempt finished, but after its deadline."""


def timeout_error(
    index: int, name: str, elapsed: float, timeout: float, *, compensation: bool = False
) -> StepTimeout:
    """The ``StepTimeout`` of a step (or compensation) that ran ``elapsed`` seconds past
    ``timeout``: its duration never less than the timeout.

    The timer fires once the loop's clock reaches the deadline, yet ``now - started``
    can come out a hair below the timeout: float rounding of ``started + timeout``, or
    a clock read once per loop iteration to the millisecond (uvloop's).
    """
    duration = elapsed if elapsed > timeout else timeout
    return StepTimeout(index, name, duration, timeout, compensation=compensation)


__all__ = ["NO_DEADLINE", "Watchdog", "claim_timeout", "timeout_error"]
