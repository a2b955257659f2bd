"""Group commit for the PostgreSQL store: the log writes of concurrent sagas, batched.

Each saga awaits its own write before moving on, so a batch holds at most one
submission per saga: one write, or a write preceded by the saga's staged ones.
While one batch is in flight the next one fills up; it is sent as one statement
(``apply_writes``: one round trip, one transaction) as soon as the previous one
returns.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .._hooks import process_died
from .._runs import storable_text
from ..exceptions import LeaseLost, SerializationError, StepTimeout, StoreError, error_text
from ..status import SagaStatus, StepStatus
from ..transitions import Transition, TransitionKind
from ._records import completion_texts

MAX_BATCH = 500

logger = logging.getLogger("sagakit")

_to_json = json.JSONEncoder(separators=(",", ":")).encode

_STEP_STATUS = {
    TransitionKind.STEP_STARTED: StepStatus.RUNNING,
    TransitionKind.STEP_COMPLETED: StepStatus.COMPLETED,
    TransitionKind.STEP_FAILED: StepStatus.FAILED,
    TransitionKind.STEP_TIMED_OUT: StepStatus.TIMED_OUT,
    TransitionKind.COMPENSATION_STARTED: StepStatus.RUNNING,
    TransitionKind.COMPENSATION_COMPLETED: StepStatus.COMPLETED,
    TransitionKind.COMPENSATION_FAILED: StepStatus.FAILED,
}
_COMPENSATION = frozenset(
    {
        TransitionKind.COMPENSATION_STARTED,
        TransitionKind.COMPENSATION_COMPLETED,
        TransitionKind.COMPENSATION_FAILED,
    }
)
_STEP_ENDS = frozenset({TransitionKind.STEP_FAILED, TransitionKind.STEP_TIMED_OUT})
WRITTEN = frozenset({*_STEP_STATUS, TransitionKind.SAGA_STARTED, TransitionKind.SAGA_FINISHED})
"""The transitions the log keeps; retries are implied by the next start's attempt."""


@dataclass(slots=True)
class Write:
    """One saga's log write: its status, plus a step row and events if any."""

    saga_id: str
    saga_name: str
    fence: int
    status: str
    final: bool = False
    error: str | None = None
    total: int | None = None
    index: int | None = None
    compensation: bool = False
    step_name: str | None = None
    step_status: str | None = None
    attempts: int | None = None
    duration: float | None = None
    step_error: str | None = None
    result: str | None = None
    events: Sequence[str] = ()
    new: dict[str, Any] | None = None  # the saga's row, for the first write of a generated id
    token: int | None = None  # kept in the saga's row, to settle a commit in doubt
    start_order: int | None = None  # a start's place among its saga's, counted by the store


def storable(text: str | None) -> str | None:
    """``text`` as PostgreSQL can store it (see :func:`storable_text`)."""
    return None if text is None else storable_text(text)


def write_for(
    transition: Transition,
    fence: int,
    dumps: Callable[..., str],
    *,
    run_error: str | None,
    total: int | None,
    step_error: str | None,
) -> Write:
    """The :class:`Write` recording ``transition``; serializing may raise. ``step_error``:
    the error it records for its step or compensation (see
    :func:`~sagakit._runs.step_end_error`)."""
    t = transition
    kind = t.kind
    status = str(t.status)
    if kind is TransitionKind.SAGA_FINISHED:
        final = t.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED)
        return Write(t.saga_id, t.saga_name, fence, status, final, run_error, total)
    if kind is TransitionKind.SAGA_STARTED:
        return Write(t.saga_id, t.saga_name, fence, status)
    step_status = _STEP_STATUS[kind]
    compensation = kind in _COMPENSATION
    if kind is TransitionKind.COMPENSATION_FAILED and isinstance(t.error, StepTimeout):
        step_status = StepStatus.TIMED_OUT  # as the run's own record says
    write = Write(
        t.saga_id,
        t.saga_name,
        fence,
        status,
        index=t.step_index,
        compensation=compensation,
        step_name=t.step_name,
        step_status=str(step_status),
        attempts=max(t.attempt, 1),
        duration=t.duration,
        step_error=step_error,
        # The failure being undone, or the one a step that failed gives the saga.
        error=run_error if compensation or kind in _STEP_ENDS else None,
    )
    if step_status is StepStatus.COMPLETED:
        try:
            write.result, write.events = completion_texts(dumps, t, compensation)
        except SerializationError as unstored:
            if not compensation:
                raise  # the step fails and is compensated: never "completed" unstored
            # The compensation ran: record that, even though its result cannot be kept.
            write.result, write.events = None, []
            write.step_error = f"result not stored: {unstored}"
            logger.error(
                "sagakit: saga %s (%s): %s",
                t.saga_name,
                t.saga_id,
                write.step_error,
                extra={"saga_id": t.saga_id, "saga_name": t.saga_name},
            )
    return write


