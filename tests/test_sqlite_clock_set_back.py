"""A wall clock set back (NTP) while a saga runs on SQLite: its metadata still reads as
the run went, started <= updated == finished, with a duration that is not negative.

The store stamps its writes with the wall clock, through ``sagakit.stores.sqlite.time``
(replaced there); the run's start is the orchestrator's own reading.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from sagakit import SagaOrchestrator, SagaStatus, SQLiteStore, StepFailed, saga, step
from sagakit.stores import sqlite as sqlite_module

SET_BACK = [0.0]  # seconds the store's clock is behind the real one


@step
async def clock_take(n: int) -> str:
    SET_BACK[0] = 3600.0  # NTP sets the clock back an hour while the step runs
    return f"took {n}"


@clock_take.compensate
async def clock_give_back(result: str, n: int) -> str:
    return f"gave back {n}"


@step
async def clock_refuse() -> None:
    raise ValueError("refused")


@saga
def clock_order(refused: bool):  # type: ignore[no-untyped-def]
    yield clock_take(1)
    yield clock_take(2)
    if refused:
        yield clock_refuse()


@pytest.fixture(autouse=True)
def _clock_set_back(monkeypatch: pytest.MonkeyPatch) -> None:
    SET_BACK[0] = 0.0
    monkeypatch.setattr(
        sqlite_module, "time", SimpleNamespace(time=lambda: time.time() - SET_BACK[0])
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("refused", [False, True], ids=["completed", "compensated"])
async def test_a_clock_set_back_mid_run_never_ends_a_saga_before_it_started(
    tmp_path: Path, refused: bool
) -> None:
    # Regression: the end was stamped by the clock as set back, an hour before the start:
    # finished_at < started_at, a duration of -3600 s (and updated_at, the latest of the
    # run's stamps, after finished_at).
    async with SagaOrchestrator(SQLiteStore(tmp_path / "s.db")) as orchestrator:
        if refused:
            with pytest.raises(StepFailed):
                await orchestrator.execute(clock_order(True), saga_id="back")
        else:
            await orchestrator.execute(clock_order(False), saga_id="back")
        meta = await orchestrator.get_saga("back")
        [listed] = await orchestrator.get_history()
    assert meta is not None
    assert meta.status is (SagaStatus.COMPENSATED if refused else SagaStatus.COMPLETED)
    assert meta.started_at is not None
    assert meta.finished_at is not None
    assert meta.started_at <= meta.finished_at
    assert meta.updated_at == meta.finished_at  # the run's last change: its end
    assert meta.duration is not None
    assert meta.duration >= 0
    assert listed.duration is not None
    assert listed.duration >= 0
