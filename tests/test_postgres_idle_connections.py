"""PostgreSQL: pooled connections the server closed while they sat idle are replaced.

A server restart, a fail-over, ``idle_session_timeout`` or an administrator's
``pg_terminate_backend()`` ends the store's idle connections while the server stays up.
The next calls must not fail on them, one dead connection at a time.
"""

from __future__ import annotations

import pytest

from pg_helpers.db import query, wait_until
from sagakit import PostgresStore, SagaOrchestrator, saga, step

pytestmark = pytest.mark.asyncio


@step
async def ic_echo(n: int) -> list[int]:
    return [n]


@saga
def ic_one(n: int):  # type: ignore[no-untyped-def]
    yield ic_echo(n)


def _end_idle_connections(dsn: str, schema: str) -> None:
    """End the store's connections (by their application name), as a server would."""
    mine = "FROM pg_stat_activity WHERE application_name = %s AND pid <> pg_backend_pid()"
    ended = query(dsn, f"SELECT pg_terminate_backend(pid) {mine}", (schema,))
    assert ended
    assert all(done for (done,) in ended)
    wait_until(lambda: not query(dsn, f"SELECT pid {mine}", (schema,)), "the backends to end")


async def test_calls_after_the_server_closed_idle_connections_do_not_fail(
    dsn: str, schema: str
) -> None:
    # Each call took one of the dead connections from the pool and raised StoreError
    # ("AdminShutdown: terminating connection due to administrator command") though the
    # server was up: get_saga() in a request handler, a worker's release_leases() at
    # shutdown (its sagas then waited for their leases to run out).
    store = PostgresStore(
        f"{dsn}{'&' if '?' in dsn else '?'}application_name={schema}",
        schema=schema,
        min_size=3,
        max_size=3,
    )
    await store.open()
    try:
        orchestrator = SagaOrchestrator(store)
        assert await orchestrator.execute(ic_one(1), saga_id="ic-1") == [1]
        _end_idle_connections(dsn, schema)
        meta = await orchestrator.get_saga("ic-1")
        assert meta is not None
        assert meta.status == "completed"
        _end_idle_connections(dsn, schema)
        assert await store.running_count() == 0
        assert await store.release_leases() == 0
        assert await orchestrator.execute(ic_one(2), saga_id="ic-2") == [2]
    finally:
        await store.close()
