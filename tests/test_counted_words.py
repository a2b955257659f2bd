"""Counts in sagakit's words are singular for one: "1 completed step", not "1 completed steps".

Recovery's log record ("after 1 completed steps"), a ``NonDeterminismError`` ("ended after
1 steps on replay"), an ``OrphanedSaga``'s and a ``SagaTracer``'s ``repr`` and the worker's
and the PostgreSQL store's log records said a plural of one. They all take their words from
``sagakit._counted.counted``, as the command line does.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from sagakit import (
    NonDeterminismError,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StepStatus,
    saga,
    step,
)
from sagakit._counted import counted
from sagakit.stores import LoggedStep, OrphanedSaga
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart


@step
async def cnt_one(n: int) -> int:
    return n


@step
async def cnt_two(n: int) -> int:
    return n


@step
async def cnt_three(n: int) -> int:
    return n


@saga(name="cnt_order")
def cnt_order(n: int):  # type: ignore[no-untyped-def]
    yield cnt_one(n)
    yield cnt_two(n)
    yield cnt_three(n)


def test_counted_says_one_in_the_singular() -> None:
    assert counted(0, "saga") == "0 sagas"
    assert counted(1, "completed step") == "1 completed step"
    assert counted(2, "saga lease") == "2 saga leases"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("crash_at", "words"),
    [(cnt_two, "1 completed step"), (cnt_three, "2 completed steps")],
)
async def test_recovery_counts_the_completed_steps_in_words(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, crash_at: object, words: str
) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    with FaultInjector().crash(crash_at), pytest.raises(SimulatedCrash):  # type: ignore[arg-type]
        await SagaOrchestrator(store).execute(cnt_order(1), saga_id="c1")
    await simulate_restart(store)
    await store.close()
    caplog.set_level(logging.INFO, logger="sagakit")
    async with SagaOrchestrator(SQLiteStore(tmp_path / "s.db")) as orchestrator:
        (outcome,) = await orchestrator.recover()
    assert outcome.status is SagaStatus.COMPLETED
    assert f"sagakit recovery resumes saga cnt_order (c1) after {words} (attempt " in caplog.text


def test_an_orphan_repr_counts_its_steps_in_words() -> None:
    def orphan(steps: int) -> OrphanedSaga:
        logged = tuple(LoggedStep(i, f"s{i}", StepStatus.COMPLETED) for i in range(steps))
        return OrphanedSaga("o", "cnt", SagaStatus.EXECUTING, (), {}, "resume", logged, (), 1)

    assert "1 step done," in repr(orphan(1))
    assert "2 steps done," in repr(orphan(2))


@pytest.mark.asyncio
@pytest.mark.parametrize(("kept", "words"), [(1, "1 step"), (2, "2 steps")])
async def test_a_replay_ending_sooner_counts_its_steps_in_words(
    tmp_path: Path, kept: int, words: str
) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    with FaultInjector().crash(cnt_three, after=True), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).execute(cnt_order(1), saga_id="c2")
    await simulate_restart(store)
    await store.close()

    @saga(name="cnt_order")
    def shorter(n: int):  # type: ignore[no-untyped-def]
        yield cnt_one(n)
        if kept == 2:
            yield cnt_two(n)

    async with SagaOrchestrator(SQLiteStore(tmp_path / "s.db")) as orchestrator:
        (outcome,) = await orchestrator.recover()
    assert outcome.action == "dead_lettered"
    assert outcome.error is not None
    assert f"{NonDeterminismError.__name__}: saga 'cnt_order' (c2) ended after {words} on " in (
        outcome.error
    )


def test_a_tracer_counts_its_open_sagas_in_words() -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the OpenTelemetry SDK is in the dev extra")
    from sagakit.otel import SagaTracer

    async def main() -> list[str]:
        tracer = SagaTracer()
        seen: list[str] = []
        going = asyncio.Event()

        @step(name="cnt_wait")
        async def wait(n: int) -> int:
            seen.append(repr(tracer))
            going.set()
            await asyncio.sleep(0.05)
            return n

        @saga(name="cnt_waiting")
        def waiting(n: int):  # type: ignore[no-untyped-def]
            yield wait(n)

        orchestrator = SagaOrchestrator(listeners=[tracer])
        first = asyncio.ensure_future(orchestrator.execute(waiting(1)))
        await going.wait()
        going.clear()
        second = asyncio.ensure_future(orchestrator.execute(waiting(2)))
        await asyncio.gather(first, second)
        seen.append(repr(tracer))
        return seen

    assert asyncio.run(main()) == [
        "<SagaTracer 1 open saga>",
        "<SagaTracer 2 open sagas>",
        "<SagaTracer 0 open sagas>",
    ]
