"""The orchestrator makes its step and compensation records inline (a frame less per
step): each must start as new_step_run() makes it, every slot set."""

from __future__ import annotations

from typing import Any

import pytest

from sagakit import SagaDefinition, SagaOrchestrator, StepFailed, step
from sagakit._runs import StepRun, current_run, new_step_run

seen: list[tuple[StepRun, dict[str, Any]]] = []


def _running_record() -> None:
    run = current_run.get()
    assert run is not None
    assert run.step is not None
    record = run.step
    seen.append((record, {name: getattr(record, name) for name in StepRun.__slots__}))


@step
async def first(n: int) -> list[int]:
    _running_record()
    return [n]


@first.compensate
async def undo_first(n: int) -> None:
    _running_record()


@step
async def second(n: int) -> None:
    _running_record()
    raise ValueError(n)


@pytest.mark.asyncio
async def test_a_running_steps_and_compensations_record_is_a_fresh_one() -> None:
    seen.clear()
    with pytest.raises(StepFailed):
        await SagaOrchestrator().execute(SagaDefinition(steps=[first(1), second(2)]))
    assert [(r.name, r.compensation) for r, _ in seen] == [
        ("first", False),
        ("second", False),
        ("first", True),
    ]
    for (record, slots), index in zip(seen, (0, 1, 0), strict=True):
        fresh = new_step_run(index, record.name, record.compensation)
        assert slots == {name: getattr(fresh, name) for name in StepRun.__slots__}
