"""A name with a newline or another control character in the repr of a record.

A step or saga name may hold one (only a NUL and a lone surrogate are refused: no saga log
can store those). The log messages quoting a name escape it; the reprs of records, steps
and definitions wrote it as it is, so one of them printed on two lines (or sent an escape
sequence to the terminal). They now escape it as ``repr()`` does, as do the errors they show.
"""

from __future__ import annotations

from typing import Any

import pytest

from sagakit import (
    RecoveryOutcome,
    SagaDefinition,
    SagaMetadata,
    SagaStatus,
    StepRecord,
    StepStatus,
    saga,
    step,
)
from sagakit.records import SHOWN_ERROR
from sagakit.stores import DeadLetter, LoggedStep, OrphanedSaga, StoredEvent

NAME = "pay\nout\x1b[31m"
ESCAPED = "pay\\nout\\x1b[31m"
ERROR = "ValueError: first line\nsecond line"


@step(name=NAME)
async def oddly_named(amount: int) -> int:
    return amount


@saga(name=NAME)
def oddly_named_saga(amount: int) -> Any:
    yield oddly_named(amount)


def _records() -> list[object]:
    logged = LoggedStep(0, NAME, StepStatus.FAILED, error=ERROR)
    return [
        StepRecord(0, NAME, StepStatus.FAILED, error=ERROR),
        SagaMetadata("s-1", NAME, SagaStatus.FAILED, error=ERROR, dead_letter=ERROR),
        logged,
        OrphanedSaga(
            "s-1", NAME, SagaStatus.EXECUTING, (), {}, "resume", (logged,), (), 0, error=ERROR
        ),
        DeadLetter("s-1", NAME, SagaStatus.EXECUTING, 3, ERROR),
        StoredEvent(1, "s-1", NAME, 0, NAME, False, "event"),
        RecoveryOutcome("s-1", NAME, "compensated", SagaStatus.FAILED, ERROR),
        oddly_named,
        oddly_named(5),
        oddly_named_saga(5),
        SagaDefinition(NAME, steps=[oddly_named(5)]),
    ]


@pytest.mark.parametrize("record", _records(), ids=lambda record: type(record).__name__)
def test_a_repr_with_a_control_character_in_a_name_stays_on_one_line(record: object) -> None:
    shown = repr(record)
    assert shown.isprintable(), shown
    assert ESCAPED in shown


def test_a_printable_name_is_shown_as_it_is() -> None:
    assert repr(StepRecord(0, "débit ✓", StepStatus.COMPLETED)) == "<step 0 débit ✓: completed>"


def test_an_error_cut_in_a_repr_keeps_its_escapes_whole() -> None:
    # Cut first, then escaped: a cut never splits an escape ("\\" left before the "…").
    error = "a" * (SHOWN_ERROR - 2) + "\n" + "b" * 10
    shown = repr(StepRecord(0, "pay", StepStatus.FAILED, error=error))
    assert shown.endswith("a\\n…)>"), shown
