"""OpenTelemetry tracing: a tracer removed mid-saga, a timed-out compensation's span.

Regressions: a tracer removed while a saga ran was never told of its end, so the
caller's context kept pointing at a step span that never ended; a compensation that
timed out lacked the ``sagakit.step.timed_out`` attribute; a cancellation while an
earlier listener heard the saga's end kept the tracer from hearing it; a step cancelled
before it ran (no transition tells its end) kept its span open over the compensations'.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the OpenTelemetry SDK is in the dev extra")

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from sagakit import (
    CompensationFailed,
    LeaseLost,
    Retry,
    SagaOrchestrator,
    Transition,
    TransitionKind,
    saga,
    step,
)
from sagakit.otel import instrument
from sagakit.stores import MemoryStore, SQLiteStore

provider = TracerProvider()
exporter = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(exporter))
app_tracer = provider.get_tracer("app")


@pytest.fixture(autouse=True)
def _clear() -> None:
    exporter.clear()


@step
async def ot_slow(item: str) -> str:
    await asyncio.sleep(0.05)
    return item


@saga
def ot_traced(item: str) -> Any:
    yield ot_slow(item)


@pytest.mark.asyncio
async def test_removing_the_tracer_mid_saga_leaves_the_callers_context_alone() -> None:
    # remove_listener() while a saga runs: the tracer still hears that saga's end, so
    # the spans it attached to the caller's context are ended and detached.
    orchestrator = SagaOrchestrator()
    tracer = instrument(orchestrator, tracer_provider=provider)

    async def remove_soon() -> None:
        await asyncio.sleep(0.01)  # ot_slow is running by now
        orchestrator.remove_listener(tracer)

    with app_tracer.start_as_current_span("request") as request:
        remover = asyncio.create_task(remove_soon())
        await orchestrator.execute(ot_traced("x"))
        await remover
        current = trace.get_current_span()
        assert current is request, f"the caller's current span is now {current}"
    assert repr(tracer) == "<SagaTracer 0 open sagas>"


@step(compensation_timeout=0.02, compensation_retry=Retry(attempts=1))
async def ot_book(item: str) -> str:
    return item


@ot_book.compensate
async def ot_unbook(item: str) -> None:
    await asyncio.sleep(1)  # longer than its compensation_timeout


@step
async def ot_refuse(item: str) -> None:
    raise ValueError("refused")


@saga
def ot_booking(item: str) -> Any:
    yield ot_book(item)
    yield ot_refuse(item)


@pytest.mark.asyncio
async def test_a_timed_out_compensation_span_says_it_timed_out() -> None:
    """docs/observability.md: `sagakit.step.timed_out` for timeouts; the store logs such a
    compensation as timed_out, but its span lacks the attribute (only STEP_TIMED_OUT
    sets it, otel.py _end_child)."""
    orchestrator = SagaOrchestrator()
    instrument(orchestrator, tracer_provider=provider)
    with pytest.raises(CompensationFailed):
        await orchestrator.execute(ot_booking("x"))
    spans = {span.name: span for span in exporter.get_finished_spans()}
    undo = spans["compensate ot_book"]
    assert undo.status.description is not None
    assert "timed out" in undo.status.description
    assert undo.attributes is not None
    assert undo.attributes.get("sagakit.step.timed_out") is True


@step(compensation_retry=Retry(attempts=1))
async def ot_hold(item: str) -> str:
    return item


@ot_hold.compensate
async def ot_unhold(item: str) -> None:
    raise TimeoutError("the payment API's read timed out")  # its own error, no sagakit timeout


@saga
def ot_holding(item: str) -> Any:
    yield ot_hold(item)
    yield ot_refuse(item)


@pytest.mark.asyncio
async def test_a_compensation_raising_timeout_error_is_failed_not_timed_out() -> None:
    """A compensation that raised a TimeoutError of its own failed (its record says
    ``failed``); only a sagakit timeout (StepTimeout) marks its span timed out."""
    orchestrator = SagaOrchestrator()
    instrument(orchestrator, tracer_provider=provider)
    with pytest.raises(CompensationFailed):
        await orchestrator.execute(ot_holding("x"), saga_id="ot-hold-1")
    run = await orchestrator.get_saga("ot-hold-1")
    assert run is not None
    assert run.compensations[0].status == "failed"
    spans = {span.name: span for span in exporter.get_finished_spans()}
    undo = spans["compensate ot_hold"]
    assert undo.attributes is not None
    assert "sagakit.step.timed_out" not in undo.attributes


@pytest.mark.asyncio
@pytest.mark.parametrize("durable", [False, True], ids=["memory", "sqlite"])
@pytest.mark.parametrize("kind", [TransitionKind.STEP_COMPLETED, TransitionKind.SAGA_FINISHED])
async def test_a_cancellation_while_a_listener_hears_of_the_end_still_ends_the_saga_span(
    durable: bool, kind: TransitionKind, tmp_path: Path
) -> None:
    # A slow async listener before the tracer is cancelled (a caller's timeout, say) while
    # it hears of the last step's completion or the saga's end (a durable store tells both
    # together): the tracer must still hear the end, or the saga span never ends and stays
    # the current span of the caller's task.
    hearing = asyncio.Event()

    async def slow(transition: Transition) -> None:
        if transition.kind is kind:
            hearing.set()
            await asyncio.Event().wait()  # until cancelled

    store = SQLiteStore(tmp_path / "sagas.db") if durable else MemoryStore()
    orchestrator = SagaOrchestrator(store, listeners=[slow])
    tracer = instrument(orchestrator, tracer_provider=provider)

    async def caller() -> None:
        with app_tracer.start_as_current_span("request") as request:
            with pytest.raises(asyncio.CancelledError):
                await orchestrator.execute(ot_traced("x"))
            assert trace.get_current_span() is request

    task = asyncio.create_task(caller())
    await hearing.wait()
    task.cancel()
    await task
    await orchestrator.close()
    assert repr(tracer) == "<SagaTracer 0 open sagas>"
    assert "saga ot_traced" in [span.name for span in exporter.get_finished_spans()]


@step
async def ot_first(item: str) -> str:
    return item


@step
async def ot_second(item: str) -> str:
    return item


@saga
def ot_fenced(item: str) -> Any:
    yield ot_first(item)
    yield ot_second(item)


class _FencedOutStore(SQLiteStore):
    """Another worker takes the saga over before its second step starts."""

    async def record(self, run: Any, transition: Transition) -> None:
        if transition.kind is TransitionKind.STEP_STARTED and transition.step_index == 1:
            raise LeaseLost(transition.saga_id)
        await super().record(run, transition)


@pytest.mark.asyncio
async def test_a_saga_stopped_by_lease_lost_ends_its_spans(tmp_path: Path) -> None:
    orchestrator = SagaOrchestrator(_FencedOutStore(tmp_path / "log.db"))
    tracer = instrument(orchestrator, tracer_provider=provider)
    async with orchestrator:
        with pytest.raises(LeaseLost):
            await orchestrator.execute(ot_fenced("x"))
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert sorted(spans) == ["saga ot_fenced", "step ot_first"]
    saga_span = spans["saga ot_fenced"]
    assert saga_span.status.status_code is StatusCode.ERROR
    assert (saga_span.status.description or "").startswith("saga stopped: LeaseLost: lost the")
    assert repr(tracer) == "<SagaTracer 0 open sagas>"


@step
async def ot_keep(item: str) -> str:
    return item


@ot_keep.compensate
async def ot_unkeep(item: str) -> None:
    with app_tracer.start_as_current_span("release call"):
        pass


@step
async def ot_charge(item: str) -> str:
    raise AssertionError("cancelled before its function is called")


@saga
def ot_kept(item: str) -> Any:
    yield ot_keep(item)
    yield ot_charge(item)


@pytest.mark.asyncio
@pytest.mark.parametrize("durable", [False, True], ids=["memory", "sqlite"])
async def test_a_step_cancelled_before_it_ran_ends_its_span_before_the_compensations(
    durable: bool, tmp_path: Path
) -> None:
    # Regression: a cancellation while a slow listener heard a step's start (a webhook, and
    # a caller's timeout) stops the step before its function is called, and no transition
    # tells its end: its span stayed open over the compensations' spans, to the saga's end.
    hearing = asyncio.Event()

    async def slow(transition: Transition) -> None:
        if transition.kind is TransitionKind.STEP_STARTED and transition.step_name == "ot_charge":
            hearing.set()
            await asyncio.Event().wait()  # until cancelled

    store = SQLiteStore(tmp_path / "sagas.db") if durable else MemoryStore()
    orchestrator = SagaOrchestrator(store, listeners=[slow])
    tracer = instrument(orchestrator, tracer_provider=provider)

    async def caller() -> None:
        with app_tracer.start_as_current_span("request") as request:
            with pytest.raises(asyncio.CancelledError):
                await orchestrator.execute(ot_kept("x"))
            assert trace.get_current_span() is request

    task = asyncio.create_task(caller())
    await hearing.wait()
    task.cancel()
    await task
    await orchestrator.close()
    assert repr(tracer) == "<SagaTracer 0 open sagas>"
    spans = {span.name: span for span in exporter.get_finished_spans()}
    charge, release = spans["step ot_charge"], spans["compensate ot_keep"]
    assert charge.status.status_code is StatusCode.ERROR
    # Ended by its STEP_FAILED, before the compensations start (SagaTracer ends a step span
    # no transition ends "interrupted" there).
    assert charge.status.description == "CancelledError: cancelled before the step started"
    assert charge.end_time is not None
    assert release.start_time is not None
    assert charge.end_time <= release.start_time
    # The compensation's own spans nest under its span, not under the dead step's.
    assert spans["release call"].parent is not None
    assert spans["release call"].parent.span_id == release.context.span_id
    assert spans["saga ot_kept"].status.description == "saga ended compensated"
