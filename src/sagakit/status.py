"""Status enums for sagas and their steps."""

from __future__ import annotations

from enum import StrEnum


class SagaStatus(StrEnum):
    """Where a saga run stands."""

    NOT_STARTED = "not_started"
    EXECUTING = "executing"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    FAILED = "failed"

    @property
    def is_finished(self) -> bool:
        """True for ``COMPLETED``, ``COMPENSATED`` and ``FAILED``."""
        return self in _FINISHED


class StepStatus(StrEnum):
    """Where one step (or one compensation) of a run stands."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"


_FINISHED = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED})

__all__ = ["SagaStatus", "StepStatus"]
