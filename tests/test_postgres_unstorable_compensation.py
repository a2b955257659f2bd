"""A compensation whose result cannot be stored, on PostgreSQL.

docs/durability.md: "A *compensation* whose result cannot be stored is still recorded
as done, with the reason in its record's ``error`` [...]: it did run, and running it
twice is worse than losing its return value." The SQLite store does this
(tests/test_sqlite_store.py::test_an_unstorable_compensation_result_still_records_
the_compensation); PostgresStore must too.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pg_helpers.db import dsn_or_skip, fresh_schema
from sagakit import (
    PostgresStore,
    SagaOrchestrator,
    SagaStatus,
    StepFailed,
    StepStatus,
    saga,
    step,
)

UNDONE: list[str] = []


class Opaque:
    """Not serializable by JsonSerializer."""


@step
async def unstorable_reserve(n: int) -> str:
    return f"reserved {n}"


@unstorable_reserve.compensate
async def unstorable_release(result: str, n: int) -> str:
    UNDONE.append(f"release {n}")
    return f"released {n}"


@step
async def unstorable_charge(n: int) -> str:
    return f"charged {n}"


@unstorable_charge.compensate
async def unstorable_refund(result: str, n: int) -> Opaque:
    UNDONE.append(f"refund {n}")
    return Opaque()  # the refund happened; its receipt cannot be stored


@step
async def unstorable_ship(n: int) -> None:
    raise ValueError("cannot ship")


@saga
def unstorable_order(n: int):  # type: ignore[no-untyped-def]
    yield unstorable_reserve(n)
    yield unstorable_charge(n)
    yield unstorable_ship(n)


@pytest.fixture
def dsn() -> str:
    return dsn_or_skip()


@pytest.fixture
def schema(dsn: str) -> Iterator[str]:
    yield from fresh_schema(dsn)


@pytest.mark.asyncio
async def test_pg_unstorable_compensation_result_is_recorded_and_the_rest_still_compensate(
    dsn: str, schema: str
) -> None:
    UNDONE.clear()
    store = PostgresStore(dsn, schema=schema)
    async with SagaOrchestrator(store) as orchestrator:
        # The saga failed at 'ship': the caller must get StepFailed, as with SQLite.
        with pytest.raises(StepFailed):
            await orchestrator.execute(unstorable_order(1), saga_id="order-1")
        meta = await orchestrator.get_saga("order-1")
    # Every compensation ran: 'release' must not be skipped because the refund's
    # receipt could not be serialized.
    assert UNDONE == ["refund 1", "release 1"]
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    by_name = {c.name: c for c in meta.compensations}
    assert by_name["unstorable_charge"].status is StepStatus.COMPLETED
    assert by_name["unstorable_reserve"].status is StepStatus.COMPLETED
    assert by_name["unstorable_charge"].error is not None
    assert by_name["unstorable_charge"].error.startswith("result not stored: ")
    assert by_name["unstorable_reserve"].error is None
