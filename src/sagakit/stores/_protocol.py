"""The protocol every saga store implements."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .._checks import MAX_COUNT, check_count, not_the_class
from .._counted import counted
from .._display import short_repr
from .._names import unencodable
from .._sagas import RecoveryPolicy
from .._serialization import JsonSerializer
from ..exceptions import SagaDefinitionError, StoreConfigError
from ..records import one_line, shown_line
from ..status import SagaStatus, StepStatus

if TYPE_CHECKING:
    from .._sagas import SagaDefinition
    from ..records import SagaMetadata
    from ..transitions import Transition


class CommittedThenCancelled(asyncio.CancelledError):
    """The task awaiting a store's write was cancelled, but the write committed.

    A durable store raises it (a :class:`asyncio.CancelledError`, so the cancellation
    goes on as any other) from :meth:`SagaStore.record` when it knows that what the
    call was to write — the transition, and whatever it had staged to go with it — is
    in the log although its caller was cancelled: the orchestrator then tells the
    listeners those transitions, as recorded, before the cancellation propagates. A
    plain ``CancelledError`` says the write may not have committed. ``result``: what
    the write returned, for a store's own use.
    """

    # Where it is imported from, as tracebacks and pickles name it (not this private module).
    __module__ = "sagakit.stores"

    def __init__(self, result: Any = None) -> None:
        super().__init__()
        self.result = result


_NOTHING_LOGGED = "_sagakit_nothing_logged"


def mark_nothing_logged(error: BaseException, saga_id: str) -> None:
    """Mark ``error``, a store's error raised by :meth:`SagaStore.record` for the end of
    the run ``saga_id``, as leaving nothing of that run in the log (no write of it ever
    committed, such as a generated-id saga whose row went with its writes that all
    failed): there is nothing for recovery to finish, and the orchestrator says so.

    Marked for that run only: a store may raise one error object to several runs (the
    built-in stores give each run of a failed group commit its own), and the others may
    be in the log."""
    marked = getattr(error, _NOTHING_LOGGED, None)
    if not isinstance(marked, set):
        marked = set()
        setattr(error, _NOTHING_LOGGED, marked)
    marked.add(saga_id)


def nothing_logged(error: BaseException, saga_id: str) -> bool:
    """Whether :func:`mark_nothing_logged` marked ``error`` for the run ``saga_id``."""
    marked = getattr(error, _NOTHING_LOGGED, None)
    return isinstance(marked, set) and saga_id in marked


_END_UNWRITTEN = "_sagakit_end_unwritten"


def mark_end_unwritten(cancelled: BaseException, error: Exception, saga_id: str) -> None:
    """Mark ``cancelled``, the ``CancelledError`` a store raises from
    :meth:`SagaStore.record` for the end of the run ``saga_id``, as raised after that end
    was written again (the run has ended) and ``error`` refused it: the orchestrator tells
    ``error`` as an end the store refused, and it becomes ``cancelled``'s ``__context__``."""
    setattr(cancelled, _END_UNWRITTEN, (saga_id, error))
    if error.__context__ is None or error.__context__ is cancelled:
        error.__context__ = cancelled.__context__
    cancelled.__context__ = error


def end_unwritten(cancelled: BaseException, saga_id: str) -> Exception | None:
    """The error :func:`mark_end_unwritten` marked ``cancelled`` with for ``saga_id``."""
    marked = getattr(cancelled, _END_UNWRITTEN, None)
    if isinstance(marked, tuple) and marked[0] == saga_id:
        return marked[1]  # type: ignore[no-any-return]
    return None


