"""A retried attempt of a step whose start write a cancellation interrupted never ran: it is
not counted in the step's ``attempts``, as one whose start the log refused is not.

Regression: the run's own record (and so the end the log wrote from it) counted it:
``attempts=2`` for a step whose function ran once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from sagakit import (
    Retry,
    SagaMetadata,
    SagaOrchestrator,
    SagaStatus,
    StepStatus,
    Transition,
    TransitionKind,
    saga,
    step,
)
from sagakit.stores import SagaRunView
from store_helpers.cancelling import cancel_record

calls: list[str] = []


@step
async def rsc_take(account: str) -> str:
    calls.append(f"take {account}")
    return f"took {account}"


@rsc_take.compensate
async def rsc_untake(account: str) -> None:
    calls.append(f"untake {account}")


@step(retry=Retry(attempts=3, backoff=0, on=ConnectionError))
async def rsc_flaky(account: str) -> str:
    calls.append(f"flaky {account}")
    raise ConnectionError(f"{account} busy")


@saga
def rsc_transfer(account: str) -> Any:
    yield rsc_take(account)
    yield rsc_flaky(account)


async def no_wait(seconds: float) -> None:
    pass


@pytest.mark.parametrize("committed", [False, True], ids=["unwritten", "committed"])
@pytest.mark.asyncio
async def test_a_retry_whose_start_write_is_cancelled_is_not_counted_as_an_attempt(
    durable_store: Callable[[], Any], committed: bool
) -> None:
    store = durable_store()
    cancel_record(store, TransitionKind.STEP_STARTED, 1, attempt=2, committed=committed)
    finish = store.finish
    ended: list[SagaMetadata] = []

    async def finishing(run: SagaRunView) -> None:
        ended.append(run.snapshot())  # the run's own record, as it ends
        await finish(run)

    store.finish = finishing
    calls.clear()
    async with SagaOrchestrator(store, sleep=no_wait) as orchestrator:
        with pytest.raises(asyncio.CancelledError):
            await orchestrator.execute(rsc_transfer("a"), saga_id="rsc-1")
        logged = await orchestrator.get_saga("rsc-1")
    assert calls == ["take a", "flaky a", "untake a"]  # the second attempt never ran
    assert logged is not None
    assert logged.status is SagaStatus.COMPENSATED
    [run] = ended
    for record in (logged, run):
        assert [(s.status, s.attempts) for s in record.steps] == [
            (StepStatus.COMPLETED, 1),
            (StepStatus.FAILED, 1),
        ]


@pytest.mark.asyncio
async def test_a_retry_cancelled_while_a_listener_hears_its_start_is_not_counted() -> None:
    def cancel_the_second_start(transition: Transition) -> None:
        if transition.kind is TransitionKind.STEP_STARTED and transition.attempt == 2:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # a sync listener: the saga finds it pending once told

    calls.clear()
    async with SagaOrchestrator(sleep=no_wait, listeners=[cancel_the_second_start]) as orchestrator:
        with pytest.raises(asyncio.CancelledError):
            await orchestrator.execute(rsc_transfer("b"), saga_id="rsc-2")
        meta = await orchestrator.get_saga("rsc-2")
    assert calls == ["take b", "flaky b", "untake b"]
    assert meta is not None
    assert [(s.status, s.attempts) for s in meta.steps] == [
        (StepStatus.COMPLETED, 1),
        (StepStatus.FAILED, 1),
    ]
