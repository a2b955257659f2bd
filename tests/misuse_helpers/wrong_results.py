"""Sagas whose step, or compensation, returns what cannot be its events (a saga definition
it forgot to execute, an iterator): run in each store, and checked for what every such
mistake leaves in the saga's record, whatever was returned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    CompensationFailed,
    MemoryStore,
    SagaDefinition,
    SagaDefinitionError,
    SagaMetadata,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StepCall,
    StepStatus,
)

STORES = ["memory", "sqlite"]


def store_of(kind: str, tmp_path: Path) -> Any:
    """A store of ``kind`` (one of :data:`STORES`); the orchestrator given it closes it."""
    return MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "s.db")


async def run_a_wrong_step(
    store: Any, done: StepCall[Any], wrong: StepCall[Any], saga_id: str, events: tuple[Any, ...]
) -> tuple[str, SagaMetadata]:
    """Run ``done``, returning ``events``, then ``wrong``, a step returning what cannot be
    its events: the saga fails with a :class:`SagaDefinitionError` (whose message is
    returned with the saga's record) and is compensated, ``events`` its only ones, and
    ``wrong``'s step failed."""
    async with SagaOrchestrator(store) as orchestrator:
        with pytest.raises(SagaDefinitionError) as raised:
            await orchestrator.execute(SagaDefinition(steps=[done, wrong], saga_id=saga_id))
        metadata = await orchestrator.get_saga(saga_id)
    assert metadata is not None
    assert metadata.status is SagaStatus.COMPENSATED
    assert metadata.events == events
    assert metadata.steps[1].status is StepStatus.FAILED
    return str(raised.value), metadata


async def run_a_wrong_compensation(
    store: Any, steps: list[StepCall[Any]], saga_id: str, compensation_events: list[Any]
) -> tuple[CompensationFailed, SagaMetadata]:
    """Run ``steps``, the last failing, the one before it compensated by one returning
    what cannot be its events: that compensation fails with a :class:`SagaDefinitionError`,
    the first step's is still run (``compensation_events`` its events), and the saga ends
    failed. Returns the failure and the saga's record."""
    orchestrator = SagaOrchestrator(store, continue_on_compensation_failure=True)
    async with orchestrator:
        with pytest.raises(CompensationFailed) as raised:
            await orchestrator.execute(SagaDefinition(steps=steps, saga_id=saga_id))
        metadata = await orchestrator.get_saga(saga_id)
    failure = raised.value
    assert isinstance(failure.error, SagaDefinitionError)
    assert failure.compensation_events == compensation_events
    assert metadata is not None
    assert metadata.status is SagaStatus.FAILED
    assert metadata.compensations[0].status is StepStatus.FAILED
    return failure, metadata
