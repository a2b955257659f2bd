"""HTML for notebooks: the ``_repr_html_`` of runs, step records, definitions and steps.

Plain strings, every value escaped; nothing from IPython is imported.
"""

from __future__ import annotations

import functools
import reprlib
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import TYPE_CHECKING, Any, TypeVar

from ._seconds import duration_ms, timeout_text
from .records import shown_error

if TYPE_CHECKING:
    from ._sagas import SagaDefinition
    from ._steps import Step, StepCall
    from .records import SagaMetadata, StepRecord

_COLOURS = {
    "completed": "#1a7f37",
    "compensated": "#0969da",
    "failed": "#cf222e",
    "timed_out": "#bc4c00",
    "executing": "#8250df",
    "compensating": "#8250df",
    "running": "#8250df",
    "pending": "#6e7781",
    "not_started": "#6e7781",
}
T = TypeVar("T")

SHOWN_ROWS = 50
"""A table or diagram shows up to this many steps (and as many compensations) in full."""
_ENDS = 20


def shown_rows(
    items: Sequence[T], limit: int = SHOWN_ROWS, ends: int = _ENDS
) -> tuple[Sequence[T], int, Sequence[T]]:
    """``items`` as shown: all of them, or past ``limit`` their first and last ``ends``
    with how many between are left out. A saga of thousands of steps would otherwise be
    megabytes of HTML in the notebook's file, or a diagram too big for Mermaid to draw;
    the record keeps every step."""
    if len(items) <= limit:
        return items, 0, ()
    return items[:ends], len(items) - 2 * ends, items[-ends:]


_TABLE = 'style="border-collapse:collapse;font-size:0.9em;text-align:left"'
_CELL = 'style="padding:2px 8px;border-bottom:1px solid #d0d7de"'


def _badge(status: str) -> str:
    colour = _COLOURS.get(status, "#6e7781")
    return f'<span style="color:{colour};font-weight:bold">{escape(status)}</span>'


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return duration_ms(seconds)


def _bar(seconds: float | None, longest: float) -> str:
    if seconds is None or longest <= 0:
        return ""
    width = max(1, round(120 * seconds / longest))
    return f'<div style="background:#8c959f;height:0.7em;width:{width}px"></div>'


def _gap(hidden: int, what: str, columns: int) -> str:
    """The row standing for the rows left out."""
    return f'<tr><td colspan="{columns}" {_CELL}><em>… {hidden:,} more {what}</em></td></tr>'


def _row(cells: Iterable[str], header: bool = False) -> str:
    tag = "th" if header else "td"
    return "<tr>" + "".join(f"<{tag} {_CELL}>{cell}</{tag}>" for cell in cells) + "</tr>"


def _record_cells(record: StepRecord, label: str, longest: float) -> list[str]:
    return [
        escape(label),
        escape(record.name),
        _badge(str(record.status)),
        str(record.attempts),
        _ms(record.duration),
        _bar(record.duration, longest),
        _error(record.error),
    ]


def _error(error: str | None) -> str:
    """An error cut for the table; the whole text shows on hover."""
    if not error:
        return ""
    return f'<span title="{escape(error, quote=True)}">{escape(shown_error(error))}</span>'


_HEAD = ("#", "step", "status", "attempts", "duration", "timeline", "error")


def metadata_html(metadata: SagaMetadata) -> str:
    """A run as a heading line and a table: its steps, then its compensations in run order."""
    total = "?" if metadata.total_steps is None else str(metadata.total_steps)
    saga_id = "" if metadata.id is None else f"<code>{escape(metadata.id)}</code> "
    head = (
        f"<strong>saga {escape(metadata.name)}</strong> {saga_id}"
        f"{_badge(str(metadata.status))} {metadata.steps_executed}/{escape(total)} steps"
    )
    if metadata.duration is not None:
        head += f" in {_ms(metadata.duration)}"
    if metadata.error:
        head += f'<br><span style="color:#cf222e">{_error(metadata.error)}</span>'
    if metadata.dead_letter is not None:
        head += f"<br><em>dead-lettered:</em> {_error(metadata.dead_letter)}"
    records = (*metadata.steps, *metadata.compensations)
    if not records:
        return f'<div class="sagakit-saga">{head}<br><em>no step has run</em></div>'
    longest = max((r.duration or 0.0 for r in records), default=0.0)
    rows = [_row(_HEAD, header=True)]
    first, hidden, last = shown_rows(metadata.steps)
    rows += [_row(_record_cells(r, str(r.index), longest)) for r in first]
    if hidden:
        rows.append(_gap(hidden, "steps", len(_HEAD)))
    rows += [_row(_record_cells(r, str(r.index), longest)) for r in last]
    if metadata.compensations:
        rows.append(
            f'<tr><td colspan="{len(_HEAD)}" {_CELL}><em>compensations, '
            "in the order they ran</em></td></tr>"
        )
        numbered = tuple(enumerate(metadata.compensations, 1))
        first_undone, hidden, last_undone = shown_rows(numbered)
        rows += [_row(_record_cells(r, f"↩{order}", longest)) for order, r in first_undone]
        if hidden:
            rows.append(_gap(hidden, "compensations", len(_HEAD)))
        rows += [_row(_record_cells(r, f"↩{order}", longest)) for order, r in last_undone]
    table = f"<table {_TABLE}>{''.join(rows)}</table>"
    return f'<div class="sagakit-saga">{head}{table}</div>'


