"""OpenTelemetry tracing of a saga whose event loop was closed while it ran.

Regression: a saga whose task is destroyed pending with its event loop (its coroutine
closed by the garbage collector, ``GeneratorExit``) is left as a crash leaves it, and
nothing more is told to its listeners; but where a simulated crash ends the run's spans,
this left them open in the tracer for good: never exported, the tracer's
``<SagaTracer 1 open saga>`` growing by one per such run. Its spans now end as a crash's
do, status ``ERROR`` ``"abandoned: its event loop was closed while it ran"``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the OpenTelemetry SDK is in the dev extra")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from loop_helpers import closed
from sagakit import MemoryStore, SagaOrchestrator, SagaStore, SQLiteStore, saga, step
from sagakit.otel import instrument

provider = TracerProvider()
exporter = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(exporter))

ABANDONED = "abandoned: its event loop was closed while it ran"

STORES: dict[str, Callable[[Path], SagaStore]] = {
    "memory": lambda _: MemoryStore(),
    "sqlite": lambda tmp_path: SQLiteStore(tmp_path / "s.db"),
}


@pytest.fixture(autouse=True)
def _clear() -> None:
    exporter.clear()


@step
async def ocl_hold(item: str) -> str:
    return item


@ocl_hold.compensate
async def ocl_release(item: str) -> None:
    await asyncio.sleep(3600)  # still undoing when the loop is closed


@step
async def ocl_wait(item: str) -> None:
    await asyncio.sleep(3600)


@saga
def ocl_order(item: str) -> Any:
    yield ocl_hold(item)
    yield ocl_wait(item)


def _spans() -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    for _ in range(50):  # until it compensates (and waits in ocl_release)
        await asyncio.sleep(0)


def _abandon(store: SagaStore, then: closed.Then = closed.nothing) -> str:
    """Run one ``ocl_order`` in a loop closed while it waits (after ``then``), close it
    as the garbage collector does in a later loop; return the tracer's repr."""
    orchestrator = SagaOrchestrator(store)
    tracer = instrument(orchestrator, tracer_provider=provider)
    tasks = closed.abandon([orchestrator.execute(ocl_order("a"), saga_id="a")], then)
    _, raised = closed.close_in_a_later_loop(tasks, orchestrator.close)
    assert raised == []
    return repr(tracer)


@pytest.mark.parametrize("store", STORES.values(), ids=STORES.keys())
def test_the_spans_of_a_saga_whose_loop_closed_in_a_step_end(
    store: Callable[[Path], SagaStore], tmp_path: Path
) -> None:
    assert _abandon(store(tmp_path)) == "<SagaTracer 0 open sagas>"
    spans = _spans()
    assert spans["step ocl_hold"].status.status_code is StatusCode.OK
    for name in ("step ocl_wait", "saga ocl_order"):
        status = spans[name].status
        assert (status.status_code, status.description) == (StatusCode.ERROR, ABANDONED), name


@pytest.mark.parametrize("store", STORES.values(), ids=STORES.keys())
def test_the_spans_of_a_saga_whose_loop_closed_while_compensating_end(
    store: Callable[[Path], SagaStore], tmp_path: Path
) -> None:
    assert _abandon(store(tmp_path), _cancel) == "<SagaTracer 0 open sagas>"
    spans = _spans()
    assert spans["step ocl_wait"].status.description == "CancelledError: the saga was cancelled"
    for name in ("compensate ocl_hold", "saga ocl_order"):
        status = spans[name].status
        assert (status.status_code, status.description) == (StatusCode.ERROR, ABANDONED), name
