"""The default store: keeps running sagas and a bounded history in memory."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from .._tracebacks import hide_from_pytest
from ..exceptions import (
    SagaAlreadyExecuting,
    SagaAlreadyFailed,
    SagaIdReused,
    StoreConfigError,
)
from ..status import SagaStatus
from ._protocol import check_saga_id, row_limit
from ._reused import (
    Written,
    check_same_steps,
    check_same_written,
    same_values,
    written_arguments,
)

# pytest shows a failing test's line, not this module's code, for an error this store
# raises on purpose (a saga id already running, reused; see _tracebacks).
__tracebackhide__ = hide_from_pytest

if TYPE_CHECKING:
    from .._sagas import SagaDefinition
    from ..records import SagaMetadata
    from ..transitions import Transition
    from ._protocol import SagaRunView

DEFAULT_HISTORY_LIMIT = 10_000

_SAME = same_values()


class MemoryStore:
    """Sagas in process memory: fast, and gone when the process ends.

    ``history_limit`` bounds how many finished runs are kept (oldest dropped first),
    so a long-running service does not grow without limit. An explicit saga id stays
    idempotent while its run is in the history.
    """

    durable = False

    def __init__(self, *, history_limit: int = DEFAULT_HISTORY_LIMIT) -> None:
        self.history_limit = history_limit
        self._running: dict[str, SagaRunView] = {}
        self._history: OrderedDict[str, SagaRunView] = OrderedDict()
        # An explicit id's arguments as written when its run began (see written_arguments),
        # kept while the run is running or a COMPLETED run in the history.
        self._written: dict[str, Written] = {}

    @property
    def history_limit(self) -> int:
        """How many finished runs are kept; lowered, the history is trimmed at the next end."""
        return self._history_limit

    @history_limit.setter
    def history_limit(self, history_limit: int) -> None:
        # Checked when set, not when the next saga ends (after its steps ran).
        if (
            isinstance(history_limit, bool)
            or not isinstance(history_limit, int)
            or history_limit < 0
        ):
            raise StoreConfigError(
                f"history_limit must be a whole number >= 0, got {history_limit!r}"
            )
        self._history_limit = history_limit

    async def begin(self, run: SagaRunView) -> SagaMetadata | None:
        return self._begin_now(run)

    def _begin_now(self, run: SagaRunView) -> SagaMetadata | None:
        """:meth:`begin` without a coroutine: the orchestrator calls it directly on a
        store of exactly this class (nothing here waits; an await costs a frame)."""
        saga_id = run.id
        if saga_id in self._running:
            raise SagaAlreadyExecuting(saga_id)
        if run.explicit_id:
            earlier = self._history.get(saga_id)
            if earlier is not None:
                if earlier.status is SagaStatus.COMPLETED:
                    self._check_same(saga_id, run.definition, earlier.definition)
                    return earlier.snapshot()
                if earlier.status is SagaStatus.FAILED:
                    raise SagaAlreadyFailed(saga_id, in_memory=True)
                del self._history[saga_id]  # the id names the new run from now on
            written = written_arguments(run.definition)
            if written is not None:
                self._written[saga_id] = written
        self._running[saga_id] = run
        return None

    def _check_same(self, saga_id: str, definition: SagaDefinition, done: SagaDefinition) -> None:
        """Raise :class:`SagaIdReused` unless ``definition`` is the saga that completed under
        ``saga_id`` (``done``), called with the same arguments. Those are compared as
        written when the run began, when they could be: ``done`` holds the caller's own
        objects, which may have changed in place since (a list added to)."""
        recorded = self._written.get(saga_id)
        now = None if recorded is None else written_arguments(definition)
        if recorded is None or now is None:
            if definition is not done:  # (the same definition executed again)
                check_same_steps(saga_id, definition, done, _SAME)
            return
        try:
            check_same_written(saga_id, definition, done.name, recorded, now)
        except SagaIdReused as reused:
            refused = reused
        else:
            return
        # Compared as objects too, to name the builder step that differs when it does.
        check_same_steps(saga_id, definition, done, _SAME)
        raise refused

    async def record(self, run: SagaRunView, transition: Transition) -> None:
        """Nothing to do: the live run is the record."""

    async def finish(self, run: SagaRunView) -> None:
        self._finish_now(run)

    def _finish_now(self, run: SagaRunView) -> None:
        """:meth:`finish` without a coroutine (see :meth:`_begin_now`)."""
        self._running.pop(run.id, None)
        written = self._written
        if written and run.status is not SagaStatus.COMPLETED:
            written.pop(run.id, None)  # only a completed run's arguments are compared
        history = self._history
        limit = self._history_limit
        if limit == 0:
            history.clear()
            written.pop(run.id, None)
            return
        history.pop(run.id, None)
        history[run.id] = run
        while len(history) > limit:  # the limit may have been lowered
            dropped, _ = history.popitem(last=False)
            if written:
                written.pop(dropped, None)

    async def get(self, saga_id: str) -> SagaMetadata | None:
        check_saga_id(saga_id, "get()")
        run = self._running.get(saga_id) or self._history.get(saga_id)
        return None if run is None else run.snapshot()

    async def running(self) -> list[SagaMetadata]:
        return [run.snapshot() for run in list(self._running.values())]

    async def history(self, limit: int | None = None) -> list[SagaMetadata]:
        runs = list(self._history.values())
        if limit is not None:
            limit = row_limit(limit, "history(limit=...)")
            runs = runs[-limit:] if limit > 0 else []
        return [run.snapshot() for run in runs]

    async def running_count(self) -> int:
        return len(self._running)

    async def history_count(self) -> int:
        return len(self._history)

    async def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return (
            f"<MemoryStore running={len(self._running)} history={len(self._history)}"
            f"/{self.history_limit}>"
        )


__all__ = ["DEFAULT_HISTORY_LIMIT", "MemoryStore"]
