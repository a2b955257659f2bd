"""OpenTelemetry tracing and simulated crashes (``FaultInjector.crash``).

After a simulated crash the tracer held the run's spans open forever: nothing was
exported, the caller's context kept pointing at the dead step span (so spans started
later, and the run recovery started in the same process, nested under it), and
recovery's spans went to the crashed run's root instead of a trace of their own.
Crash simulation now tells the tracer: the run's spans end, status ``ERROR``
``"process crashed (simulated)"``, and the caller's context is restored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the OpenTelemetry SDK is in the dev extra")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from sagakit import SagaOrchestrator, SagaStatus, SQLiteStore, Transition, saga, step
from sagakit.otel import instrument
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

provider = TracerProvider()
exporter = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(exporter))
app_tracer = provider.get_tracer("app")

CRASHED = "process crashed (simulated)"


@pytest.fixture(autouse=True)
def _clear() -> None:
    exporter.clear()


@step
async def oc_pack(item: str) -> str:
    return f"packed {item}"


@step
async def oc_ship(item: str) -> str:
    return f"shipped {item}"


@oc_pack.compensate
async def oc_unpack(item: str) -> None:
    return None


@step
async def oc_fail(item: str) -> None:
    raise ValueError("no courier")


@saga
def oc_order(item: str) -> Any:
    yield oc_pack(item)
    yield oc_ship(item)


@saga
def oc_doomed(item: str) -> Any:
    yield oc_pack(item)
    yield oc_fail(item)


def _spans() -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


@pytest.mark.asyncio
async def test_a_simulated_crash_ends_the_runs_spans_and_restores_the_context(
    tmp_path: Path,
) -> None:
    orchestrator = SagaOrchestrator(SQLiteStore(tmp_path / "sagas.db"))
    tracer = instrument(orchestrator, tracer_provider=provider)
    with app_tracer.start_as_current_span("request") as request:
        with FaultInjector().crash(oc_ship), pytest.raises(SimulatedCrash):
            await orchestrator.execute(oc_order("cup"), saga_id="oc-1")
        assert trace.get_current_span() is request
    await orchestrator.close()
    assert repr(tracer) == "<SagaTracer 0 open sagas>"
    spans = _spans()
    assert spans["step oc_pack"].status.status_code is StatusCode.OK
    for name in ("step oc_ship", "saga oc_order"):
        status = spans[name].status
        assert (status.status_code, status.description) == (StatusCode.ERROR, CRASHED), name
    assert [event.name for event in spans["saga oc_order"].events] == ["exception"]


@pytest.mark.asyncio
async def test_a_crash_while_compensating_ends_the_compensation_span(tmp_path: Path) -> None:
    orchestrator = SagaOrchestrator(SQLiteStore(tmp_path / "sagas.db"))
    tracer = instrument(orchestrator, tracer_provider=provider)
    with FaultInjector().crash(oc_pack, compensation=True), pytest.raises(SimulatedCrash):
        await orchestrator.execute(oc_doomed("jar"), saga_id="oc-2")
    await orchestrator.close()
    assert repr(tracer) == "<SagaTracer 0 open sagas>"
    spans = _spans()
    assert spans["step oc_fail"].status.status_code is StatusCode.ERROR
    for name in ("compensate oc_pack", "saga oc_doomed"):
        assert spans[name].status.description == CRASHED, name
    assert trace.get_current_span() is trace.INVALID_SPAN


@pytest.mark.asyncio
async def test_recovery_in_the_same_process_traces_a_new_root(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "sagas.db")
    heard: list[Transition] = []
    orchestrator = SagaOrchestrator(store, listeners=[heard.append])
    instrument(orchestrator, tracer_provider=provider)
    with FaultInjector().crash(oc_ship), pytest.raises(SimulatedCrash):
        await orchestrator.execute(oc_order("pot"), saga_id="oc-3")
    assert heard[-1].step_name == "oc_ship"  # other listeners are told nothing more
    await simulate_restart(store)
    (outcome,) = await orchestrator.recover()  # the same orchestrator, tracer and task
    assert outcome.status is SagaStatus.COMPLETED
    await orchestrator.close()
    roots = [span for span in exporter.get_finished_spans() if span.name == "saga oc_order"]
    assert [root.status.description for root in roots] == [CRASHED, None]
    crashed, recovered = roots
    assert recovered.parent is None  # not under the crashed run's step span
    assert crashed.context is not None
    assert recovered.context is not None
    assert recovered.context.trace_id != crashed.context.trace_id
    (ship,) = [
        span
        for span in exporter.get_finished_spans()
        if span.name == "step oc_ship" and span.status.status_code is StatusCode.OK
    ]
    assert ship.parent is not None
    assert ship.parent.span_id == recovered.context.span_id


@pytest.mark.asyncio
async def test_a_recovery_that_only_compensates_gives_its_saga_span_the_sagas_attributes(
    tmp_path: Path,
) -> None:
    # Regression: such a recovery's first transition is its first compensation's start,
    # and the saga span it began took that compensation's sagakit.step.name and
    # sagakit.step.index as its own attributes.
    store = SQLiteStore(tmp_path / "sagas.db")
    orchestrator = SagaOrchestrator(store)
    with FaultInjector().crash(oc_pack, compensation=True), pytest.raises(SimulatedCrash):
        await orchestrator.execute(oc_doomed("jar"), saga_id="oc-4")
    await simulate_restart(store)
    instrument(orchestrator, tracer_provider=provider)
    exporter.clear()
    (outcome,) = await orchestrator.recover()
    await orchestrator.close()
    assert outcome.status is SagaStatus.COMPENSATED
    spans = _spans()
    assert set(spans) == {"compensate oc_pack", "saga oc_doomed"}
    assert dict(spans["saga oc_doomed"].attributes or {}) == {
        "sagakit.saga.id": "oc-4",
        "sagakit.saga.name": "oc_doomed",
        "sagakit.saga.status": "compensated",
    }
    assert (spans["compensate oc_pack"].attributes or {})["sagakit.step.name"] == "oc_pack"
