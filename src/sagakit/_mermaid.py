"""Mermaid flowcharts of a saga definition and of a finished (or running) run."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from ._display import compensation_name, shown_rows
from .records import shown_error

if TYPE_CHECKING:
    from ._sagas import SagaDefinition
    from ._steps import StepCall
    from .records import SagaMetadata, StepRecord

_CLASSES = (
    "    classDef completed fill:#dafbe1,stroke:#1a7f37",
    "    classDef failed fill:#ffebe9,stroke:#cf222e,stroke-width:3px",
    "    classDef timed_out fill:#fff1e5,stroke:#bc4c00,stroke-width:3px",
    "    classDef running fill:#fbefff,stroke:#8250df",
    "    classDef compensated fill:#ddf4ff,stroke:#0969da",
    "    classDef pending fill:#f6f8fa,stroke:#8c959f,stroke-dasharray:4",
)


# ``#`` first (the codes use it); ``&`` as labels are HTML (``&lt;`` would draw ``<``);
# ``%`` so no ``%%{init: ...}%%`` directive or ``%%`` comment is read from a label; a
# backtick so no label becomes a markdown string.
_CODES = (
    ("#", "#35;"),
    ("&", "#38;"),
    ('"', "#quot;"),
    ("<", "#lt;"),
    (">", "#gt;"),
    ("%", "#37;"),
    ("`", "#96;"),
)


def _escape(value: str) -> str:
    for char, code in _CODES:
        value = value.replace(char, code)
    return value.replace("\r", " ").replace("\n", " ")


def _text(*lines: str) -> str:
    """A quoted Mermaid label of ``lines``, with characters Mermaid would parse escaped."""
    return '"' + "<br/>".join(_escape(line) for line in lines if line) + '"'


def _error(error: str | None) -> str:
    """An error cut as the repr and the HTML table cut it: a whole one (a service's error
    page, say) could pass Mermaid's limit on a diagram's size, which it refuses to draw."""
    return shown_error(error) if error else ""


def definition_mermaid(definition: SagaDefinition) -> str:
    """The forward steps left to right, each compensation below its step (dotted)."""
    lines = ["flowchart LR", f"    start([{_text(definition.name)}])"]
    calls = definition.steps
    if calls is None:
        lines.append('    start --> steps[["steps known only when the generator saga runs"]]')
        return "\n".join(lines)
    previous = "start"
    undo: list[str] = []

    def draw(index: int, call: StepCall[Any]) -> None:
        nonlocal previous
        lines.append(f"    {previous} --> s{index}[{_text(call._step.name)}]")
        previous = f"s{index}"
        compensation = call._step.compensation
        if compensation is not None:
            name = compensation_name(compensation)
            lines.append(f"    s{index} -. on failure .-> c{index}[/{_text(name)}/]")
            undo.append(f"c{index}")

    first, hidden, last = shown_rows(tuple(enumerate(calls)))
    for index, call in first:
        draw(index, call)
    if hidden:
        lines.append(f"    {previous} --> s_more[{_text(f'… {hidden:,} more steps')}]")
        previous = "s_more"
        undone = sum(1 for c in calls[len(first) : -len(last)] if c._step.compensation)
        if undone:
            more = _text(f"… {undone:,} more compensations")
            lines.append(f"    s_more -. on failure .-> c_more[/{more}/]")
            undo.append("c_more")
    for index, call in last:
        draw(index, call)
    lines.append(f"    {previous} --> done([completed])")
    # Compensations run in reverse order: each one leads to the one before it.
    lines += [f"    {later} -.-> {earlier}" for earlier, later in itertools.pairwise(undo)]
    return "\n".join(lines)


def metadata_mermaid(metadata: SagaMetadata) -> str:
    """A run: steps coloured by status, the failed step marked, and the compensation path."""
    lines = ["flowchart LR", f"    start([{_text(metadata.name, metadata.id or '')}])"]
    previous = "start"

    def draw_step(record: StepRecord) -> None:
        nonlocal previous
        node = f"s{record.index}"
        label = record.name
        if record.attempts > 1:
            label += f" x{record.attempts}"
        text = _text(label, _error(record.error))
        lines.append(f"    {previous} --> {node}[{text}]:::{record.status}")
        previous = node

    first, hidden, last = shown_rows(metadata.steps)
    for record in first:
        draw_step(record)
    if hidden:  # the steps left out
        lines.append(f"    {previous} --> s_more[{_text(f'… {hidden:,} more steps')}]")
        previous = "s_more"
    for record in last:
        draw_step(record)
    ran = len(metadata.steps)
    if metadata.total_steps is not None and metadata.total_steps > ran:
        lines.append(
            f"    {previous} -.-> rest[{_text(f'{metadata.total_steps - ran} more not run')}]"
            ":::pending"
        )
    if metadata.compensations:
        # The path starts at the step that failed (the last one run) and follows the
        # compensations in the order they ran.
        previous = f"s{metadata.steps[-1].index}" if metadata.steps else "start"

        def draw_compensation(order: int, record: StepRecord) -> None:
            nonlocal previous
            node = f"c{order}"
            state = "compensated" if record.status == "completed" else str(record.status)
            text = _text(f"undo {record.name}", _error(record.error))
            lines.append(f"    {previous} ==>|{order}| {node}[/{text}/]:::{state}")
            previous = node

        numbered = tuple(enumerate(metadata.compensations, 1))
        first_undone, hidden, last_undone = shown_rows(numbered)
        for order, record in first_undone:
            draw_compensation(order, record)
        if hidden:  # the compensations left out
            more = _text(f"… {hidden:,} more compensations")
            lines.append(f"    {previous} ==> c_more[/{more}/]")
            previous = "c_more"
        for order, record in last_undone:
            draw_compensation(order, record)
    end = str(metadata.status)
    if metadata.status.is_finished:
        lines.append(f"    {previous} --> finish([{_text(end)}])")
    lines.extend(_CLASSES)
    return "\n".join(lines)


__all__ = ["definition_mermaid", "metadata_mermaid"]
