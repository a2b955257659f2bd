"""PostgreSQL: a run that this store fenced out itself, winding down beside its saga's next run.

``release_leases()`` (a stopping worker, a process handing its ``execute()`` calls over)
fences out the runs in flight: their writes on the way are refused, and what they had
staged cannot be written any more. That is an orderly handover, told once by the run's
``saga_stopped`` record, and the same store may take the saga over again at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import pytest

from pg_helpers.db import opened
from sagakit import SagaOrchestrator, saga, step

pytestmark = pytest.mark.asyncio


@step
async def rr_quick(n: int) -> int:
    return n


@saga
def rr_saga(n: int):  # type: ignore[no-untyped-def]
    yield rr_quick(n)


def _warnings(caplog: pytest.LogCaptureFixture, saga_id: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING and getattr(record, "saga_id", None) == saga_id
    ]


async def test_an_end_fenced_out_by_this_stores_release_is_not_a_lost_lease(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: a stopping worker releases its leases, then cancels its runs. A run whose
    # end was on its way had it refused (and staged its step's completion again); its
    # finish() sent that again, fenced out, and warned "lost the lease ... another worker
    # owns it now", as for a worker cut off past its lease: about 1 run in 10 of
    # test_a_released_saga_is_handed_over_without_warnings.
    caplog.set_level(logging.INFO, logger="sagakit")
    async with opened(dsn, schema) as store:
        send = store._writer._send
        held, go = asyncio.Event(), asyncio.Event()

        async def hold_the_end(writes: Sequence[Any]) -> dict[str, str]:
            if any(write.final for write in writes) and not go.is_set():
                held.set()
                await go.wait()
            return await send(list(writes))

        store._writer._send = hold_the_end  # type: ignore[method-assign]
        running = asyncio.create_task(SagaOrchestrator(store).execute(rr_saga(1), saga_id="rr-1"))
        await held.wait()  # the saga's end is on its way
        assert await store.release_leases() == 1  # the process stops: it hands the saga over
        running.cancel()  # ... and then cancels what it ran
        go.set()
        with pytest.raises(asyncio.CancelledError):
            await running
    assert _warnings(caplog, "rr-1") == []
