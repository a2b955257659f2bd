"""PostgreSQL: the calls an operator (or a test) makes on a connection gone silent fail
within the store's ``connect_timeout``, as a saga's writes, the claims and the reads do.

A statement on a connection that went silent (a partition, a fail-over that leaves it
half-open: no reset) waits for the kernel to give up, some 15 minutes. ``resolve()``,
``resume_dead_letter()``, ``dead_letter()``, ``give_back()`` and ``release_leases()``
called outside a claim, and the restart of an explicit id whose earlier run ended, waited
for their answer without that bound: the call hung.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pg_helpers.silent import behind_a_proxy, raised
from sagakit import PostgresStore, SagaOrchestrator, SagaStatus, StepFailed, saga, step
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

pytestmark = pytest.mark.asyncio

GUARD = 10.0  # seconds before a call is declared hung: 20 times connect_timeout (0.5 s)
WITHIN = 5.0  # seconds a call given up on takes at most (a few tries of connect_timeout)
NO_ANSWER = "no answer within 0.5 s (command_timeout)"


@step
async def sop_book(order: str) -> str:
    return order


@step
async def sop_ship(order: str) -> str:
    return order


@step
async def sop_refuse(order: str) -> str:
    raise ValueError(f"order {order} refused")


@saga
def sop_order(order: str) -> Any:
    yield sop_book(order)
    yield sop_ship(order)


@saga
def sop_refused(order: str) -> Any:
    yield sop_book(order)
    yield sop_refuse(order)


async def given_up(call: Awaitable[Any]) -> str:
    """What the error of ``call`` says, which it must raise within :data:`WITHIN`."""
    began = asyncio.get_running_loop().time()
    error = await raised(call, GUARD)
    took = asyncio.get_running_loop().time() - began
    assert took < WITHIN, f"given up on after {took:.1f} s: {error}"
    return str(error)


@pytest.mark.parametrize("call", ["resolve", "resume_dead_letter"])
async def test_an_operator_update_that_gets_no_answer_fails(
    dsn: str, schema: str, call: str
) -> None:
    # Regression: resolve() and resume_dead_letter() waited without bound.
    async with behind_a_proxy(dsn, schema) as (store, proxy):
        await store.open()
        proxy.silence()
        if call == "resolve":
            said = await given_up(store.resolve("sop-1", "settled by hand"))
        else:
            said = await given_up(store.resume_dead_letter("sop-1"))
    assert NO_ANSWER in said, said
    assert f"{call}() was in doubt" in said, said  # (sent: it may have been applied)


async def claimed(store: PostgresStore, saga_id: str) -> None:
    """A saga ``saga_id`` whose worker died as its ship step began, claimed by ``store``."""
    with FaultInjector().crash(sop_ship), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).execute(sop_order("o"), saga_id=saga_id)
    await simulate_restart(store)
    orphans = await store.claim_orphans(saga_ids=[saga_id])
    assert [orphan.saga_id for orphan in orphans] == [saga_id]
    assert store.owns(saga_id)


CLAIMED_CALLS: dict[str, Callable[[PostgresStore, str], Awaitable[Any]]] = {
    "dead_letter": lambda store, saga_id: store.dead_letter(saga_id, "parked by hand"),
    "give_back": lambda store, saga_id: store.give_back([saga_id]),
    "release_leases": lambda store, saga_id: store.release_leases(),
}


@pytest.mark.parametrize("call", sorted(CLAIMED_CALLS))
async def test_a_call_on_a_claimed_saga_that_gets_no_answer_fails(
    dsn: str, schema: str, call: str
) -> None:
    # Regression: outside claim_orphans() (which bounds its own statements), these
    # statements on a saga the store had claimed waited without bound.
    async with behind_a_proxy(dsn, schema) as (store, proxy):
        await claimed(store, "sop-2")
        proxy.silence()
        said = await given_up(CLAIMED_CALLS[call](store, "sop-2"))
    assert NO_ANSWER in said, said


async def test_restarting_an_id_whose_run_ended_that_gets_no_answer_fails(
    dsn: str, schema: str
) -> None:
    # Regression: the restart of an explicit id whose earlier run was compensated (one
    # transaction of several statements, after the start's INSERT found the row) waited
    # without bound.
    async with behind_a_proxy(dsn, schema) as (store, proxy):
        orchestrator = SagaOrchestrator(store)
        with pytest.raises(StepFailed):
            await orchestrator.execute(sop_refused("o"), saga_id="sop-3")
        ended = await store.get("sop-3")
        assert ended is not None
        assert ended.status == SagaStatus.COMPENSATED
        begin_again = store._begin_again

        async def silenced_first(*args: Any) -> Any:
            proxy.silence()  # the INSERT found the row: the restart gets no answer
            return await begin_again(*args)

        store._begin_again = silenced_first  # type: ignore[method-assign]
        said = await given_up(orchestrator.execute(sop_refused("o"), saga_id="sop-3"))
    assert NO_ANSWER in said, said
