"""The PostgreSQL store's connection pool: psycopg-pool's, reconnecting promptly.

A connection the pool failed to open is tried again after a backoff that psycopg-pool
doubles at each failure, from 1 s up to its ``reconnect_timeout`` (5 minutes): after
a 40 s outage (a server restart, a fail-over, a server killing connections), the
next try could be 30 s away, and while a try waited, the pool did not open another
one for the callers queued: every statement waited for a connection, and failed
after the pool's timeout, long after the server accepted connections again. Here the
wait between tries is at most :data:`MAX_RECONNECT_DELAY`; a try that succeeds ends
its backoff (the next failure starts from 1 s again), as before.

Imported when a store opens its pool (importing sagakit never imports psycopg).
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from psycopg_pool.pool_async import AddConnection, MaintenanceTask

MAX_RECONNECT_DELAY = 2.0
"""The longest wait, in seconds, before the pool tries again to open a connection."""


class Pool(AsyncConnectionPool[AsyncConnection[Any]]):
    """An :class:`~psycopg_pool.AsyncConnectionPool` whose reconnect backoff is bounded."""

    async def schedule_task(self, task: MaintenanceTask, delay: float) -> None:
        # A failed connection's next try (the only AddConnection the pool schedules
        # for later); its shrinking, every max_idle, is left alone.
        if isinstance(task, AddConnection):
            delay = min(delay, MAX_RECONNECT_DELAY)
        await super().schedule_task(task, delay)


__all__ = ["MAX_RECONNECT_DELAY", "Pool"]
