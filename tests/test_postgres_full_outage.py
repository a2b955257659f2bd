"""PostgreSQL: a full outage (the server unreachable, not only its backends ended).

The store reaches the shared test server through a TCP proxy (it may not be stopped):
``cut("refused")`` closes the proxy's port, ``cut("blackholed")`` accepts connections
and never answers, both after dropping every connection already open.
"""

from __future__ import annotations

import asyncio
import logging
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
                    # (execute() raises its last write's: the store knew the server down)
                    named = r"within 2 s \(connect_timeout\)|waited 2 s for one, connect_timeout"
                    with pytest.raises(StoreError, match=named):
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


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["refused", "blackholed"])
async def test_once_a_call_gave_up_on_the_server_the_next_ones_try_briefly(
    dsn: str, schema: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: every statement waited connect_timeout for a connection in turn, so a
    # saga failing during an outage took about four times connect_timeout (its write,
    # the settling, the compensation's start, the end), a cancelled one five.
    from sagakit.stores._pg_patience import KNOWN_DOWN

    waits: list[float] = []
    with proxied(dsn) as proxy:
        async with opened(proxy.dsn(), schema, connect_timeout=6.0) as store:
            await SagaOrchestrator(store).execute(fo_one(1), saga_id="fo-down")
            pool = store._pool
            assert pool is not None
            connection = pool.connection

            def spied(timeout: float | None = None) -> Any:
                waits.append(timeout if timeout is not None else pool.timeout)
                return connection(timeout)

            pool.connection = spied  # type: ignore[method-assign]
            proxy.cut(mode)
            caplog.set_level(logging.INFO, logger="sagakit")
            try:
                with pytest.raises(StoreError, match=r"within 6 s \(connect_timeout\)"):
                    await SagaOrchestrator(store).get_saga("fo-down")
                assert set(waits) == {6.0}  # the first call: connect_timeout
                first = len(waits)  # (a connection the server ended, then none)
                with pytest.raises(StoreError, match="still unreachable"):
                    await SagaOrchestrator(store).execute(fo_one(2))
                later = waits[first:]
                assert later  # it did try
                assert all(wait <= KNOWN_DOWN for wait in later), later
            finally:
                proxy.restore()
            # Once the server is back, a call gets the pool's next connection (it tries
            # for longer than the pool waits between two tries to reconnect).
            async with asyncio.timeout(GIVE_UP):
                while True:
                    try:
                        found = await SagaOrchestrator(store).get_saga("fo-down")
                        break
                    except StoreError:
                        if mode == "refused":
                            raise  # nothing in flight to wait out: the first try gets it
                        # (blackholed: the pool's connection attempts made meanwhile
                        # wait out connect_timeout before it tries again)
            assert found is not None
            assert found.status == "completed"
            assert await SagaOrchestrator(store).execute(fo_one(3)) == [3]
            assert not store._down
        told = [r.getMessage() for r in caplog.records if r.name == "sagakit"]
        # One outage, told once, however many calls gave up during it (each told its own).
        assert len([m for m in told if "lost its connection" in m]) == 1, told
        assert len([m for m in told if "again after" in m]) == 1, told


def test_a_known_down_try_outlasts_the_pools_reconnect_delay() -> None:
    from sagakit.stores._pg_patience import KNOWN_DOWN
    from sagakit.stores._pg_pool import MAX_RECONNECT_DELAY

    assert KNOWN_DOWN > MAX_RECONNECT_DELAY
