"""What a recovery tells as its run begins, per policy (docs/observability.md).

Both policies log ``sagakit recovery resumes|compensates saga ...``; a resumed run then tells
``saga_started``, as any run about to run steps. A run that only compensates runs no step,
tells no ``saga_started``: its first transition is its first ``compensation_started``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sagakit import SagaOrchestrator, SQLiteStore, Transition, saga, step
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart


@step
async def rst_book(n: int) -> int:
    return n


@rst_book.compensate
async def rst_unbook(booking: int, n: int) -> None:
    return None


@step
async def rst_pay(n: int) -> int:
    return n


@saga(name="rst_resumed")
def rst_resumed(n: int):  # type: ignore[no-untyped-def]
    yield rst_book(n)
    yield rst_pay(n)


@saga(name="rst_compensated", recovery="compensate")
def rst_compensated(n: int):  # type: ignore[no-untyped-def]
    yield rst_book(n)
    yield rst_pay(n)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("definition", "verb", "first"),
    [
        (rst_resumed, "resumes", "saga_started"),
        (rst_compensated, "compensates", "compensation_started"),
    ],
)
async def test_a_recovered_run_begins_with_its_log_record_then_its_first_transition(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    definition: object,
    verb: str,
    first: str,
) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    with FaultInjector().crash(rst_pay), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).execute(definition(1), saga_id="r1")  # type: ignore[operator]
    await simulate_restart(store)
    await store.close()
    told: list[Transition] = []
    caplog.set_level(logging.INFO, logger="sagakit")
    async with SagaOrchestrator(SQLiteStore(tmp_path / "s.db"), listeners=[told.append]) as o:
        await o.recover()
    assert told[0].kind == first
    assert ("saga_started" in [t.kind for t in told]) is (verb == "resumes")
    messages = [r.getMessage() for r in caplog.records if r.name == "sagakit"]
    assert messages[0].startswith(f"sagakit recovery {verb} saga {definition.name} (r1) after ")  # type: ignore[attr-defined]
