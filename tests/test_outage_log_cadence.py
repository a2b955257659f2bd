"""A worker's claims and a heartbeat's renewals failing through a long outage are told at
a slowing cadence: a ``WARNING`` at the 1st, 2nd, 4th, 8th... failure in a row, the others
at ``DEBUG``, and one ``INFO`` once they succeed again; not a ``WARNING`` each."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from pg_helpers.db import GIVE_UP, opened
from sagakit import SagaOrchestrator, SQLiteStore, StoreError, saga, step

FAILURES = 20
TOLD = [1, 2, 4, 8, 16]  # the failures in a row logged at WARNING

EVENTS: dict[str, asyncio.Event] = {}  # "in step" and "held": this test's loop's


@pytest.fixture(autouse=True)
def _events() -> None:
    EVENTS.clear()


@step
async def oc_hold() -> None:
    EVENTS["in step"].set()
    await EVENTS["held"].wait()


async def _holding(store: Any) -> asyncio.Task[Any]:
    """A saga that holds its lease until ``EVENTS["held"]`` is set."""
    EVENTS.update({"in step": asyncio.Event(), "held": asyncio.Event()})
    running = asyncio.create_task(SagaOrchestrator(store).execute(oc_held()))
    await EVENTS["in step"].wait()
    return running


@saga
def oc_held():  # type: ignore[no-untyped-def]
    yield oc_hold()


def _levels(caplog: pytest.LogCaptureFixture, text: str) -> dict[int, list[int]]:
    """The failures in a row (their ``%d``) of the records saying ``text``, by level."""
    found: dict[int, list[int]] = {}
    for record in caplog.records:
        if text in record.message:
            assert isinstance(record.args, tuple)
            found.setdefault(record.levelno, []).append(int(record.args[0]))
    return found


@pytest.mark.asyncio
async def test_a_worker_s_failing_claims_warn_at_a_doubling_count_and_its_recovery_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: every failed claim was a WARNING; with the backoff capped at 30 s, a
    # day-long outage logged 2,880 of them. Now about a dozen, the rest at DEBUG.
    from sagakit import _worker

    store = SQLiteStore(tmp_path / "sagas.db")
    claims = 0
    claim = store.claim_orphans

    async def claim_orphans(**options: Any) -> Any:
        nonlocal claims
        claims += 1
        if claims <= FAILURES:
            raise StoreError("the database is away")
        return await claim(**options)

    store.claim_orphans = claim_orphans  # type: ignore[method-assign]
    stop = asyncio.Event()

    async def no_wait(events: Any, seconds: float) -> None:
        if claims == FAILURES + 2:
            stop.set()

    monkeypatch.setattr(_worker, "_wait", no_wait)
    with caplog.at_level(logging.DEBUG, logger="sagakit"):
        await SagaOrchestrator(store).run_worker(stop=stop, handle_signals=False)
    await store.close()
    failed = _levels(caplog, "could not claim sagas")
    assert failed == {
        logging.WARNING: TOLD,
        logging.DEBUG: [n for n in range(1, FAILURES + 1) if n not in TOLD],
    }
    assert _levels(caplog, "claims sagas again") == {logging.INFO: [FAILURES]}


@pytest.mark.asyncio
async def test_a_heartbeat_s_failing_renewals_warn_at_a_doubling_count_and_its_recovery_once(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: every failed renewal was a WARNING (a day-long outage: 8,640 of them
    # under the default 30 s lease), and nothing said when renewals worked again.
    async with opened(dsn, schema, heartbeat=0.01) as store:
        running = await _holding(store)  # a lease for the heartbeat to renew
        renewals = 0
        renewed = asyncio.Event()
        renew = store.renew

        async def failing_renew() -> int:
            nonlocal renewals
            renewals += 1
            if renewals <= FAILURES:
                raise StoreError("the database is away")
            found = await renew()
            renewed.set()
            return found

        with caplog.at_level(logging.DEBUG, logger="sagakit"):
            store.renew = failing_renew  # type: ignore[method-assign]
            async with asyncio.timeout(GIVE_UP):
                await renewed.wait()  # (its INFO is logged before this test goes on)
            store.renew = renew  # type: ignore[method-assign]
        EVENTS["held"].set()
        await running
    failed = _levels(caplog, "could not renew leases")
    assert failed == {
        logging.WARNING: TOLD,
        logging.DEBUG: [n for n in range(1, FAILURES + 1) if n not in TOLD],
    }
    assert _levels(caplog, "renews leases again") == {logging.INFO: [FAILURES]}


@pytest.mark.asyncio
async def test_a_heartbeat_holding_no_lease_does_not_say_its_renewals_work_again(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    # With no lease left to renew (its sagas ended meanwhile), a renewal sends nothing:
    # it tells nothing of the server, so it does not end the failures in a row.
    async with opened(dsn, schema, heartbeat=0.01) as store:
        running = await _holding(store)
        renewals = 0
        idle = asyncio.Event()
        renew = store.renew

        async def failing_renew() -> int:
            nonlocal renewals
            renewals += 1
            if renewals == 2:
                EVENTS["held"].set()
                await running  # its lease is given up: nothing held from now on
            if renewals <= 2:
                raise StoreError("the database is away")
            if renewals == 6:
                idle.set()
            return await renew()

        with caplog.at_level(logging.DEBUG, logger="sagakit"):
            store.renew = failing_renew  # type: ignore[method-assign]
            async with asyncio.timeout(GIVE_UP):
                await idle.wait()
            store.renew = renew  # type: ignore[method-assign]
    assert _levels(caplog, "could not renew leases") == {logging.WARNING: [1, 2]}
    assert _levels(caplog, "renews leases again") == {}
