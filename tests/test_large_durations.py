"""Timeouts and durations of a million seconds or more are written as plain numbers.

Regression: a step with ``timeout=1e6`` (the "large number of seconds" a step that may
take very long is told to give) read ``timeout=1e+06s`` in its repr and "timeout 1e+06 s"
in its StepTimeout, ``timeout=1234567.891`` read ``1.23457e+06`` (a digit short of the
seconds), and so did a PostgreSQL lease, a connection wait, a SQLite busy timeout and the
seconds an ``InstantSleep`` skipped. From a million on they are written in whole seconds
(``1000000 s``), as ``:g`` keeps six digits below it; ordinary values read as before.
"""

from __future__ import annotations

import asyncio

import pytest

from sagakit import PostgresStore, StepTimeout, StoreConfigError, step
from sagakit._cli_logs import locked_message
from sagakit._seconds import duration_text, seconds_number, timeout_text
from sagakit.testing import InstantSleep

_CELL = 'style="padding:2px 8px;border-bottom:1px solid #d0d7de"'
DSN = "postgresql://nobody@127.0.0.1:1/nowhere"  # never connected to


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (1e6, "1000000 s"),
        (999_999.5, "1000000 s"),  # ``:g`` rounds it up to 1e+06
        (1_234_567.891, "1234568 s"),
        (1.5e7, "15000000 s"),
        (1e12, "1000000000000 s"),
        (9e15, "9000000000000000 s"),
        # ordinary values read as they always did
        (86_400, "86400 s"),
        (123_456.7, "123457 s"),
        (0.05, "0.05 s"),
        (2e-4, "200 µs"),
    ],
)
def test_a_timeout_is_written_as_a_plain_number(seconds: float, said: str) -> None:
    assert timeout_text(seconds) == said
    assert "e" not in seconds_number(seconds)


def test_a_float_past_whole_seconds_keeps_its_exponent() -> None:
    # From 1e16 a float no longer holds every whole second, and its digits written out
    # would be noise (1e23 is 99999999999999991611392): as Python's repr, in exponent form.
    assert timeout_text(1e23) == "1e+23 s"


def test_a_step_timeout_of_a_million_seconds_or_more_reads_in_seconds() -> None:
    error = StepTimeout(0, "reserve", 1_000_000.25, 1e6)
    assert str(error) == "step 0 ('reserve') timed out after 1000000.250 s (timeout 1000000 s)"
    assert str(error.error) == "step exceeded its 1000000 s timeout"
    assert duration_text(2.5e7) == "25000000.000 s"


def test_a_step_writes_a_large_timeout_as_a_plain_number() -> None:
    @step(timeout=1_234_567.891)
    async def large_durations_month() -> None:
        return None

    assert repr(large_durations_month) == "<Step large_durations_month timeout=1234568s>"
    assert f"<td {_CELL}>1234568 s</td>" in large_durations_month._repr_html_()


def test_postgres_lease_messages_and_repr_write_plain_seconds() -> None:
    assert repr(PostgresStore(DSN, lease=3e6)) == (
        "<PostgresStore schema='sagakit' lease=3000000s owns=0 closed>"
    )
    with pytest.raises(StoreConfigError, match=r"heartbeat \(3000000 s\) .* \(2000000 s\)"):
        PostgresStore(DSN, lease=2e6, heartbeat=3e6)
    with pytest.raises(StoreConfigError, match=r"seconds up to 1000000000000 \(about"):
        PostgresStore(DSN, lease=2e12)


def test_skipped_sleeps_and_a_busy_timeout_write_plain_seconds() -> None:
    sleep = InstantSleep()
    asyncio.run(sleep(2e6))
    assert repr(sleep) == "<InstantSleep 1 sleeps, 2000000 s skipped>"
    message = locked_message("/nowhere/sagas.db", 2e6)
    assert "waited 2000000 s for it (--busy-timeout 2000000);" in message
