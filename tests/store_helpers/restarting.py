"""Two stores on one durable log, for simulate_restart() tests: the one a simulated
crash stops, and a new one the "restarted process" works through."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from sagakit import SagaOrchestrator
from sagakit.testing import FaultInjector, SimulatedCrash


@asynccontextmanager
async def crashed_and_restarted(
    durable_store: Callable[[], Any],
) -> AsyncIterator[tuple[Any, Any]]:
    """``(crashed, restarted)``: two stores from ``durable_store``, both closed after
    (the restarted one first)."""
    crashed = durable_store()
    restarted = durable_store()
    try:
        yield crashed, restarted
    finally:
        await restarted.close()
        await crashed.close()


async def crash_in(store: Any, step: Any, call: Any, saga_id: str, process: bool = False) -> None:
    """Run ``call`` (a called @saga) as ``saga_id`` on ``store`` until a simulated crash
    in ``step`` (of the process, with ``process=True``) stops it."""
    with FaultInjector().crash(step, process=process), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).execute(call.with_id(saga_id))
