"""A worker process for the PostgreSQL tests: ``python worker.py '<json config>'``.

Config keys: ``dsn``, ``schema``, ``name`` (for the effects table), ``lease``,
``heartbeat``, ``ids`` (saga ids to execute, 5 steps each), ``concurrency``,
``worker`` (also run ``run_worker`` until SIGTERM), ``barrier`` (wait for a line
on stdin before starting), ``hang_at`` with ``hang`` (seconds) and/or ``hang_file``
(until that file exists): hang inside that step.
Prints ``READY`` once connected, then one JSON line per executed id and
``STOPPED`` at the end.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from pgsagas import SETTINGS, chain
from psycopg_pool import AsyncConnectionPool

from sagakit import LeaseLost, PostgresStore, SagaAlreadyExecuting, SagaOrchestrator


async def _execute(
    orchestrator: SagaOrchestrator, saga_id: str, limit: asyncio.Semaphore
) -> dict[str, Any]:
    async with limit:
        try:
            events = await orchestrator.execute(chain(5), saga_id=saga_id)
        except SagaAlreadyExecuting:
            return {"id": saga_id, "outcome": "already_executing"}
        except LeaseLost:
            return {"id": saga_id, "outcome": "lease_lost"}
        except asyncio.CancelledError:
            return {"id": saga_id, "outcome": "cancelled"}
        return {"id": saga_id, "outcome": "done", "events": events}


async def main(config: dict[str, Any]) -> None:
    SETTINGS.schema = config["schema"]
    SETTINGS.worker = config["name"]
    SETTINGS.hang_at = config.get("hang_at", -1)
    SETTINGS.hang = config.get("hang", 0.0)
    SETTINGS.hang_file = config.get("hang_file", "")
    SETTINGS.pool = AsyncConnectionPool(
        config["dsn"], min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
    )
    await SETTINGS.pool.open(wait=True)
    store = PostgresStore(
        config["dsn"],
        schema=config["schema"],
        lease=config.get("lease", 1.0),
        heartbeat=config.get("heartbeat", 0.25),
        max_size=4,
    )
    orchestrator = SagaOrchestrator(store)
    await store.open()
    print("READY", flush=True)
    if config.get("barrier"):
        await asyncio.to_thread(sys.stdin.readline)
    limit = asyncio.Semaphore(config.get("concurrency", 20))
    tasks = [
        asyncio.create_task(_execute(orchestrator, saga_id, limit))
        for saga_id in config.get("ids", [])
    ]
    try:
        if config.get("worker"):
            await orchestrator.run_worker(poll_interval=0.1)
            # The process exits: hand its execute() calls over too (the worker released
            # only its own sagas), so that they stop fenced out, not compensating.
            await store.release_leases()
            for task in tasks:
                task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, BaseException):
                outcome = {"outcome": "error", "error": repr(outcome)}
            print(json.dumps(outcome), flush=True)
    finally:
        await orchestrator.close()
        await SETTINGS.pool.close()
    print("STOPPED", flush=True)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
