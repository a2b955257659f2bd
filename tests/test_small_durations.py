"""Durations and timeouts below a millisecond are written in µs or ns, not as zero.

Regression: a step with ``timeout=1e-9`` that timed out read "timed out after 0.000 s
(timeout 1e-09 s)", and a step record of a step that took 20 µs "in 0.0 ms". Ordinary
values read as before (``0.050 s``, ``timeout 0.05 s``, ``in 12.5 ms``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sagakit import SagaMetadata, SagaStatus, StepRecord, StepStatus, StepTimeout, step


@pytest.mark.parametrize(
    ("duration", "timeout", "said"),
    [
        (4e-7, 1e-9, "timed out after 400 ns (timeout 1 ns)"),
        (2.5e-5, 2e-5, "timed out after 25 µs (timeout 20 µs)"),
        (0.0012, 0.0005, "timed out after 0.001 s (timeout 500 µs)"),
        (1.5e-6, 2.25e-6, "timed out after 1.5 µs (timeout 2.25 µs)"),
        # ordinary values read as they always did
        (0.0504, 0.05, "timed out after 0.050 s (timeout 0.05 s)"),
        (5.0, 5, "timed out after 5.000 s (timeout 5 s)"),
        (30.25, 30, "timed out after 30.250 s (timeout 30 s)"),
        (0.0, 0.001, "timed out after 0.000 s (timeout 0.001 s)"),
    ],
)
def test_a_step_timeout_writes_small_values_in_their_unit(
    duration: float, timeout: float, said: str
) -> None:
    error = StepTimeout(0, "reserve", duration, timeout)
    assert str(error) == f"step 0 ('reserve') {said}"
    assert str(error.error).endswith(f"{said.split('(timeout ')[1][:-1]} timeout")


def test_a_compensation_timeout_error_names_its_timeout_in_its_unit() -> None:
    error = StepTimeout(0, "reserve", 3e-6, 1e-6, compensation=True)
    assert str(error) == "compensation of step 0 ('reserve') timed out after 3 µs (timeout 1 µs)"
    assert str(error.error) == "compensation exceeded its 1 µs timeout"


@pytest.mark.parametrize(
    ("duration", "shown"),
    [
        (2e-5, "20 µs"),
        (4.2e-7, "420 ns"),
        (1.25e-6, "1.2 µs"),
        (0.0125, "12.5 ms"),
        (1.5, "1500.0 ms"),
    ],
)
def test_records_write_small_durations_in_their_unit(duration: float, shown: str) -> None:
    record = StepRecord(0, "reserve", StepStatus.COMPLETED, attempts=1, duration=duration)
    assert repr(record) == f"<step 0 reserve: completed in {shown}>"
    assert f"<td {_CELL}>{shown}</td>" in record._repr_html_()


def test_metadata_writes_a_small_duration_in_its_unit() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    metadata = SagaMetadata(
        "s-1",
        "order",
        SagaStatus.COMPLETED,
        started_at=start,
        finished_at=start + timedelta(microseconds=35),
    )
    assert repr(metadata) == "<SagaMetadata order id='s-1' completed 0/? steps in 35 µs>"


def test_a_step_writes_a_small_timeout_in_its_unit() -> None:
    @step(timeout=2e-4)
    async def quick() -> None:
        return None

    assert repr(quick) == "<Step quick timeout=200µs>"
    assert "<td " + _CELL + ">200 µs</td>" in quick._repr_html_()


_CELL = 'style="padding:2px 8px;border-bottom:1px solid #d0d7de"'
