"""A claim of orphans that swallows the cancellation of ``recover()`` (or of a worker) and
returns an orphan all the same: the orphan is given back unrun, and the cancellation raised.

Regression: ``recover()`` ran the orphan the claim returned to its end (its steps too) before
raising the ``CancelledError``; a worker on SQLite did the same in its shutdown. And giving it
back must not count a recovery attempt: no run of it was made.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from sagakit import SagaDefinitionError, SagaOrchestrator, SagaStatus, saga, step
from sagakit.stores import MemoryStore
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

ran: list[str] = []


@step
async def gb_book(order: str) -> str:
    ran.append(f"book {order}")
    return order


@step
async def gb_ship(order: str) -> str:
    ran.append(f"ship {order}")
    return order


@saga
def gb_order(order: str) -> Any:
    yield gb_book(order)
    yield gb_ship(order)


async def _orphan(durable_store: Callable[..., Any]) -> None:
    store = durable_store()
    with FaultInjector().crash(gb_ship), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).execute(gb_order("o1"), saga_id="o1")
    await simulate_restart(store)
    await store.close()
    ran.clear()


def _swallowing(store: Any) -> asyncio.Event:
    """Make the store's next claim swallow its caller's cancellation, then claim."""
    claim = store.claim_orphans
    claiming = asyncio.Event()

    async def swallowing_claim(**options: Any) -> Any:
        store.claim_orphans = claim
        claiming.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        return await claim(**options)

    store.claim_orphans = swallowing_claim
    return claiming


async def _cancelled(task: asyncio.Task[Any], claiming: asyncio.Event) -> None:
    await claiming.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10.0)  # a guard, not a timing check
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        pytest.fail(f"the cancelled recovery ran on: {ran}")
    assert task.cancelled(), task


async def _recovered_once_more(durable_store: Callable[..., Any]) -> None:
    # Another process (on PostgreSQL: another worker, before the lease would run out)
    # takes it at once, and the given-back claim did not count: one attempt allowed.
    async with SagaOrchestrator(durable_store()) as other:
        outcomes = await other.recover(max_attempts=1)
        assert [(o.saga_id, o.action, o.status) for o in outcomes] == [
            ("o1", "resumed", SagaStatus.COMPLETED)
        ]
        assert await other.store.dead_letters() == []
    assert ran == ["ship o1"]


@pytest.mark.asyncio
@pytest.mark.parametrize("on_start", [False, True], ids=["recover", "recover_on_start"])
async def test_a_cancelled_recover_gives_back_what_a_swallowing_claim_returned(
    durable_store: Callable[..., Any], on_start: bool
) -> None:
    await _orphan(durable_store)
    store = durable_store()
    claiming = _swallowing(store)
    went_on: list[str] = []

    async def recovering() -> None:
        orchestrator = SagaOrchestrator(store, recover_on_start=on_start)
        if on_start:
            async with orchestrator:
                went_on.append("the block ran")
        else:
            went_on.append(repr(await orchestrator.recover()))

    await _cancelled(asyncio.create_task(recovering()), claiming)
    assert went_on == []
    assert ran == []  # no step of the orphan ran
    await store.close()  # (recover_on_start: closed by its `async with` already)
    reading = durable_store()
    found = await reading.get("o1")
    await reading.close()
    assert found is not None
    assert found.status is SagaStatus.EXECUTING
    await _recovered_once_more(durable_store)


@pytest.mark.asyncio
async def test_a_cancelled_worker_gives_back_what_a_swallowing_claim_returned(
    durable_store: Callable[..., Any],
) -> None:
    await _orphan(durable_store)
    store = durable_store()
    claiming = _swallowing(store)
    orchestrator = SagaOrchestrator(store)
    worker = asyncio.create_task(orchestrator.run_worker(poll_interval=0.01, handle_signals=False))
    await _cancelled(worker, claiming)
    assert ran == []
    await store.close()
    await _recovered_once_more(durable_store)


@pytest.mark.asyncio
async def test_the_same_store_recovers_what_it_gave_back(
    durable_store: Callable[..., Any],
) -> None:
    await _orphan(durable_store)
    async with SagaOrchestrator(durable_store()) as orchestrator:
        claiming = _swallowing(orchestrator.store)
        await _cancelled(asyncio.create_task(orchestrator.recover()), claiming)
        outcomes = await orchestrator.recover(max_attempts=1)
    assert [(o.saga_id, o.status) for o in outcomes] == [("o1", SagaStatus.COMPLETED)]
    assert ran == ["ship o1"]


@pytest.mark.asyncio
async def test_a_store_keeps_nothing_of_the_sagas_it_gave_back(
    durable_store: Callable[..., Any],
) -> None:
    # Regression: PostgresStore kept each given-back id (as released, to refuse its
    # writes) for as long as it lived, though no run of it was made here to write: a
    # long-running worker's store grew with every claim a cancellation gave back.
    await _orphan(durable_store)
    store = durable_store()
    try:
        orphans = await store.claim_orphans()
        assert await store.give_back([orphan.saga_id for orphan in orphans]) == 1
        kept = [
            name
            for name, value in vars(store).items()
            if isinstance(value, dict | set) and "o1" in value
        ]
        assert kept == []
    finally:
        await store.close()
    await _recovered_once_more(durable_store)


@pytest.mark.asyncio
async def test_give_back_leaves_sagas_it_did_not_claim_alone(
    durable_store: Callable[..., Any],
) -> None:
    await _orphan(durable_store)
    store = durable_store()
    assert await store.give_back(["o1", "unknown"]) == 0  # not claimed by this store
    orphans = await store.claim_orphans(names={"gb_order"})
    assert [o.saga_id for o in orphans] == ["o1"]
    assert await store.give_back(["o1", "o1"]) == 1
    assert await store.give_back(["o1"]) == 0  # given back already
    again = await store.claim_orphans(names={"gb_order"}, max_attempts=1)
    assert [(o.saga_id, o.recovery_attempts) for o in again] == [("o1", 1)]
    await store.give_back(["o1"])
    await store.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "ids", ["o1", None, iter(["o1"]), [1]], ids=["string", "none", "iterator", "int"]
)
async def test_give_back_refuses_what_is_no_collection_of_ids(
    durable_store: Callable[..., Any], ids: Any
) -> None:
    store = durable_store()
    try:
        with pytest.raises(SagaDefinitionError, match="give_back"):
            await store.give_back(ids)
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_a_cancelled_execute_of_an_orphan_gives_back_what_a_swallowing_claim_returned(
    durable_store: Callable[..., Any],
) -> None:
    # execute() of an orphan's id adopts it (claims and finishes it, as recovery would).
    # Regression: cancelled while claiming, by a claim that swallowed it, execute() ran the
    # orphan to its end and returned its events as if never cancelled.
    await _orphan(durable_store)
    store = durable_store()
    claiming = _swallowing(store)
    orchestrator = SagaOrchestrator(store)
    task = asyncio.create_task(orchestrator.execute(gb_order("o1"), saga_id="o1"))
    await _cancelled(task, claiming)
    assert ran == []
    await store.close()
    await _recovered_once_more(durable_store)


undoing: asyncio.Event | None = None


@step
async def gb_reserve(order: str) -> str:
    ran.append(f"reserve {order}")
    return order


@gb_reserve.compensate
async def gb_unreserve(order: str) -> None:
    assert undoing is not None
    undoing.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()
    ran.append(f"unreserve {order}")


@saga(recovery="compensate")
def gb_undone_order(order: str) -> Any:
    yield gb_reserve(order)
    yield gb_ship(order)


@pytest.mark.asyncio
async def test_a_cancelled_execute_of_an_orphan_whose_compensation_swallows_it_stops(
    durable_store: Callable[..., Any],
) -> None:
    # Regression: execute() of an orphan's id, cancelled while the adopted orphan's
    # compensation swallowed that cancellation, went on once the orphan was compensated:
    # it ran the compensated id again, from its first step, and returned as if never
    # cancelled.
    global undoing
    undoing = asyncio.Event()
    store = durable_store()
    with FaultInjector().crash(gb_ship), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).execute(gb_undone_order("o2"), saga_id="o2")
    await simulate_restart(store)
    await store.close()
    ran.clear()
    async with SagaOrchestrator(durable_store()) as orchestrator:
        task = asyncio.create_task(orchestrator.execute(gb_undone_order("o2"), saga_id="o2"))
        await _cancelled(task, undoing)
        meta = await orchestrator.get_saga("o2")
    assert ran == ["unreserve o2"]  # compensated to its end, and not run again
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED


@pytest.mark.asyncio
async def test_postgres_gives_back_what_a_claim_cancelled_midway_took(
    dsn: str, schema: str
) -> None:
    # Regression: a claim cancelled once its leases were taken (reading the claimed
    # sagas' steps) let them run out instead: no worker could claim the saga for `lease`
    # seconds, and that claim then counted a recovery attempt, though nobody ran it.
    from sagakit import PostgresStore

    await _orphan(lambda: PostgresStore(dsn, schema=schema))
    store = PostgresStore(dsn, schema=schema)
    run = store._run

    async def cancelled_reading_steps(sql: str, params: Any = None) -> Any:
        found = await run(sql, params)
        if sql == store._sql.claimed_steps:
            raise asyncio.CancelledError
        return found

    store._run = cancelled_reading_steps  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        await store.claim_orphans(names={"gb_order"})
    store._run = run  # type: ignore[method-assign]
    assert not store.owns("o1")
    await store.close()
    await _recovered_once_more(lambda: PostgresStore(dsn, schema=schema))


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["cancelled", "refused"])
async def test_an_orphan_recovery_could_not_park_is_given_back(
    durable_store: Callable[..., Any], how: str
) -> None:
    # Regression: recover() cancelled while it parked an orphan it cannot run (here a
    # builder-form saga), or refused by the log, left that orphan claimed: on SQLite by
    # this live process, which no recovery takes until it exits.
    from sagakit import SagaDefinition, StoreError

    store = durable_store()
    built = SagaDefinition("built").add_step(gb_book("o3")).add_step(gb_ship("o3"))
    with FaultInjector().crash(gb_ship), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).execute(built, saga_id="o3")
    await simulate_restart(store)
    await store.close()

    store = durable_store()
    parking = asyncio.Event()

    async def unparked(saga_id: str, reason: str) -> None:
        parking.set()
        if how == "refused":
            raise StoreError("the log cannot be written")
        await asyncio.Event().wait()

    store.dead_letter = unparked
    task = asyncio.create_task(SagaOrchestrator(store).recover())
    if how == "cancelled":
        await _cancelled(task, parking)
    else:
        with pytest.raises(StoreError):
            await task
    await store.close()
    async with SagaOrchestrator(durable_store()) as other:
        outcomes = await other.recover(max_attempts=1)
        parked = await other.store.dead_letters()
    assert [(o.saga_id, o.action) for o in outcomes] == [("o3", "dead_lettered")]
    assert [letter.saga_id for letter in parked] == ["o3"]


@pytest.mark.asyncio
async def test_a_store_without_give_back_keeps_the_orphan_unrun(
    durable_store: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    # give_back() is optional for a store: without it, the orphan is not run either, and
    # stays this process's until the store sees it gone (as after a crash), which a
    # warning says.
    await _orphan(durable_store)
    store = durable_store()
    store.give_back = None  # as a store of another author, which has none
    claiming = _swallowing(store)
    await _cancelled(asyncio.create_task(SagaOrchestrator(store).recover()), claiming)
    assert ran == []
    assert "has no give_back()" in caplog.text
    found = await store.get("o1")
    await store.close()
    assert found is not None
    assert found.status is SagaStatus.EXECUTING


@pytest.mark.asyncio
async def test_memory_store_recovery_has_nothing_to_claim_or_give_back() -> None:
    # An in-memory store's sagas die with their process: recover() claims none (and so
    # has none to give back), and a worker refuses it.
    from sagakit import StoreError

    orchestrator = SagaOrchestrator(MemoryStore())
    assert await orchestrator.recover() == []
    with pytest.raises(StoreError, match="cannot recover sagas"):
        await orchestrator.run_worker(handle_signals=False)