class SagaRunView(Protocol):
    """The run a store's :meth:`~SagaStore.begin`, :meth:`~SagaStore.record` and
    :meth:`~SagaStore.finish` receive: one execution of a saga, owned and changed by
    the orchestrator, read-only to the store.

    The attributes are read when the call is made (a store keeping the run, like the
    in-memory one, sees them change as the saga goes on); :meth:`snapshot` gives a
    frozen copy. A type for annotations only: the object passed is the orchestrator's
    own run, not a wrapper.
    """

    @property
    def id(self) -> str:
        """The saga id."""
        ...

    @property
    def name(self) -> str:
        """The saga's name."""
        ...

    @property
    def explicit_id(self) -> bool:
        """Whether the caller gave the id (so a finished run with it makes the id
        idempotent), or it was generated."""
        ...

    @property
    def definition(self) -> SagaDefinition:
        """What runs: its ``args``, ``kwargs`` and ``recovery`` policy are kept by durable
        stores so recovery can run it again."""
        ...

    @property
    def status(self) -> SagaStatus:
        """``EXECUTING``, ``COMPENSATING``, or how the run ended (at :meth:`~SagaStore.finish`)."""
        ...

    @property
    def error(self) -> str | None:
        """One line naming the failure, once there is one."""
        ...

    @property
    def total_steps(self) -> int | None:
        """How many forward steps the saga has (``None`` for a generator saga until it
        completes)."""
        ...

    @property
    def steps_executed(self) -> int:
        """How many forward steps completed."""
        ...

    @property
    def started_at(self) -> datetime:
        """When the run started (UTC)."""
        ...

    def snapshot(self) -> SagaMetadata:
        """The run's metadata now, as a frozen record."""
        ...


@runtime_checkable
class SagaStore(Protocol):
    """Where an orchestrator keeps its sagas: running ones, their log and their history.

    :meth:`begin`, :meth:`record` and :meth:`finish` receive the run as a
    :class:`SagaRunView`, the part of it a store may read.

    ``durable`` stores receive every :class:`~sagakit.Transition` through
    :meth:`record`, awaited before the orchestrator moves on; a store that is not
    durable (the in-memory one) only sees :meth:`begin` and :meth:`finish` and reads
    the live runs.

    A durable store may also offer ``stage(run, transition) -> None`` (optional, not
    part of this protocol's checks): synchronous, it serializes the transition and
    queues its write, raising :class:`~sagakit.SerializationError` or
    :class:`~sagakit.StoreError` at once; queued writes commit, in order, no later
    than the run's next :meth:`record` (or :meth:`finish`), in the same transaction; a
    :meth:`record` that fails without committing keeps them queued for the next one.
    The orchestrator then stages ``SAGA_STARTED``, ``STEP_COMPLETED`` and
    ``COMPENSATION_COMPLETED`` and awaits :meth:`record` for every transition that
    precedes a side effect or a return to the caller, so every transition is durable
    before the next step or compensation runs or ``execute()`` returns.
    """

    durable: bool

    async def begin(self, run: SagaRunView) -> SagaMetadata | None:
        """Register a new run before its first step.

        Returns the metadata of an earlier ``COMPLETED`` run with the same id (the
        caller then returns its events without running anything), or raises
        :class:`~sagakit.SagaIdReused` when that run was of another saga or had other
        arguments; raises :class:`~sagakit.SagaAlreadyExecuting` while that id runs and
        :class:`~sagakit.SagaAlreadyFailed` when it ended ``FAILED``.
        """
        ...

    async def record(self, run: SagaRunView, transition: Transition) -> None:
        """Durably record one state change of ``run`` (durable stores only).

        Cancelled once the write has committed (with what was staged to go with it),
        it raises :class:`CommittedThenCancelled` rather than a plain
        ``CancelledError``, so that listeners hear what the log holds.
        """
        ...

    async def finish(self, run: SagaRunView) -> None:
        """Move a finished run from running to history."""
        ...

    async def get(self, saga_id: str) -> SagaMetadata | None:
        """The latest metadata of one saga, running or finished."""
        ...

    async def running(self) -> list[SagaMetadata]:
        """Metadata of the sagas running now, oldest first."""
        ...

    async def history(self, limit: int | None = None) -> list[SagaMetadata]:
        """Metadata of finished sagas, oldest first (the newest ``limit`` if given)."""
        ...

    async def running_count(self) -> int:
        """How many sagas are running."""
        ...

    async def history_count(self) -> int:
        """How many finished sagas are kept."""
        ...

    async def close(self) -> None:
        """Release connections and files."""
        ...


# ------------------------------------------------------------------ recovery


