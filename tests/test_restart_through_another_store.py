"""simulate_restart() given another store object on the crashed store's log.

docs/testing.md says to use a new store object for the "restarted process"; a test
then naturally restarts through that one. On SQLite that worked (the claim is in the
file, which any store of it releases), but on PostgreSQL the leases are the crashed
store object's own (its owner), and simulate_restart() of another store released
nothing: ``recover()`` missed the crashed saga until its lease ran out (30 s).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sagakit import PostgresStore, SagaOrchestrator, SagaStatus, saga, step
from sagakit.testing import simulate_restart
from store_helpers.restarting import crash_in, crashed_and_restarted

ran: list[str] = []


@step
async def rta_book(name: str) -> str:
    ran.append(f"book {name}")
    return name


@step
async def rta_pay(name: str) -> str:
    ran.append(f"pay {name}")
    return name


@saga
def rta_trip(name: str):  # type: ignore[no-untyped-def]
    yield rta_book(name)
    yield rta_pay(name)


@pytest.mark.asyncio
@pytest.mark.parametrize("process", [False, True], ids=["saga", "process"])
async def test_simulate_restart_through_a_new_store_on_the_log_restarts_the_crashed_one(
    durable_store: Callable[[], Any], process: bool
) -> None:
    ran.clear()
    async with crashed_and_restarted(durable_store) as (crashed, restarted):
        await crash_in(crashed, rta_pay, rta_trip("t"), "rta-1", process=process)
        await simulate_restart(restarted)  # the new "process", not the crashed one
        outcomes = await SagaOrchestrator(restarted).recover()
        assert [(o.saga_id, o.status) for o in outcomes] == [("rta-1", SagaStatus.COMPLETED)]
        assert ran == ["book t", "pay t"]  # (pay never ran before the crash)
        if isinstance(crashed, PostgresStore):  # its leases given up as a crash's
            assert not crashed.owns("rta-1")


@pytest.mark.asyncio
async def test_a_crashed_store_on_another_log_is_left_crashed(dsn: str, schema: str) -> None:
    # Only the crashed stores on the given store's log (its dsn and schema) restart: one
    # on another schema keeps its leases (and its crash) until it is restarted itself.
    from pg_helpers.db import fresh_schema

    ran.clear()
    schemas = fresh_schema(dsn)
    other_schema = next(schemas)
    crashed = PostgresStore(dsn, schema=schema)
    elsewhere = PostgresStore(dsn, schema=other_schema)
    try:
        await crash_in(crashed, rta_pay, rta_trip("u"), "rta-2")
        await simulate_restart(elsewhere)
        assert crashed.owns("rta-2")  # not this log's: left alone
        await simulate_restart(crashed)
        assert not crashed.owns("rta-2")
    finally:
        await elsewhere.close()
        await crashed.close()
        for _ in schemas:  # drops the other schema
            pass
