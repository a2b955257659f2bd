"""The reprs of the testing helpers count in words that agree with the count.

Regression: ``<SagaRecorder 1 runs, 6 transitions>`` and ``<FaultInjector 1 faults, 1
fired>``, where a ``RecordedRun`` already said ``1 transition``.
"""

from __future__ import annotations

import pytest

from sagakit import SagaOrchestrator, StepFailed, saga, step
from sagakit.testing import FaultInjector, SagaRecorder


@step
async def repr_counts_take(item: str) -> str:
    return item


@saga(name="testing_repr_counts.one")
def repr_counts_one(item: str):  # type: ignore[no-untyped-def]
    yield repr_counts_take(item)


def test_an_empty_recorder_and_injector_count_in_the_plural() -> None:
    assert repr(SagaRecorder()) == "<SagaRecorder 0 runs, 0 transitions>"
    assert repr(FaultInjector()) == "<FaultInjector 0 faults, 0 fired>"


@pytest.mark.asyncio
async def test_one_run_and_one_fault_are_counted_in_the_singular() -> None:
    recorder = SagaRecorder()
    faults = FaultInjector().fail(repr_counts_take, times=1)
    async with SagaOrchestrator(listeners=[recorder]) as orchestrator:
        with faults, pytest.raises(StepFailed):
            await orchestrator.execute(repr_counts_one("a"), saga_id="one-1")
        transitions = len(recorder.transitions)
        assert repr(recorder) == f"<SagaRecorder 1 run, {transitions} transitions>"
        assert repr(faults) == "<FaultInjector 1 fault, 1 fired>"
        faults.fail(repr_counts_take, times=1)
        assert repr(faults) == "<FaultInjector 2 faults, 1 fired>"
