"""What a failure of a PostgreSQL statement, or of its connection, means for the store:
a lost connection (worth trying again on another one), one never had (nothing was sent),
one lost after the statement was sent (it may have committed), a connection the server
ended while it sat idle in the pool."""

from __future__ import annotations

import select
from typing import TYPE_CHECKING, Any

from .._tracebacks import hide_from_pytest
from ..exceptions import StoreError
from ._pg_answer import NoAnswer
from ._pg_driver import import_driver

if TYPE_CHECKING:
    from psycopg import AsyncConnection, OperationalError

# pytest shows a failing test's line, not this module's code, for an error this store
# raises on purpose (see _tracebacks).
__tracebackhide__ = hide_from_pytest


def connection_lost(error: StoreError) -> bool:
    """Whether ``error`` (raised by a statement) says its connection was lost, or none
    could be had: worth trying again on another one. Not a statement the server refused."""
    psycopg, _ = import_driver()
    operational: type[OperationalError] = psycopg.OperationalError  # (the module is Any)
    cause = error.__cause__
    if isinstance(cause, NoAnswer):
        return True  # given up on: its connection is closed (it may have committed)
    if not isinstance(cause, operational):
        return False
    state = cause.sqlstate  # None: the client lost the connection (or the pool had none)
    return state is None or state.startswith(("08", "57P"))  # connection, shutdown


def never_sent(error: StoreError) -> bool:
    """Whether ``error`` says no connection could be had (the server is down): nothing
    was sent, so nothing may have committed."""
    _, psycopg_pool = import_driver()
    return isinstance(error.__cause__, psycopg_pool.PoolTimeout)


def maybe_committed(error: StoreError) -> bool:
    """Whether a statement that raised ``error`` may have committed all the same: its
    connection was lost after it was sent (not refused by the server, nor never sent)."""
    return connection_lost(error) and not never_sent(error)


def with_doubt(text: str, doubt: str | None) -> str:
    """``text``, an error, and what a call in doubt adds to it, if it was."""
    return text if doubt is None else f"{text}; {doubt}"


def write_lost(error: StoreError) -> bool:
    """Whether a write's ``error`` says its connection was lost (the writer raises its
    own, caused by the batch's)."""
    cause = error.__cause__
    return connection_lost(cause if isinstance(cause, StoreError) else error)


def ended_by_server(conn: AsyncConnection[Any]) -> bool:
    """Whether the server ended ``conn`` while it sat idle in the pool (a restart, a
    fail-over, ``idle_session_timeout``, ``pg_terminate_backend()``): it then sent its
    error and closed the socket, which an idle connection's is readable for. Found
    without a round trip; a statement sent on it failed, though the server was up."""
    psycopg, _ = import_driver()
    pgconn = conn.pgconn
    if pgconn.status != psycopg.pq.ConnStatus.OK:
        return True
    # Anything to read on a connection that sent nothing (the store listens to no
    # channel) is the server's FATAL message, whose end of connection may still be on
    # its way. Taken as ended: at worst a live one is replaced.
    return _readable(pgconn.socket)


def _readable(fd: int) -> bool:
    """Whether socket ``fd`` has something to read (or its end), without waiting."""
    if hasattr(select, "poll"):  # select() refuses descriptors past 1023
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])  # pragma: no cover - Windows


__all__ = [
    "connection_lost",
    "ended_by_server",
    "maybe_committed",
    "never_sent",
    "with_doubt",
    "write_lost",
]
