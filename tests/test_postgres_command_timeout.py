"""PostgreSQL: ``command_timeout``, how long a statement waits for its answer, apart from
``connect_timeout``, how long the store waits for a connection.

Every statement's answer was bounded by ``connect_timeout`` (to find a connection gone
silent), so a short connect timeout cut a statement that was merely slow: on a large
log, ``history()`` of every saga (some 37 s for a million sagas) failed every time, and
said the server was unreachable. Here another session holds the ``sagas`` table's lock
(``LOCK TABLE``), so the store's statements wait, longer than ``connect_timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import pytest

from pg_helpers.db import GIVE_UP, opened, query
from sagakit import PostgresStore, SagaOrchestrator, SagaStatus, StoreError, saga, step

_T = TypeVar("_T")

CONNECT = 0.3  # seconds: the store's connect_timeout in these tests


@step
async def ct_act(n: int) -> int:
    return n


@saga
def ct_two():  # type: ignore[no-untyped-def]
    yield ct_act(0)
    yield ct_act(1)


@asynccontextmanager
async def _table_locked(dsn: str, schema: str) -> AsyncIterator[None]:
    """The ``sagas`` table locked by another session (every statement on it waits) until
    the block ends."""
    psycopg = pytest.importorskip("psycopg")
    async with await psycopg.AsyncConnection.connect(dsn) as locker:
        await locker.execute(f'LOCK TABLE "{schema}".sagas IN ACCESS EXCLUSIVE MODE')
        try:
            yield
        finally:
            await locker.rollback()


async def _waited_past_connect_timeout(dsn: str, app: str, call: Awaitable[_T]) -> Any:
    """Start ``call``, see its statement wait for the lock, let it wait for longer than
    ``connect_timeout`` (twice it: a wait, not a measurement), and return its task."""
    task = asyncio.ensure_future(call)
    waiting = (
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'"
    )
    deadline = asyncio.get_running_loop().time() + GIVE_UP
    while not query(dsn, waiting, (app,)) and not task.done():
        assert asyncio.get_running_loop().time() < deadline, "the statement never waited"
        await asyncio.sleep(0.01)
    await asyncio.sleep(2 * CONNECT)
    return task


def _opened_as(app: str, dsn: str, schema: str) -> AbstractAsyncContextManager[PostgresStore]:
    """A store whose sessions are named ``app`` (to find them in ``pg_stat_activity``),
    with a short ``connect_timeout`` and a long ``command_timeout``."""
    return opened(
        f"{dsn}?application_name={app}", schema, connect_timeout=CONNECT, command_timeout=GIVE_UP
    )


@pytest.mark.asyncio
async def test_a_read_slower_than_connect_timeout_gets_its_answer_within_command_timeout(
    dsn: str, schema: str
) -> None:
    app = f"sk_ct_read_{schema}"
    async with _opened_as(app, dsn, schema) as store:
        await SagaOrchestrator(store).execute(ct_two(), saga_id="ct-read")
        async with _table_locked(dsn, schema):
            counting = await _waited_past_connect_timeout(dsn, app, store.history_count())
            assert not counting.done()  # still waiting, not given up on
        assert await counting == 1


@pytest.mark.asyncio
async def test_a_saga_whose_writes_wait_past_connect_timeout_completes(
    dsn: str, schema: str
) -> None:
    app = f"sk_ct_write_{schema}"
    async with _opened_as(app, dsn, schema) as store:
        async with _table_locked(dsn, schema):
            running = await _waited_past_connect_timeout(
                dsn, app, SagaOrchestrator(store).execute(ct_two(), saga_id="ct-write")
            )
            assert not running.done()
        assert await running == [0, 1]
        found = await store.get("ct-write")
    assert found is not None
    assert found.status is SagaStatus.COMPLETED


@pytest.mark.asyncio
async def test_a_statement_given_up_on_names_command_timeout(dsn: str, schema: str) -> None:
    # Regression: a statement slower than the answer's bound was given up on as a lost
    # connection, and the error said "no answer within 0.3 s (connect_timeout) ...": the
    # only way to let a slow statement finish was a longer wait for the server too.
    # Given up on once (the tries' deadline passed meanwhile), it is not told as a server
    # unreachable for connect_timeout either.
    async with opened(dsn, schema, connect_timeout=CONNECT) as store, _table_locked(dsn, schema):
        with pytest.raises(StoreError) as raised:
            await store.history_count()
    message = str(raised.value)
    assert "no answer within 0.3 s (command_timeout)" in message
    assert "give the store a longer command_timeout" in message
    assert "no connection to the server" not in message


def test_command_timeout_defaults_to_connect_timeout() -> None:
    assert PostgresStore("postgresql://localhost/x").command_timeout == 10.0
    assert PostgresStore("postgresql://localhost/x", connect_timeout=3).command_timeout == 3.0
    store = PostgresStore("postgresql://localhost/x", connect_timeout=3, command_timeout=120)
    assert (store.connect_timeout, store.command_timeout) == (3.0, 120.0)
