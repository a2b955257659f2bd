"""What a saga whose end the log could not write was told: its warning and notes."""

from __future__ import annotations

import logging

import pytest


def assert_told_nothing_logged(caplog: pytest.LogCaptureFixture, error: BaseException) -> None:
    """The warning of the saga's unwritten end and the notes on ``error`` (what its
    ``execute()`` raised) say nothing of it is in the log, not that it is left for
    recovery."""
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    [message] = [m for m in warnings if "could not record that the saga finished" in m]
    notes = error.__notes__
    assert "left for recovery" not in message, message
    assert "nothing of the saga is in the log" in message, message
    assert not any("left for recovery" in note for note in notes), notes
    assert any("nothing of the saga is in the log" in note for note in notes), notes