@dataclass(frozen=True, slots=True, repr=False)
class LoggedStep:
    """One forward step or compensation as a durable log recorded it.

    ``status`` is ``COMPLETED``, ``FAILED`` or ``TIMED_OUT`` once the attempt
    ended, and ``RUNNING`` when the log only has its start (the process died
    inside it, so its effect is unknown). ``result`` and ``events`` are the
    deserialized values recorded with a completion.
    """

    index: int
    name: str
    status: StepStatus
    attempts: int = 0
    result: Any = None
    events: tuple[Any, ...] = ()
    error: str | None = None
    duration: float | None = None
    compensation: bool = False

    def __repr__(self) -> str:
        kind = "compensation" if self.compensation else "step"
        return f"<Logged{kind} {self.index} {one_line(self.name)}: {self.status}>"


@dataclass(frozen=True, slots=True, repr=False)
class OrphanedSaga:
    """A saga left ``EXECUTING`` or ``COMPENSATING`` by a dead owner, now claimed.

    ``steps`` holds the forward steps in index order (completed ones first, then
    at most one that failed or was interrupted); ``compensations`` the
    compensations in the order they ran. ``recovery_attempts`` counts claims,
    this one included. ``released``: its last owner gave its lease up (a stopping
    worker, ``release_leases()``, ``close()``), so this claim is an orderly handover,
    not a recovery after a crash (which it counted no attempt for). ``policy`` is the
    saga's recovery policy when it started.
    ``factory`` is ``False`` for builder-form definitions
    (``SagaDefinition("id").add_step(...)``), which recovery cannot rebuild: stores
    return those whatever ``names`` says, so recovery can dead-letter them.
    """

    saga_id: str
    name: str
    status: SagaStatus
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    policy: RecoveryPolicy
    steps: tuple[LoggedStep, ...]
    compensations: tuple[LoggedStep, ...]
    recovery_attempts: int
    explicit_id: bool = True
    factory: bool = True
    fingerprint: str | None = None
    error: str | None = None
    started_at: datetime | None = None
    released: bool = False

    @property
    def completed_steps(self) -> tuple[LoggedStep, ...]:
        """The leading forward steps recorded as completed (never run again)."""
        done: list[LoggedStep] = []
        for logged in self.steps:
            if logged.status is not StepStatus.COMPLETED:
                break
            done.append(logged)
        return tuple(done)

    def __repr__(self) -> str:
        return (
            f"<OrphanedSaga {one_line(self.name)} id={self.saga_id!r} {self.status} "
            f"{counted(len(self.completed_steps), 'step')} done, attempt {self.recovery_attempts}>"
        )


@dataclass(frozen=True, slots=True, repr=False)
class DeadLetter:
    """A saga parked after failing recovery; resume or resolve it (``sagakit`` CLI)."""

    saga_id: str
    name: str
    status: SagaStatus
    recovery_attempts: int
    reason: str
    parked_at: datetime | None = None

    def __repr__(self) -> str:
        return (
            f"<DeadLetter {one_line(self.name)} id={self.saga_id!r} {self.status} after "
            f"{self.recovery_attempts} attempt{'s' * (self.recovery_attempts != 1)}: "
            f"{shown_line(self.reason)}>"
        )


@dataclass(frozen=True, slots=True, repr=False)
class StoredEvent:
    """One event from the log's ordered stream (see :meth:`RecoverableStore.read_events`).

    ``position`` is unique and increases in commit order across all sagas; a
    consumer stores the last position it handled and asks for events ``after`` it.
    """

    position: int
    saga_id: str
    saga_name: str
    step_index: int
    step_name: str
    compensation: bool
    event: Any
    recorded_at: datetime | None = None

    def __repr__(self) -> str:
        kind = "compensation" if self.compensation else "step"
        return (
            f"<StoredEvent #{self.position} {one_line(self.saga_name)} {self.saga_id!r} "
            f"{kind} {self.step_index} {one_line(self.step_name)}: {short_repr(self.event)}>"
        )


