"""Regression tests for log writes that fail, found by ``tests/test_soak_faults.py``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    Retry,
    SagaMetadata,
    SagaOrchestrator,
    SagaStatus,
    StepStatus,
    StoreError,
    TransitionKind,
    saga,
    step,
)
from sagakit.stores import SagaRunView
from sagakit.testing import SagaRecorder
from store_helpers.refusing import refuse_record

pytestmark = pytest.mark.asyncio

calls: list[str] = []


@step
async def wf_take(account: str) -> str:
    calls.append(f"take {account}")
    return f"took {account}"


@wf_take.compensate
async def wf_untake(account: str) -> str:
    calls.append(f"untake {account}")
    return f"untook {account}"


@step
async def wf_put(account: str) -> str:
    calls.append(f"put {account}")
    return f"put {account}"


@saga(name="wf_move")
def wf_move(source: str, target: str):  # type: ignore[no-untyped-def]
    yield wf_take(source)
    yield wf_put(target)


async def test_postgres_keeps_a_staged_completion_when_the_server_refuses_the_next_write(
    dsn: str, schema: str
) -> None:
    # Step 0's completion is staged and goes out with step 1's start; the server refused
    # that statement (rolled back: nothing applied), and the store dropped the staged
    # completion. The saga was compensated, but its log kept step 0 "running" for good,
    # and the listeners were told of a completion the log never got.
    from sagakit import PostgresStore
    from sagakit.stores._pg_writer import Rejected

    store = PostgresStore(dsn, schema=schema)
    await store.open()
    send = store._writer._send

    async def refuse_step_1(writes: list[Any]) -> dict[str, str]:
        if any(w.index == 1 and w.step_status == "running" and not w.compensation for w in writes):
            raise Rejected("the server refused the statement")
        return await send(writes)  # type: ignore[no-any-return]

    store._writer._send = refuse_step_1  # type: ignore[method-assign]
    recorder = SagaRecorder()
    calls.clear()
    async with SagaOrchestrator(store, listeners=[recorder]) as orchestrator:
        with pytest.raises(StoreError, match="refused"):
            await orchestrator.execute(wf_move("a", "b"), saga_id="refused-start")
        meta = await orchestrator.get_saga("refused-start")
    assert calls == ["take a", "untake a"]
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert [(r.index, r.status) for r in meta.steps] == [
        (0, StepStatus.COMPLETED),
        (1, StepStatus.FAILED),
    ]
    assert [(r.index, r.status) for r in meta.compensations] == [(0, StepStatus.COMPLETED)]
    assert meta.events == ("took a",)
    assert recorder.run("refused-start").completed == ["wf_take"]


@pytest.mark.parametrize("after", [False, True])
async def test_an_end_that_cannot_be_recorded_is_told_as_stopped(
    tmp_path: Path, after: bool
) -> None:
    # The run's end could not be recorded: its listeners heard neither SAGA_FINISHED
    # nor SAGA_STOPPED (a tracer kept its span open for good), and the orchestrator
    # kept the run's last completion, never told, for its whole life.
    from sagakit import SQLiteStore

    store = SQLiteStore(tmp_path / "sagas.db")
    refuse_record(store, TransitionKind.SAGA_FINISHED, after=after)
    recorder = SagaRecorder()
    orchestrator = SagaOrchestrator(store, listeners=[recorder])
    with pytest.raises(StoreError, match="cannot be written"):
        await orchestrator.execute(wf_move("a", "b"), saga_id="unended")
    trail = recorder.run("unended")
    assert trail.trail()[0] == "saga_started"
    assert trail.trail()[-1] == "saga_stopped"
    assert trail.status is SagaStatus.EXECUTING
    assert not orchestrator._held
    meta = await orchestrator.get_saga("unended")
    await store.close()
    assert meta is not None
    assert meta.status is (SagaStatus.COMPLETED if after else SagaStatus.EXECUTING)


@pytest.mark.parametrize("after", [False, True])
async def test_a_compensation_whose_start_cannot_be_recorded_is_not_left_running(
    tmp_path: Path, after: bool
) -> None:
    # The saga ended FAILED, but the compensation it stopped at stayed "running" in its
    # metadata and (when that start had committed) in the log.
    from sagakit import SQLiteStore

    @saga(name="wf_move_refused")
    def refused(source: str):  # type: ignore[no-untyped-def]
        yield wf_take(source)
        yield wf_refuse(source)

    store = SQLiteStore(tmp_path / "sagas.db")
    refuse_record(store, TransitionKind.COMPENSATION_STARTED, 0, after=after)
    calls.clear()
    orchestrator = SagaOrchestrator(store)
    with pytest.raises(StoreError, match="cannot be written"):
        await orchestrator.execute(refused("a"), saga_id="unstarted-undo")
    assert calls == ["take a"]
    meta = await orchestrator.get_saga("unstarted-undo")
    await store.close()
    assert meta is not None
    assert meta.status is SagaStatus.FAILED
    # Its start committed or not, the run's end writes its record (as PostgreSQL's log
    # and the run's own record keep it; SQLite's log had no row for it when it had not).
    [undo] = meta.compensations
    assert undo.status is StepStatus.FAILED
    assert undo.error == "not recorded: StoreError: the log cannot be written"


@step
async def wf_refuse(account: str) -> None:
    raise ValueError(f"{account} refused")


async def test_postgres_writes_a_staged_completion_when_the_end_cannot_be_recorded(
    dsn: str, schema: str
) -> None:
    # The run's end could not be recorded, so its last step's completion (staged to go
    # with it) was dropped: recovery then ran that step again, although it had completed.
    from sagakit import PostgresStore

    store = PostgresStore(dsn, schema=schema)
    await store.open()
    refuse_record(store, TransitionKind.SAGA_FINISHED, after=False)
    calls.clear()
    orchestrator = SagaOrchestrator(store)
    with pytest.raises(StoreError, match="cannot be written"):
        await orchestrator.execute(wf_move("a", "b"), saga_id="unended-pg")
    meta = await orchestrator.get_saga("unended-pg")
    await store.close()
    assert meta is not None
    assert meta.status is SagaStatus.EXECUTING  # for recovery to finish
    assert [(r.index, r.status) for r in meta.steps] == [
        (0, StepStatus.COMPLETED),
        (1, StepStatus.COMPLETED),
    ]
    assert calls == ["take a", "put b"]


@step
async def wf_hold(account: str) -> str:
    calls.append(f"hold {account}")
    return f"held {account}"


@wf_hold.compensate
async def wf_unhold(account: str) -> None:
    calls.append(f"unhold {account}")
    raise OSError(f"{account} cannot be released")


@pytest.mark.parametrize("after", [False, True])
async def test_a_compensation_whose_failure_cannot_be_recorded_is_not_left_running(
    durable_store: Any, after: bool
) -> None:
    # The compensation failed for good, but its failure could not be recorded: the saga
    # ended FAILED while its log kept that compensation "running" for good (found by
    # test_soak_faults.py, seeds 112 and 127).
    @saga(name="wf_hold_refused")
    def refused(account: str):  # type: ignore[no-untyped-def]
        yield wf_hold(account)
        yield wf_refuse(account)

    store = durable_store()
    opener = getattr(store, "open", None)
    if opener is not None:
        await opener()
    refuse_record(store, TransitionKind.COMPENSATION_FAILED, 0, after=after)
    calls.clear()
    orchestrator = SagaOrchestrator(store, compensation_retry=Retry(attempts=1))
    with pytest.raises(StoreError, match="cannot be written"):
        await orchestrator.execute(refused("a"), saga_id="unrecorded-undo")
    assert calls == ["hold a", "unhold a"]
    here = await orchestrator.get_saga("unrecorded-undo")
    await store.close()
    reread = durable_store()  # a new store object: what the log holds
    opener = getattr(reread, "open", None)
    if opener is not None:
        await opener()
    logged = await reread.get("unrecorded-undo")
    await reread.close()
    for meta in (here, logged):
        assert meta is not None
        assert meta.status is SagaStatus.FAILED
        assert [(r.index, r.status) for r in meta.steps] == [
            (0, StepStatus.COMPLETED),
            (1, StepStatus.FAILED),
        ]
        [undo] = meta.compensations
        assert undo.status is StepStatus.FAILED, meta
        assert undo.error == "OSError: a cannot be released"


async def test_postgres_names_the_saga_whose_staged_transition_it_could_not_write(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The run's end could not be recorded, nor its staged completion when the run was
    # forgotten: the warning said "could not write a staged transition" without the
    # saga's id or name, in its message or as the record's fields.
    from sagakit import PostgresStore
    from sagakit.stores._pg_writer import Rejected

    caplog.set_level(logging.WARNING, logger="sagakit")
    store = PostgresStore(dsn, schema=schema)
    await store.open()
    refuse_record(store, TransitionKind.SAGA_FINISHED, after=False)
    send = store._writer._send

    async def refuse_the_flush(writes: list[Any]) -> dict[str, str]:
        if any(w.index == 1 and w.step_status == "completed" for w in writes):
            raise StoreError("the log still cannot be written") from Rejected("refused")
        return await send(writes)  # type: ignore[no-any-return]

    store._writer._send = refuse_the_flush  # type: ignore[method-assign]
    orchestrator = SagaOrchestrator(store)
    with pytest.raises(StoreError, match="cannot be written"):
        await orchestrator.execute(wf_move("a", "b"), saga_id="unflushed-pg")
    await store.close()
    [record] = [r for r in caplog.records if "staged transition" in r.getMessage()]
    assert "unflushed-pg" in record.getMessage()
    assert (record.saga_id, record.saga_name) == ("unflushed-pg", "wf_move")  # type: ignore[attr-defined]


@step(retry=Retry(attempts=3, backoff=0))
async def wf_flaky(account: str) -> str:
    calls.append(f"flaky {account}")
    raise ConnectionError(f"{account} busy")


@wf_flaky.compensate
async def wf_unflaky(account: str) -> None:
    calls.append(f"unflaky {account}")


@pytest.mark.parametrize("after", [False, True])
@pytest.mark.parametrize(
    ("outcome", "undone"),
    [("timed out", True), ("raised", False), ("raised, compensate_on_failure", True)],
)
async def test_a_step_whose_retry_cannot_be_recorded_is_compensated_as_a_failed_one(
    tmp_path: Path, after: bool, outcome: str, undone: bool
) -> None:
    # Regression: an attempt that timed out (its effect unknown) and whose retry could
    # not be recorded failed the saga with the StoreError, and the step was never
    # compensated (nor one declared compensate_on_failure=True that raised).
    from sagakit import SQLiteStore
    from sagakit.testing import FaultInjector

    flaky = wf_flaky
    if outcome == "raised, compensate_on_failure":
        flaky = step(retry=Retry(attempts=3, backoff=0), compensate_on_failure=True)(
            wf_flaky.__wrapped__
        )
        flaky.compensate(wf_unflaky)

    @saga(name=f"wf_retry_refused_{outcome}")
    def refused(source: str):  # type: ignore[no-untyped-def]
        yield wf_take(source)
        yield flaky(source)

    async def no_wait(seconds: float) -> None:
        pass

    store = SQLiteStore(tmp_path / "sagas.db")
    refuse_record(store, TransitionKind.STEP_RETRYING, 1, after=after)
    calls.clear()
    orchestrator = SagaOrchestrator(store, sleep=no_wait)
    faults = FaultInjector()
    if outcome == "timed out":
        faults.timeout(flaky, times=1)
    with faults, pytest.raises(StoreError, match="cannot be written"):
        await orchestrator.execute(refused("a"), saga_id="unrecorded-retry")
    meta = await orchestrator.get_saga("unrecorded-retry")
    await store.close()
    flaky_ran = [] if outcome == "timed out" else ["flaky a"]  # a faulted attempt: no call
    assert calls == ["take a", *flaky_ran, *(["unflaky a"] if undone else []), "untake a"]
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert [c.name for c in meta.compensations] == [
        *([flaky.name] if undone else []),
        "wf_take",
    ]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
@pytest.mark.parametrize("after", [False, True])
async def test_a_step_whose_next_attempt_cannot_be_recorded_is_compensated(
    tmp_path: Path, after: bool, kind: str, request: pytest.FixtureRequest
) -> None:
    # Regression: an attempt timed out (its effect unknown), and the next attempt's start
    # could not be recorded (the one write of a retry in a PostgreSQL log): the saga failed
    # with the StoreError, and the step was never compensated.
    from sagakit import PostgresStore, SQLiteStore, StoreError, Transition
    from sagakit.testing import FaultInjector

    @saga(name="wf_next_attempt_refused")
    def refused(source: str):  # type: ignore[no-untyped-def]
        yield wf_take(source)
        yield wf_flaky(source)

    async def no_wait(seconds: float) -> None:
        pass

    store: SQLiteStore | PostgresStore
    if kind == "sqlite":
        store = SQLiteStore(tmp_path / "sagas.db")
    else:
        dsn = request.getfixturevalue("dsn")
        store = PostgresStore(dsn, schema=request.getfixturevalue("schema"))
    record = store.record

    async def refusing(run: Any, transition: Transition) -> None:
        second_start = transition.kind is TransitionKind.STEP_STARTED and transition.attempt == 2
        if not second_start or after:
            await record(run, transition)
        if second_start:
            raise StoreError("the log cannot be written")

    store.record = refusing  # type: ignore[method-assign]
    calls.clear()
    orchestrator = SagaOrchestrator(store, sleep=no_wait)
    with FaultInjector().timeout(wf_flaky, times=1), pytest.raises(StoreError):
        await orchestrator.execute(refused("a"), saga_id="unrecorded-next-attempt")
    meta = await orchestrator.get_saga("unrecorded-next-attempt")
    await store.close()
    assert calls == ["take a", "unflaky a", "untake a"]
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert meta.steps[1].status is StepStatus.FAILED


@step
async def wf_unavailable(account: str) -> str:
    calls.append(f"unavailable {account}")
    raise LookupError(f"{account} unknown")


@step(compensation_retry=Retry(attempts=3, backoff=0))
async def wf_lock(account: str) -> str:
    return f"locked {account}"


@wf_lock.compensate
async def wf_unlock(account: str) -> None:
    calls.append(f"unlock {account}")
    raise ConnectionError(f"{account} busy")


@pytest.mark.parametrize("retried", ["step", "compensation"])
async def test_a_retry_whose_start_is_refused_is_not_counted_as_an_attempt(
    durable_store: Callable[[], Any], retried: str
) -> None:
    # Regression: the second attempt's start was refused (the attempt never ran), but the
    # run's record of the step (or compensation) counted attempts=2, which the store's
    # finish() (and a custom store writing the end from it) saw, while the log said 1.
    @saga(name=f"wf_retry_start_refused_{retried}")
    def refused(source: str):  # type: ignore[no-untyped-def]
        if retried == "step":
            yield wf_take(source)
            yield wf_flaky(source)
        else:
            yield wf_lock(source)
            yield wf_unavailable(source)

    async def no_wait(seconds: float) -> None:
        pass

    store = durable_store()
    if retried == "step":
        refuse_record(store, TransitionKind.STEP_STARTED, 1, after=False, attempt=2)
    else:
        refuse_record(store, TransitionKind.COMPENSATION_STARTED, 0, after=False, attempt=2)
    finish = store.finish
    ended: list[SagaMetadata] = []

    async def finishing(run: SagaRunView) -> None:
        ended.append(run.snapshot())  # the run's own record, as it ends
        await finish(run)

    store.finish = finishing
    calls.clear()
    async with SagaOrchestrator(store, sleep=no_wait) as orchestrator:
        with pytest.raises(StoreError, match="cannot be written"):
            await orchestrator.execute(refused("a"), saga_id="unrecorded-retry-start")
        logged = await orchestrator.get_saga("unrecorded-retry-start")
    assert logged is not None
    [run] = ended
    if retried == "step":
        assert calls == ["take a", "flaky a", "untake a"]  # the second attempt never ran
        assert [s.attempts for s in logged.steps] == [1, 1]
        assert [s.attempts for s in run.steps] == [1, 1]
    else:
        assert calls == ["unavailable a", "unlock a"]
        assert [c.attempts for c in logged.compensations] == [1]
        assert [c.attempts for c in run.compensations] == [1]
