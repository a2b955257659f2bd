"""The protocol every saga store implements."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .._runs import SagaRun
    from ..records import SagaMetadata
    from ..transitions import Transition


@runtime_checkable
class SagaStore(Protocol):
    """Where an orchestrator keeps its sagas: running ones, their log and their history.

    ``durable`` stores receive every :class:`~sagakit.Transition` through
    :meth:`record`, awaited before the orchestrator moves on; a store that is not
    durable (the in-memory one) only sees :meth:`begin` and :meth:`finish` and reads
    the live runs.
    """

    durable: bool

    async def begin(self, run: SagaRun) -> SagaMetadata | None:
        """Register a new run before its first step.

        Returns the metadata of an earlier ``COMPLETED`` run with the same id (the
        caller then returns its events without running anything); raises
        :class:`~sagakit.SagaAlreadyExecuting` while that id runs and
        :class:`~sagakit.SagaAlreadyFailed` when it ended ``FAILED``.
        """
        ...

    async def record(self, run: SagaRun, transition: Transition) -> None:
        """Durably record one state change of ``run`` (durable stores only)."""
        ...

    async def finish(self, run: SagaRun) -> None:
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


__all__ = ["SagaStore"]
