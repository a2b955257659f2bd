"""A step that runs several inner sagas at once (a fan-out), in an ``asyncio.TaskGroup``
or with ``asyncio.gather``: failures, and a simulated crash inside one of them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from pg_helpers.db import query
from sagakit import (
    PostgresStore,
    SagaOrchestrator,
    SagaStatus,
    StepFailed,
    current_step,
    saga,
    step,
)
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

effects: list[str] = []


@step
async def fo_hold(item: str) -> str:
    effects.append(f"hold {item}")
    return f"held-{item}"


@fo_hold.compensate
async def fo_release(item: str) -> None:
    effects.append(f"release {item}")


@step
async def fo_ship(item: str) -> str:
    effects.append(f"ship {item}")
    return f"shipped-{item}"


@saga
def fo_parcel(item: str) -> Any:
    yield fo_hold(item)
    yield fo_ship(item)


def _inner_id(number: int) -> str:
    context = current_step()
    assert context is not None
    return f"{context.idempotency_key}/parcel-{number}"


@step
async def fo_ship_all(items: list[str]) -> list[list[Any]]:
    """Each parcel an inner saga, all at once, in a TaskGroup."""
    context = current_step()
    assert context is not None
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(context.orchestrator.execute(fo_parcel(item), saga_id=_inner_id(n)))
            for n, item in enumerate(items)
        ]
    return [task.result() for task in tasks]


@saga
def fo_order(items: list[str]) -> Any:
    yield fo_hold("order")
    yield fo_ship_all(items)


@pytest.fixture(autouse=True)
def _clear() -> None:
    effects.clear()


@pytest.mark.asyncio
async def test_a_crash_inside_one_inner_saga_of_a_task_group_stops_the_outer_saga_too(
    durable_store: Callable[[], Any],
) -> None:
    # Regression: the TaskGroup wrapped the SimulatedCrash in a BaseExceptionGroup, which
    # the outer saga took for a KeyboardInterrupt-like stop: it recorded itself FAILED
    # (nothing compensated, left for `sagakit resolve`) instead of stopping unrecorded as
    # a killed process does, and execute() raised the group, not the SimulatedCrash.
    store = durable_store()
    orchestrator = SagaOrchestrator(store)
    with FaultInjector().crash(fo_ship, after=True), pytest.raises(SimulatedCrash):
        await orchestrator.execute(fo_order(["a", "b"]), saga_id="fan-1")
    outer = await orchestrator.get_saga("fan-1")
    assert outer is not None
    assert outer.status is SagaStatus.EXECUTING  # as the crash left it, for recovery
    assert [record.status for record in outer.steps] == ["completed", "running"]
    await simulate_restart(store)
    await orchestrator.close()

    effects.clear()
    async with SagaOrchestrator(durable_store()) as restarted:
        outcomes = {o.saga_id: o.status for o in await restarted.recover()}
        assert outcomes["fan-1"] is SagaStatus.COMPLETED
        outer = await restarted.get_saga("fan-1")
        assert outer is not None
        assert outer.steps[1].events == (["held-a", "shipped-a"], ["held-b", "shipped-b"])
        for number in (0, 1):
            inner = await restarted.get_saga(f"fan-1:1/parcel-{number}")
            assert inner is not None
            assert inner.status is SagaStatus.COMPLETED
        assert await restarted.recover() == []
    assert "hold order" not in effects  # the outer saga's completed step is not run again
    assert "release order" not in effects


@step
async def fo_refund(item: str) -> str:
    effects.append(f"refund {item}")
    return f"refunded-{item}"


@saga
def fo_return(item: str) -> Any:
    yield fo_refund(item)


@step
async def fo_book(items: list[str]) -> None:
    effects.append("book")


@fo_book.compensate
async def fo_unbook(items: list[str]) -> None:
    """Each item's return an inner saga, all at once, in a TaskGroup."""
    context = current_step()
    assert context is not None
    async with asyncio.TaskGroup() as group:
        for item in items:
            inner = fo_return(item)
            group.create_task(
                context.orchestrator.execute(inner, saga_id=f"{_inner_id(0)}-return-{item}")
            )


@step
async def fo_refuse(items: list[str]) -> None:
    raise LookupError("no courier")


@saga
def fo_booking(items: list[str]) -> Any:
    yield fo_book(items)
    yield fo_refuse(items)


