"""A step or compensation returning a list: its records keep the events as returned, even
when the list is changed afterwards (by the saga, a later step or whoever else holds it)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from sagakit import SagaOrchestrator, StepCall, StepFailed, saga, step

kept: list[str] = []


@step
async def er_reserve(item: str) -> list[str]:
    return [f"reserved {item}"]


@er_reserve.compensate
async def er_release(item: str) -> list[str]:
    kept[:] = [f"released {item}"]
    return kept  # a list its owner changes later


@step
async def er_ship(events: list[str]) -> None:
    events.append("changed by a later step")


@step
async def er_fail() -> None:
    raise ValueError("boom")


@saga
def er_order(item: str, fail: bool) -> Generator[StepCall[Any], Any, None]:
    events = yield er_reserve(item)
    events.clear()  # the saga changes the result it was sent
    yield er_ship(events)
    if fail:
        yield er_fail()


@pytest.mark.asyncio
async def test_a_returned_list_changed_afterwards_leaves_the_step_record_as_returned() -> None:
    # Regression: the record kept the list itself, so its events were whatever the list
    # held later (here none), unlike the saga's events.
    orchestrator = SagaOrchestrator()
    assert await orchestrator.execute(er_order("book", False), saga_id="er-1") == ["reserved book"]
    metadata = await orchestrator.get_saga("er-1")
    assert metadata is not None
    assert metadata.events == ("reserved book",)
    assert metadata.steps[0].events == ("reserved book",)


@pytest.mark.asyncio
async def test_a_returned_list_changed_afterwards_leaves_the_compensation_record_as_returned() -> (
    None
):
    orchestrator = SagaOrchestrator()
    with pytest.raises(StepFailed):
        await orchestrator.execute(er_order("pen", True), saga_id="er-2")
    kept.append("changed by its owner")
    metadata = await orchestrator.get_saga("er-2")
    assert metadata is not None
    assert metadata.compensation_events == ("released pen",)
    assert metadata.compensations[0].events == ("released pen",)
