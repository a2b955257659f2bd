"""Cancelling a saga while it compensates keeps the compensations that already failed.

Regression: with ``continue_on_compensation_failure=True``, the compensation restarted
after a cancellation (shielded) began with no record of earlier failures, so the saga
ended COMPENSATED although a compensation had failed (docs/concepts/cancellation.md:
"COMPENSATED (or FAILED if a compensation failed)").
"""

from __future__ import annotations

import asyncio

import pytest

from sagakit import Retry, SagaDefinition, SagaOrchestrator, SagaStatus, StepStatus, saga, step

compensating: asyncio.Event | None = None


@step
async def cdc_cc_reserve() -> str:
    return "reserved"


@cdc_cc_reserve.compensate
async def cdc_cc_release() -> str:
    assert compensating is not None
    compensating.set()
    await asyncio.sleep(0.05)  # cancelled from outside while it runs
    return "released"


@step
async def cdc_cc_notify() -> str:
    return "notified"


@cdc_cc_notify.compensate
async def cdc_cc_unnotify() -> None:
    raise OSError("mail server down")  # fails for good (one attempt)


@step
async def cdc_cc_ship() -> None:
    raise ValueError("no courier")


@saga
def cdc_cc_order():  # type: ignore[no-untyped-def]
    yield cdc_cc_reserve()
    yield cdc_cc_notify()
    yield cdc_cc_ship()


@pytest.mark.asyncio
async def test_cancel_during_compensation_keeps_an_earlier_compensation_failure() -> None:
    global compensating
    compensating = asyncio.Event()
    orchestrator = SagaOrchestrator(
        continue_on_compensation_failure=True, compensation_retry=Retry(attempts=1)
    )
    task = asyncio.create_task(orchestrator.execute(cdc_cc_order(), saga_id="r2-cc-1"))
    await compensating.wait()  # unnotify has failed for good; release is running
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    metadata = await orchestrator.get_saga("r2-cc-1")
    assert metadata is not None
    failed = [c.name for c in metadata.compensations if c.status is StepStatus.FAILED]
    assert "cdc_cc_notify" in failed  # the failure is in the record...
    assert metadata.status is SagaStatus.FAILED  # ...so the saga did not end compensated


@pytest.mark.asyncio
async def test_a_compensation_cancelled_between_attempts_is_not_left_running() -> None:
    # Regression: cancelled while waiting to retry a compensation, the interrupted
    # compensation's record stayed RUNNING in the finished saga's metadata.
    waiting = asyncio.Event()
    attempts = 0

    async def slow_sleep(seconds: float) -> None:
        waiting.set()
        await asyncio.Event().wait()

    @step
    async def cdc_rt_reserve() -> str:
        return "reserved"

    @cdc_rt_reserve.compensate
    async def cdc_rt_release() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("stock service busy")
        return "released"

    @step
    async def cdc_rt_ship() -> None:
        raise ValueError("no courier")

    orchestrator = SagaOrchestrator(sleep=slow_sleep)
    definition = SagaDefinition("r2-rt-1").add_step(cdc_rt_reserve()).add_step(cdc_rt_ship())
    task = asyncio.create_task(orchestrator.execute(definition))
    await waiting.wait()  # the first attempt failed; waiting to retry
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    metadata = await orchestrator.get_saga("r2-rt-1")
    assert metadata is not None
    assert metadata.status is SagaStatus.COMPENSATED
    assert metadata.compensation_events == ("released",)
    assert StepStatus.RUNNING not in [c.status for c in metadata.compensations]
    assert metadata.compensations[-1].status is StepStatus.COMPLETED


undo_calls: list[str] = []
undoing: asyncio.Event | None = None


@step
async def cdc_again_book() -> str:
    return "booked"


@cdc_again_book.compensate
async def cdc_again_unbook() -> None:
    undo_calls.append("unbook")
    if len(undo_calls) == 1:
        assert undoing is not None
        undoing.set()
        await asyncio.Event().wait()  # the caller cancels the saga here
    raise asyncio.CancelledError  # its restart is cancelled too (as its own code does)


@step
async def cdc_again_pay() -> None:
    raise ValueError("card declined")


@saga
def cdc_again_order():  # type: ignore[no-untyped-def]
    yield cdc_again_book()
    yield cdc_again_pay()


@pytest.mark.asyncio
async def test_a_compensation_cancelled_again_in_its_restart_does_not_stay_running() -> None:
    # Regression: the compensation restarted (shielded) after the caller's cancellation
    # raised CancelledError itself; the run ended FAILED, but its record stayed RUNNING,
    # in the metadata and in a durable log's end, as if it were still going on.
    global undoing
    undoing = asyncio.Event()
    undo_calls.clear()
    orchestrator = SagaOrchestrator()
    running = asyncio.create_task(orchestrator.execute(cdc_again_order(), saga_id="again"))
    await undoing.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert undo_calls == ["unbook", "unbook"]
    meta = await orchestrator.get_saga("again")
    assert meta is not None
    assert meta.status is SagaStatus.FAILED
    [record] = meta.compensations
    assert record.status is StepStatus.FAILED
    assert record.error is not None
    assert "CancelledError" in record.error


@step
async def cdc_self_book() -> str:
    return "booked"


@cdc_self_book.compensate
async def cdc_self_unbook() -> str:
    undo_calls.append("unbook")
    if len(undo_calls) == 1:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # its own code cancels it (an inner timeout, a TaskGroup, ...)
        await asyncio.sleep(0)
    return "unbooked"


@step
async def cdc_self_ship() -> None:
    assert undoing is not None
    undoing.set()
    await asyncio.Event().wait()  # the caller cancels the saga here


@saga
def cdc_self_order():  # type: ignore[no-untyped-def]
    yield cdc_self_book()
    yield cdc_self_ship()


@pytest.mark.asyncio
async def test_a_compensation_of_a_cancelled_saga_run_again_to_its_end_ends_it_compensated() -> (
    None
):
    # Regression: the caller cancelled the saga; its compensation, run shielded, raised
    # CancelledError itself, was run again and completed. The saga ended FAILED all the
    # same (the compensation's CancelledError, re-raised once it was run again, was taken
    # for a KeyboardInterrupt out of a compensation), with every compensation COMPLETED.
    # Found by the lease soak (seed 814).
    global undoing
    undoing = asyncio.Event()
    undo_calls.clear()
    orchestrator = SagaOrchestrator()
    running = asyncio.create_task(orchestrator.execute(cdc_self_order(), saga_id="self"))
    await undoing.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert undo_calls == ["unbook", "unbook"]
    meta = await orchestrator.get_saga("self")
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert [c.status for c in meta.compensations] == [StepStatus.COMPLETED]
    assert meta.compensation_events == ("unbooked",)
