"""PostgreSQL: a write the role's ``statement_timeout`` cancelled says so, and the fix.

Another session holds the saga's row (an operator's ``SELECT ... FOR UPDATE`` left
open) past the 100 ms ``statement_timeout`` the store's connections are given; every
write of the saga waits for the row and is cancelled by the server.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

import pytest

from pg_helpers.db import opened
from sagakit import SagaOrchestrator, StoreError, saga, step

pytestmark = pytest.mark.asyncio

GATE: dict[str, asyncio.Event] = {}


@step
async def st_hold(n: int) -> int:
    if "entered" in GATE:
        GATE["entered"].set()
        await GATE["go"].wait()
    return n


@st_hold.compensate
async def st_unhold(result: int, n: int) -> None:
    return None


@saga
def st_two():  # type: ignore[no-untyped-def]
    yield st_hold(0)
    yield st_hold(1)


def _with_statement_timeout(dsn: str, ms: int) -> str:
    parts = urlsplit(dsn)
    option = f"options=-c%20statement_timeout%3D{ms}"
    query = f"{parts.query}&{option}" if parts.query else option
    return urlunsplit(parts._replace(query=query))


async def test_a_write_cancelled_by_statement_timeout_names_it_and_the_fix(
    dsn: str, schema: str
) -> None:
    # The error said "cannot write the saga log to PostgreSQL: Rejected: PostgreSQL saga
    # log (...): QueryCanceled: canceling statement due to statement timeout": an internal
    # class name, and nothing about what to change.
    psycopg = pytest.importorskip("psycopg")
    GATE.update(entered=asyncio.Event(), go=asyncio.Event())
    async with opened(_with_statement_timeout(dsn, 100), schema) as store:
        run = asyncio.create_task(SagaOrchestrator(store).execute(st_two(), saga_id="st-1"))
        await GATE["entered"].wait()
        locker = await psycopg.AsyncConnection.connect(dsn)
        try:
            await locker.execute(
                f'SELECT 1 FROM "{schema}".sagas WHERE saga_id = %s FOR UPDATE', ("st-1",)
            )
            GATE["go"].set()
            with pytest.raises(StoreError) as raised:
                await run
        finally:
            await locker.rollback()
            await locker.close()
            GATE.clear()
    message = str(raised.value)
    assert "statement timeout" in message
    assert "Rejected" not in message
    assert "statement_timeout" in message  # the setting to change, and how
    assert "SET statement_timeout" in message
