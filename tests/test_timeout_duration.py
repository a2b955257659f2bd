"""A timed-out step or compensation reports a duration of at least its timeout.

Regression: ``now - started`` at the deadline can come out a hair below the timeout
(float rounding of ``started + timeout``, or a loop clock read to the millisecond, as
uvloop's is), and StepTimeout.duration and the step's record then said the step ran
for less than the timeout it exceeded. The loop below has a clock the step moves
itself, to the deadline exactly, at a start time where the rounding shows.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sagakit import (
    CompensationFailed,
    Retry,
    SagaDefinition,
    SagaOrchestrator,
    StepStatus,
    StepTimeout,
    step,
)

START = 1000.001
TIMEOUT = 0.02
assert (START + TIMEOUT) - START < TIMEOUT  # the rounding this test is about


class SetClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock reads what ``fake`` says (the real one when unset)."""

    fake: float | None = None

    def time(self) -> float:
        return self.fake if self.fake is not None else super().time()


def run(main: Any) -> Any:
    with asyncio.Runner(loop_factory=SetClockLoop) as runner:
        return runner.run(main())


def to_deadline() -> None:
    """Run to the deadline exactly, blocking the loop (no await)."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, SetClockLoop)
    loop.fake = START + TIMEOUT


def started() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, SetClockLoop)
    loop.fake = START


@step(timeout=TIMEOUT)
async def blocks(order: int) -> None:
    to_deadline()


@step
async def fail(order: int) -> None:
    started()
    raise ValueError("declined")


def test_a_step_run_to_its_deadline_reports_at_least_its_timeout() -> None:
    async def main() -> tuple[StepTimeout, Any]:
        orchestrator = SagaOrchestrator()
        started()
        with pytest.raises(StepTimeout) as caught:
            await orchestrator.execute(SagaDefinition("t").add_step(blocks(1)))
        return caught.value, await orchestrator.get_saga("t")

    error, saga = run(main)
    assert error.duration >= error.timeout == TIMEOUT
    (record,) = saga.steps
    assert record.status is StepStatus.TIMED_OUT
    assert record.duration is not None
    assert record.duration >= TIMEOUT


def test_a_compensation_run_to_its_deadline_reports_at_least_its_timeout() -> None:
    # Not retried: the clock stands still, so a retry's pause would never end.
    @step(compensation_timeout=TIMEOUT, compensation_retry=Retry(attempts=1))
    async def hold(order: int) -> None:
        return None

    @hold.compensate
    async def unhold(order: int) -> None:
        to_deadline()

    async def main() -> Any:
        orchestrator = SagaOrchestrator()
        definition = SagaDefinition("c").add_step(hold(1)).add_step(fail(1))
        with pytest.raises(CompensationFailed) as caught:
            await orchestrator.execute(definition)
        return caught.value, await orchestrator.get_saga("c")

    error, saga = run(main)
    timeout = error.errors[0][2]
    assert isinstance(timeout, StepTimeout)
    assert timeout.duration >= timeout.timeout == TIMEOUT
    (record,) = saga.compensations
    assert record.status is StepStatus.TIMED_OUT
    assert record.duration is not None
    assert record.duration >= TIMEOUT


def test_an_awaited_step_call_run_to_its_deadline_reports_at_least_its_timeout() -> None:
    async def main() -> StepTimeout:
        started()
        with pytest.raises(StepTimeout) as caught:
            await blocks(1)
        return caught.value

    error = run(main)
    assert error.duration >= error.timeout == TIMEOUT
