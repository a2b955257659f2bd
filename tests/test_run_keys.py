"""One listener shared by orchestrators whose runs have the same saga id at the same time.

Two orchestrators with stores of their own (two MemoryStores, or a MemoryStore and a
SQLiteStore) may run the same explicit saga id at once: each store sees only its own run.
A listener shared by both — a ``SagaTracer``, a ``SagaRecorder`` — must keep the two runs
apart. Regression: both keyed runs by saga id only, so the second run's transitions went
to the first run's spans and records (spans parented to the wrong saga, the first run's
spans ended by the second run, a simulated crash of one ending the other's spans).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    MemoryStore,
    SagaOrchestrator,
    SagaStore,
    SQLiteStore,
    StepCall,
    StepFailed,
    Transition,
    TransitionKind,
    saga,
    step,
)
from sagakit.testing import FaultInjector, SagaRecorder, SimulatedCrash, simulate_restart


class _Gate:
    """Where a run waits, in its first step, until the test lets it go on."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.open = asyncio.Event()


_gates: dict[str, _Gate] = {}


@pytest.fixture(autouse=True)
def _fresh_gates() -> Iterator[None]:
    _gates.clear()
    yield
    _gates.clear()


def _gate(name: str, *, open_: bool = False) -> _Gate:
    gate = _gates[name] = _Gate()
    if open_:
        gate.open.set()
    return gate


@step
async def wait_at(gate: str) -> str:
    _gates[gate].arrived.set()
    await _gates[gate].open.wait()
    return gate


@wait_at.compensate
async def leave(gate: str) -> None:
    return None


@step
async def settle(gate: str) -> str:
    if gate.startswith("refuse"):
        raise RuntimeError(f"{gate} refused")
    return gate


@step
async def notify(gate: str) -> str:
    return gate


@saga(name="run_keys.pair")
def pair(gate: str) -> Generator[StepCall[Any], Any, None]:
    yield wait_at(gate)
    yield settle(gate)
    yield notify(gate)


COMPLETED = [
    "saga_started",
    "step_started wait_at",
    "step_completed wait_at",
    "step_started settle",
    "step_completed settle",
    "step_started notify",
    "step_completed notify",
    "saga_finished completed",
]
COMPENSATED = [
    "saga_started",
    "step_started wait_at",
    "step_completed wait_at",
    "step_started settle",
    "step_failed settle",
    "compensation_started wait_at",
    "compensation_completed wait_at",
    "saga_finished compensated",
]

StoreFactory = Callable[[Path], SagaStore]
_SECOND_STORES: dict[str, StoreFactory] = {
    "memory": lambda _: MemoryStore(),
    "sqlite": lambda path: SQLiteStore(path / "second.db"),
}


async def _interleaved(first: SagaOrchestrator, second: SagaOrchestrator) -> None:
    """``first`` runs id "same" (to a compensation), ``second`` runs "same" (to completion)
    while the first is in flight; the second ends first, then the first goes on."""
    refuse, ok = _gate("refuse-1"), _gate("ok-2")
    running = asyncio.create_task(first.execute(pair("refuse-1"), saga_id="same"))
    await refuse.arrived.wait()
    other = asyncio.create_task(second.execute(pair("ok-2"), saga_id="same"))
    await ok.arrived.wait()  # both are in their first step now
    ok.open.set()
    assert await other == ["ok-2", "ok-2", "ok-2"]
    refuse.open.set()
    with pytest.raises(StepFailed, match="refuse-1 refused"):
        await running


@pytest.mark.asyncio
@pytest.mark.parametrize("second_store", sorted(_SECOND_STORES))
async def test_a_shared_recorder_keeps_two_runs_of_one_id_apart(
    second_store: str, tmp_path: Path
) -> None:
    recorder = SagaRecorder()
    first = SagaOrchestrator(listeners=[recorder])
    async with SagaOrchestrator(
        _SECOND_STORES[second_store](tmp_path), listeners=[recorder]
    ) as second:
        await _interleaved(first, second)
    assert [run.saga_id for run in recorder.runs] == ["same", "same"]
    assert [run.trail() for run in recorder.runs] == [COMPENSATED, COMPLETED]
    # The most recently started run of the id: the second, which completed.
    recorder.assert_status("completed", saga_id="same")
    recorder.runs[0].assert_status("compensated")
    assert len(recorder.transitions) == len(COMPENSATED) + len(COMPLETED)


@pytest.mark.asyncio
async def test_transitions_of_two_runs_of_one_id_carry_different_run_numbers() -> None:
    heard: list[Transition] = []
    first = SagaOrchestrator(listeners=[heard.append])
    second = SagaOrchestrator(listeners=[heard.append])
    await _interleaved(first, second)
    numbers = {t.run_number for t in heard}
    assert len(numbers) == 2
    assert 0 not in numbers
    by_number = {n: [t for t in heard if t.run_number == n] for n in numbers}
    assert sorted(len(ts) for ts in by_number.values()) == sorted(
        [len(COMPENSATED), len(COMPLETED)]
    )
    for transitions in by_number.values():
        assert transitions[0].kind is TransitionKind.SAGA_STARTED
        assert transitions[-1].kind is TransitionKind.SAGA_FINISHED
    # The same saga run again is a new run, with a number of its own.
    _gate("again", open_=True)
    await first.execute(pair("again"), saga_id="again-1")
    await first.execute(pair("again"), saga_id="again-2")
    assert heard[-1].run_number not in numbers
    assert heard[-1].run_number != heard[-len(COMPLETED) - 1].run_number


