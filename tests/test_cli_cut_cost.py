"""Cutting a long error to its table column reads only what fits, not the whole error.

``sagakit list --limit 100000`` over a log of long errors (tracebacks, payloads quoted in a
message) spent most of its time measuring every error's whole width, character by
character, before cutting it to 60 columns.
"""

from __future__ import annotations

import io
import types
import unicodedata

import pytest

import sagakit._cli_text as text_module


def test_a_long_error_is_cut_without_measuring_all_of_it(monkeypatch: pytest.MonkeyPatch) -> None:
    measured = 0

    def east_asian_width(char: str) -> str:
        nonlocal measured
        measured += 1
        return unicodedata.east_asian_width(char)

    counting = types.SimpleNamespace(
        combining=unicodedata.combining, east_asian_width=east_asian_width
    )
    monkeypatch.setattr(text_module, "unicodedata", counting)
    error = "RuntimeError: card declined " + "x" * 100_000
    assert text_module._cut(error, 60) == error[:59] + "…"
    assert measured <= 2 * 61, measured  # the characters up to the cut, not 100,028


def test_a_table_of_ascii_measures_no_character(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every cell of a table is measured twice (its column's width, its padding).
    def east_asian_width(char: str) -> str:
        raise AssertionError(f"measured {char!r}")

    counting = types.SimpleNamespace(
        combining=unicodedata.combining, east_asian_width=east_asian_width
    )
    monkeypatch.setattr(text_module, "unicodedata", counting)
    out = io.StringIO()
    text_module._table([["ID", "ERROR"], ["o-1", "x" * 1000]], out, cut=(1,))
    assert out.getvalue().splitlines()[1] == "o-1  " + "x" * 1000
    assert text_module._cut("y" * 1000, 60) == "y" * 59 + "…"


@pytest.mark.parametrize(
    ("text", "columns", "cut"),
    [
        ("x" * 60, 60, "x" * 60),  # fits exactly: whole
        ("x" * 61, 60, "x" * 59 + "…"),
        ("失败" * 50, 60, "失败" * 14 + "失…"),  # another 失 would take column 60
        ("a\nb", 60, "a\\nb"),  # escaped first, then measured
        ("e\u0301" * 61, 60, "e\u0301" * 59 + "…"),  # combining marks take no column
        ("", 8, ""),
        ("\x1b[31m" + "z" * 70, 60, "\\x1b[31m" + "z" * 51 + "…"),  # ASCII, escaped
    ],
)
def test_cut_keeps_what_fits_and_marks_the_cut(text: str, columns: int, cut: str) -> None:
    assert text_module._cut(text, columns) == cut
