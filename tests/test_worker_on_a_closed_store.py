"""A worker on a closed store raises its ``StoreError``: nothing opens the store again.

It used to take the closed store for a database away for a while: it tried again for
ever, its wait doubling up to 30 s, a warning at every 1st, 2nd, 4th... failure — also
a worker task left running past the end of ``async with SagaOrchestrator(store)``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pg_helpers.db import opened
from sagakit import SagaOrchestrator, SQLiteStore, StoreError

pytestmark = pytest.mark.asyncio

GIVE_UP = 30.0  # seconds before the worker is declared hung (a guard, not a measurement)


async def test_a_worker_on_a_closed_sqlite_store_raises(tmp_path: Path) -> None:
    orchestrator = SagaOrchestrator(SQLiteStore(tmp_path / "sagas.db"))
    await orchestrator.close()
    with pytest.raises(StoreError, match="is closed"):
        await asyncio.wait_for(
            orchestrator.run_worker(poll_interval=0.01, handle_signals=False), GIVE_UP
        )


async def test_a_worker_whose_store_is_closed_under_it_raises(tmp_path: Path) -> None:
    async with SagaOrchestrator(SQLiteStore(tmp_path / "sagas.db")) as orchestrator:
        worker = asyncio.create_task(
            orchestrator.run_worker(poll_interval=0.01, handle_signals=False)
        )
        await asyncio.sleep(0.05)  # a few claims
    with pytest.raises(StoreError, match="is closed"):
        await asyncio.wait_for(worker, GIVE_UP)


async def test_a_worker_on_a_closed_postgres_store_raises(dsn: str, schema: str) -> None:
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
    with pytest.raises(StoreError, match="is closed"):
        await asyncio.wait_for(
            orchestrator.run_worker(poll_interval=0.01, handle_signals=False), GIVE_UP
        )
