"""PostgreSQL: the store's connection pool reconnects promptly after an outage.

The store is cut off from the server through a TCP proxy (the test server is shared:
it may not be restarted): its connections are dropped and new ones refused, as by a
server restarting, a fail-over or a network outage, while callers keep coming.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from pg_helpers.db import GIVE_UP, opened
from pg_helpers.proxy import proxied
from sagakit import SagaOrchestrator, StoreError, saga, step

OUTAGE = 8.0  # seconds: psycopg-pool's own backoff (1, 2, 4, 8 s...) then waits up to 8 s


@step
async def rc_echo(n: int) -> int:
    return n


@saga
def rc_one(n: int):  # type: ignore[no-untyped-def]
    yield rc_echo(n)


@pytest.mark.asyncio
async def test_the_pool_reconnects_promptly_once_the_server_accepts_connections_again(
    dsn: str, schema: str
) -> None:
    # Regression: the pool tried a connection it failed to open again after a backoff
    # doubled at each failure (1, 2, 4, 8, 16 s, ... up to 5 minutes), and opened no
    # other one for the callers queued meanwhile: after a 40 s outage, sagas failed
    # for 16 s more after the server was back. Now the wait is at most 2 s.
    with proxied(dsn) as proxy:
        async with opened(proxy.dsn(), schema) as store:
            orchestrator = SagaOrchestrator(store)
            assert await orchestrator.execute(rc_one(1)) == [1]
            proxy.cut()
            began = time.monotonic()

            async def caller() -> None:  # sagas keep coming while the server is away
                while time.monotonic() - began < OUTAGE:
                    with contextlib.suppress(StoreError):
                        await orchestrator.execute(rc_one(2))
                    await asyncio.sleep(0.3)

            callers = [asyncio.create_task(caller()) for _ in range(3)]
            try:
                await asyncio.sleep(OUTAGE)
                assert proxy.refused  # the pool kept trying
            finally:
                proxy.restore()
            back = time.monotonic()
            async with asyncio.timeout(GIVE_UP):
                assert await orchestrator.execute(rc_one(3)) == [3]
            waited = time.monotonic() - back
            await asyncio.gather(*callers)
            assert waited < 4.0, f"the first saga after the outage waited {waited:.1f} s"
