"""The default store: keeps running sagas and a bounded history in memory."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from .._tracebacks import hide_from_pytest
from ..exceptions import SagaAlreadyExecuting, SagaAlreadyFailed, StoreConfigError
from ..status import SagaStatus
from ._protocol import check_saga_id, row_limit
from ._reused import check_same_steps, same_values

# pytest shows a failing test's line, not this module's code, for an error this store
# raises on purpose (a saga id already running, reused; see _tracebacks).
__tracebackhide__ = hide_from_pytest

if TYPE_CHECKING:
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
                    done = earlier.definition
                    if done is not run.definition:  # (the same definition executed again)
                        check_same_steps(saga_id, run.definition, done, _SAME)
                    return earlier.snapshot()
                if earlier.status is SagaStatus.FAILED:
                    raise SagaAlreadyFailed(saga_id, in_memory=True)
                del self._history[saga_id]  # the id names the new run from now on
        self._running[saga_id] = run
        return None

    async def record(self, run: SagaRunView, transition: Transition) -> None:
        """Nothing to do: the live run is the record."""

    async def finish(self, run: SagaRunView) -> None:
        self._finish_now(run)

    def _finish_now(self, run: SagaRunView) -> None:
        """:meth:`finish` without a coroutine (see :meth:`_begin_now`)."""
        self._running.pop(run.id, None)
        history = self._history
        limit = self._history_limit
        if limit == 0:
            history.clear()
            return
        history.pop(run.id, None)
        history[run.id] = run
        while len(history) > limit:  # the limit may have been lowered
            history.popitem(last=False)

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
