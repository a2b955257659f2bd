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