def batch_params(writes: Sequence[Write]) -> tuple[str, str, str]:
    """The JSON parameters of ``apply_writes``: the writes, their events, new sagas' rows.

    One string each: adapting 21 arrays for the former ``apply_batch`` cost the
    client ~250 µs per batch, most of a small batch's time. A write of a record that
    started in this batch says which of its saga's starts in the batch that was
    (``start``), and the start's ``start_order`` if the store counted it: the log lists
    records in the order they last started.
    """
    rows: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    new: list[dict[str, Any]] = []
    starts: dict[str, int] = {}  # saga id -> starts in this batch so far
    started: dict[tuple[str, bool, int], int] = {}  # a record -> its start in this batch
    orders: dict[tuple[str, bool, int], int | None] = {}  # a record -> its start's order
    for w in writes:
        if w.new is not None:
            new.append(w.new)
        start = start_order = None
        if w.index is not None:
            record = (w.saga_id, w.compensation, w.index)
            if w.step_status == StepStatus.RUNNING:
                starts[w.saga_id] = started[record] = starts.get(w.saga_id, 0) + 1
                orders[record] = w.start_order
            start = started.get(record)
            start_order = orders.get(record)
        step_events = None
        if w.step_status == StepStatus.COMPLETED:
            step_events = "[" + ",".join(w.events) + "]"
            for data in w.events:
                events.append(
                    {
                        "saga_id": w.saga_id,
                        "sname": w.saga_name,
                        "idx": w.index,
                        "step": w.step_name,
                        "comp": w.compensation,
                        "data": data,
                    }
                )
        row: dict[str, Any] = {
            "saga_id": w.saga_id,
            "fence": w.fence,
            "status": w.status,
            "final": w.final,
            "error": storable(w.error),
            "total": w.total,
            "idx": w.index,
            "comp": w.compensation,
            "name": w.step_name,
            "sstatus": w.step_status,
            "attempts": w.attempts,
            "duration": w.duration,
            "err": storable(w.step_error),
            "result": w.result,
            "events": step_events,
            "start": start,
            "start_order": start_order,
        }
        if w.token is not None:
            row["token"] = w.token
        rows.append(row)
    return _to_json(rows), _to_json(events), _to_json(new)


class IdTaken(StoreError):
    """A generated saga id that is already in the log: nothing of that saga was written."""


def id_taken(saga_id: str) -> IdTaken:
    """The :class:`IdTaken` of a run whose generated id ``saga_id`` is another saga's."""
    return IdTaken(
        f"generated saga id {saga_id!r} is already in the saga log; "
        "nothing ran — execute the saga again for a new id"
    )


class Rejected(Exception):
    """Raised by ``send`` when the server refused a batch: nothing of it was applied."""


