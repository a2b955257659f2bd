"""A seam for :mod:`sagakit.testing`: faults injected into step attempts, per context."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from ._steps import Step


class _SimulatedTimeout:
    """Marker returned by a fault plan to make an attempt time out at once."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SIMULATED_TIMEOUT"


SIMULATED_TIMEOUT: Final = _SimulatedTimeout()


class FaultPlan(Protocol):
    """Decides, before each attempt, whether it should fail instead of running."""

    def fault_for(
        self, step: Step[Any, Any], attempt: int, *, compensation: bool
    ) -> BaseException | _SimulatedTimeout | None:
        """An exception to raise, ``SIMULATED_TIMEOUT``, or ``None`` to run normally."""
        ...


active_faults: ContextVar[FaultPlan | None] = ContextVar("sagakit_faults", default=None)

__all__ = ["SIMULATED_TIMEOUT", "FaultPlan", "active_faults"]
