"""What the ``sagakit`` command reads of a durable log beyond the store protocol: a
listing's sagas (``list``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..status import SagaStatus


@dataclass(frozen=True, slots=True)
class ListedSaga:
    """A saga as ``sagakit list`` shows it: the fields of its row, and ``steps_executed``
    (its completed forward steps, as :class:`~sagakit.SagaMetadata` counts them) counted
    by the query that lists it. Its step records (their results and events), which a
    listing never shows, are not read."""

    id: str
    name: str
    status: SagaStatus
    steps_executed: int
    total_steps: int | None
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    dead_letter: str | None


__all__ = ["ListedSaga"]
