"""A cancellation while listeners hear a compensation's final failure does not run it again.

Regression: the compensation's failure for good was recorded and told (``COMPENSATION_FAILED``),
but a cancellation of the saga while an async listener heard of it restarted the
compensations with that one still queued: it ran again from its first attempt (more calls
than its retry policy allows), its failed record was replaced, and a rerun that succeeded
ended the saga ``COMPENSATED`` after listeners and the log had its compensation failed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sagakit import (
    Retry,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StepStatus,
    Transition,
    TransitionKind,
    saga,
    step,
)
from sagakit.testing import InstantSleep, SagaRecorder

pytestmark = pytest.mark.asyncio

calls: list[str] = []


@step
async def cft_book(trip: str) -> str:
    return f"booked {trip}"


@cft_book.compensate
async def cft_unbook(trip: str) -> None:
    calls.append("unbook")
    if calls.count("unbook") <= 3:  # its three attempts fail; a fourth would succeed
        raise ConnectionError("hotel down")


@step
async def cft_insure(trip: str) -> str:
    return f"insured {trip}"


@cft_insure.compensate
async def cft_uninsure(trip: str) -> None:
    calls.append("uninsure")


@step
async def cft_pay(trip: str) -> None:
    raise ValueError("card declined")


@saga(name="cft_trip")
def cft_trip(trip: str):  # type: ignore[no-untyped-def]
    yield cft_insure(trip)
    yield cft_book(trip)
    yield cft_pay(trip)


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "sqlite"])
@pytest.mark.parametrize("go_on", [False, True], ids=["stop", "continue"])
async def test_a_compensation_failed_for_good_is_not_run_again_when_cancelled_meanwhile(
    tmp_path: Path, durable: bool, go_on: bool
) -> None:
    calls.clear()
    told = asyncio.Event()

    async def slow_alerting(transition: Transition) -> None:
        if transition.kind is TransitionKind.COMPENSATION_FAILED:
            told.set()
            await asyncio.sleep(10)  # paging someone; the saga is cancelled meanwhile

    recorder = SagaRecorder()
    orchestrator = SagaOrchestrator(
        SQLiteStore(tmp_path / "sagas.db") if durable else None,
        listeners=[slow_alerting, recorder],
        sleep=InstantSleep(),
        compensation_retry=Retry(attempts=3, backoff=0),
        continue_on_compensation_failure=go_on,
    )
    running = asyncio.create_task(orchestrator.execute(cft_trip("rome"), saga_id="cft-1"))
    await told.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    meta = await orchestrator.get_saga("cft-1")
    await orchestrator.close()

    # Its three attempts, no more; with continue_on_compensation_failure the next one
    # runs once, as without the cancellation.
    undone = [("cft_insure", StepStatus.COMPLETED, 1)] if go_on else []
    assert calls == ["unbook", "unbook", "unbook"] + (["uninsure"] if go_on else [])
    assert meta is not None
    assert meta.status is SagaStatus.FAILED
    assert meta.error is not None
    assert meta.error.startswith("compensation of step 1 ('cft_book') failed")
    assert [(r.name, r.status, r.attempts) for r in meta.compensations] == [
        ("cft_book", StepStatus.FAILED, 3),
        *undone,
    ]
    run = recorder.run("cft-1")
    assert run.names("compensation_failed") == ["cft_book"]
    assert run.names("compensation_started") == ["cft_book"] * 3 + [n for n, _, _ in undone]
    assert run.trail()[-1] == "saga_finished failed"
