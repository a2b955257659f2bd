"""A step interrupted by cancellation is recorded FAILED in every store.

Regression: its end was set in memory only (no transition carries it), so durable
stores kept the step RUNNING in a saga that finished COMPENSATED; the run's end now
writes it (docs/concepts/cancellation.md: "recorded as FAILED").
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from pg_helpers.db import dsn_or_skip, fresh_schema
from sagakit import (
    PostgresStore,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StepStatus,
    saga,
    step,
)
from sagakit.stores import MemoryStore, SagaStore

waiting: asyncio.Event | None = None


@step
async def csl_reserve(item: str) -> str:
    return f"reserved {item}"


@csl_reserve.compensate
async def csl_release(item: str) -> None:
    return None


@step
async def csl_wait(item: str) -> None:
    assert waiting is not None
    waiting.set()
    await asyncio.sleep(10)


@saga
def csl_order(item: str):  # type: ignore[no-untyped-def]
    yield csl_reserve(item)
    yield csl_wait(item)


async def _cancelled_step(store: SagaStore) -> tuple[SagaStatus, StepStatus, str | None]:
    global waiting
    waiting = asyncio.Event()
    orchestrator = SagaOrchestrator(store)
    try:
        task = asyncio.create_task(orchestrator.execute(csl_order("book"), saga_id="cancelled-1"))
        await waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        metadata = await orchestrator.get_saga("cancelled-1")
        assert metadata is not None
        return metadata.status, metadata.steps[1].status, metadata.steps[1].error
    finally:
        await orchestrator.close()


@pytest.mark.asyncio
async def test_memory_store_records_the_cancelled_step_failed() -> None:
    assert await _cancelled_step(MemoryStore()) == (
        SagaStatus.COMPENSATED,
        StepStatus.FAILED,
        "CancelledError: the saga was cancelled",
    )


@pytest.mark.asyncio
async def test_sqlite_store_records_the_cancelled_step_failed(tmp_path: Path) -> None:
    assert await _cancelled_step(SQLiteStore(tmp_path / "sagas.db")) == (
        SagaStatus.COMPENSATED,
        StepStatus.FAILED,
        "CancelledError: the saga was cancelled",
    )


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    dsn = dsn_or_skip()
    for schema in fresh_schema(dsn):
        yield dsn, schema


@pytest.mark.asyncio
async def test_postgres_store_records_the_cancelled_step_failed(
    pg_schema: tuple[str, str],
) -> None:
    dsn, schema = pg_schema
    assert await _cancelled_step(PostgresStore(dsn, schema=schema)) == (
        SagaStatus.COMPENSATED,
        StepStatus.FAILED,
        "CancelledError: the saga was cancelled",
    )