@runtime_checkable
class RecoverableStore(SagaStore, Protocol):
    """A durable store whose sagas survive their process (SQLite, PostgreSQL).

    Ownership: every running saga has an owner. :meth:`begin` makes the calling
    store its owner; :meth:`claim_orphans` takes over sagas whose owner is known to
    be dead and keeps the new owner token (a fencing token, for stores that lease)
    internally per saga id, so later :meth:`record`/:meth:`finish` calls for that
    saga are checked against it. A store that finds it no longer owns a saga
    raises :class:`~sagakit.StoreError` from :meth:`record` instead of writing.
    How death is known is the store's business (SQLite: the owner process is gone;
    a leasing store: the lease expired by the database clock); a store never hands
    out a saga whose owner may still be alive.

    A claimed saga is driven again by the orchestrator: :meth:`record` then gets
    ``SAGA_STARTED`` once more (update, not insert) and the transitions of the
    steps and compensations that run after the recorded ones.
    """

    async def claim_orphans(
        self,
        *,
        names: Collection[str] | None = None,
        limit: int = 100,
        max_attempts: int = 3,
        saga_ids: Collection[str] | None = None,
    ) -> list[OrphanedSaga]:
        """Claim up to ``limit`` sagas left running by dead owners, oldest first.

        Only sagas whose name is in ``names`` are considered (all when ``None``), so
        a process never claims sagas it cannot run; orphans of builder-form
        definitions (``factory=False``) are claimed regardless. ``saga_ids`` limits
        the claim to those ids (``execute()`` of an orphan's id claims just that one).
        Each claim increments the saga's recovery attempts atomically with taking
        ownership; a saga whose
        attempts would exceed ``max_attempts`` (it crashed its process every time)
        is moved to the dead letters instead of being returned. A saga whose log
        cannot be read back (for example an argument that no longer deserializes)
        is dead-lettered with the reason. Dead-lettered sagas are never claimed.
        """
        ...

    async def dead_letter(self, saga_id: str, reason: str) -> None:
        """Park a claimed saga that recovery cannot finish, with the reason."""
        ...

    async def dead_letters(self) -> list[DeadLetter]:
        """The parked sagas, oldest first."""
        ...

    async def resume_dead_letter(self, saga_id: str) -> None:
        """Un-park a saga with its recovery attempts reset, so the next
        :meth:`claim_orphans` takes it again; :class:`~sagakit.StoreError` if it
        is not dead-lettered.
        """
        ...

    async def resolve(self, saga_id: str, note: str) -> None:
        """Mark a dead-lettered or ``FAILED`` saga as settled by an operator.

        The saga ends ``FAILED`` with ``note`` kept in its error; its id can be
        executed again afterwards. :class:`~sagakit.StoreError` if it is unknown or
        still running under a live owner; :class:`~sagakit.SagaAlreadyResolved` (a
        ``StoreError``), changing nothing, if an operator resolved it already.
        """
        ...

    async def read_events(
        self, *, after: int = 0, limit: int = 1000, saga_id: str | None = None
    ) -> list[StoredEvent]:
        """Events committed with their step or compensation, by increasing position.

        ``after`` is the last position already consumed (0 for the start); with
        ``saga_id`` only that saga's events. Events of one transaction appear
        together, never partially, so a consumer that persists the last position
        it handled sees every event exactly once, in order.
        """
        ...