def step_record_html(record: StepRecord) -> str:
    """One step or compensation record as a single table row."""
    kind = "compensation" if record.compensation else "step"
    cells = _record_cells(record, f"{kind} {record.index}", record.duration or 0.0)
    return f"<table {_TABLE}>{_row(_HEAD, header=True)}{_row(cells)}</table>"


# An argument is shown shortened (a long list or text is cut, a nested one stops at a
# depth), and one whose repr() raises by its type: a cell, or a step call's repr, never
# fails or grows unbounded.
_ARGUMENT = reprlib.Repr()
_ARGUMENT.maxstring = _ARGUMENT.maxother = 80
_ARGUMENT.maxlevel = 3


short_repr = _ARGUMENT.repr
"""``repr(value)`` shortened as an argument is, never raising."""


def describe_args(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """A call's arguments as written, each shortened: ``'A', amount=10.0``."""
    shown = short_repr
    parts = [shown(a) for a in args] + [f"{k}={shown(v)}" for k, v in kwargs.items()]
    return ", ".join(parts)


def compensation_name(compensation: object) -> str:
    """How a table or diagram names a compensation: by its function's name, a
    ``functools.partial``'s included (which has no ``__name__`` of its own)."""
    while isinstance(compensation, functools.partial):
        compensation = compensation.func
    name = getattr(compensation, "__name__", None)
    return name if isinstance(name, str) else type(compensation).__name__


def _call_row(index: int, call: StepCall[Any]) -> str:
    step = call._step
    compensation = step.compensation
    return _row(
        (
            str(index),
            escape(step.name),
            escape(describe_args(call._args, call._kwargs)),
            timeout_text(step.timeout),
            str(step.retry.attempts),
            escape(compensation_name(compensation) if compensation else "—"),
        )
    )


def step_html(step: Step[Any, Any], parameters: str) -> str:
    """A step, as a definition's table shows it, with its ``parameters`` in place of a
    call's arguments."""
    compensation = step.compensation
    columns = ("step", "parameters", "timeout", "attempts", "compensation")
    cells = (
        escape(step.name),
        escape(parameters),
        timeout_text(step.timeout),
        str(step.retry.attempts),
        escape(compensation_name(compensation) if compensation else "—"),
    )
    table = f"<table {_TABLE}>{_row(columns, True)}{_row(cells)}</table>"
    return f'<div class="sagakit-step">{table}</div>'


def definition_html(definition: SagaDefinition) -> str:
    """A definition: its steps with timeout, retries and compensation, before any run."""
    head = f"<strong>saga {escape(definition.name)}</strong>"
    if definition.factory is not None:
        args = describe_args(definition.args, definition.kwargs)
        head = f"<strong>saga {escape(definition.name)}({escape(args)})</strong>"
    if definition.saga_id is not None:
        head += f" <code>{escape(definition.saga_id)}</code>"
    calls = definition.steps
    if calls is None:
        return (
            f'<div class="sagakit-definition">{head}<br><em>a generator saga: its steps '
            "are known only when it runs</em></div>"
        )
    columns = ("#", "step", "arguments", "timeout", "attempts", "compensation")
    rows = [_row(columns, True)]
    first, hidden, last = shown_rows(tuple(enumerate(calls)))
    rows += [_call_row(index, call) for index, call in first]
    if hidden:
        rows.append(_gap(hidden, "steps", len(columns)))
    rows += [_call_row(index, call) for index, call in last]
    table = f"<table {_TABLE}>{''.join(rows)}</table>"
    return f'<div class="sagakit-definition">{head}{table}</div>'


__all__ = [
    "SHOWN_ROWS",
    "compensation_name",
    "definition_html",
    "describe_args",
    "metadata_html",
    "short_repr",
    "shown_rows",
    "step_html",
    "step_record_html",
]
