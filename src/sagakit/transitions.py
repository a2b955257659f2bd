"""State changes of a saga run, as given to listeners and durable stores."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from ._display import short_repr
from .status import SagaStatus

if TYPE_CHECKING:
    from ._runs import SagaRun, StepRun


class TransitionKind(StrEnum):
    """Which state change a :class:`Transition` records."""

    SAGA_STARTED = "saga_started"
    STEP_STARTED = "step_started"
    STEP_COMPLETED = "step_completed"
    STEP_RETRYING = "step_retrying"
    STEP_FAILED = "step_failed"
    STEP_TIMED_OUT = "step_timed_out"
    COMPENSATION_STARTED = "compensation_started"
    COMPENSATION_COMPLETED = "compensation_completed"
    COMPENSATION_RETRYING = "compensation_retrying"
    COMPENSATION_FAILED = "compensation_failed"
    SAGA_FINISHED = "saga_finished"
    # The run stopped in this process without finishing (fenced out by another worker,
    # handed back by a cancelled recovery, or its end could not be recorded); another
    # worker or a later recovery finishes it. Told to listeners only: nothing is
    # recorded for it.
    SAGA_STOPPED = "saga_stopped"


@dataclass(frozen=True, slots=True, repr=False)
class Transition:
    """One state change of one saga run.

    ``step_index``/``step_name``/``attempt`` are set for step and compensation
    changes; ``result`` and ``events`` for completions; ``error`` for failures;
    ``status`` is the saga's status after the change. ``run_number`` tells runs apart:
    every run in this process (an ``execute()``, a recovery) has its own, from 1 up, so
    two runs of one saga id (run again, recovered, or run at once by orchestrators with
    stores of their own) have different ones; ``0`` for a transition made by hand.
    """

    kind: TransitionKind
    saga_id: str
    saga_name: str
    status: SagaStatus
    step_index: int | None = None
    step_name: str | None = None
    attempt: int = 0
    result: Any = None
    events: tuple[Any, ...] = ()
    error: BaseException | None = None
    duration: float | None = None
    run_number: int = 0

    def __repr__(self) -> str:
        # As the dataclass repr, but each value shortened (a result of a million rows, an
        # error of a kilobyte) and never raising: a notebook cell's value, a listener's
        # print(transition).
        fields = ", ".join(f"{name}={short_repr(getattr(self, name))}" for name in _FIELDS)
        return f"Transition({fields})"

    @property
    def idempotency_key(self) -> str | None:
        """``"<saga id>:<step index>"`` for step changes, else ``None``."""
        if self.step_index is None:
            return None
        return f"{self.saga_id}:{self.step_index}"


_FIELDS = tuple(field.name for field in dataclasses.fields(Transition))
"""Its fields, in declaration order: what its repr shows, what make_transition() sets."""

_SETTERS = tuple(getattr(Transition, name).__set__ for name in _FIELDS)
_new = object.__new__


def make_transition(
    kind: TransitionKind,
    run: SagaRun,
    status: SagaStatus,
    step: StepRun | None,
    attempt: int,
    result: Any,
    events: tuple[Any, ...],
    error: BaseException | None,
    duration: float | None,
) -> Transition:
    """``Transition(...)`` for the orchestrator's hot path, of ``run`` (its id, name and
    number) and of ``step`` (``None``: of the saga): the same frozen record, built through
    its slots' descriptors (the dataclass ``__init__`` of a frozen class costs twice as
    much, and a durable saga makes a dozen transitions)."""
    transition: Transition = _new(Transition)
    # Unrolled: a loop costs as much as __init__.
    (k, i, n, s, si, sn, a, r, ev, er, d, rn) = _SETTERS
    k(transition, kind)
    i(transition, run.id)
    n(transition, run.name)
    s(transition, status)
    if step is None:
        si(transition, None)
        sn(transition, None)
    else:
        si(transition, step.index)
        sn(transition, step.name)
    a(transition, attempt)
    r(transition, result)
    ev(transition, events)
    er(transition, error)
    d(transition, duration)
    rn(transition, run.number)
    return transition


__all__ = ["Transition", "TransitionKind"]
