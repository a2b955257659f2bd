"""PostgreSQL: a run cancelled while its end is written, after its store released its lease.

A stopping worker releases the leases of the sagas it runs, then cancels them; one that
was writing its end when the release came has that write refused, and ``finish()``
writes what it carried (staged again) once more, to be refused too. That is a handover:
logged at DEBUG as released by this store (its saga_stopped tells it at INFO). It was
logged at WARNING as a lease lost to another worker, with the advice to renew leases more
often or lengthen the lease.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from sagakit import PostgresStore, SagaOrchestrator, saga, step
from sagakit.stores._pg_writer import Write

pytestmark = pytest.mark.asyncio


class HoldingTheEnd(PostgresStore):
    """Holds the statement carrying a saga's end until ``go`` is set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.holding = asyncio.Event()
        self.go = asyncio.Event()

    async def _apply(self, writes: list[Write]) -> dict[str, str]:
        if any(write.final for write in writes):
            self.holding.set()
            await self.go.wait()
        return await super()._apply(writes)


@step
async def se_step(n: int) -> int:
    return n


@saga
def se_saga(n: int):  # type: ignore[no-untyped-def]
    yield se_step(n)
    yield se_step(n + 1)


async def test_a_staged_end_refused_after_a_release_is_logged_as_a_handover(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sagakit")
    store = HoldingTheEnd(dsn, schema=schema)
    try:
        run = asyncio.create_task(SagaOrchestrator(store).execute(se_saga(1), saga_id="se-1"))
        await store.holding.wait()  # its end is on its way
        assert await store.release_leases() == 1  # the worker stops: release, then cancel
        run.cancel()
        store.go.set()
        with pytest.raises(asyncio.CancelledError):
            await run
    finally:
        await store.close()
    records = [r for r in caplog.records if getattr(r, "saga_id", None) == "se-1"]
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []
    refused = [r for r in records if "staged transition" in r.getMessage()]
    assert refused
    assert all("this store released it" in r.getMessage() for r in refused), refused
    # told by the run's saga_stopped (INFO): this one is only for debugging
    assert {r.levelno for r in refused} == {logging.DEBUG}
