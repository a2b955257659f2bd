"""A worker on a store whose "process" a simulated crash killed
(``FaultInjector.crash(..., process=True)``) dies with it: it raises ``SimulatedCrash``,
saying the process is dead, and claims nothing more until ``simulate_restart(store)``.

It used to depend on the store: on PostgreSQL the worker went on claiming, every
``poll_interval``, for ever (a dead process that polls); on SQLite it raised the
``SimulatedCrash`` of a saga ("this saga stopped at its next write"), though no saga of
it had written anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from pg_helpers.db import opened
from sagakit import SagaOrchestrator, SagaStatus, saga, step
from sagakit.stores import OrphanedSaga
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

pytestmark = pytest.mark.asyncio

GIVE_UP = 30.0  # seconds before the worker is declared hung (a guard, not a measurement)

DEAD = "the process is dead, so its worker stopped"


@step
async def wcp_pack(parcel: str) -> str:
    return parcel


@step
async def wcp_post(parcel: str) -> str:
    return parcel


@saga
def wcp_shipment(parcel: str) -> Any:
    yield wcp_pack(parcel)
    yield wcp_post(parcel)


async def ended(worker: asyncio.Task[None]) -> asyncio.Task[None]:
    await asyncio.wait((worker,), timeout=GIVE_UP)
    if not worker.done():
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        pytest.fail("the worker of a dead process went on")
    return worker


async def test_a_worker_started_on_a_crashed_store_raises_and_claims_nothing(
    durable_store: Callable[..., Any],
) -> None:
    store = durable_store()
    async with SagaOrchestrator(store) as orchestrator:
        with FaultInjector().crash(wcp_post, process=True), pytest.raises(SimulatedCrash):
            await orchestrator.execute(wcp_shipment("p-1"), saga_id="wcp-1")
        claims: list[dict[str, Any]] = []
        claim = store.claim_orphans

        async def counted(**options: Any) -> list[OrphanedSaga]:
            claims.append(options)
            result: list[OrphanedSaga] = await claim(**options)
            return result

        store.claim_orphans = counted  # type: ignore[method-assign]
        worker = await ended(
            asyncio.create_task(orchestrator.run_worker(poll_interval=0.01, handle_signals=False))
        )
        with pytest.raises(SimulatedCrash, match=DEAD) as raised:
            worker.result()
        assert raised.value.process
        assert "simulate_restart(store)" in str(raised.value)
        assert claims == []

        # Restarted, the store's worker finishes what the crash left.
        await simulate_restart(store)
        stop = asyncio.Event()
        store.claim_orphans = claim  # type: ignore[method-assign]
        worker = asyncio.create_task(
            orchestrator.run_worker(poll_interval=0.01, stop=stop, handle_signals=False)
        )
        while (await orchestrator.get_saga("wcp-1")).status is not SagaStatus.COMPLETED:
            assert not worker.done()
            await asyncio.sleep(0.01)
        stop.set()
        await (await ended(worker))


async def test_a_worker_whose_saga_crashes_the_process_raises(
    durable_store: Callable[..., Any],
) -> None:
    setup = durable_store()
    async with SagaOrchestrator(setup) as orchestrator:
        with FaultInjector().crash(wcp_post), pytest.raises(SimulatedCrash):
            await orchestrator.execute(wcp_shipment("p-2"), saga_id="wcp-2")
        await simulate_restart(setup)
    store = durable_store()
    async with SagaOrchestrator(store) as orchestrator:
        with FaultInjector().crash(wcp_post, process=True):
            worker = await ended(
                asyncio.create_task(
                    orchestrator.run_worker(poll_interval=0.01, handle_signals=False)
                )
            )
        with pytest.raises(SimulatedCrash, match=DEAD):
            worker.result()
        assert (await orchestrator.get_saga("wcp-2")).status is SagaStatus.EXECUTING
        await simulate_restart(store)
        outcomes = await orchestrator.recover()
        assert [(o.saga_id, o.status) for o in outcomes] == [("wcp-2", SagaStatus.COMPLETED)]


hanging: list[asyncio.Event] = []  # set as wcp_hang starts, which then hangs (if any)


@step
async def wcp_hang(parcel: str) -> str:
    if hanging:
        hanging[0].set()
        await asyncio.sleep(3600)  # until cancelled
    return parcel


@saga
def wcp_slow_shipment(parcel: str) -> Any:
    yield wcp_pack(parcel)
    yield wcp_hang(parcel)


async def test_a_worker_of_a_dead_process_releases_nothing(dsn: str, schema: str) -> None:
    # A dead process writes nothing: the worker did not release the lease of the saga it
    # was running when another saga of its store crashed the process (it is kept, as a
    # crash's, until simulate_restart() or close()).
    hanging[:] = []
    async with opened(dsn, schema) as setup:
        with FaultInjector().crash(wcp_hang), pytest.raises(SimulatedCrash):
            await SagaOrchestrator(setup).execute(wcp_slow_shipment("p-3"), saga_id="wcp-3")
        await simulate_restart(setup)
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        started = asyncio.Event()
        hanging.append(started)
        worker = asyncio.create_task(
            orchestrator.run_worker(poll_interval=0.01, handle_signals=False)
        )
        await asyncio.wait_for(started.wait(), GIVE_UP)  # the worker runs wcp-3
        with FaultInjector().crash(wcp_post, process=True), pytest.raises(SimulatedCrash):
            await orchestrator.execute(wcp_shipment("p-4"), saga_id="wcp-4")
        with pytest.raises(SimulatedCrash, match=DEAD):
            (await ended(worker)).result()
        assert store.owns("wcp-3")  # not released
        hanging.clear()  # (recovered, it ends)
        await simulate_restart(store)
        outcomes = await orchestrator.recover()
        assert sorted(o.saga_id for o in outcomes) == ["wcp-3", "wcp-4"]
