"""PostgreSQL: a worker's claim, the heartbeat's renewal and the reads on a connection gone
silent fail within the store's ``connect_timeout``, and the worker claims again later.

A statement on a connection that went silent (a partition, a fail-over that leaves it
half-open: no reset) waits for the kernel to give up, some 15 minutes. The claim of
orphaned sagas, the heartbeat's renewal of leases and ``get()``/``running()``/
``history()`` waited without bound: the worker hung at its claim, never claiming again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from pg_helpers.silent import GIVE_UP, behind_a_proxy, raised
from sagakit import SagaOrchestrator, saga, step

pytestmark = pytest.mark.asyncio

holding: list[asyncio.Event] = []  # one per test (an event is bound to its loop)
go_on: list[asyncio.Event] = []


@step
async def silent_claim_wait(order: str) -> str:
    holding[-1].set()
    await go_on[-1].wait()
    return order


@saga
def silent_claim_order(order: str) -> Any:
    yield silent_claim_wait(order)


async def test_a_claim_that_gets_no_answer_fails(dsn: str, schema: str) -> None:
    # Regression: the claim went out on a silent connection and waited without bound.
    async with behind_a_proxy(dsn, schema) as (store, proxy):
        await store.open()
        proxy.silence()
        error = await raised(store.claim_orphans(names={"silent_claim_order"}))
        assert "no answer within 0.5 s (command_timeout)" in str(error), str(error)
        said = (
            "the claim may have taken sagas all the same: none of them runs here, and "
            "once their lease (2 s) runs out another claim takes them"
        )
        assert said in str(error), str(error)  # what a claim in doubt took


class FailedClaims(logging.Handler):
    """Notes the warnings that say ``what`` failed; ``twice`` is set at the second."""

    def __init__(self, what: str = "worker could not claim sagas") -> None:
        super().__init__(logging.WARNING)
        self.what = what
        self.said: list[str] = []
        self.twice = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.what in record.getMessage():
            self.said.append(record.getMessage())
            if len(self.said) >= 2:
                self.twice.set()


async def test_a_worker_whose_claims_get_no_answer_claims_again(dsn: str, schema: str) -> None:
    # Regression: the worker hung at its first claim on a silent connection.
    failed = FailedClaims()
    sagakit_logger = logging.getLogger("sagakit")
    sagakit_logger.addHandler(failed)
    stop = asyncio.Event()
    try:
        async with behind_a_proxy(dsn, schema) as (store, proxy):
            await store.open()
            proxy.silence()
            worker = asyncio.ensure_future(
                SagaOrchestrator(store).run_worker(
                    poll_interval=0.01, handle_signals=False, stop=stop
                )
            )
            said_twice = asyncio.ensure_future(failed.twice.wait())
            try:
                await asyncio.wait(
                    (worker, said_twice), timeout=GIVE_UP, return_when=asyncio.FIRST_COMPLETED
                )
                assert failed.twice.is_set(), "the worker did not try to claim twice"
            finally:
                said_twice.cancel()
                stop.set()
                await asyncio.wait((worker,), timeout=GIVE_UP)
            assert worker.done()
            worker.result()  # it did not die: it stopped when told to
            assert "no answer within 0.5 s (command_timeout)" in failed.said[0], failed.said
    finally:
        sagakit_logger.removeHandler(failed)


async def test_a_renewal_that_gets_no_answer_fails(dsn: str, schema: str) -> None:
    # Regression: the heartbeat's renewal waited without bound (the heartbeat stopped
    # beating); given up on, it is tried again at the next beat.
    holding.append(asyncio.Event())
    go_on.append(asyncio.Event())
    try:
        async with behind_a_proxy(dsn, schema) as (store, proxy):
            running = asyncio.ensure_future(
                SagaOrchestrator(store).execute(silent_claim_order("o"), saga_id="sc-1")
            )
            async with asyncio.timeout(GIVE_UP):
                await holding[-1].wait()
            proxy.silence()
            error = await raised(store.renew())
            assert "no answer within 0.5 s (command_timeout)" in str(error), str(error)
            go_on[-1].set()
            await asyncio.wait((running,), timeout=GIVE_UP)
            assert running.done()
            running.exception()  # (its end, on the silent connection, failed)
    finally:
        go_on[-1].set()


async def test_a_heartbeat_whose_renewals_get_no_answer_beats_again(dsn: str, schema: str) -> None:
    # Regression: the heartbeat's first renewal on a silent connection never ended, so it
    # never beat again (not even once the connection came back).
    holding.append(asyncio.Event())
    go_on.append(asyncio.Event())
    failed = FailedClaims("heartbeat could not renew leases")
    sagakit_logger = logging.getLogger("sagakit")
    sagakit_logger.addHandler(failed)
    try:
        async with behind_a_proxy(dsn, schema, lease=5.0, heartbeat=0.1) as (store, proxy):
            # Opened here, not by the saga's start: the heartbeat's task, started by
            # open(), carries nothing of the call that opened the store.
            await store.open()
            running = asyncio.ensure_future(
                SagaOrchestrator(store).execute(silent_claim_order("o"), saga_id="sc-2")
            )
            async with asyncio.timeout(GIVE_UP):
                await holding[-1].wait()
            proxy.silence()
            said_twice = asyncio.ensure_future(failed.twice.wait())
            await asyncio.wait((said_twice,), timeout=GIVE_UP)
            said_twice.cancel()
            assert failed.twice.is_set(), "the heartbeat did not try to renew twice"
            assert "no answer within 0.5 s (command_timeout)" in failed.said[0], failed.said
            go_on[-1].set()
            await asyncio.wait((running,), timeout=GIVE_UP)
            assert running.done()
            running.exception()  # (its end, on the silent connection, failed)
    finally:
        go_on[-1].set()
        sagakit_logger.removeHandler(failed)


@pytest.mark.parametrize("read", ["get", "running", "history"])
async def test_a_read_that_gets_no_answer_fails(dsn: str, schema: str, read: str) -> None:
    # Regression: get(), running() and history() waited without bound.
    async with behind_a_proxy(dsn, schema) as (store, proxy):
        await store.open()
        proxy.silence()
        call = store.get("sc-x") if read == "get" else getattr(store, read)()
        error = await raised(call)
        assert "no answer within 0.5 s (command_timeout)" in str(error), str(error)
