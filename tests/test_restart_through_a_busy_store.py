"""simulate_restart() given another store object on the crashed store's log, which is
itself running a saga: only the crashed store's sagas are released.

On PostgreSQL, simulate_restart() of a store no simulated crash stopped restarted the
crashed stores on its log, but also gave up that store's own leases as a crash's: a saga
it was running lost its lease (its run fenced out) and recovery claimed it while it ran.
On SQLite, it forgot that store's live runs and released them in the file with the
crashed ones: recovery ran the running saga a second time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from sagakit import SagaOrchestrator, SagaStatus, saga, step
from sagakit.testing import simulate_restart
from store_helpers.restarting import crash_in, crashed_and_restarted

GIVE_UP = 30.0  # seconds before a wait is declared hung (a guard, not a measurement)

calls: list[str] = []
events: dict[str, asyncio.Event] = {}


@step
async def rtbs_book(name: str) -> str:
    return name


@step
async def rtbs_hold(name: str) -> str:
    calls.append(name)
    if name == "busy" and calls.count(name) == 1:  # the first run only: pauses here
        events["started"].set()
        await events["release"].wait()
    return name


@saga
def rtbs_trip(name: str):  # type: ignore[no-untyped-def]
    yield rtbs_book(name)
    yield rtbs_hold(name)


@pytest.mark.asyncio
async def test_simulate_restart_through_a_busy_store_leaves_its_own_sagas_running(
    durable_store: Callable[[], Any],
) -> None:
    calls.clear()
    events["started"], events["release"] = asyncio.Event(), asyncio.Event()
    async with crashed_and_restarted(durable_store) as (crashed, restarted):
        running: asyncio.Task[Any] | None = None
        try:
            await crash_in(crashed, rtbs_hold, rtbs_trip("crashed"), "rtbs-1")
            orchestrator = SagaOrchestrator(restarted)
            running = asyncio.create_task(orchestrator.execute(rtbs_trip("busy").with_id("rtbs-2")))
            async with asyncio.timeout(GIVE_UP):
                await events["started"].wait()
            await simulate_restart(restarted)  # while rtbs-2 runs on it, paused
            outcomes = await orchestrator.recover()
            assert [(o.saga_id, o.status) for o in outcomes] == [("rtbs-1", SagaStatus.COMPLETED)]
            events["release"].set()
            async with asyncio.timeout(GIVE_UP):
                await running
            metadata = await orchestrator.get_saga("rtbs-2")
            assert metadata is not None
            assert metadata.status == SagaStatus.COMPLETED
            assert calls == ["busy", "crashed"]  # (crashed's hold never ran before the crash)
        finally:
            events["release"].set()
            if running is not None:
                await asyncio.gather(running, return_exceptions=True)
