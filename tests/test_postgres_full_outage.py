"""PostgreSQL: a full outage (the server unreachable, not only its backends ended).

The store reaches the shared test server through a TCP proxy (it may not be stopped):
``cut("refused")`` closes the proxy's port, ``cut("blackholed")`` accepts connections
and never answers, both after dropping every connection already open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pg_helpers.db import GIVE_UP, opened
from pg_helpers.proxy import proxied
from sagakit import PostgresStore, SagaOrchestrator, StoreError, saga, step

CONNECT_TIMEOUT = 2.0
WELL_UNDER_THE_POOLS_30_S = 15.0  # a guard: connect_timeout is 2 s


@step
async def fo_echo(n: int) -> int:
    return n


@saga
def fo_one(n: int):  # type: ignore[no-untyped-def]
    yield fo_echo(n)


def _calls(store: PostgresStore) -> dict[str, Callable[[], Awaitable[Any]]]:
    orchestrator = SagaOrchestrator(store)
    return {
        "get_saga": lambda: orchestrator.get_saga("fo-done"),
        "claim_orphans": lambda: store.claim_orphans(names={"fo_one"}, limit=1),
        "execute": lambda: orchestrator.execute(fo_one(2)),
    }


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["refused", "blackholed"])
@pytest.mark.parametrize("call", ["get_saga", "claim_orphans", "execute"])
async def test_a_call_fails_naming_connect_timeout_when_the_server_stays_down(
    dsn: str, schema: str, mode: str, call: str
) -> None:
    # Regression: each call waited psycopg-pool's own 30 s for a connection (a write,
    # its settling and the saga's compensation each in turn: execute() took 90 s) and
    # then said "PoolTimeout: couldn't get a connection after 30.00 sec".
    with proxied(dsn) as proxy:
        async with opened(proxy.dsn(), schema, connect_timeout=CONNECT_TIMEOUT) as store:
            await SagaOrchestrator(store).execute(fo_one(1), saga_id="fo-done")
            proxy.cut(mode)
            try:
                async with asyncio.timeout(WELL_UNDER_THE_POOLS_30_S):
                    with pytest.raises(StoreError, match=r"within 2 s \(connect_timeout\)"):
                        await _calls(store)[call]()
            finally:
                proxy.restore()
            async with asyncio.timeout(GIVE_UP):  # and it works again once the server is back
                assert await SagaOrchestrator(store).execute(fo_one(3)) == [3]


RAN: list[str] = []


@step
async def fo_first(n: int) -> int:
    RAN.append("fo_first")
    return n


@step
async def fo_slow(n: int, started: asyncio.Event, until: asyncio.Event) -> int:
    RAN.append("fo_slow")
    started.set()
    await until.wait()
    return n


async def _finished(store: PostgresStore, saga_id: str) -> None:
    """Until the saga is no longer running (polled: the worker is in this process)."""
    while True:
        found = await SagaOrchestrator(store).get_saga(saga_id)
        if found is not None and found.status != "executing":
            return
        await asyncio.sleep(0.1)


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["refused", "blackholed"])
async def test_a_worker_rides_out_an_outage_shorter_than_its_lease(
    dsn: str, schema: str, mode: str
) -> None:
    # A worker finishing a saga while the server goes away for less than the lease:
    # it keeps the lease (no other claim, no step run again), claims again by itself
    # once the server is back, and the saga completes, not left EXECUTING.
    from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

    started, back = asyncio.Event(), asyncio.Event()

    @saga
    def fo_two(n: int):  # type: ignore[no-untyped-def]
        yield fo_first(n)
        yield fo_slow(n, started, back)

    RAN.clear()
    async with opened(dsn, schema) as direct:
        with FaultInjector() as faults:
            faults.crash(fo_slow)
            with pytest.raises(SimulatedCrash):
                await SagaOrchestrator(direct).execute(fo_two(1), saga_id="fo-w")
        await simulate_restart(direct)
        with proxied(dsn) as proxy:
            options = {"lease": 9.0, "connect_timeout": CONNECT_TIMEOUT}
            async with opened(proxy.dsn(), schema, **options) as store:
                stop = asyncio.Event()
                worker = asyncio.create_task(
                    SagaOrchestrator(store).run_worker(
                        poll_interval=0.2, stop=stop, handle_signals=False
                    )
                )
                async with asyncio.timeout(GIVE_UP):
                    await started.wait()
                proxy.cut(mode)
                await asyncio.sleep(5.0)  # the outage: a heartbeat and claims fail
                proxy.restore()
                back.set()
                async with asyncio.timeout(GIVE_UP):
                    await _finished(direct, "fo-w")
                stop.set()
                await worker
        done = await SagaOrchestrator(direct).get_saga("fo-w")
        assert done is not None
        assert done.status == "completed"
        assert RAN == ["fo_first", "fo_slow"]  # nothing run again
