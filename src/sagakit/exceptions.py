"""The sagakit error hierarchy.

Every error raised by sagakit derives from :class:`SagaError`. Misuse found while a
step or saga is being declared raises :class:`SagaDefinitionError` (also a
``TypeError``) before anything runs; failures while a saga runs raise the other
classes, which carry the saga id, the step involved and the events recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ._commands import command_line
from ._seconds import duration_text, timeout_text
from .records import SHOWN_ERROR


def error_text(error: BaseException) -> str:
    """``"ValueError: boom"`` on one line (``"KeyboardInterrupt"`` for no message), even
    for an exception whose ``str()`` raises."""
    if error.__class__ is _LoggedError:
        return str(error)  # "ValueError: boom", as it was logged
    try:
        message = str(error)
    except Exception as broken:  # any failure to print it
        message = f"<str() raised {type(broken).__name__}>"
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    if "\n" in text or "\r" in text:
        text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return text


class SagaError(Exception):
    """Base class of every sagakit error."""


class SagaDefinitionError(SagaError, TypeError):
    """A step or saga was declared or built wrongly; the message says how to fix it."""


class CompensationAlreadySetError(SagaDefinitionError):
    """``@<step>.compensate`` was used twice for the same step."""


class SagaRunError(SagaError):
    """A saga run ended without completing.

    ``events`` holds the events of the steps that completed before the failure,
    ``compensation_events`` the events returned by the compensations that ran.
    """

    saga_id: str | None = None
    events: list[Any]
    compensation_events: list[Any]

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.events = []
        self.compensation_events = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class StepFailed(SagaRunError):
    """A step raised; ``error`` is the original exception (also ``__cause__``).

    ``step_index`` is -1 only in the :class:`StepTimeout` of a step awaited on its own,
    outside any saga; a failure there raises the step's own exception, not ``StepFailed``.
    """

    step_index: int
    step_name: str
    error: BaseException

    def __init__(self, step_index: int, step_name: str, error: BaseException) -> None:
        super().__init__()  # the message is made when read: failures are a hot path
        self.step_index = step_index
        self.step_name = step_name
        self.error = error

    def _which(self) -> str:
        if self.step_index < 0:  # a StepTimeout of a step awaited on its own
            return f"step {self.step_name!r}"
        return f"step {self.step_index} ({self.step_name!r})"

    def __str__(self) -> str:
        error = self.error
        return f"{self._which()} failed: {error_text(error)}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.step_index, self.step_name, self.error), self.__dict__)


_new_error = BaseException.__new__


def _step_failed(step_index: int, step_name: str, error: BaseException) -> StepFailed:
    """``StepFailed(step_index, step_name, error)``, the same object made without the
    three ``__init__`` frames of its classes (the orchestrator makes one per failure)."""
    failure: StepFailed = _new_error(StepFailed)  # args (), as StepFailed.__init__ leaves them
    failure.events = []
    failure.compensation_events = []
    failure.step_index = step_index
    failure.step_name = step_name
    failure.error = error
    return failure


class StepTimeout(StepFailed, TimeoutError):
    """A step did not finish within its timeout; ``duration`` is how long it ran.

    ``compensation`` is true when it was the step's compensation that timed out (the
    error of a :class:`CompensationFailed`, or of a compensation's record).
    """

    # A StepFailed whose error is always the TimeoutError describing the limit (pyright
    # flags narrowing a mutable attribute where it is set; mypy accepts it).
    error: TimeoutError
    duration: float
    timeout: float
    compensation: bool = False

    def __init__(
        self,
        step_index: int,
        step_name: str,
        duration: float,
        timeout: float,
        *,
        compensation: bool = False,
    ) -> None:
        SagaRunError.__init__(self)
        self.step_index = step_index
        self.step_name = step_name
        what = "compensation" if compensation else "step"
        error = TimeoutError(f"{what} exceeded its {timeout_text(timeout)} timeout")
        self.error = error  # pyright: ignore[reportIncompatibleVariableOverride]
        self.duration = duration
        self.timeout = timeout
        if compensation:
            self.compensation = True

    def __str__(self) -> str:
        which = self._which()
        if self.compensation:
            which = f"compensation of {which}"
        duration, timeout = duration_text(self.duration), timeout_text(self.timeout)
        return f"{which} timed out after {duration} (timeout {timeout})"

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.step_index, self.step_name, self.duration, self.timeout)
        return (type(self), args, self.__dict__)


class CompensationFailed(SagaRunError):
    """A compensation still failed after its retries; the saga ended ``FAILED``.

    ``step_index``/``step_name``/``error`` name the first compensation that failed,
    ``trigger`` is the failure that started compensating, ``uncompensated`` the names
    of the completed steps whose compensation did not succeed, and ``errors`` every
    ``(step_index, step_name, error)`` when the orchestrator continues past failures.
    """

    step_index: int
    step_name: str
    error: BaseException
    trigger: BaseException | None
    uncompensated: tuple[str, ...]
    errors: tuple[tuple[int, str, BaseException], ...]

    def __init__(
        self,
        step_index: int,
        step_name: str,
        error: BaseException,
        trigger: BaseException | None,
        uncompensated: Sequence[str] = (),
        errors: Sequence[tuple[int, str, BaseException]] = (),
    ) -> None:
        left = ", ".join(uncompensated) or "none"
        super().__init__(
            f"compensation of step {step_index} ({step_name!r}) failed: "
            f"{error_text(error)}; left uncompensated: {left}"
        )
        self.step_index = step_index
        self.step_name = step_name
        self.error = error
        self.trigger = trigger
        self.uncompensated = tuple(uncompensated)
        self.errors = tuple(errors) or ((step_index, step_name, error),)

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.step_index, self.step_name, self.error, self.trigger, self.uncompensated)
        return (type(self), (*args, self.errors), self.__dict__)


class SagaAlreadyExecuting(SagaError):
    """A saga with this id is already running (here or in another process).

    ``dead_letter`` is the reason it was parked when it is a dead letter: nothing runs
    it until it is resumed (``sagakit resume``) or resolved (``sagakit resolve``).
    """

    saga_id: str
    dead_letter: str | None

    def __init__(self, saga_id: str, dead_letter: str | None = None) -> None:
        if dead_letter is None:
            message = (
                f"saga {saga_id!r} is already executing; wait for it to finish or use another id"
            )
        else:
            message = (
                f"saga {saga_id!r} is dead-lettered ({dead_letter}): nothing runs it; resume "
                "it for recovery (`sagakit resume`) or end it (`sagakit resolve`), or use "
                "another id"
            )
        super().__init__(message)
        self.saga_id = saga_id
        self.dead_letter = dead_letter

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.saga_id, self.dead_letter))


class SagaAlreadyFailed(SagaError):
    """A saga with this id failed earlier with steps left uncompensated.

    Running it again could apply its steps twice; resolve the earlier run first
    (for example with ``sagakit resolve``) or use another id. ``in_memory`` says the
    run is in an in-memory store, which has no resolve: its message says so.
    """

    saga_id: str
    in_memory: bool

    def __init__(self, saga_id: str, in_memory: bool = False) -> None:
        if in_memory:
            message = (
                f"saga {saga_id!r} already ran and FAILED with uncompensated steps; undo by "
                "hand what it left, then use another id (the in-memory store has no "
                "resolve: it refuses this id while the run is in its history, bounded by "
                "history_limit, and forgets it when the process ends)"
            )
        else:
            resolve = command_line("LOG", "resolve", saga_id, options=("--note", "..."))
            message = (
                f"saga {saga_id!r} already ran and FAILED with uncompensated steps; undo by "
                f"hand what it left, mark it resolved (`{resolve}`, or "
                "`await store.resolve(saga_id, note)`), then execute the id again; or use "
                "another id"
            )
        super().__init__(message)
        self.saga_id = saga_id
        self.in_memory = in_memory

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.saga_id, self.in_memory))


class SagaIdReused(SagaError):
    """An explicit saga id that completed was executed again for another saga, or for
    the same saga with other arguments: the recorded events are not this call's.

    ``recorded_name`` is the saga that completed under the id, ``name`` the one executed
    now; ``arguments`` names the arguments that differ (empty when the saga does).
    Nothing runs. An id is the idempotency key of one operation: give this one a new id.
    """

    saga_id: str
    recorded_name: str
    name: str
    arguments: tuple[str, ...]

    def __init__(
        self, saga_id: str, recorded_name: str, name: str, arguments: Sequence[str] = ()
    ) -> None:
        if arguments:
            which = ", ".join(arguments)
            what = f"saga {name!r} with other arguments (differing: {which})"
        else:
            what = f"saga {name!r}, but it completed a run of saga {recorded_name!r}"
        super().__init__(
            f"saga id {saga_id!r} is reused for {what}; an explicit id answers with the "
            "recorded events only the same saga called with the same arguments: give this "
            "run a new id (one naming its own operation, e.g. with what differs in it)"
        )
        self.saga_id = saga_id
        self.recorded_name = recorded_name
        self.name = name
        self.arguments = tuple(arguments)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.saga_id, self.recorded_name, self.name, self.arguments))


class NonDeterminismError(SagaError):
    """Replaying a saga yielded a step that does not match its recorded log."""


class SerializationError(SagaError, TypeError):
    """A value could not be stored in or read from a durable saga log."""


class StoreError(SagaError):
    """A saga store could not be opened, read or written."""


def _start_of(error: str) -> str:
    """The first line of ``error``, at most :data:`~sagakit.records.SHOWN_ERROR`
    characters of it (as a repr shows an error), ended with "..." where anything was
    left off."""
    first = error.split("\n", 1)[0].split("\r", 1)[0]
    shown = first[:SHOWN_ERROR]
    return shown if shown == error else f"{shown}..."


class SagaAlreadyResolved(StoreError):
    """``resolve()`` (``sagakit resolve``) of a saga an operator resolved already.

    Nothing is changed: the first resolution stands, note and all. ``resolved_at`` is
    when it was resolved (UTC), ``error`` the saga's error since, which holds the note
    it was resolved with (``"resolved by an operator: <note> (was: ...)"``); the message
    repeats its first line, up to 200 characters (``error`` holds it whole).
    """

    saga_id: str
    resolved_at: datetime | None
    error: str | None

    def __init__(
        self, saga_id: str, resolved_at: datetime | None = None, error: str | None = None
    ) -> None:
        when = "" if resolved_at is None else f" at {resolved_at:%Y-%m-%d %H:%M:%S} UTC"
        said = "" if error is None else f" ({_start_of(error)})"
        super().__init__(
            f"saga {saga_id!r} was resolved already{when}{said}; nothing is changed: the "
            "first note stands, and the saga's id may already be executed again"
        )
        self.saga_id = saga_id
        self.resolved_at = resolved_at
        self.error = error

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.saga_id, self.resolved_at, self.error))


class CorruptLog(StoreError):
    """SQLite found the saga log at ``path`` damaged (``SQLITE_CORRUPT``, "database disk
    image is malformed") or not a database (``SQLITE_NOTADB``), or it is not a sagakit log:
    ``reason`` is what SQLite said. Raised opening the log, writable or read-only, or at a
    read or a write of an open store that reaches a damaged page.

    The message advises a library user (restore the log from a backup, or point
    ``SQLiteStore`` at another path); the ``sagakit`` command says its own advice instead.
    """

    path: str
    reason: str

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"saga log {path!r} is corrupt or not a sagakit log ({reason}); restore it from "
            "a backup or point SQLiteStore at another path"
        )
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason))


class StoreConfigError(SagaDefinitionError, StoreError):
    """A store was given a bad setting (``PostgresStore(lease=0)``), or one it cannot serve
    (``SagaOrchestrator(MemoryStore(), recover_on_start=True)``); the message names the fix.

    Every built-in store raises it for its bad settings: a :class:`SagaDefinitionError`, as
    every other bad argument to sagakit is (and what ``SQLiteStore`` and ``MemoryStore``
    raised), and a :class:`StoreError` (what ``PostgresStore`` raised).
    """


class ReturnValueIgnored(UserWarning):
    """A generator saga returned a value, which ``execute()`` does not return (it returns
    the events of the saga's steps): warned once per saga, pointing at the saga's code.

    Return the result from a step instead (its events are what ``execute()`` returns), or
    return nothing. A generator returning a value for a ``yield from`` of it in another
    saga is warned about only when run as a saga of its own.
    """


class _LoggedError(Exception):
    """An error known only by its text in a saga log (``"ValueError: boom"``): what a
    compensation that failed for good before its process died failed with, reported by
    recovery as the run would have reported it (:func:`error_text` gives that text)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)


class LeaseLost(StoreError):
    """This worker no longer owns the saga: its lease expired and another worker
    claimed it, or (``released``) this store gave the lease up itself, so its writes
    are fenced out.

    The orchestrator stops the saga here, running no further step and no
    compensation; the saga's new owner finishes it.
    """

    _stop_told: str | None = None
    """The id of the saga whose ``SAGA_STOPPED`` told this (internal: recovery and workers
    then log no record of their own for a released lease, see ``log_stopped``)."""

    saga_id: str
    released: bool

    def __init__(self, saga_id: str, released: bool = False) -> None:
        if released:
            # release_leases(), a stopping worker or close(): no advice on leases is due.
            message = (
                f"gave up the lease of saga {saga_id!r}: this store released it "
                "(release_leases(), a stopping worker or close()) for another worker to "
                "finish, so nothing more is recorded or run for it here"
            )
        else:
            message = (
                f"lost the lease of saga {saga_id!r}: another worker owns it now (this "
                "worker was paused or cut off past its lease), so nothing more is recorded "
                "or run for it here; renew leases more often (heartbeat) or lengthen the lease"
            )
        super().__init__(message)
        self.saga_id = saga_id
        self.released = released

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.saga_id, self.released))


__all__ = [
    "CompensationAlreadySetError",
    "CompensationFailed",
    "CorruptLog",
    "LeaseLost",
    "NonDeterminismError",
    "ReturnValueIgnored",
    "SagaAlreadyExecuting",
    "SagaAlreadyFailed",
    "SagaAlreadyResolved",
    "SagaDefinitionError",
    "SagaError",
    "SagaIdReused",
    "SagaRunError",
    "SerializationError",
    "StepFailed",
    "StepTimeout",
    "StoreConfigError",
    "StoreError",
]
