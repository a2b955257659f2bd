"""OpenTelemetry tracing: a span per saga run, a child span per step and compensation.

``instrument(orchestrator, tracer_provider=...)`` adds a ``SagaTracer`` listener. Here the
spans go to the SDK's in-memory exporter (``opentelemetry-sdk``, which the ``sagakit[otel]``
extra does not install) and are printed as a tree: a transfer whose ``credit`` fails once
and is retried, then whose receipt cannot be sent, so the saga is compensated.

Run it with ``python examples/tracing.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

try:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import get_current_span
except ModuleNotFoundError as missing:
    raise SystemExit(
        f"this example needs the OpenTelemetry SDK ({missing.name} is missing): "
        'pip install opentelemetry-sdk (or pip install -e ".[dev]" in a checkout)'
    ) from None

from sagakit import Retry, SagaOrchestrator, StepCall, StepFailed, saga, step
from sagakit.otel import instrument

credit_calls = 0


@step
async def debit(account: str, amount: int) -> str:
    return f"debited {amount}"


@debit.compensate
async def refund(account: str, amount: int) -> None:
    pass


@step(retry=Retry(attempts=2, backoff=0.01, jitter=0, on=ConnectionError))
async def credit(account: str, amount: int) -> str:
    global credit_calls
    credit_calls += 1
    # The step's span is current while it runs: spans of HTTP clients nest under it.
    get_current_span().set_attribute("bank.account", account)
    if credit_calls == 1:
        raise ConnectionError("bank busy")
    return f"credited {amount}"


@credit.compensate
async def take_back(account: str, amount: int) -> None:
    pass


@step
async def send_receipt(account: str, amount: int) -> None:
    raise ConnectionRefusedError("smtp down")


@saga
def transfer(source: str, target: str, amount: int) -> Generator[StepCall[Any], Any, None]:
    yield debit(source, amount)
    yield credit(target, amount)
    yield send_receipt(source, amount)


def show(span: ReadableSpan, children: dict[int, list[ReadableSpan]], depth: int = 0) -> None:
    status = span.status.status_code.name
    if span.status.description:
        status += f" {span.status.description!r}"
    attributes = dict(span.attributes or {})
    details = [event.name for event in span.events]
    if "sagakit.step.attempts" in attributes:
        details.insert(0, f"attempts={attributes['sagakit.step.attempts']}")
    if "bank.account" in attributes:  # set by the step's own code
        details.append(f"bank.account={attributes['bank.account']}")
    line = f"  {'  ' * depth}{span.name}: {status}"
    print(line + (f" [{', '.join(details)}]" if details else ""))
    assert span.context is not None
    for child in children.get(span.context.span_id, []):
        show(child, children, depth + 1)


async def main() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    orchestrator = SagaOrchestrator()
    tracer = instrument(orchestrator, tracer_provider=provider)
    print(f"tracer: {tracer!r}")

    try:
        await orchestrator.execute(transfer("alice", "bob", 30), saga_id="transfer-1")
    except StepFailed as failure:
        print(f"transfer-1 failed at {failure.step_name!r}: {failure.error}")

    spans = sorted(exporter.get_finished_spans(), key=lambda span: span.start_time or 0)
    children: dict[int, list[ReadableSpan]] = {}
    for span in spans:
        if span.parent is not None:
            children.setdefault(span.parent.span_id, []).append(span)
    print("the trace:")
    for span in spans:
        if span.parent is None:
            show(span, children)
    root = next(span for span in spans if span.parent is None)
    print(f"saga span attributes: {dict(root.attributes or {})}")
    provider.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
