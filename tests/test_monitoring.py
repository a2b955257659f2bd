"""Issue 2, point 9: statuses, metadata, step records and the monitoring calls."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import weakref
from collections.abc import Generator
from contextvars import ContextVar
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    MemoryStore,
    Retry,
    SagaDefinition,
    SagaDefinitionError,
    SagaMetadata,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StepCall,
    StepFailed,
    StepRecord,
    StepStatus,
    StoreConfigError,
    Transition,
    TransitionKind,
    current_step,
    saga,
    step,
)
from sagakit._runs import SagaRun
from sagakit.testing import FaultInjector, SimulatedCrash

# ------------------------------------------------------------------ statuses


def test_saga_status_is_a_str_enum_with_the_original_names() -> None:
    assert [s.name for s in SagaStatus] == [
        "NOT_STARTED",
        "EXECUTING",
        "COMPENSATING",
        "COMPLETED",
        "COMPENSATED",
        "FAILED",
    ]
    assert str(SagaStatus.COMPLETED) == "completed"
    assert f"{SagaStatus.EXECUTING}" == "executing"
    assert SagaStatus("failed") is SagaStatus.FAILED
    assert [s for s in SagaStatus if s.is_finished] == [
        SagaStatus.COMPLETED,
        SagaStatus.COMPENSATED,
        SagaStatus.FAILED,
    ]


@pytest.mark.asyncio
async def test_statuses_seen_from_inside_the_steps_and_compensations() -> None:
    orchestrator = SagaOrchestrator()
    seen: list[tuple[str, SagaStatus, int, int]] = []

    async def observe(label: str) -> None:
        ctx = current_step()
        assert ctx is not None
        running = await orchestrator.get_running_sagas()
        assert [m.id for m in running] == [ctx.saga_id]
        meta = await orchestrator.get_saga(ctx.saga_id)
        assert meta is not None
        seen.append((label, meta.status, meta.steps_executed, await orchestrator.running_count()))

    @step
    async def first() -> str:
        await observe("first")
        return "1"

    @first.compensate
    async def undo_first() -> None:
        await observe("undo first")

    @step
    async def second() -> str:
        await observe("second")
        return "2"

    @step
    async def third() -> None:
        await observe("third")
        raise ValueError("third fails")

    definition = SagaDefinition("m-1").add_step(first()).add_step(second())
    assert definition.metadata().status is SagaStatus.NOT_STARTED
    await orchestrator.execute(definition)
    with pytest.raises(StepFailed):
        await orchestrator.execute(definition.add_step(third()).with_id("m-2"))

    assert seen == [
        ("first", SagaStatus.EXECUTING, 0, 1),
        ("second", SagaStatus.EXECUTING, 1, 1),
        ("first", SagaStatus.EXECUTING, 0, 1),
        ("second", SagaStatus.EXECUTING, 1, 1),
        ("third", SagaStatus.EXECUTING, 2, 1),
        ("undo first", SagaStatus.COMPENSATING, 2, 1),
    ]
    done = await orchestrator.get_saga("m-1")
    failed = await orchestrator.get_saga("m-2")
    assert done is not None
    assert failed is not None
    assert (done.status, done.steps_executed, done.total_steps) == (SagaStatus.COMPLETED, 2, 2)
    assert (failed.status, failed.steps_executed, failed.total_steps) == (
        SagaStatus.COMPENSATED,
        2,
        3,
    )
    assert await orchestrator.get_running_sagas() == []
    assert await orchestrator.running_count() == 0


@pytest.mark.asyncio
async def test_current_step_describes_the_running_step() -> None:
    contexts: list[Any] = []

    @step(retry=Retry(attempts=2, backoff=0))
    async def flaky() -> str:
        contexts.append(current_step())
        if len(contexts) == 1:
            raise ConnectionError("once")
        return "ok"

    @flaky.compensate
    async def undo_flaky() -> None:
        contexts.append(current_step())

    @step
    async def boom() -> None:
        raise ValueError("x")

    assert current_step() is None
    with pytest.raises(StepFailed):
        await SagaOrchestrator().execute(SagaDefinition("ctx").add_step(flaky()).add_step(boom()))
    assert current_step() is None

    first, second, undo = contexts
    assert (first.saga_id, first.saga_name, first.step_index, first.step_name) == (
        "ctx",
        "ctx",
        0,
        "flaky",
    )
    assert (first.attempt, second.attempt) == (1, 2)
    assert (first.compensating, undo.compensating) == (False, True)
    assert first.idempotency_key == second.idempotency_key == "ctx:0"


@pytest.mark.asyncio
async def test_current_step_is_none_between_steps() -> None:
    # It went on describing the step that had ended: in the saga's body between yields,
    # and in listeners hearing of the step's end or the saga's.
    seen: list[tuple[str, Any]] = []

    @step
    async def one() -> int:
        seen.append(("in one", current_step()))
        return 1

    @saga
    def body() -> Generator[StepCall[Any], Any, None]:
        yield one()
        seen.append(("between", current_step()))
        yield one()

    def listener(transition: Any) -> None:
        seen.append((str(transition.kind), current_step()))

    await SagaOrchestrator(listeners=[listener]).execute(body())
    described = {label: ctx for label, ctx in seen if ctx is not None}
    assert set(described) == {"in one", "step_started"}  # the step about to run
    assert all(ctx.step_name == "one" for ctx in described.values())
    ended = [label for label, ctx in seen if ctx is None]
    assert ended == ["saga_started", "step_completed", "between", "step_completed", "saga_finished"]


@pytest.mark.asyncio
async def test_a_task_a_step_created_never_sees_a_later_step() -> None:
    # Regression: current_step() in a task a step created (asyncio.create_task copies its
    # context) described whatever step of the saga ran when it was asked: still running
    # after its step had returned, the task got the next step's idempotency key, which a
    # service then took for that step's (answering that step's own call as a repeat).
    seen: dict[str, Any] = {}
    later: list[asyncio.Task[None]] = []
    second_runs = asyncio.Event()
    compensating = asyncio.Event()

    async def background(where: str, then: asyncio.Event) -> None:
        seen[f"{where}: at once"] = current_step()
        await then.wait()
        seen[f"{where}: later"] = current_step()

    @step
    async def first() -> None:
        seen["first"] = current_step()
        later.append(asyncio.create_task(background("first", second_runs)))
        await asyncio.sleep(0)  # (the task starts while its step runs)

    @first.compensate
    async def undo_first() -> None:
        seen["undo"] = current_step()
        compensating.set()
        await later[-1]

    @step
    async def second() -> None:
        later.append(asyncio.create_task(background("second", compensating)))
        await asyncio.sleep(0)
        second_runs.set()
        await later[0]
        raise ValueError("declined")

    with pytest.raises(StepFailed):
        await SagaOrchestrator().execute(
            SagaDefinition("bg").add_step(first()).add_step(second()), saga_id="bg-1"
        )
    keys = {where: ctx and ctx.idempotency_key for where, ctx in seen.items()}
    assert keys == {
        "first": "bg-1:0",
        "first: at once": "bg-1:0",  # while its step runs: that step's
        "first: later": None,  # the second step runs: not its step
        "second: at once": "bg-1:1",
        "undo": "bg-1:0",
        "second: later": None,  # the compensation of the first step runs
    }


@pytest.mark.asyncio
async def test_current_step_is_none_in_a_step_awaited_alone_inside_a_saga_step() -> None:
    # A step awaited on its own inside a saga's step saw that step's context: its name,
    # attempt and idempotency key, so two charges awaited by one step sent one key (a
    # payment service answers the second with the first) and a retry kept attempt 1.
    seen: list[Any] = []

    @step(retry=Retry(attempts=2, backoff=0))
    async def charge(item: str) -> str:
        seen.append((item, current_step()))
        if len(seen) == 1:
            raise ConnectionError("once")
        return item

    @step
    async def checkout() -> list[str]:
        outer = current_step()
        items = [await charge("pen"), await charge("ink")]
        assert current_step() == outer  # the saga's step again, once they returned
        return items

    @step
    async def refund() -> None:
        seen.append(("refund", current_step()))

    @checkout.compensate
    async def undo_checkout() -> None:
        await refund()

    @step
    async def boom() -> None:
        raise ValueError("x")

    with pytest.raises(StepFailed):
        await SagaOrchestrator().execute(SagaDefinition("co").add_step(checkout()).add_step(boom()))
    assert seen == [("pen", None), ("pen", None), ("ink", None), ("refund", None)]


@pytest.mark.asyncio
@pytest.mark.parametrize("crashed_after", [False, True], ids=["failed", "crashed-after"])
async def test_a_step_declared_as_a_compensation_is_that_compensation(crashed_after: bool) -> None:
    # It is not awaited on its own inside one: current_step() describes the compensation;
    # an injected crash-after runs the step before "the process dies", as the compensation.
    seen: list[Any] = []

    @step
    async def charge(order: str) -> str:
        return order

    @step
    async def refund(order: str) -> None:
        seen.append(current_step())

    charge.compensate(refund)

    @step
    async def boom() -> None:
        raise ValueError("x")

    definition = SagaDefinition("r").add_step(charge("o")).add_step(boom())
    if crashed_after:
        with FaultInjector().crash(refund, after=True), pytest.raises(SimulatedCrash):
            await SagaOrchestrator().execute(definition)
    else:
        with pytest.raises(StepFailed):
            await SagaOrchestrator().execute(definition)
    [ctx] = seen
    assert ctx is not None
    assert (ctx.step_name, ctx.compensating, ctx.idempotency_key) == ("charge", True, "r:0")


@pytest.mark.asyncio
async def test_generator_total_steps_is_known_once_finished() -> None:
    @step
    async def one() -> int:
        return 1

    @saga
    def counted() -> Generator[StepCall[Any], Any, None]:
        yield one()
        yield one()
        yield one()

    orchestrator = SagaOrchestrator()
    definition = counted().with_id("g")
    assert definition.metadata().total_steps is None
    await orchestrator.execute(definition)
    meta = await orchestrator.get_saga("g")
    assert meta is not None
    assert (meta.steps_executed, meta.total_steps) == (3, 3)


# ------------------------------------------------------------------ records


@pytest.mark.asyncio
async def test_timestamps_are_utc_aware_and_ordered() -> None:
    snapshots: list[SagaMetadata] = []
    orchestrator = SagaOrchestrator()

    @step
    async def peek() -> None:
        ctx = current_step()
        assert ctx is not None
        meta = await orchestrator.get_saga(ctx.saga_id)
        assert meta is not None
        snapshots.append(meta)
        await asyncio.sleep(0.002)

    await orchestrator.execute(SagaDefinition("ts").add_step(peek()).add_step(peek()))
    final = await orchestrator.get_saga("ts")
    assert final is not None

    for meta in (*snapshots, final):
        assert meta.started_at is not None
        assert meta.started_at.tzinfo is not None
        assert meta.started_at.utcoffset() == timedelta(0)
        assert meta.updated_at is not None
        assert meta.updated_at.tzinfo is not None
        assert meta.started_at <= meta.updated_at
    assert snapshots[0].finished_at is None
    assert final.finished_at is not None
    assert final.finished_at.tzinfo == UTC
    assert snapshots[0].updated_at <= snapshots[1].updated_at <= final.updated_at  # type: ignore[operator]
    assert final.updated_at <= final.finished_at  # type: ignore[operator]
    assert final.started_at == snapshots[0].started_at
    assert final.duration is not None
    # The two steps' sleeps, less a millisecond: uvloop's clock (loop.time(), which the
    # run's times are read from) counts whole milliseconds, and measured 3.999 ms once.
    assert final.duration >= 0.004 - 0.001


@pytest.mark.asyncio
async def test_updated_at_moves_when_a_step_fails_and_compensations_start() -> None:
    # The default store moved updated_at only when a step or compensation completed, so
    # a saga compensating for minutes showed the time of its last completed step (its
    # duration "in 0.1 ms"), where the SQLite and PostgreSQL logs show the failure and
    # each compensation's start, as its status changes.
    orchestrator = SagaOrchestrator(compensation_retry=Retry(attempts=1))
    seen: list[SagaMetadata] = []

    async def snapshot() -> None:
        ctx = current_step()
        assert ctx is not None
        meta = await orchestrator.get_saga(ctx.saga_id)
        assert meta is not None
        seen.append(meta)

    @step
    async def mu_reserve() -> None:
        return None

    @mu_reserve.compensate
    async def mu_release() -> None:
        await snapshot()

    @step
    async def mu_charge() -> None:
        await snapshot()
        await asyncio.sleep(0.01)  # the clock moves on (uvloop reads it to the ms)
        raise ValueError("declined")

    with pytest.raises(StepFailed):
        await orchestrator.execute(
            SagaDefinition("mu").add_step(mu_reserve()).add_step(mu_charge())
        )
    during_step, compensating = seen
    assert compensating.status is SagaStatus.COMPENSATING
    assert during_step.updated_at is not None
    assert compensating.updated_at is not None
    assert compensating.updated_at > during_step.updated_at
    assert compensating.duration is not None
    assert during_step.duration is not None
    assert compensating.duration > during_step.duration


@pytest.mark.asyncio
async def test_step_records_hold_attempts_duration_status_and_error() -> None:
    @step(retry=Retry(attempts=3, backoff=0, on=ConnectionError))
    async def flaky() -> list[str]:
        flaky_calls.append(1)
        if len(flaky_calls) < 3:
            raise ConnectionError("flap")
        await asyncio.sleep(0.002)
        return ["e1", "e2"]

    flaky_calls: list[int] = []

    @step
    async def broken() -> None:
        raise KeyError("missing")

    orchestrator = SagaOrchestrator()
    with pytest.raises(StepFailed):
        await orchestrator.execute(SagaDefinition("rec").add_step(flaky()).add_step(broken()))
    meta = await orchestrator.get_saga("rec")
    assert meta is not None

    ok, bad = meta.steps
    assert (ok.index, ok.name, ok.status, ok.attempts) == (0, "flaky", StepStatus.COMPLETED, 3)
    assert ok.error is None
    assert ok.events == ("e1", "e2")
    assert ok.duration is not None
    # It slept 2 ms by the loop's clock; on uvloop's millisecond clock `now - started`
    # can round a hair below that.
    assert ok.duration >= 0.002 - 1e-9
    assert ok.compensation is False
    assert (bad.index, bad.name, bad.status, bad.attempts) == (1, "broken", StepStatus.FAILED, 1)
    assert bad.error == "KeyError: 'missing'"
    assert bad.duration is not None
    assert meta.error == "StepFailed: step 1 ('broken') failed: KeyError: 'missing'"
    assert meta.events == ("e1", "e2")
    assert repr(ok) == f"<step 0 flaky: completed after 3 attempts in {ok.duration * 1000:.1f} ms>"
    assert "\n" not in repr(meta)
    assert repr(meta).startswith("<SagaMetadata rec id='rec' compensated 1/2 steps")


@pytest.mark.asyncio
async def test_records_are_frozen_snapshots() -> None:
    release = asyncio.Event()

    @step
    async def wait() -> str:
        await release.wait()
        return "done"

    orchestrator = SagaOrchestrator()
    task = asyncio.create_task(orchestrator.execute(SagaDefinition("snap").add_step(wait())))
    await asyncio.sleep(0)
    during = await orchestrator.get_saga("snap")
    release.set()
    await task
    after = await orchestrator.get_saga("snap")

    assert during is not None
    assert after is not None
    assert during.status is SagaStatus.EXECUTING  # unchanged by what happened since
    assert during.steps[0].status is StepStatus.RUNNING
    assert after.status is SagaStatus.COMPLETED
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.status = SagaStatus.FAILED  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.steps[0].attempts = 9  # type: ignore[misc]


# ------------------------------------------------------------------ history


@step
async def noop(n: int) -> int:
    return n


@noop.compensate
async def un_noop(n: int) -> None:
    return None


@step
async def explode() -> None:
    raise RuntimeError("boom")


@pytest.mark.asyncio
async def test_history_counts_and_limits() -> None:
    orchestrator = SagaOrchestrator()
    assert await orchestrator.history_count() == 0
    assert await orchestrator.get_history() == []
    for n in range(5):
        await orchestrator.execute(SagaDefinition(f"h-{n}").add_step(noop(n)))

    assert await orchestrator.history_count() == 5
    assert [m.id for m in await orchestrator.get_history()] == [f"h-{n}" for n in range(5)]
    assert [m.id for m in await orchestrator.get_history(limit=2)] == ["h-3", "h-4"]
    assert await orchestrator.get_history(limit=0) == []
    assert [m.events for m in await orchestrator.get_history(limit=1)] == [(4,)]
    assert await orchestrator.get_saga("unknown") is None


@pytest.mark.asyncio
async def test_history_is_bounded_by_history_limit() -> None:
    orchestrator = SagaOrchestrator(history_limit=3)
    for n in range(10):
        await orchestrator.execute(SagaDefinition(f"b-{n}").add_step(noop(n)))

    assert await orchestrator.history_count() == 3
    assert [m.id for m in await orchestrator.get_history()] == ["b-7", "b-8", "b-9"]
    assert await orchestrator.get_saga("b-0") is None
    assert await orchestrator.get_saga("b-9") is not None


@pytest.mark.asyncio
async def test_history_limit_zero_keeps_no_history() -> None:
    orchestrator = SagaOrchestrator(history_limit=0)
    await orchestrator.execute(SagaDefinition("z").add_step(noop(1)))
    assert await orchestrator.history_count() == 0
    assert await orchestrator.running_count() == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("fails", [False, True])
async def test_the_history_does_not_keep_the_tasks_of_finished_runs(fails: bool) -> None:
    orchestrator = SagaOrchestrator()
    definition = SagaDefinition("t").add_step(noop(1))
    if fails:
        definition = definition.add_step(explode())
    task = asyncio.create_task(orchestrator.execute(definition))
    await asyncio.wait([task])
    assert isinstance(task.exception(), StepFailed) if fails else task.result() == [1]
    finished = weakref.ref(task)
    del task
    gc.collect()

    assert finished() is None  # the run in the history let it go
    assert await orchestrator.history_count() == 1


@pytest.mark.asyncio
async def test_the_watchdog_does_not_keep_a_finished_sagas_context_alive() -> None:
    # Its timer is scheduled while a step runs: it must not hold that task's context (the
    # run, and whatever the caller keeps in context variables) until the timer is due.
    orchestrator = SagaOrchestrator(history_limit=0)
    request: ContextVar[object] = ContextVar("request")

    class Request:
        pass

    async def handle(held: Request) -> None:
        request.set(held)
        await orchestrator.execute(SagaDefinition("ctx").add_step(noop(1)))

    held = Request()
    gone = weakref.ref(held)
    await asyncio.create_task(handle(held))  # in a context of its own
    del held
    await asyncio.sleep(0)  # the loop lets go of the finished task
    gc.collect()

    assert gone() is None
    assert not [o for o in gc.get_objects() if isinstance(o, SagaRun) and o.id == "ctx"]


def test_default_history_limit_is_ten_thousand() -> None:
    assert MemoryStore().history_limit == 10_000
    assert SagaOrchestrator().store.history_limit == 10_000  # type: ignore[attr-defined]


@pytest.mark.parametrize("limit", [-1, 2.5, "10", True])
def test_bad_history_limits_are_refused(limit: Any) -> None:
    with pytest.raises(SagaDefinitionError, match="history_limit"):
        SagaOrchestrator(history_limit=limit)
    # A StoreConfigError (a SagaDefinitionError), as every store's bad settings are.
    with pytest.raises(StoreConfigError, match="history_limit must be a whole number >= 0"):
        MemoryStore(history_limit=limit)


def test_a_store_that_is_not_a_store_is_refused() -> None:
    with pytest.raises(SagaDefinitionError, match="SagaStore"):
        SagaOrchestrator(store=object())  # type: ignore[arg-type]


def test_a_store_class_instead_of_a_store_is_refused() -> None:
    # A class has the protocol's methods, so it passed the check, and execute() failed
    # with "MemoryStore.begin() missing 1 required positional argument: 'run'".
    with pytest.raises(SagaDefinitionError) as info:
        SagaOrchestrator(MemoryStore)  # type: ignore[arg-type]
    assert str(info.value) == (
        "store must be an instance, not the class MemoryStore; pass an instance: MemoryStore(...)"
    )


@pytest.mark.asyncio
async def test_concurrent_runs_never_mix_their_records() -> None:
    turn = asyncio.Event()

    @step
    async def tagged(tag: str, n: int) -> list[str]:
        await turn.wait()
        ctx = current_step()
        assert ctx is not None
        return [f"{ctx.saga_id}/{tag}:{n}"]  # each task sees its own run

    @saga
    def flow(tag: str) -> list[StepCall[Any]]:
        return [tagged(tag, 1), tagged(tag, 2), tagged(tag, 3)]

    orchestrator = SagaOrchestrator()
    shared = flow("shared")  # one definition, run under several ids at once
    runs = {"x": flow("x"), "y": flow("y"), "s0": shared, "s1": shared}
    tasks = [
        asyncio.create_task(orchestrator.execute(definition, saga_id=saga_id))
        for saga_id, definition in runs.items()
    ]
    await asyncio.sleep(0)
    assert await orchestrator.running_count() == 4
    assert {m.id for m in await orchestrator.get_running_sagas()} == set(runs)
    turn.set()
    results = await asyncio.gather(*tasks)

    for (saga_id, definition), events in zip(runs.items(), results, strict=True):
        tag = definition.args[0]
        expected = [f"{saga_id}/{tag}:{n}" for n in (1, 2, 3)]
        assert events == expected
        meta = await orchestrator.get_saga(saga_id)
        assert meta is not None
        assert meta.events == tuple(expected)
        assert [s.events for s in meta.steps] == [(e,) for e in expected]
        assert meta.steps_executed == 3
    assert shared.saga_id is None


@pytest.mark.asyncio
@pytest.mark.parametrize("fails", [False, True], ids=["completed", "compensated"])
async def test_a_listener_hearing_the_end_sees_the_saga_finished(fails: bool) -> None:
    # A metrics listener reading the counts on SAGA_FINISHED: the saga is in the history
    # then, no longer running, as a durable store shows it.
    @step
    async def reserve() -> str:
        return "reserved"

    @reserve.compensate
    async def release(result: str) -> None:
        pass

    @step
    async def ship(fail: bool) -> None:
        if fail:
            raise RuntimeError("fragile")

    orchestrator = SagaOrchestrator()
    seen: list[tuple[int, int, list[str], SagaStatus | None]] = []

    async def gauge(transition: Transition) -> None:
        if transition.kind is TransitionKind.SAGA_FINISHED:
            metadata = await orchestrator.get_saga(transition.saga_id)
            seen.append(
                (
                    await orchestrator.running_count(),
                    await orchestrator.history_count(),
                    [m.id for m in await orchestrator.get_running_sagas()],
                    None if metadata is None else metadata.status,
                )
            )

    orchestrator.add_listener(gauge)
    definition = SagaDefinition(steps=[reserve(), ship(fails)])
    if fails:
        with pytest.raises(StepFailed):
            await orchestrator.execute(definition, saga_id="s")
    else:
        await orchestrator.execute(definition, saga_id="s")
    status = SagaStatus.COMPENSATED if fails else SagaStatus.COMPLETED
    assert seen == [(0, 1, [], status)]


@pytest.mark.asyncio
async def test_a_cancelled_saga_is_never_seen_running_with_a_finished_status() -> None:
    # Cancelled, it compensates in a task of its own; once that is done and before the
    # saga's task goes on to end the run, it is still running: COMPENSATING, not yet
    # COMPENSATED without a finished_at.
    orchestrator = SagaOrchestrator()
    polls: list[asyncio.Task[list[SagaMetadata]]] = []

    @step
    async def reserve() -> str:
        return "reserved"

    @reserve.compensate
    async def release(result: str) -> None:
        # The poll runs once this compensation has returned, before the saga ends.
        polls.append(asyncio.ensure_future(orchestrator.get_running_sagas()))

    waiting = asyncio.Event()

    @step
    async def wait() -> None:
        waiting.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(
        orchestrator.execute(SagaDefinition(steps=[reserve(), wait()]), saga_id="s")
    )
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [running] = await polls[0]
    assert (running.status, running.finished_at) == (SagaStatus.COMPENSATING, None)
    finished = await orchestrator.get_saga("s")
    assert finished is not None
    assert finished.status is SagaStatus.COMPENSATED


@pytest.mark.asyncio
@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
async def test_a_record_waiting_to_retry_shows_why_in_every_store(
    store_kind: str, tmp_path: Path
) -> None:
    # While a step (or compensation) waits for its next attempt, its record shows the
    # error it is retried for, as SQLite's does; the in-memory store showed
    # none, so an operator polling it could not tell why a saga was stuck retrying.
    failures = {"charge": 1, "refund": 1}

    @step(retry=Retry(attempts=2, backoff=0))
    async def charge() -> str:
        if failures["charge"]:
            failures["charge"] -= 1
            raise ConnectionError("bank down")
        return "charged"

    @charge.compensate
    async def refund(result: str) -> None:
        if failures["refund"]:
            failures["refund"] -= 1
            raise ConnectionError("bank still down")

    @step
    async def ship() -> None:
        raise RuntimeError("no stock")

    waiting: list[tuple[StepRecord, ...]] = []

    async def sleep(seconds: float) -> None:
        metadata = await orchestrator.get_saga("s")
        assert metadata is not None
        waiting.append((*metadata.steps, *metadata.compensations))

    store = MemoryStore() if store_kind == "memory" else SQLiteStore(tmp_path / "log.db")
    orchestrator = SagaOrchestrator(
        store, sleep=sleep, compensation_retry=Retry(attempts=2, backoff=0)
    )
    with pytest.raises(StepFailed):
        await orchestrator.execute(SagaDefinition(steps=[charge(), ship()]), saga_id="s")
    metadata = await orchestrator.get_saga("s")
    await orchestrator.close()
    shown = [[(r.name, r.status, r.attempts, r.error) for r in records] for records in waiting]
    assert shown == [
        [("charge", StepStatus.RUNNING, 1, "ConnectionError: bank down")],
        [
            ("charge", StepStatus.COMPLETED, 2, None),
            ("ship", StepStatus.FAILED, 1, "RuntimeError: no stock"),
            ("charge", StepStatus.RUNNING, 1, "ConnectionError: bank still down"),
        ],
    ]
    assert metadata is not None
    assert [
        (r.status, r.attempts, r.error) for r in (*metadata.steps, *metadata.compensations)
    ] == [
        (StepStatus.COMPLETED, 2, None),
        (StepStatus.FAILED, 1, "RuntimeError: no stock"),
        (StepStatus.COMPLETED, 2, None),
    ]
