"""PostgreSQL: the order a saga's records are listed in (``steps.start_order``) is counted
by the store that owns the saga, not read from the log at every start.

Every start read the saga's highest ``start_order`` (all of the saga's records), so a
long saga's steps got slower as it grew. The work is counted here, not timed: every
batch of writes is sent with a read of the rows the server fetched from ``steps``
before and after it (``pg_stat_xact_user_tables``, the backend's own counters, read
in the same statement).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest

from pg_helpers.db import expire, opened, query
from sagakit import (
    LeaseLost,
    PostgresStore,
    Retry,
    SagaOrchestrator,
    SagaStatus,
    StepFailed,
    saga,
    step,
)
from sagakit.stores._pg_writer import Write
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

GATES: dict[int, asyncio.Event] = {}
ENTERED: dict[int, asyncio.Event] = {}


@step
async def numbered(n: int) -> int:
    gate = GATES.get(n)
    if gate is not None:
        ENTERED[n].set()
        await gate.wait()
    return n


@numbered.compensate
async def unnumbered(result: int, n: int) -> None:
    pass


@step
async def refused(n: int) -> None:
    raise ValueError(f"refused {n}")


@saga
def pg_numbered_steps(count: int):  # type: ignore[no-untyped-def]
    for n in range(count):
        yield numbered(n)


@saga
def pg_numbered_then_refused(count: int):  # type: ignore[no-untyped-def]
    for n in range(count):
        yield numbered(n)
    yield refused(count)


@pytest.fixture(autouse=True)
def _reset() -> None:
    GATES.clear()
    ENTERED.clear()


def count_reads(store: PostgresStore) -> list[int]:
    """The rows of ``steps`` the server fetches for each batch ``store`` sends, from now on."""
    fetched = (
        "(SELECT (coalesce(sum(seq_tup_read), 0) + coalesce(sum(idx_tup_fetch), 0))::text "
        f"FROM pg_stat_xact_user_tables WHERE schemaname = '{store.schema}' "
        "AND relname = 'steps')"
    )
    apply = store._sql.apply
    store._sql = dataclasses.replace(
        store._sql,
        apply=f"SELECT '<', {fetched} UNION ALL ({apply}) UNION ALL SELECT '>', {fetched}",
    )
    reads: list[int] = []
    send = store._writer._send

    async def counting(writes: list[Write]) -> dict[str, str]:
        refused = await send(writes)
        reads.append(int(refused.pop(">")) - int(refused.pop("<")))
        return refused

    store._writer._send = counting
    return reads


def start_orders(dsn: str, schema: str, saga_id: str) -> list[tuple[bool, int, int]]:
    return [
        (comp, index, order)
        for comp, index, order in query(
            dsn,
            f'SELECT compensation, step_index, start_order FROM "{schema}".steps '
            "WHERE saga_id = %s ORDER BY start_order",
            (saga_id,),
        )
    ]


def listed(records: Sequence[Any]) -> list[int]:
    return [record.index for record in records]


@pytest.mark.asyncio
async def test_a_long_sagas_step_starts_do_not_read_all_its_records(dsn: str, schema: str) -> None:
    # Each start read the saga's highest start_order: the rows fetched per step grew
    # with the saga (the 390th step read ~390 rows; a 3,000-step saga's last steps ran
    # ~1.5x slower than its first).
    async with opened(dsn, schema) as store:
        reads = count_reads(store)
        await SagaOrchestrator(store).execute(pg_numbered_steps(400), saga_id="long")
        meta = await store.get("long")
    assert meta is not None
    assert meta.steps_executed == 400
    assert len(reads) == 401  # a start per step (with the completion before it), the end
    assert max(reads[370:390]) <= max(reads[10:30]) <= 2, reads[370:390]
    # ...and the records are still numbered in the order they started, 1, 2, ...
    assert start_orders(dsn, schema, "long") == [(False, n, n + 1) for n in range(400)]


@pytest.mark.asyncio
async def test_a_generated_id_and_compensations_are_counted_too(dsn: str, schema: str) -> None:
    async with opened(dsn, schema) as store:
        reads = count_reads(store)
        with pytest.raises(StepFailed) as failed:
            await SagaOrchestrator(store).execute(pg_numbered_then_refused(40))
        saga_id = failed.value.saga_id
        meta = await store.get(saga_id)
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert listed(meta.compensations) == list(range(39, -1, -1))
    assert max(reads) <= 2, reads
    steps = [(False, n, n + 1) for n in range(41)]
    undone = [(True, n, 41 + 40 - n) for n in range(39, -1, -1)]
    assert start_orders(dsn, schema, saga_id) == steps + undone


@pytest.mark.asyncio
async def test_a_claimed_saga_counts_on_from_the_logs_highest(dsn: str, schema: str) -> None:
    # The claim reads where the saga's count stands; a compensation recovery runs
    # again is listed after those that ran before the crash.
    async with opened(dsn, schema) as first:
        faults = FaultInjector().crash(numbered, compensation=True, index=2)
        orchestrator = SagaOrchestrator(first, compensation_retry=Retry(attempts=1))
        with faults, pytest.raises(SimulatedCrash):
            await orchestrator.execute(pg_numbered_then_refused(5), saga_id="crashed")
        await simulate_restart(first)
    assert start_orders(dsn, schema, "crashed")[-3:] == [(True, 4, 7), (True, 3, 8), (True, 2, 9)]

    async with opened(dsn, schema) as second:
        reads = count_reads(second)
        [outcome] = await SagaOrchestrator(second).recover()
        assert outcome.status is SagaStatus.COMPENSATED
        meta = await second.get("crashed")
    assert meta is not None
    assert listed(meta.compensations) == [4, 3, 2, 1, 0]
    assert max(reads) <= 2, reads
    assert start_orders(dsn, schema, "crashed")[-5:] == [
        (True, 4, 7), (True, 3, 8), (True, 2, 10), (True, 1, 11), (True, 0, 12)
    ]  # fmt: skip


@pytest.mark.asyncio
async def test_a_saga_taken_over_counts_on_from_what_its_former_owner_wrote(
    dsn: str, schema: str
) -> None:
    # The former owner's count is stale once another worker claims the saga, and its
    # writes are fenced out: they must not matter to the new owner's order.
    gate = GATES[2] = asyncio.Event()
    ENTERED[2] = asyncio.Event()
    async with opened(dsn, schema) as paused, opened(dsn, schema) as other:
        running = asyncio.create_task(
            SagaOrchestrator(paused).execute(pg_numbered_steps(4), saga_id="taken")
        )
        await asyncio.wait_for(ENTERED[2].wait(), 30)
        expire(dsn, schema, "taken")
        del GATES[2]  # the new owner runs step 2 again at once
        [outcome] = await SagaOrchestrator(other).recover()
        assert outcome.status is SagaStatus.COMPLETED
        gate.set()  # the paused run wakes up: its next write is refused
        with pytest.raises(LeaseLost):
            await asyncio.wait_for(running, 30)
        meta = await other.get("taken")
    assert meta is not None
    assert meta.status is SagaStatus.COMPLETED
    assert start_orders(dsn, schema, "taken") == [
        (False, 0, 1), (False, 1, 2), (False, 2, 4), (False, 3, 5)
    ]  # fmt: skip


@pytest.mark.asyncio
async def test_sagas_batched_together_each_count_their_own_starts(dsn: str, schema: str) -> None:
    async with opened(dsn, schema) as store:
        reads = count_reads(store)
        orchestrator = SagaOrchestrator(store)
        ran = await asyncio.gather(
            *(
                orchestrator.execute(pg_numbered_then_refused(20), saga_id=f"s{n}")
                for n in range(30)
            ),
            return_exceptions=True,
        )
        assert all(isinstance(outcome, StepFailed) for outcome in ran)
        assert store.stats.batches < 30 * 42  # the writes did share statements
        for n in range(30):
            meta = await store.get(f"s{n}")
            assert meta is not None
            assert listed(meta.compensations) == list(range(19, -1, -1))
    assert max(reads) <= 2 * 30, reads
    steps = [(False, i, i + 1) for i in range(21)]
    undone = [(True, i, 21 + 20 - i) for i in range(19, -1, -1)]
    for n in range(30):
        assert start_orders(dsn, schema, f"s{n}") == steps + undone
