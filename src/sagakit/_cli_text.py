"""Text the ``sagakit`` command writes for a terminal: tables whose text columns are cut
to its width, times in UTC, counts in words."""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TextIO

from ._notify import one_line


def _indented(text: str) -> str:
    """``text`` (a JSON value) indented as an item of a list ``json.dump(indent=2)`` writes."""
    return "\n".join("  " + line for line in text.split("\n"))


def _when(value: datetime | None) -> str:
    """A time for a table or a line of ``show``: in UTC, and saying so with a "Z"."""
    if value is None:
        return ""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%SZ")


def _width(text: str) -> int:
    """The columns ``text`` takes in a terminal: two for a wide character (CJK, most
    emoji), none for a combining mark; ASCII's, its length, without a look-up a
    character (a table of 100,000 sagas measures every cell twice)."""
    if text.isascii():
        return len(text)
    return sum(
        0
        if unicodedata.combining(char)
        else 2
        if unicodedata.east_asian_width(char) in ("W", "F")
        else 1
        for char in text
    )


def _cut(text: str, columns: int) -> str:
    """``text`` for a table's cell of at most ``columns`` terminal columns: its control
    characters escaped first, then cut, and ended with "…" if it was (cut at a number
    of characters, an error of wide characters took twice the columns, and one cut
    read as whole). Measured only up to where it is cut: the width of a whole long
    error (a traceback) made ``list --limit 100000`` crawl."""
    text = one_line(text)
    used, end = 0, 0
    for at, char in enumerate(text):
        used += _width(char)
        if used <= columns - 1:
            end = at + 1  # what fits beside the "…"
        elif used > columns:
            return text[:end] + "…"
    return text


def _terminal_columns(out: TextIO) -> int | None:
    """How many columns a table written to ``out`` may take: ``COLUMNS`` where it is set
    (a whole number), else the width of the terminal ``out`` is; ``None`` for a file or
    a pipe without ``COLUMNS``, whose tables keep their whole width."""
    text = os.environ.get("COLUMNS", "").strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    try:
        if out.isatty():
            return os.get_terminal_size(out.fileno()).columns
    except (AttributeError, OSError, ValueError):  # no file descriptor, or a closed one
        pass
    return None


_NARROWEST = 8
"""The fewest columns a table's text column is cut to (less only where its header and
every cell take fewer): a name cut shorter tells nothing."""


def _fitted(widths: list[int], heads: list[int], cut: Sequence[int], columns: int) -> list[int]:
    """``widths`` (of a table's columns, two spaces apart) with those of the columns
    ``cut`` narrowed, the widest first, until the table fits in ``columns`` (or each
    is down to its header, or to :data:`_NARROWEST`)."""
    widths = list(widths)
    least = {i: min(widths[i], max(heads[i], _NARROWEST)) for i in cut}
    excess = sum(widths) + 2 * (len(widths) - 1) - columns
    while excess > 0:
        narrower = [i for i in cut if widths[i] > least[i]]
        if not narrower:
            break
        widest = max(narrower, key=widths.__getitem__)
        # Down to the next widest (the widest are then cut alike), or to what fits.
        floor = max([least[widest], *(widths[i] for i in narrower if i != widest)])
        step = min(excess, max(widths[widest] - floor, 1))
        widths[widest] -= step
        excess -= step
    return widths


def _table(rows: list[list[str]], out: TextIO, cut: Sequence[int] = ()) -> None:
    """``rows`` (the header first) as a table; in a terminal (or with ``COLUMNS`` set),
    the text columns ``cut`` (never an id) are cut to fit its width, ending in "…"."""
    rows = [[one_line(cell) for cell in row] for row in rows]
    widths = [max(_width(row[i]) for row in rows) for i in range(len(rows[0]))]
    columns = _terminal_columns(out)
    if columns is not None and cut:
        fitted = _fitted(widths, [_width(cell) for cell in rows[0]], cut, columns)
        narrowed = [i for i in cut if fitted[i] < widths[i]]
        if narrowed:
            rows = [
                [_cut(cell, fitted[i]) if i in narrowed else cell for i, cell in enumerate(row)]
                for row in rows
            ]
            widths = fitted
    for row in rows:
        line = "  ".join(
            cell + " " * (width - _width(cell)) for cell, width in zip(row, widths, strict=True)
        )
        out.write(line.rstrip() + "\n")


def _first_few(names: Sequence[str]) -> str:
    """``names`` for a line of output: the first five, then ``...`` if there are more."""
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
