"""Read-only records of saga runs: :class:`SagaMetadata` and :class:`StepRecord`.

Records are snapshots: plain frozen data taken when asked for, so a record never
changes under the code that holds it and concurrent runs never share one.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ._seconds import duration_ms
from .status import SagaStatus, StepStatus

SHOWN_ERROR = 200
"""How many characters of an error a repr shows (the record keeps it whole)."""


_CONTROLS = frozenset({"Cc", "Cf", "Zl", "Zp"})


def one_line(text: str) -> str:
    """``text`` with its control characters escaped as ``repr()`` does (``\\n``,
    ``\\x1b``), for a repr, a log message or a line of the CLI's output: a saga id, name
    or error quoted there cannot end the line (forging the next one, or breaking a
    table's row) nor send an escape sequence to a terminal."""
    if text.isprintable():
        return text
    return "".join(
        repr(char)[1:-1] if unicodedata.category(char) in _CONTROLS else char for char in text
    )


def shown_error(error: str) -> str:
    """``error`` cut to :data:`SHOWN_ERROR` characters, marked when cut."""
    if len(error) <= SHOWN_ERROR:
        return error
    return f"{error[: SHOWN_ERROR - 1]}…"


def shown_line(error: str) -> str:
    """``error`` as a repr shows it: cut (:func:`shown_error`), on one line (:func:`one_line`)."""
    return one_line(shown_error(error))


@dataclass(frozen=True, slots=True, repr=False)
class StepRecord:
    """What happened to one step, or to one compensation, of a saga run."""

    index: int
    name: str
    status: StepStatus
    attempts: int = 0
    duration: float | None = None
    error: str | None = None
    events: tuple[Any, ...] = ()
    compensation: bool = False

    def __repr__(self) -> str:
        kind = "compensation" if self.compensation else "step"
        text = f"<{kind} {self.index} {one_line(self.name)}: {self.status}"
        if self.attempts > 1:
            text += f" after {self.attempts} attempts"
        if self.duration is not None:
            text += f" in {duration_ms(self.duration)}"
        if self.error:
            text += f" ({shown_line(self.error)})"
        return text + ">"

    def _repr_html_(self) -> str:
        from ._display import step_record_html

        return step_record_html(self)


@dataclass(frozen=True, slots=True, repr=False)
class SagaMetadata:
    """A snapshot of one saga run (or of a definition not yet run).

    ``steps`` holds a record per forward step in order; ``compensations`` a record per
    compensation in the order they ran; ``events`` the forward steps' events and
    ``compensation_events`` the compensations' events. ``dead_letter`` is why a durable
    store parked the saga (a dead letter, which keeps its status and its ``error``), or
    ``None``.
    """

    id: str | None
    name: str
    status: SagaStatus
    steps_executed: int = 0
    total_steps: int | None = None
    started_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    steps: tuple[StepRecord, ...] = ()
    compensations: tuple[StepRecord, ...] = ()
    events: tuple[Any, ...] = ()
    compensation_events: tuple[Any, ...] = ()
    dead_letter: str | None = None

    @property
    def saga_id(self) -> str | None:
        """The saga's id, ``id``: named as ``RecoveryOutcome``, ``Transition`` and the
        errors name it."""
        return self.id

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish (or to the last update while running)."""
        end = self.finished_at or self.updated_at
        if self.started_at is None or end is None:
            return None
        return (end - self.started_at).total_seconds()

    def __repr__(self) -> str:
        total = "?" if self.total_steps is None else self.total_steps
        text = f"<SagaMetadata {one_line(self.name)} id={self.id!r} {self.status}"
        text += f" {self.steps_executed}/{total} steps"
        if self.duration is not None:
            text += f" in {duration_ms(self.duration)}"
        if self.error:
            text += f" ({shown_line(self.error)})"
        if self.dead_letter is not None:
            text += f" dead-lettered ({shown_line(self.dead_letter)})"
        return text + ">"

    def _repr_html_(self) -> str:
        from ._display import metadata_html

        return metadata_html(self)

    def to_mermaid(self) -> str:
        """A Mermaid flowchart of this run: steps by status, then the compensation path."""
        from ._mermaid import metadata_mermaid

        return metadata_mermaid(self)


__all__ = ["SagaMetadata", "StepRecord"]
