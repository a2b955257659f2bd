"""OpenTelemetry tracing (sagakit.otel), checked with the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the OpenTelemetry SDK is in the dev extra")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

from sagakit import Retry, SagaOrchestrator, StepFailed, StepTimeout, saga, step
from sagakit.otel import SagaTracer, instrument
from sagakit.testing import FaultInjector, InstantSleep

provider = TracerProvider()
exporter = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(exporter))
user_tracer = provider.get_tracer("app")


@step
async def reserve(item: str) -> str:
    with user_tracer.start_as_current_span("warehouse call"):
        await asyncio.sleep(0)
    return f"reserved {item}"


@reserve.compensate
async def release(item: str) -> None:
    return None


@step(retry=Retry(attempts=3, backoff=0))
async def charge(item: str) -> str:
    return "card"


@charge.compensate
async def refund(item: str) -> None:
    return None


@step
async def ship(item: str) -> None:
    return None


@saga(name="otel.order")
def order(item: str) -> Any:
    yield reserve(item)
    yield charge(item)
    yield ship(item)


@pytest.fixture(autouse=True)
def _clear() -> None:
    exporter.clear()


def _orchestrator() -> SagaOrchestrator:
    orchestrator = SagaOrchestrator(sleep=InstantSleep())
    instrument(orchestrator, tracer_provider=provider)
    return orchestrator


def _by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


def _parent(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


@pytest.mark.asyncio
async def test_a_span_per_saga_and_a_child_per_step() -> None:
    await _orchestrator().execute(order("book"), saga_id="o-1")
    spans = _by_name(exporter.get_finished_spans())
    assert set(spans) == {
        "saga otel.order",
        "step reserve",
        "step charge",
        "step ship",
        "warehouse call",
    }
    root = spans["saga otel.order"]
    assert root.parent is None
    assert root.status.status_code is StatusCode.OK
    assert root.attributes is not None
    assert root.attributes["sagakit.saga.id"] == "o-1"
    assert root.attributes["sagakit.saga.status"] == "completed"
    for name in ("step reserve", "step charge", "step ship"):
        assert _parent(spans[name]) == root.context.span_id
        assert spans[name].context.trace_id == root.context.trace_id
        assert spans[name].status.status_code is StatusCode.OK
    reserve_span = spans["step reserve"]
    assert reserve_span.attributes is not None
    assert reserve_span.attributes["sagakit.step.index"] == 0
    assert reserve_span.attributes["sagakit.step.name"] == "reserve"
    assert reserve_span.attributes["sagakit.compensation"] is False
    # a span started inside the step nests under the step's span
    assert _parent(spans["warehouse call"]) == reserve_span.context.span_id


@pytest.mark.asyncio
async def test_failure_records_the_exception_and_compensation_spans() -> None:
    faults = FaultInjector().fail("charge", ConnectionError("busy"), times=1)
    faults.fail("ship", RuntimeError("carrier down"))
    with faults, pytest.raises(StepFailed):
        await _orchestrator().execute(order("book"))
    spans = _by_name(exporter.get_finished_spans())
    root = spans["saga otel.order"]
    assert root.status.status_code is StatusCode.ERROR
    assert root.status.description == "saga ended compensated"
    ship_span = spans["step ship"]
    assert ship_span.status.status_code is StatusCode.ERROR
    assert ship_span.status.description == "RuntimeError: carrier down"
    [event] = [e for e in ship_span.events if e.name == "exception"]
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "RuntimeError"
    charge_span = spans["step charge"]
    assert charge_span.status.status_code is StatusCode.OK
    assert charge_span.attributes is not None
    assert charge_span.attributes["sagakit.step.attempts"] == 2
    assert [e.name for e in charge_span.events] == ["exception", "sagakit.retry"]
    exception, retry = charge_span.events  # both name the attempt that failed (as documented)
    assert exception.attributes is not None
    assert retry.attributes is not None
    assert exception.attributes["sagakit.step.attempt"] == 1
    assert retry.attributes["sagakit.step.attempt"] == 1
    assert retry.attributes["error"].startswith(exception.attributes["exception.type"])
    finished = exporter.get_finished_spans()
    compensations = [s.name for s in finished if s.name.startswith("compensate")]
    assert compensations == ["compensate charge", "compensate reserve"]  # in the order they ran
    for name in compensations:
        assert _parent(spans[name]) == root.context.span_id
        assert spans[name].status.status_code is StatusCode.OK
        assert spans[name].attributes["sagakit.compensation"] is True  # type: ignore[index]


class _ApiError(Exception):
    """An exception whose ``str()`` raises: its ``__init__`` never set what it shows."""

    message: str

    def __init__(self, status: int) -> None:
        self.status = status

    def __str__(self) -> str:
        return self.message  # AttributeError


@pytest.mark.asyncio
async def test_an_error_whose_str_raises_still_ends_its_spans() -> None:
    # Regression: the SDK's record_exception() calls str(error), which raised out of the
    # tracer: the step's span (a retried one's too) never ended, missing from the trace.
    faults = FaultInjector().fail("charge", _ApiError(503), times=1)
    faults.fail("ship", _ApiError(500)).fail_compensation("reserve", _ApiError(409))
    orchestrator = SagaOrchestrator(sleep=InstantSleep(), continue_on_compensation_failure=True)
    instrument(orchestrator, tracer_provider=provider)
    with faults, pytest.raises(Exception, match="compensation of step 0"):
        await orchestrator.execute(order("book"))
    spans = _by_name(exporter.get_finished_spans())
    assert set(spans) == {
        "saga otel.order",
        "step reserve",
        "warehouse call",
        "step charge",
        "step ship",
        "compensate charge",
        "compensate reserve",
    }
    shown = "_ApiError: <str() raised AttributeError>"
    for name in ("step ship", "compensate reserve"):
        assert spans[name].status.status_code is StatusCode.ERROR
        assert spans[name].status.description == shown
        events = [e for e in spans[name].events if e.name == "exception"]
        assert len(events) == (3 if name == "compensate reserve" else 1)  # retried
        for event in events:
            assert event.attributes is not None
            assert event.attributes["exception.type"] == "_ApiError"
            assert event.attributes["exception.message"] == "<str() raised AttributeError>"
    retried = spans["step charge"]
    assert retried.status.status_code is StatusCode.OK
    assert [e.name for e in retried.events] == ["exception", "sagakit.retry"]


@pytest.mark.asyncio
async def test_timeouts_and_failed_compensations() -> None:
    faults = FaultInjector().timeout("ship").fail_compensation("charge", OSError("ledger"))
    with faults, pytest.raises(Exception, match="compensation of step 1"):
        await _orchestrator().execute(order("book"))
    spans = _by_name(exporter.get_finished_spans())
    assert spans["step ship"].attributes["sagakit.step.timed_out"] is True  # type: ignore[index]
    assert spans["step ship"].status.status_code is StatusCode.ERROR
    comp = spans["compensate charge"]
    assert comp.status.status_code is StatusCode.ERROR
    assert comp.attributes["sagakit.step.attempts"] == 3  # type: ignore[index]
    assert spans["saga otel.order"].status.description == "saga ended failed"


@pytest.mark.asyncio
async def test_the_saga_span_nests_under_the_callers_span_and_the_context_is_restored() -> None:
    with user_tracer.start_as_current_span("request") as request:
        await _orchestrator().execute(order("book"))
        assert trace.get_current_span() is request
    spans = _by_name(exporter.get_finished_spans())
    assert _parent(spans["saga otel.order"]) == spans["request"].context.span_id


@pytest.mark.asyncio
async def test_concurrent_sagas_keep_their_spans_apart() -> None:
    orchestrator = _orchestrator()
    await asyncio.gather(*(orchestrator.execute(order(str(i))) for i in range(5)))
    spans = exporter.get_finished_spans()
    roots = {s.context.span_id: s for s in spans if s.name == "saga otel.order"}
    assert len(roots) == 5
    for span in spans:
        if span.name.startswith("step"):
            root = roots[_parent(span)]  # type: ignore[index]
            assert root.attributes["sagakit.saga.id"] == span.attributes["sagakit.saga.id"]  # type: ignore[index]
    assert repr(orchestrator._listeners[0]) == "<SagaTracer 0 open sagas>"


@pytest.mark.asyncio
async def test_a_cancelled_step_span_is_ended_as_failed_by_the_cancellation() -> None:
    started = asyncio.Event()

    @step
    async def wait_forever(item: str) -> None:
        started.set()
        await asyncio.sleep(3600)

    @saga
    def stuck(item: str) -> Any:
        yield reserve(item)
        yield wait_forever(item)

    orchestrator = SagaOrchestrator(listeners=[SagaTracer(provider)])
    task = asyncio.create_task(orchestrator.execute(stuck("x")))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    spans = _by_name(exporter.get_finished_spans())
    # Ended by its STEP_FAILED (it was ended "interrupted" at the saga's end, when no
    # transition told the step's end).
    interrupted = spans["step wait_forever"]
    assert interrupted.status.status_code is StatusCode.ERROR
    assert interrupted.status.description == "CancelledError: the saga was cancelled"
    assert [e.attributes["exception.message"] for e in interrupted.events] == [  # type: ignore[index]
        "the saga was cancelled"
    ]
    assert spans["compensate reserve"].status.status_code is StatusCode.OK
    assert spans["saga stuck"].status.description == "saga ended compensated"


@pytest.mark.asyncio
async def test_a_step_span_ended_by_keyboard_interrupt_records_it() -> None:
    # The step's span ended "interrupted" at the saga's end, with no exception recorded:
    # nothing in the trace said a KeyboardInterrupt stopped the saga there.
    @step
    async def interrupted(item: str) -> None:
        raise KeyboardInterrupt

    @saga
    def halted(item: str) -> Any:
        yield reserve(item)
        yield interrupted(item)

    with pytest.raises(KeyboardInterrupt):
        await _orchestrator().execute(halted("x"))
    spans = _by_name(exporter.get_finished_spans())
    span = spans["step interrupted"]
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "KeyboardInterrupt"
    [event] = [e for e in span.events if e.name == "exception"]
    assert event.attributes["exception.type"] == "KeyboardInterrupt"  # type: ignore[index]
    assert "compensate reserve" not in spans  # nothing is undone
    assert spans["saga halted"].status.description == "saga ended failed"


@pytest.mark.asyncio
async def test_timeout_spans_without_the_fault_injector() -> None:
    @step(timeout=0.01)
    async def slow(item: str) -> None:
        await asyncio.sleep(1)

    @saga
    def slow_saga(item: str) -> Any:
        yield slow(item)

    with pytest.raises(StepTimeout):
        await _orchestrator().execute(slow_saga("x"))
    spans = _by_name(exporter.get_finished_spans())
    assert spans["step slow"].attributes["sagakit.step.timed_out"] is True  # type: ignore[index]


def test_importing_sagakit_does_not_import_opentelemetry() -> None:
    code = "import sys, sagakit, sagakit.testing; print('opentelemetry' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_without_opentelemetry_importing_sagakit_otel_says_which_extra_to_install() -> None:
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"  # as if not installed
        "try:\n"
        "    import sagakit.otel\n"
        "except ImportError as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("ModuleNotFoundError ")  # still what `except ImportError` expects
    assert "pip install 'sagakit[otel]'" in out.stdout


# The one wording of every check refusing a class given for an instance (see
# tests/test_declaration_checks.py).
THE_CLASS = r"^{0} must be an instance, not the class {1}; pass an instance: {1}\(\.\.\.\)$"


def test_what_is_not_a_tracer_provider_is_refused_naming_the_fix() -> None:
    # Regression: these reached OpenTelemetry's get_tracer(), which failed with an
    # AttributeError naming neither the argument nor the fix ("'str' object has no
    # attribute '_disabled'" for the class TracerProvider).
    from sagakit import SagaDefinitionError

    with pytest.raises(
        SagaDefinitionError,
        match=THE_CLASS.format("tracer_provider", "TracerProvider"),
    ):
        SagaTracer(TracerProvider)  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match=r"got the tracer .*pass the provider it came"):
        SagaTracer(user_tracer)  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match="tracer_provider must be a tracer provider"):
        instrument(SagaOrchestrator(), "global")  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match=r"write instrument\(orchestrator, tracer_pro"):
        instrument(provider)  # type: ignore[arg-type]
    with pytest.raises(
        SagaDefinitionError,
        match=THE_CLASS.format("instrument\\(\\)'s orchestrator", "SagaOrchestrator"),
    ):
        instrument(SagaOrchestrator, provider)  # type: ignore[arg-type]
    # A provider of any kind is taken, and None means the global one.
    assert isinstance(SagaTracer(trace.NoOpTracerProvider()), SagaTracer)
    assert isinstance(instrument(SagaOrchestrator()), SagaTracer)


@pytest.mark.asyncio
async def test_instrumenting_twice_adds_no_second_tracer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Regression: a second instrument() added a second tracer, so every span was made twice.
    orchestrator = _orchestrator()
    [tracer] = orchestrator._listeners
    with caplog.at_level(logging.WARNING, logger="sagakit"):
        assert instrument(orchestrator, tracer_provider=provider) is tracer
    assert orchestrator._listeners == (tracer,)
    assert "already instrumented" in caplog.text
    await orchestrator.execute(order("book"), saga_id="twice-1")
    names = [span.name for span in exporter.get_finished_spans()]
    assert names.count("saga otel.order") == 1
    assert names.count("step ship") == 1


def test_instrumenting_again_with_another_provider_is_refused() -> None:
    from sagakit import SagaDefinitionError

    orchestrator = SagaOrchestrator(listeners=[SagaTracer(provider)])
    with pytest.raises(SagaDefinitionError, match=r"already instrumented.*remove_listener"):
        instrument(orchestrator, tracer_provider=TracerProvider())
    with pytest.raises(SagaDefinitionError, match="already instrumented"):
        instrument(orchestrator)  # the global provider: another one too
    assert len(orchestrator._listeners) == 1


def test_instrumenting_again_with_the_global_provider_named_adds_no_second_tracer() -> None:
    # Regression: a tracer of no provider given (the global one) and the global provider
    # given by name were told "of another tracer provider" and refused, though their
    # spans go to one provider; and the other way round.
    for first, then in ((None, trace.get_tracer_provider()), (trace.get_tracer_provider(), None)):
        orchestrator = SagaOrchestrator()
        tracer = instrument(orchestrator, tracer_provider=first)
        assert instrument(orchestrator, tracer_provider=then) is tracer
        assert orchestrator._listeners == (tracer,)


def test_instrumenting_an_orchestrator_with_other_listeners_adds_the_tracer() -> None:
    heard: list[Any] = []
    orchestrator = SagaOrchestrator(listeners=[heard.append])
    tracer = instrument(orchestrator, tracer_provider=provider)
    assert orchestrator._listeners == (heard.append, tracer)


def test_instrumenting_again_with_what_is_no_provider_says_so() -> None:
    # The provider is checked first: not "already instrumented by another provider".
    from sagakit import SagaDefinitionError

    orchestrator = SagaOrchestrator(listeners=[SagaTracer(provider)])
    with pytest.raises(SagaDefinitionError, match="must be a tracer provider"):
        instrument(orchestrator, tracer_provider="not a provider")  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match="not the class"):
        instrument(orchestrator, tracer_provider=TracerProvider)  # type: ignore[arg-type]