def test_a_transition_made_by_hand_has_run_number_zero() -> None:
    transition = Transition(TransitionKind.SAGA_STARTED, "s", "n", "executing")  # type: ignore[arg-type]
    assert transition.run_number == 0


@pytest.mark.asyncio
async def test_a_recovery_and_another_run_of_the_id_in_flight_stay_apart(
    tmp_path: Path,
) -> None:
    # A crash of one run of "same" must not end the other run's record, and the
    # recovery (another run of "same") is a run of its own beside the one in flight.
    recorder = SagaRecorder()
    other = SagaOrchestrator(listeners=[recorder])  # a MemoryStore of its own
    ok = _gate("ok-2")
    in_flight = asyncio.create_task(other.execute(pair("ok-2"), saga_id="same"))
    await ok.arrived.wait()
    store = SQLiteStore(tmp_path / "log.db")
    _gate("crash-1", open_=True)
    with FaultInjector().crash(settle), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store, listeners=[recorder]).execute(pair("crash-1"), saga_id="same")
    await simulate_restart(store)
    await store.close()
    async with SagaOrchestrator(
        SQLiteStore(tmp_path / "log.db"), listeners=[recorder]
    ) as restarted:
        assert len(await restarted.recover()) == 1
    ok.open.set()
    assert await in_flight == ["ok-2", "ok-2", "ok-2"]
    # The crashed run is replaced by its recovery; the run in flight is kept.
    assert [run.trail() for run in recorder.runs] == [
        COMPLETED,
        [  # the recovery: wait_at, recorded, is replayed and not told again
            "saga_started",
            "step_started settle",
            "step_completed settle",
            "step_started notify",
            "step_completed notify",
            "saga_finished completed",
        ],
    ]
    assert [run.finished for run in recorder.runs] == [True, True]


# ---------------------------------------------------------------- the tracer


@pytest.fixture
def spans() -> Iterator[Any]:
    """A tracer provider exporting to memory, and its exporter."""
    pytest.importorskip("opentelemetry.sdk", reason="the OpenTelemetry SDK is in the dev extra")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def _tree(finished: Any) -> list[tuple[str, list[str]]]:
    """Each saga span's status ("ok", else its description) and its children's names,
    in the order the saga spans ended."""
    from opentelemetry.trace import StatusCode

    tree = []
    for root in (span for span in finished if span.parent is None):
        children = [s for s in finished if s.parent and s.parent.span_id == root.context.span_id]
        for child in children:
            assert child.context.trace_id == root.context.trace_id
        status = root.status
        ok = status.status_code is StatusCode.OK
        tree.append(("ok" if ok else str(status.description), [s.name for s in children]))
    return tree


@pytest.mark.asyncio
@pytest.mark.parametrize("second_store", sorted(_SECOND_STORES))
async def test_a_shared_tracer_keeps_two_runs_of_one_id_apart(
    spans: Any, second_store: str, tmp_path: Path
) -> None:
    from sagakit.otel import SagaTracer

    provider, exporter = spans
    tracer = SagaTracer(provider)
    first = SagaOrchestrator(listeners=[tracer])
    async with SagaOrchestrator(
        _SECOND_STORES[second_store](tmp_path), listeners=[tracer]
    ) as second:
        await _interleaved(first, second)
    assert repr(tracer) == "<SagaTracer 0 open sagas>"
    finished = exporter.get_finished_spans()
    roots = [span for span in finished if span.parent is None]
    assert [root.name for root in roots] == ["saga run_keys.pair"] * 2
    # The second run ended first: its saga span is exported first.
    assert _tree(finished) == [
        ("ok", ["step wait_at", "step settle", "step notify"]),
        ("saga ended compensated", ["step wait_at", "step settle", "compensate wait_at"]),
    ]


@pytest.mark.asyncio
async def test_a_simulated_crash_ends_only_its_own_runs_spans(spans: Any) -> None:
    from sagakit.otel import SagaTracer

    provider, exporter = spans
    tracer = SagaTracer(provider)
    other = SagaOrchestrator(listeners=[tracer])
    ok = _gate("ok-2")
    in_flight = asyncio.create_task(other.execute(pair("ok-2"), saga_id="same"))
    await ok.arrived.wait()
    _gate("crash-1", open_=True)
    with FaultInjector().crash(settle), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(listeners=[tracer]).execute(pair("crash-1"), saga_id="same")
    [crashed] = [span for span in exporter.get_finished_spans() if span.parent is None]
    assert crashed.status.description == "process crashed (simulated)"
    ok.open.set()
    await in_flight
    assert _tree(exporter.get_finished_spans()) == [
        ("process crashed (simulated)", ["step wait_at", "step settle"]),
        ("ok", ["step wait_at", "step settle", "step notify"]),
    ]
    assert repr(tracer) == "<SagaTracer 0 open sagas>"
