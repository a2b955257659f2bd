"""A step awaiting an inner saga, both timeouts expiring in the same instant.

Regression: the watchdog cancelled the task once for each deadline, so the inner saga's
step, cancelled twice, took the second cancellation for its caller's and was recorded as
cancelled ("failed ... CancelledError: the saga was cancelled") rather than timed out,
though its own deadline had passed. The parent step's cancellation is its timeout, which
it claims whatever the inner saga raises: the inner step is now recorded as timed out and
compensated as such, and the parent step still ends with its own ``StepTimeout``.

The loop's clock is set by the test: both steps start at the same loop time, with the
same timeout, so their deadlines are equal.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sagakit import SagaDefinition, SagaOrchestrator, SagaStatus, StepStatus, StepTimeout, step

START = 1000.0
TIMEOUT = 0.5


class SetClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock reads ``fake``: it moves only when the test moves it."""

    fake = START

    def time(self) -> float:
        return self.fake


undone: list[str] = []
waiting: list[asyncio.Event] = []  # set when the inner step waits


@step(timeout=TIMEOUT)
async def hang(item: str) -> None:
    waiting[0].set()
    await asyncio.Event().wait()


@hang.compensate
async def unhang(item: str) -> None:
    if item == "suspending":
        await asyncio.sleep(0)  # the parent's cancellation may land here
    undone.append(item)


def run(main: Any) -> Any:
    waiting[:] = [asyncio.Event()]
    with asyncio.Runner(loop_factory=SetClockLoop) as runner:
        return runner.run(main())


@pytest.mark.parametrize("item", ["plain", "suspending"])
def test_an_inner_saga_timing_out_with_its_parent_step_is_recorded_timed_out(item: str) -> None:
    undone.clear()

    async def main() -> None:
        orchestrator = SagaOrchestrator()

        @step(timeout=TIMEOUT)
        async def outer() -> None:
            await orchestrator.execute(SagaDefinition(f"inner-{item}", steps=[hang(item)]))

        task = asyncio.create_task(
            orchestrator.execute(SagaDefinition(f"outer-{item}", steps=[outer()]))
        )
        await waiting[0].wait()
        loop = asyncio.get_running_loop()
        assert isinstance(loop, SetClockLoop)
        loop.fake = START + TIMEOUT  # both deadlines pass together
        with pytest.raises(StepTimeout) as raised:
            await task
        assert (raised.value.step_name, raised.value.timeout) == ("outer", TIMEOUT)
        inner = await orchestrator.get_saga(f"inner-{item}")
        assert inner is not None
        assert inner.status is SagaStatus.COMPENSATED
        assert inner.steps[0].status is StepStatus.TIMED_OUT
        assert inner.steps[0].error is not None
        assert inner.steps[0].error.startswith("StepTimeout: step 0 ('hang') timed out")
        assert [c.status for c in inner.compensations] == [StepStatus.COMPLETED]
        parent = await orchestrator.get_saga(f"outer-{item}")
        assert parent is not None
        assert parent.steps[0].status is StepStatus.TIMED_OUT

    run(main)
    assert undone == [item]


def test_a_parent_step_that_carries_on_after_the_inner_timeout_is_still_cut_short() -> None:
    # The one CancelledError went to the inner step: the parent's is made again, so a
    # parent step that catches the inner saga's failure and waits on does not wait forever.
    undone.clear()
    caught: list[BaseException] = []

    async def main() -> None:
        orchestrator = SagaOrchestrator()

        @step(timeout=TIMEOUT)
        async def outer() -> None:
            try:
                await orchestrator.execute(SagaDefinition("inner-c", steps=[hang("c")]))
            except StepTimeout as error:
                caught.append(error)
            await asyncio.Event().wait()

        task = asyncio.create_task(orchestrator.execute(SagaDefinition("outer-c", steps=[outer()])))
        await waiting[0].wait()
        loop = asyncio.get_running_loop()
        assert isinstance(loop, SetClockLoop)
        loop.fake = START + TIMEOUT
        for _ in range(100):  # the clock stands still: only the redelivery can end it
            if task.done():
                break
            await asyncio.sleep(0)
        assert task.done()
        with pytest.raises(StepTimeout) as raised:
            await task
        assert raised.value.step_name == "outer"

    run(main)
    # The parent's cancellation, made again, came while the inner saga compensated (in a
    # task of its own, not interrupted): its execute() raised it once that was done.
    assert caught == []
    assert undone == ["c"]


def test_a_caller_cancelling_in_the_same_instant_still_wins() -> None:
    # Both deadlines pass and the caller cancels too: that cancellation is no timeout's.
    undone.clear()

    async def main() -> None:
        orchestrator = SagaOrchestrator()

        @step(timeout=TIMEOUT)
        async def outer() -> None:
            await orchestrator.execute(SagaDefinition("inner-x", steps=[hang("x")]))

        task = asyncio.create_task(orchestrator.execute(SagaDefinition("outer-x", steps=[outer()])))
        await waiting[0].wait()
        loop = asyncio.get_running_loop()
        assert isinstance(loop, SetClockLoop)
        # Due with the watchdog's firing, and run just after it, before the task runs on.
        loop.call_at(START + TIMEOUT + 1e-6, task.cancel)
        loop.fake = START + TIMEOUT + 1e-6
        with pytest.raises(asyncio.CancelledError):
            await task
        for saga_id in ("inner-x", "outer-x"):
            metadata = await orchestrator.get_saga(saga_id)
            assert metadata is not None
            assert metadata.status is SagaStatus.COMPENSATED
            assert metadata.steps[0].status is StepStatus.FAILED
            assert metadata.steps[0].error == "CancelledError: the saga was cancelled"

    run(main)
    assert undone == ["x"]
