"""Cancelling a saga while it compensates keeps the compensations that already failed.

Regression: with ``continue_on_compensation_failure=True``, the compensation restarted
after a cancellation (shielded) began with no record of earlier failures, so the saga
ended COMPENSATED although a compensation had failed (docs/concepts/cancellation.md:
"COMPENSATED (or FAILED if a compensation failed)").
"""

from __future__ import annotations

import asyncio

import pytest

from sagakit import Retry, SagaOrchestrator, SagaStatus, StepStatus, saga, step

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
