"""A seam for :mod:`sagakit.testing`: faults injected into step attempts, per context."""

from __future__ import annotations

from contextvars import ContextVar
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, NoReturn, Protocol

if TYPE_CHECKING:
    from ._steps import Step


class SimulatedTimeout(Enum):
    """The type of :data:`SIMULATED_TIMEOUT`, what a fault plan returns to make an attempt
    time out at once (and a ``FiredFault.fault`` of a simulated timeout).

    A one-member enum, so that ``fault is SIMULATED_TIMEOUT`` (or ``is not``) narrows
    a ``FiredFault.fault`` for type checkers to the exception it is otherwise.
    """

    # Where it is imported from, as reprs and pickles name it (not this private module).
    __module__ = "sagakit.testing"

    SIMULATED_TIMEOUT = "SIMULATED_TIMEOUT"

    def __repr__(self) -> str:
        return "SIMULATED_TIMEOUT"

    __str__ = __repr__  # not the enum's "SimulatedTimeout.SIMULATED_TIMEOUT"


SIMULATED_TIMEOUT: Final = SimulatedTimeout.SIMULATED_TIMEOUT


class SimulatedCrash(BaseException):
    """Stops a saga as if its process died at this point (see ``FaultInjector.crash``).

    The orchestrator runs nothing more and records nothing more for the run, exactly as
    after a SIGKILL; a durable store keeps it ``EXECUTING`` or ``COMPENSATING`` for
    recovery. A ``BaseException``, so that a step's ``except Exception`` cannot stop it.
    """

    # Where it is imported from, as tracebacks and pickles name it (not this private module).
    __module__ = "sagakit.testing"


class CrashAfter:
    """A fault plan's answer (``FaultInjector.fault_for``): run the attempt, then crash
    with ``crash`` before its outcome is recorded (``FaultInjector.crash(..., after=True)``)."""

    __module__ = "sagakit.testing"

    __slots__ = ("crash",)

    def __init__(self, crash: SimulatedCrash) -> None:
        self.crash = crash


class FaultPlan(Protocol):
    """Decides, before each attempt, whether it should fail instead of running."""

    def fault_for(
        self, step: Step[Any, Any], attempt: int, *, compensation: bool
    ) -> BaseException | SimulatedTimeout | CrashAfter | None:
        """An exception to raise, ``SIMULATED_TIMEOUT``, a :class:`CrashAfter`, or ``None``."""
        ...


active_faults: ContextVar[FaultPlan | None] = ContextVar("sagakit_faults", default=None)


def raised_by_step(fault: Exception) -> Exception:
    """What a step (an ``async def``) raising ``fault`` raises: ``fault`` itself, but a
    ``StopIteration`` becomes ``RuntimeError("coroutine raised StopIteration")`` (PEP 479),
    which Python does by raising it from a coroutine, as here."""
    if not isinstance(fault, StopIteration):
        return fault

    async def step() -> NoReturn:
        raise fault

    try:
        step().send(None)
    except Exception as raised:
        return raised
    raise AssertionError("unreachable: the coroutine raises")  # pragma: no cover


__all__ = [
    "SIMULATED_TIMEOUT",
    "CrashAfter",
    "FaultPlan",
    "SimulatedCrash",
    "active_faults",
    "raised_by_step",
]