class GroupWriter:
    """Queues :class:`Write`\\ s and sends them in batches through ``send``.

    ``send(writes)`` applies a batch and returns the sagas it refused, with why:
    ``"fenced"`` (their writers get :class:`~sagakit.LeaseLost`) or ``"exists"`` (a
    generated id already in the log: :class:`~sagakit.StoreError`); the others return.
    A batch that ``send`` reports :class:`Rejected` is sent again saga by saga, so
    that one saga's unstorable write fails that saga only.
    """

    def __init__(
        self,
        send: Callable[[list[Write]], Awaitable[dict[str, str]]],
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._send = send
        self._max_batch = max_batch
        self._pending: list[tuple[Sequence[Write], asyncio.Future[None]]] = []
        self._sending: list[tuple[Sequence[Write], asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    dead: str | None = None
    """The simulated process crash that killed this writer's process, if one did
    (``crash()``): every write raises ``SimulatedCrash`` until it is set back to ``None``."""

    def crash(self, what: str) -> None:
        """A simulated crash of the process (``what``): refuse every write from now on,
        and fail those queued, never to be sent. A batch on its way may commit, as at a
        kill; its callers stop all the same."""
        self.dead = what
        waiting = [*self._pending, *self._sending]
        self._pending = []
        for _, future in waiting:
            if not future.done():
                future.set_exception(process_died(what))

    async def submit(self, writes: Sequence[Write]) -> None:
        """Queue the ``writes`` of one saga (in order) and wait until they are committed
        together (or refused)."""
        if self.dead is not None:
            raise process_died(self.dead)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((writes, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="sagakit-pg-writer")
        await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                await self._write(self._next_batch())
        finally:
            self._task = None
            self._fail_pending()  # only when cancelled: the loop ends with none queued

    def _next_batch(self) -> list[tuple[Sequence[Write], asyncio.Future[None]]]:
        """Take the next batch off the queue: up to ``max_batch`` submissions, at most
        one per saga. A saga has two queued only when a cancelled caller's write waits
        behind a batch in flight and the store queued what it carried again: the stale
        one must go out on its own, to be refused (``apply_writes`` gives a saga's row
        the last of its writes' fencing tokens, and all its writes the row's fate)."""
        pending = self._pending
        batch = pending[: self._max_batch]
        sagas = {writes[0].saga_id for writes, _ in batch}
        if len(sagas) == len(batch):  # the usual case
            del pending[: self._max_batch]
            return batch
        batch, later, seen = [], [], set()
        taken = 0
        for submission in pending:
            if len(batch) == self._max_batch:
                break
            taken += 1
            saga_id = submission[0][0].saga_id
            if saga_id in seen:
                later.append(submission)  # after its saga's earlier one
            else:
                seen.add(saga_id)
                batch.append(submission)
        self._pending = [*later, *pending[taken:]]
        return batch

    async def _write(self, batch: list[tuple[Sequence[Write], asyncio.Future[None]]]) -> None:
        """Send ``batch`` as one statement and settle its futures."""
        self._sending = batch
        try:
            refused = await self._send([w for writes, _ in batch for w in writes])
        except Rejected as rejected:
            if len(batch) > 1:
                # Rolled back whole: send each saga's writes on their own (in order).
                for one in batch:
                    await self._write([one])
                return
            self._fail(batch, rejected)
            return
        except BaseException as error:
            self._fail(batch, error)
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        for writes, future in batch:
            if future.done():
                continue
            saga_id = writes[0].saga_id
            reason = refused.get(saga_id) if refused else None
            if reason is None:
                future.set_result(None)
            elif reason == "exists":
                future.set_exception(id_taken(saga_id))
            else:
                future.set_exception(LeaseLost(saga_id))

    @staticmethod
    def _fail(
        batch: list[tuple[Sequence[Write], asyncio.Future[None]]], error: BaseException
    ) -> None:
        # A StoreError or Rejected says what the server said already, with the schema.
        said = str(error) if isinstance(error, StoreError | Rejected) else error_text(error)
        for _, future in batch:
            if not future.done():
                failure = StoreError(f"cannot write the saga log to PostgreSQL: {said}")
                failure.__cause__ = error
                future.set_exception(failure)

    def _fail_pending(self) -> None:
        """Fail the writes still queued (the writer was cancelled, e.g. at loop shutdown)."""
        pending, self._pending = self._pending, []
        for _, future in pending:
            if not future.done():
                future.set_exception(
                    StoreError("the PostgreSQL log writer was cancelled before this write")
                )

    @property
    def sending(self) -> asyncio.Task[None] | None:
        """The task sending the queued writes, while there are some."""
        return self._task

    async def close(self) -> None:
        """Wait for queued writes to be sent."""
        task = self._task
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)


__all__ = [
    "MAX_BATCH",
    "WRITTEN",
    "GroupWriter",
    "IdTaken",
    "Rejected",
    "Write",
    "batch_params",
    "id_taken",
    "write_for",
]
