"""A saga given back unrun, then parked: the same count and reason on every durable store.

A stopping worker (or a cancelled ``recover()``) gives back the sagas its claim returned
and it will not run (``give_back()``): no run of them was made, so that claim is no
recovery attempt. A saga given back and later parked after too many recovery attempts
must show the attempts that were made (``DeadLetter.recovery_attempts``, ``sagakit show``
and ``dead-letters``) and the same reason, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from sagakit import SagaOrchestrator, SagaStatus, saga, step
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

pytestmark = pytest.mark.asyncio

HOLDING: dict[str, asyncio.Event] = {}  # "started": set as gbdl_ship starts, then it hangs


@step
async def gbdl_reserve(key: str) -> str:
    return f"reserved {key}"


@step
async def gbdl_ship(key: str) -> str:
    started = HOLDING.pop("started", None)
    if started is not None:
        started.set()
        await asyncio.Event().wait()  # until its worker stops
    return f"shipped {key}"


@saga
def gbdl_order(key: str):  # type: ignore[no-untyped-def]
    yield gbdl_reserve(key)
    yield gbdl_ship(key)


def _reason(attempts: int, limit: int) -> str:
    return (
        f"none of its {attempts} recovery attempt{'s' * (attempts != 1)} finished it: "
        f"each time its process died or was stopped (max_attempts={limit})"
    )


async def _orphan(durable_store: Callable[..., Any], key: str) -> None:
    """Leave ``key``'s saga running at ``gbdl_ship``, its process dead (no attempt yet)."""
    store = durable_store()
    with FaultInjector().crash(gbdl_ship), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).execute(gbdl_order(key), saga_id=key)
    await simulate_restart(store)
    await store.close()


async def _given_back(durable_store: Callable[..., Any], key: str) -> int:
    """A worker claims ``key`` and, stopping, gives it back unrun; the claim's count."""
    store = durable_store()
    try:
        [orphan] = await store.claim_orphans(saga_ids=[key], max_attempts=10)
        assert await store.give_back([key]) == 1
    finally:
        await store.close()
    return int(orphan.recovery_attempts)


async def _recovery_dies(durable_store: Callable[..., Any], key: str) -> None:
    """A recovery resumes ``key`` and its process dies in ``gbdl_ship`` again."""
    store = durable_store()
    with FaultInjector().crash(gbdl_ship), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).recover(max_attempts=3)
    await simulate_restart(store)
    await store.close()


async def _parked(durable_store: Callable[..., Any], key: str) -> tuple[int, str]:
    """The last recovery parks ``key``: its dead letter's count and reason, as stored."""
    store = durable_store()
    try:
        outcomes = await SagaOrchestrator(store).recover(max_attempts=3)
        assert outcomes == []  # parked by the claim: no run of it was made
        [letter] = await store.dead_letters()
        meta = await store.get(key)
    finally:
        await store.close()
    assert letter.saga_id == key
    assert meta is not None
    assert meta.status is SagaStatus.EXECUTING
    assert meta.dead_letter == letter.reason
    return letter.recovery_attempts, letter.reason


async def test_a_saga_given_back_before_its_first_attempt_is_parked_after_three(
    durable_store: Callable[..., Any],
) -> None:
    await _orphan(durable_store, "gbdl-1")
    assert await _given_back(durable_store, "gbdl-1") == 1  # the claim counted, then undone
    for _ in range(3):
        await _recovery_dies(durable_store, "gbdl-1")
    assert await _parked(durable_store, "gbdl-1") == (3, _reason(3, 3))


async def test_a_saga_given_back_between_attempts_is_parked_after_three(
    durable_store: Callable[..., Any],
) -> None:
    await _orphan(durable_store, "gbdl-2")
    await _recovery_dies(durable_store, "gbdl-2")  # attempt 1
    assert await _given_back(durable_store, "gbdl-2") == 2  # no attempt: nothing ran
    assert await _given_back(durable_store, "gbdl-2") == 2  # nor twice
    await _recovery_dies(durable_store, "gbdl-2")  # attempt 2
    await _recovery_dies(durable_store, "gbdl-2")  # attempt 3
    assert await _parked(durable_store, "gbdl-2") == (3, _reason(3, 3))


async def test_postgres_a_handover_given_back_is_parked_after_three_more(
    dsn: str, schema: str
) -> None:
    # A stopping worker releases the lease of the saga it runs (an orderly handover: the
    # next claim counts no attempt); a claim of it given back unrun neither counts one
    # nor resets the count the worker's own claim made.
    from sagakit import PostgresStore

    def make_store() -> PostgresStore:
        return PostgresStore(dsn, schema=schema)

    await _orphan(make_store, "gbdl-3")
    store = make_store()
    HOLDING["started"] = started = asyncio.Event()
    stop = asyncio.Event()
    worker = asyncio.create_task(
        SagaOrchestrator(store).run_worker(poll_interval=0.01, handle_signals=False, stop=stop)
    )
    try:
        await started.wait()  # its claim counted attempt 1
    finally:
        stop.set()  # the worker releases the lease and stops the saga
        await worker
        await store.close()
    claimer = make_store()
    try:
        [orphan] = await claimer.claim_orphans(saga_ids=["gbdl-3"])
        assert (orphan.recovery_attempts, orphan.released) == (1, True)
        assert await claimer.give_back(["gbdl-3"]) == 1
    finally:
        await claimer.close()
    for _ in range(3):  # attempts 1 (the handover's), 2 and 3
        await _recovery_dies(make_store, "gbdl-3")
    assert await _parked(make_store, "gbdl-3") == (3, _reason(3, 3))
