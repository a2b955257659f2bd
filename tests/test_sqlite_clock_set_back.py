"""A wall clock set back (NTP) while a saga runs on SQLite: its metadata still reads as
the run went, started <= updated == finished, with a duration that is not negative;
an operator's write (resolve, dead-letter, a claim parking a saga) stamps nothing
before the saga's start either.

The store stamps its writes with the wall clock (set with ``store_helpers.clock``); the
run's start is the orchestrator's own reading.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sagakit import (
    CompensationFailed,
    Retry,
    SagaMetadata,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StepFailed,
    saga,
    step,
)
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart
from store_helpers.clock import set_sqlite_clock

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
    set_sqlite_clock(monkeypatch, lambda: time.time() - SET_BACK[0])


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


@step
async def clock_hold(n: int) -> int:
    return n


@clock_hold.compensate
async def clock_fail_to_release(result: int, n: int) -> None:
    raise RuntimeError("cannot release")


@saga
def clock_held(n: int):  # type: ignore[no-untyped-def]
    yield clock_hold(n)
    yield clock_refuse()


def assert_in_order(meta: SagaMetadata | None) -> SagaMetadata:
    """``meta``'s stamps never before its start, its end never after its last change."""
    assert meta is not None
    assert meta.started_at is not None
    assert meta.updated_at is not None
    assert meta.started_at <= meta.updated_at
    if meta.finished_at is not None:
        assert meta.started_at <= meta.finished_at
        assert meta.updated_at >= meta.finished_at
    assert meta.duration is not None
    assert meta.duration >= 0
    return meta


@pytest.mark.asyncio
async def test_an_operators_writes_with_the_clock_set_back_stamp_nothing_before_a_start(
    tmp_path: Path,
) -> None:
    # Regression: resolve(), dead_letter() and a claim parking a saga stamped the wall
    # clock as set back: a saga resolved an hour before it started (a negative duration,
    # an updated_at before its finished_at), or parked before it started.
    store = SQLiteStore(tmp_path / "s.db")
    try:
        orchestrator = SagaOrchestrator(store, compensation_retry=Retry(attempts=1))
        with pytest.raises(CompensationFailed):
            await orchestrator.execute(clock_held(1), saga_id="failed")
        for saga_id in ("crashed", "parked", "parked-by-claim", "parked-resolved"):
            with FaultInjector().crash(clock_refuse), pytest.raises(SimulatedCrash):
                await orchestrator.execute(clock_held(1), saga_id=saga_id)
        SET_BACK[0] = 3600.0  # NTP sets the clock back an hour
        await simulate_restart(store)
        assert len(await store.claim_orphans(saga_ids=["parked"])) == 1
        await store.dead_letter("parked", "parked by the test")
        # A claim parks a saga whose recovery crashed more than max_attempts times.
        claimed = ["parked-by-claim", "parked-resolved"]
        assert len(await store.claim_orphans(saga_ids=claimed, max_attempts=1)) == 2
        await simulate_restart(store)
        assert await store.claim_orphans(saga_ids=claimed, max_attempts=1) == []
        parked = await store.dead_letters()
        assert sorted(p.saga_id for p in parked) == ["parked", *claimed]
        for dead in parked:
            meta = assert_in_order(await orchestrator.get_saga(dead.saga_id))
            # Parked by the clock as set back: at its start, the earliest it can be.
            assert dead.parked_at == meta.started_at, dead.saga_id
        await store.resume_dead_letter("parked")
        assert_in_order(await orchestrator.get_saga("parked"))
        failed = await orchestrator.get_saga("failed")
        assert failed is not None
        for saga_id in ("crashed", "failed", "parked-resolved"):
            await store.resolve(saga_id, "settled by hand")
            meta = assert_in_order(await orchestrator.get_saga(saga_id))
            assert meta.status is SagaStatus.FAILED
            # Resolved by the clock as set back: at its end, or at its start if unended.
            assert meta.updated_at == meta.finished_at, saga_id
            ended = failed.finished_at if saga_id == "failed" else meta.started_at
            assert meta.finished_at == ended, saga_id
        history = await orchestrator.get_history()
        assert sorted(m.id for m in history) == ["crashed", "failed", "parked-resolved"]
        for meta in history:
            assert_in_order(meta)
        for page in await store.list_sagas():
            assert page.started_at is not None
            if page.finished_at is not None:
                assert page.started_at <= page.finished_at
    finally:
        await store.close()