@pytest.mark.asyncio
async def test_a_crash_inside_an_inner_saga_a_compensation_fans_out_leaves_it_compensating(
    durable_store: Callable[[], Any],
) -> None:
    store = durable_store()
    orchestrator = SagaOrchestrator(store)
    with FaultInjector().crash(fo_refund, after=True), pytest.raises(SimulatedCrash):
        await orchestrator.execute(fo_booking(["a", "b"]), saga_id="fan-2")
    outer = await orchestrator.get_saga("fan-2")
    assert outer is not None
    assert outer.status is SagaStatus.COMPENSATING  # as the crash left it, for recovery
    assert [record.status for record in outer.compensations] == ["running"]
    await simulate_restart(store)
    await orchestrator.close()

    async with SagaOrchestrator(durable_store()) as restarted:
        outcomes = {o.saga_id: o.status for o in await restarted.recover()}
        assert outcomes["fan-2"] is SagaStatus.COMPENSATED
        for item in ("a", "b"):
            inner = await restarted.get_saga(f"fan-2:0/parcel-0-return-{item}")
            assert inner is not None
            assert inner.status is SagaStatus.COMPLETED
        assert await restarted.recover() == []


@step
async def fo_pack(item: str) -> str:
    if item == "broken":
        raise ValueError(f"cannot pack {item}")
    effects.append(f"pack {item}")
    return f"packed-{item}"


@saga
def fo_packing(item: str) -> Any:
    yield fo_hold(item)
    yield fo_pack(item)


@step(compensate_on_failure=True)
async def fo_pack_all(items: list[str]) -> list[Any]:
    """As docs/durability.md shows: gather, every inner saga to its end, then one failure."""
    context = current_step()
    assert context is not None
    results = await asyncio.gather(
        *(
            context.orchestrator.execute(fo_packing(item), saga_id=_inner_id(n))
            for n, item in enumerate(items)
        ),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


@fo_pack_all.compensate
async def fo_unpack_all(items: list[str]) -> None:
    effects.append(f"unpack {', '.join(items)}")


@saga
def fo_shipment(items: list[str]) -> Any:
    yield fo_hold("order")
    yield fo_pack_all(items)


@pytest.mark.asyncio
async def test_inner_sagas_gathered_by_a_step_fail_it_as_a_step_failure() -> None:
    # The fan-out docs/durability.md recommends: a failed inner saga fails the step (not a
    # CancelledError, as an asyncio.TaskGroup gives on Python < 3.12.3), the other inner
    # sagas run to their end, and the step's compensation (compensate_on_failure) runs.
    async with SagaOrchestrator() as orchestrator:
        with pytest.raises(StepFailed) as failed:
            await orchestrator.execute(fo_shipment(["a", "broken", "b"]), saga_id="fan-3")
        assert failed.value.step_name == "fo_pack_all"
        assert isinstance(failed.value.error, StepFailed)  # the inner saga's
        statuses = []
        for number in range(3):
            inner = await orchestrator.get_saga(f"fan-3:1/parcel-{number}")
            assert inner is not None
            statuses.append(inner.status)
        assert statuses == ["completed", "compensated", "completed"]
        outer = await orchestrator.get_saga("fan-3")
        assert outer is not None
        assert outer.status is SagaStatus.COMPENSATED
    assert effects[-2:] == ["unpack a, broken, b", "release order"]


async def _two_parcels_in_a_task_group(store: PostgresStore) -> None:
    async with SagaOrchestrator(store) as orchestrator, asyncio.TaskGroup() as group:
        for item in ("a", "b"):
            group.create_task(orchestrator.execute(fo_parcel(item), saga_id=f"tg-{item}"))


@pytest.mark.asyncio
async def test_a_crash_leaving_an_orchestrator_block_in_a_task_group_gives_up_leases_as_a_crash(
    dsn: str, schema: str
) -> None:
    # Regression: sagas run at once in a TaskGroup inside `async with SagaOrchestrator(...)`
    # left the block with the crash wrapped in a BaseExceptionGroup, and the store gave
    # its leases up as a shutdown's, not a crash's: the next claim was not counted as a
    # recovery attempt, as it is after the same crash of one saga.
    with FaultInjector().crash(fo_ship, after=True), pytest.raises(BaseExceptionGroup) as left:
        await _two_parcels_in_a_task_group(PostgresStore(dsn, schema=schema))
    assert left.value.subgroup(SimulatedCrash) is not None
    async with SagaOrchestrator(PostgresStore(dsn, schema=schema)) as restarted:
        outcomes = await restarted.recover()
        assert [o.saga_id for o in outcomes] == ["tg-a"]  # tg-b was cancelled: compensated
    attempts = f'SELECT recovery_attempts FROM "{schema}".sagas WHERE saga_id = %s'
    assert query(dsn, attempts, ("tg-a",)) == [(1,)]