def check_event_window(after: object, limit: object) -> None:
    """Refuse ``read_events(after=..., limit=...)`` that are not a position and a page
    size (a ``limit`` of 0 would read as the end of the stream)."""
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise SagaDefinitionError(f"after must be a position >= 0, got {after!r}")
    if after > MAX_COUNT:  # past any position; the databases take no larger integer
        raise SagaDefinitionError(f"after must be at most {MAX_COUNT}, got {after!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise SagaDefinitionError(f"limit must be a whole number > 0, got {limit!r}")
    if limit > MAX_COUNT:
        raise SagaDefinitionError(f"limit must be at most {MAX_COUNT}, got {limit!r}")


def row_limit(limit: object, what: str) -> int:
    """``limit`` as a row count for a ``LIMIT``: a whole number (<= 0: no rows), capped
    at :data:`MAX_COUNT`, the most a database takes (more means all of them)."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise SagaDefinitionError(f"{what} must be a whole number, got {limit!r}")
    return min(limit, MAX_COUNT)


def claim_limit(limit: object, max_attempts: object, saga_ids: object, names: object) -> int:
    """Check the arguments of ``claim_orphans()``; return its ``limit`` as a row count."""
    check_saga_ids(saga_ids, "claim_orphans(saga_ids=...)")
    if isinstance(names, str | bytes):  # a collection of its characters: none matched
        raise SagaDefinitionError(
            f"claim_orphans(names=...) takes a collection of saga names, got the string "
            f"{names!r}; pass names=[{names!r}]"
        )
    check_count(max_attempts, "max_attempts")
    return row_limit(limit, "claim_orphans(limit=...)")


def store_serializer(serializer: object) -> JsonSerializer:
    """A store's ``serializer=``: a :class:`JsonSerializer` (one with default codecs for
    ``None``); anything without its ``dumps`` and ``loads`` is refused as a bad setting
    rather than failing the first saga with an ``AttributeError``."""
    if serializer is None:
        return JsonSerializer()
    if isinstance(serializer, type):  # its dumps and loads are there, unbound
        raise not_the_class(serializer, "serializer", error=StoreConfigError)
    dumps, loads = getattr(serializer, "dumps", None), getattr(serializer, "loads", None)
    if not (callable(dumps) and callable(loads)):
        raise StoreConfigError(
            f"serializer must be a JsonSerializer (dumps and loads), got {serializer!r}; "
            "pass an instance, serializer=JsonSerializer(codecs=[...]), or leave it out"
        )
    return serializer  # type: ignore[return-value]  # duck-typed like JsonSerializer


def check_saga_id(saga_id: object, where: str) -> None:
    """Refuse a saga id that is not a string, given to the store method ``where``
    (``"get()"``), alike on every store: a dict or SQLite found nothing (or, through
    SQLite's type affinity, the saga ``"123"`` for ``123``), PostgreSQL's driver failed.
    So is one with a lone surrogate, which ``execute()`` refuses (a dict found nothing,
    the drivers failed to encode it)."""
    if not isinstance(saga_id, str):
        raise SagaDefinitionError(
            f"{where} takes a saga id string, got {saga_id!r}; pass the id as text"
        )
    reason = unencodable(saga_id)
    if reason is not None:  # a lone surrogate: no saga has this id
        raise SagaDefinitionError(
            f"{where} takes a saga id of valid Unicode text, got {saga_id!r} ({reason}), "
            "which no saga can have; decode it from bytes with errors='replace'"
        )


def check_text(text: object, what: str, where: str, fix: str) -> None:
    """Refuse a ``dead_letter()`` reason or ``resolve()`` note that is not a string, alike
    on every store: SQLite failed its write as if the log were broken, and PostgreSQL
    stored ``None`` as no reason, which is not dead-lettered at all."""
    if not isinstance(text, str):
        raise SagaDefinitionError(f"{where} takes the {what} as a string, got {text!r}; {fix}")


def check_saga_ids(saga_ids: object, where: str = "saga_ids=") -> None:
    """Refuse one id given as ``claim_orphans(saga_ids=...)`` (a string is a collection
    of its characters), and ids in it that are not strings."""
    if isinstance(saga_ids, str | bytes):
        raise SagaDefinitionError(
            f"saga_ids= takes a collection of saga ids, got the string {saga_ids!r}; "
            f"pass saga_ids=[{saga_ids!r}]"
        )
    if isinstance(saga_ids, Collection):  # not an iterator: reading it would use it up
        for saga_id in saga_ids:
            check_saga_id(saga_id, where)


def check_given_ids(saga_ids: object, where: str) -> None:
    """Refuse what is no collection of saga ids (``None``, an iterator, a string)."""
    if isinstance(saga_ids, str | bytes):
        raise SagaDefinitionError(
            f"{where} takes a collection of saga ids, got the string {saga_ids!r}; "
            f"pass [{saga_ids!r}]"
        )
    check_saga_ids(saga_ids, where)
    if not isinstance(saga_ids, Collection):
        raise SagaDefinitionError(
            f"{where} takes a collection of saga ids (a list, a set), got {saga_ids!r}"
        )


__all__ = [
    "CommittedThenCancelled",
    "check_event_window",
    "check_given_ids",
    "check_saga_id",
    "check_saga_ids",
    "check_text",
    "claim_limit",
    "row_limit",
    "store_serializer",
    "DeadLetter",
    "LoggedStep",
    "OrphanedSaga",
    "RecoverableStore",
    "SagaRunView",
    "SagaStore",
    "StoredEvent",
]
