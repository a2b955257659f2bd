"""A step cancelled before its function was called — while its start was being written to
a durable log, or told to a listener — never ran: every store records it ``FAILED``
("cancelled before the step started"), listeners that heard it start hear it end, and
neither the run nor recovery compensates it.

Regression: when its start was in the log (or told), no transition ended it. Listeners (an
OpenTelemetry span) heard it start and never end; the log kept it ``running`` until the
run's end; and a process dying while the saga compensated left it so, so recovery took it
for a step its process had died in and compensated it — undoing a step that never ran.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from sagakit import SagaOrchestrator, SagaStatus, StepStatus, Transition, TransitionKind, saga, step
from sagakit.stores import CommittedThenCancelled, MemoryStore
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

UNSTARTED = "CancelledError: cancelled before the step started"
effects: list[str] = []


@step
async def cbs_book(order: str) -> str:
    effects.append("book")
    return order


@cbs_book.compensate
async def cbs_unbook(order: str) -> None:
    effects.append("unbook")


@step(compensate_on_failure=True)  # (it never fails: recovery must not take it for one)
async def cbs_ship(order: str) -> str:
    effects.append("ship")
    return order


@cbs_ship.compensate
async def cbs_unship(order: str) -> None:
    effects.append("unship")


@saga
def cbs_order(order: str) -> Any:
    yield cbs_book(order)
    yield cbs_ship(order)


def _hold_the_start(store: Any, held: asyncio.Event, *, committed: bool) -> None:
    """The store's write of cbs_ship's start waits to be cancelled; ``committed``: it
    commits first (and says so, as the built-in stores do)."""
    record = store.record

    async def holding(run: Any, transition: Transition) -> None:
        if transition.kind is TransitionKind.STEP_STARTED and transition.step_name == "cbs_ship":
            if committed:
                await record(run, transition)
            held.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if committed:
                    raise CommittedThenCancelled() from None
                raise
        await record(run, transition)

    store.record = holding


def _told(heard: list[Transition]) -> list[tuple[str, str | None]]:
    return [(str(t.kind), t.step_name) for t in heard if t.kind is not TransitionKind.SAGA_STARTED]


TOLD = [
    ("step_started", "cbs_book"),
    ("step_completed", "cbs_book"),
    ("step_started", "cbs_ship"),
    ("step_failed", "cbs_ship"),
    ("compensation_started", "cbs_book"),
    ("compensation_completed", "cbs_book"),
    ("saga_finished", None),
]


@pytest.mark.asyncio
async def test_listeners_hear_the_end_of_a_step_they_heard_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sagakit")
    effects.clear()
    held = asyncio.Event()
    heard: list[Transition] = []

    async def slow(transition: Transition) -> None:
        if transition.kind is TransitionKind.STEP_STARTED and transition.step_name == "cbs_ship":
            held.set()
            await asyncio.Event().wait()

    orchestrator = SagaOrchestrator(MemoryStore(), listeners=[heard.append, slow])
    task = asyncio.create_task(orchestrator.execute(cbs_order("o"), saga_id="cbs-1"))
    await held.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _told(heard) == TOLD
    failed = heard[4]
    assert isinstance(failed.error, asyncio.CancelledError)
    assert str(failed.error) == "cancelled before the step started"
    meta = await orchestrator.get_saga("cbs-1")
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert (meta.steps[1].status, meta.steps[1].error) == (StepStatus.FAILED, UNSTARTED)
    assert effects == ["book", "unbook"]
    # Its step_failed says why the saga was compensated (a record of its own, else).
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(
        "step_failed step 1 'cbs_ship': CancelledError: cancelled before the step started" in m
        for m in warned
    ), warned
    assert not [m for m in warned if "cancelled while no step ran" in m]


@pytest.mark.asyncio
async def test_a_logged_start_is_ended_in_the_log_before_anything_is_undone(
    durable_store: Callable[..., Any],
) -> None:
    effects.clear()
    held = asyncio.Event()
    heard: list[Transition] = []
    store = durable_store()
    _hold_the_start(store, held, committed=True)
    seen_in_the_log: list[Any] = []

    async def peek(transition: Transition) -> None:
        if transition.kind is TransitionKind.COMPENSATION_STARTED:
            meta = await store.get("cbs-2")
            seen_in_the_log.append((meta.steps[1].status, meta.steps[1].error))

    orchestrator = SagaOrchestrator(store, listeners=[heard.append, peek])
    task = asyncio.create_task(orchestrator.execute(cbs_order("o"), saga_id="cbs-2"))
    await held.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _told(heard) == TOLD
    assert seen_in_the_log == [(StepStatus.FAILED, UNSTARTED)]
    meta = await store.get("cbs-2")
    await store.close()
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert (meta.steps[1].status, meta.steps[1].error) == (StepStatus.FAILED, UNSTARTED)
    assert effects == ["book", "unbook"]


@pytest.mark.asyncio
async def test_recovery_does_not_undo_a_step_cancelled_before_it_started(
    durable_store: Callable[..., Any],
) -> None:
    effects.clear()
    held = asyncio.Event()
    store = durable_store()
    _hold_the_start(store, held, committed=True)
    orchestrator = SagaOrchestrator(store)
    with FaultInjector().crash(cbs_book, compensation=True):
        task = asyncio.create_task(orchestrator.execute(cbs_order("o"), saga_id="cbs-3"))
        await held.wait()
        task.cancel()  # compensates; "the process dies" as it unbooks
        with pytest.raises(SimulatedCrash):
            await task
    await simulate_restart(store)
    await store.close()

    async with SagaOrchestrator(durable_store()) as restarted:
        outcomes = await restarted.recover()
        recovered = await restarted.get_saga("cbs-3")
    assert [(o.saga_id, o.status) for o in outcomes] == [("cbs-3", SagaStatus.COMPENSATED)]
    assert recovered is not None
    assert (recovered.steps[1].status, recovered.steps[1].error) == (StepStatus.FAILED, UNSTARTED)
    assert [c.name for c in recovered.compensations] == ["cbs_book"]
    assert effects == ["book", "unbook"]  # cbs_ship neither ran nor was undone


@pytest.mark.asyncio
async def test_its_span_ends_with_its_cancellation_before_the_compensations() -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the OpenTelemetry SDK is in the dev extra")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from sagakit.otel import SagaTracer

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    held = asyncio.Event()

    async def slow(transition: Transition) -> None:
        if transition.kind is TransitionKind.STEP_STARTED and transition.step_name == "cbs_ship":
            held.set()
            await asyncio.Event().wait()

    orchestrator = SagaOrchestrator(listeners=[SagaTracer(provider), slow])
    task = asyncio.create_task(orchestrator.execute(cbs_order("o"), saga_id="cbs-4"))
    await held.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    spans = {span.name: span for span in exporter.get_finished_spans()}
    ship = spans["step cbs_ship"]
    assert ship.status.status_code is StatusCode.ERROR
    assert ship.status.description == UNSTARTED  # not "interrupted" at the saga's end
    assert ship.end_time is not None
    assert ship.end_time <= spans["compensate cbs_book"].start_time


@pytest.mark.asyncio
async def test_every_log_records_a_step_whose_start_never_reached_it(
    durable_store: Callable[..., Any],
) -> None:
    # Regression: SQLite's log kept no trace of it (the run's end only updated a record
    # its start had written), where PostgreSQL's log and MemoryStore keep it FAILED.
    effects.clear()
    held = asyncio.Event()
    heard: list[Transition] = []
    store = durable_store()
    _hold_the_start(store, held, committed=False)
    orchestrator = SagaOrchestrator(store, listeners=[heard.append])
    task = asyncio.create_task(orchestrator.execute(cbs_order("o"), saga_id="cbs-5"))
    await held.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.close()
    reading = durable_store()
    meta = await reading.get("cbs-5")
    await reading.close()
    # Neither its start nor its end is told: its start is not in the log.
    assert [t for t in _told(heard) if t[1] == "cbs_ship"] == []
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert [(s.name, s.status, s.error) for s in meta.steps] == [
        ("cbs_book", StepStatus.COMPLETED, None),
        ("cbs_ship", StepStatus.FAILED, UNSTARTED),
    ]
    assert [c.name for c in meta.compensations] == ["cbs_book"]
    assert effects == ["book", "unbook"]
