"""Crash simulation: FaultInjector.crash() and simulate_restart() with a durable store."""

from __future__ import annotations

import asyncio
import logging
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    MemoryStore,
    PostgresStore,
    Retry,
    SagaAlreadyResolved,
    SagaDefinition,
    SagaDefinitionError,
    SagaOrchestrator,
    SagaStatus,
    SagaStore,
    SQLiteStore,
    StoreError,
    Transition,
    TransitionKind,
    current_step,
    saga,
    step,
)
from sagakit.testing import FaultInjector, SagaRecorder, SimulatedCrash, simulate_restart

effects: list[str] = []
keys: list[str] = []


@step
async def reserve(order: str) -> str:
    effects.append(f"reserve {order}")
    return f"r-{order}"


@reserve.compensate
async def release(order: str) -> None:
    effects.append(f"release {order}")


@step
async def charge(order: str) -> str:
    context = current_step()
    assert context is not None
    keys.append(context.idempotency_key)
    effects.append(f"charge {order}")
    return f"c-{order}"


@charge.compensate
async def refund(order: str) -> None:
    effects.append(f"refund {order}")


@step
async def ship(order: str) -> str:
    effects.append(f"ship {order}")
    if order.startswith("broken"):
        raise RuntimeError("no courier")
    return f"s-{order}"


@saga(name="crash_sim_order")
def order(name: str):  # type: ignore[no-untyped-def]
    yield reserve(name)
    yield charge(name)
    yield ship(name)


@pytest.fixture(autouse=True)
def _clean() -> None:
    effects.clear()
    keys.clear()


async def _crash_then_recover(path: Path, faults: FaultInjector, name: str) -> SagaStatus:
    recorder = SagaRecorder()
    store = SQLiteStore(path)
    crashed = SagaOrchestrator(store, listeners=[recorder])
    with faults, pytest.raises(SimulatedCrash):
        await crashed.execute(order(name).with_id(f"o-{name}"))
    # Nothing was recorded after the "death": no saga_finished, no compensation.
    assert not recorder.last.finished
    await simulate_restart(store)
    await store.close()

    restarted = SagaOrchestrator(SQLiteStore(path))
    outcomes = await restarted.recover()
    assert [o.saga_id for o in outcomes] == [f"o-{name}"]
    final = await restarted.get_saga(f"o-{name}")
    await restarted.close()
    assert final is not None
    return final.status


@pytest.mark.asyncio
async def test_crash_before_a_step_resumes_without_rerunning_completed_steps(
    tmp_path: Path,
) -> None:
    faults = FaultInjector().crash(charge)
    status = await _crash_then_recover(tmp_path / "s.db", faults, "a")
    assert status is SagaStatus.COMPLETED
    assert effects == ["reserve a", "charge a", "ship a"]


@pytest.mark.asyncio
async def test_crash_after_a_step_acted_reruns_it_with_the_same_idempotency_key(
    tmp_path: Path,
) -> None:
    faults = FaultInjector().crash("charge", after=True)
    status = await _crash_then_recover(tmp_path / "s.db", faults, "b")
    assert status is SagaStatus.COMPLETED
    assert effects == ["reserve b", "charge b", "charge b", "ship b"]
    assert keys == ["o-b:1", "o-b:1"]


@pytest.mark.asyncio
async def test_crash_after_a_step_that_raised_still_crashes(tmp_path: Path) -> None:
    # The process dies before the step's outcome, a failure too, is recorded.
    faults = FaultInjector().crash(ship, after=True)
    status = await _crash_then_recover(tmp_path / "s.db", faults, "broken-a")
    assert status is SagaStatus.COMPENSATED
    assert effects == [
        "reserve broken-a",
        "charge broken-a",
        "ship broken-a",
        "ship broken-a",
        "refund broken-a",
        "release broken-a",
    ]


@pytest.mark.asyncio
async def test_crash_after_a_compensation_that_raised_still_crashes(tmp_path: Path) -> None:
    calls: list[str] = []

    @step
    async def book(name: str) -> None:
        calls.append("book")

    @book.compensate
    async def unbook(name: str) -> None:
        calls.append("unbook")
        if len(calls) < 4:
            raise RuntimeError("hotel offline")

    @step
    async def pay(name: str) -> None:
        raise RuntimeError("card declined")

    @saga(name="crash_sim_trip")
    def trip(name: str):  # type: ignore[no-untyped-def]
        yield book(name)
        yield pay(name)

    recorder = SagaRecorder()
    crashed = SagaOrchestrator(SQLiteStore(tmp_path / "t.db"), listeners=[recorder])
    with FaultInjector().crash(book, compensation=True, after=True), pytest.raises(SimulatedCrash):
        await crashed.execute(trip("x").with_id("t-1"))
    assert calls == ["book", "unbook"]
    assert not recorder.last.finished
    assert recorder.last.compensation_failures == []
    await simulate_restart(crashed.store)
    await crashed.close()
    restarted = SagaOrchestrator(SQLiteStore(tmp_path / "t.db"))
    await restarted.recover()
    final = await restarted.get_saga("t-1")
    await restarted.close()
    assert final is not None
    assert final.status is SagaStatus.COMPENSATED


@pytest.mark.asyncio
async def test_crash_mid_compensation_finishes_each_compensation_once_in_reverse(
    tmp_path: Path,
) -> None:
    faults = FaultInjector().crash(reserve, compensation=True)
    status = await _crash_then_recover(tmp_path / "s.db", faults, "broken")
    assert status is SagaStatus.COMPENSATED
    assert effects == [
        "reserve broken",
        "charge broken",
        "ship broken",
        "refund broken",
        "release broken",
    ]


@pytest.mark.asyncio
async def test_a_crash_fires_once_and_is_listed_as_fired() -> None:
    faults = FaultInjector().crash("reserve")
    orchestrator = SagaOrchestrator()
    with faults:
        with pytest.raises(SimulatedCrash, match="simulated crash at step 'reserve'"):
            await orchestrator.execute(order("c"))
        assert await orchestrator.execute(order("d")) == ["r-d", "c-d", "s-d"]
    assert [f.step_name for f in faults.fired] == ["reserve"]
    assert effects == ["reserve d", "charge d", "ship d"]


@pytest.mark.asyncio
async def test_a_crash_names_a_step_given_as_an_object_by_its_name() -> None:
    with FaultInjector().crash(charge, after=True), pytest.raises(SimulatedCrash) as crash:
        await SagaOrchestrator().execute(order("e"))
    assert str(crash.value) == "simulated crash at step 'charge' after it acted"


@pytest.mark.asyncio
async def test_simulate_restart_refuses_an_in_memory_store() -> None:
    with pytest.raises(SagaDefinitionError, match="durable store such as SQLiteStore"):
        await simulate_restart(MemoryStore())


@pytest.mark.asyncio
async def test_simulate_restart_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    # Regression: an orchestrator (or a path) given instead of its store raised
    # AttributeError: 'SagaOrchestrator' object has no attribute 'durable'.
    orchestrator = SagaOrchestrator(SQLiteStore(tmp_path / "t.db"))
    with pytest.raises(SagaDefinitionError, match=r"store .*\(orchestrator\.store\), got <Saga"):
        await simulate_restart(orchestrator)  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match=r"\(SQLiteStore\(\.\.\.\)\), got Posix"):
        await simulate_restart(tmp_path / "t.db")  # type: ignore[arg-type]
    await orchestrator.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("cls", [SQLiteStore, PostgresStore, MemoryStore])
async def test_simulate_restart_refuses_a_store_class(cls: type[SagaStore]) -> None:
    # Regression: the class passed the store check (it has the protocol's methods), then
    # failed with "SQLiteStore.running() missing 1 required positional argument: 'self'"
    # (PostgresStore: release_leases()), or said "type keeps sagas in memory".
    name = cls.__name__
    with pytest.raises(SagaDefinitionError, match=rf"not the class {name}; .*{name}\("):
        await simulate_restart(cls)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_simulate_restart_takes_a_store_closed_by_async_with(
    durable_store: Callable[[], Any],
) -> None:
    # Regression: a crash inside `async with SagaOrchestrator(store)` closes the store on
    # the way out (the documented way to run with recover_on_start), and on SQLite
    # simulate_restart(store) then raised StoreError: saga log '...' is closed, while
    # this process's claim on the saga, which is in the file, stayed.
    store = durable_store()
    with FaultInjector().crash(charge, after=True), pytest.raises(SimulatedCrash):
        async with SagaOrchestrator(store) as orchestrator:
            await orchestrator.execute(order("k").with_id("o-k"))
    await simulate_restart(store)
    async with SagaOrchestrator(durable_store(), recover_on_start=True) as restarted:
        finished = await restarted.get_saga("o-k")
    assert finished is not None
    assert finished.status == SagaStatus.COMPLETED
    assert effects == ["reserve k", "charge k", "charge k", "ship k"]


@pytest.mark.asyncio
async def test_a_crash_inside_async_with_counts_its_recovery_attempts_on_every_store(
    durable_store: Callable[[], Any],
) -> None:
    # Regression: on PostgreSQL a simulated crash inside `async with SagaOrchestrator(...)`
    # closed the store as a shutdown does, handing its leases back, so the next claim of
    # the saga did not count as a recovery attempt: a saga crashing every recovery was
    # never parked.
    store = durable_store()
    with FaultInjector().crash(charge), pytest.raises(SimulatedCrash):
        async with SagaOrchestrator(store) as orchestrator:
            await orchestrator.execute(order("q").with_id("o-q"))
    await simulate_restart(store)
    store = durable_store()
    with FaultInjector().crash(charge), pytest.raises(SimulatedCrash):
        async with SagaOrchestrator(store) as orchestrator:
            await orchestrator.recover(max_attempts=1)  # attempt 1 "crashes" too
    await simulate_restart(store)
    async with SagaOrchestrator(durable_store()) as restarted:
        assert await restarted.recover(max_attempts=1) == []  # attempt 2 > 1: parked
        parked = await restarted.store.dead_letters()  # type: ignore[attr-defined]
    assert [letter.saga_id for letter in parked] == ["o-q"]
    assert effects == ["reserve q"]


@pytest.mark.asyncio
async def test_a_saga_that_crashes_every_recovery_is_parked_on_every_store(
    durable_store: Callable[[], Any], caplog: pytest.LogCaptureFixture
) -> None:
    # On PostgreSQL simulate_restart() released the leases like a graceful shutdown, so
    # the next claim did not count as a recovery attempt: the saga was never parked.
    store = durable_store()
    with FaultInjector().crash(charge), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).execute(order("p").with_id("o-p"))
    await simulate_restart(store)
    await store.close()

    store = durable_store()
    with FaultInjector().crash(charge), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).recover(max_attempts=1)  # attempt 1 "crashes" too
    await simulate_restart(store)
    await store.close()

    restarted = SagaOrchestrator(durable_store())
    with caplog.at_level(logging.ERROR, logger="sagakit"):
        assert await restarted.recover(max_attempts=1) == []  # attempt 2 > 1: parked, not run
    # Parking is logged at ERROR by every store (SQLite parked it without a word).
    assert any(
        r.levelno == logging.ERROR and "o-p" in r.getMessage() and "parked" in r.getMessage()
        for r in caplog.records
    ), caplog.text
    parked = await restarted.store.dead_letters()  # type: ignore[attr-defined]
    meta = await restarted.get_saga("o-p")
    await restarted.close()
    assert [letter.saga_id for letter in parked] == ["o-p"]
    assert effects == ["reserve p"]  # charge never ran: each attempt "crashed" before it
    # Its metadata says it is parked, and why (SQLite showed a plain executing saga).
    assert meta is not None
    assert (meta.dead_letter, meta.error) == (parked[0].reason, None)


async def _park_with_an_error(durable_store: Callable[[], Any], saga_id: str) -> None:
    """Saga ``saga_id`` failing in ship, its process dying in refund, then its recovery
    too: parked by the recovery after, compensating with ship's StepFailed as its error."""
    faults = FaultInjector().fail(ship).crash(charge, compensation=True)
    store = durable_store()
    with faults, pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).execute(order(saga_id).with_id(saga_id))
    await simulate_restart(store)
    await store.close()
    store = durable_store()
    with FaultInjector().crash(charge, compensation=True), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).recover(max_attempts=1)
    await simulate_restart(store)
    await store.close()


@pytest.mark.asyncio
async def test_resolving_a_dead_letter_keeps_its_own_error_beside_why_it_was_parked(
    durable_store: Callable[[], Any],
) -> None:
    # Regression: resolve() kept "(was: <why it was parked>)" in the saga's error, and
    # dropped the error the saga had (the step that failed it) for good.
    await _park_with_an_error(durable_store, "o-w")
    async with SagaOrchestrator(durable_store()) as restarted:
        assert await restarted.recover(max_attempts=1) == []  # parked
        [letter] = await restarted.store.dead_letters()  # type: ignore[attr-defined]
        parked = await restarted.get_saga("o-w")
        await restarted.store.resolve("o-w", "refunded by hand")  # type: ignore[attr-defined]
        resolved = await restarted.get_saga("o-w")
    assert parked is not None
    assert resolved is not None
    assert parked.error is not None
    assert resolved.error == (
        f"resolved by an operator: refunded by hand (was: {letter.reason}; error: {parked.error})"
    )


@pytest.mark.asyncio
async def test_a_dead_letter_s_metadata_keeps_its_own_error_beside_why_it_is_parked(
    durable_store: Callable[[], Any],
) -> None:
    # Regression: get() / get_saga() of a parked saga replaced its error with
    # "dead-lettered: <reason>", so the error it failed with (here the step that set it
    # compensating) was hidden, and the reason read twice in `sagakit show`.
    await _park_with_an_error(durable_store, "o-d")
    async with SagaOrchestrator(durable_store()) as restarted:
        assert await restarted.recover(max_attempts=1) == []  # parked
        [letter] = await restarted.store.dead_letters()  # type: ignore[attr-defined]
        meta = await restarted.get_saga("o-d")
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATING
    assert meta.error is not None
    assert meta.error.startswith("StepFailed: step 2 ('ship') failed: InjectedFault")
    assert meta.dead_letter == letter.reason
    assert letter.reason not in meta.error
    assert f"dead-lettered ({letter.reason})" in repr(meta)
    assert "dead-lettered:" in meta._repr_html_()
    # A saga never parked (and every saga of a MemoryStore) has none.
    assert (await MemoryStore().get("o-d")) is None
    async with SagaOrchestrator(MemoryStore()) as memory:
        await memory.execute(order("m").with_id("o-m"))
        done = await memory.get_saga("o-m")
    assert done is not None
    assert done.dead_letter is None


@pytest.mark.asyncio
async def test_resolving_a_crashed_saga_ends_its_interrupted_step_on_every_store(
    durable_store: Callable[[], Any],
) -> None:
    # The step the crash interrupted stayed "running" in a saga resolved by hand.
    store = durable_store()
    with FaultInjector().crash(charge, after=True), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).execute(order("h").with_id("o-h"))
    await simulate_restart(store)
    await store.close()

    store = durable_store()
    await store.resolve("o-h", "charged by hand")
    resolved = await store.get("o-h")
    await store.close()
    assert resolved is not None
    assert resolved.status is SagaStatus.FAILED
    assert resolved.error == "resolved by an operator: charged by hand"
    assert [(s.name, str(s.status), s.error) for s in resolved.steps] == [
        ("reserve", "completed", None),
        ("charge", "failed", "interrupted; the saga was resolved by an operator"),
    ]


@pytest.mark.asyncio
async def test_resolving_a_saga_resolved_already_is_refused_and_changes_nothing_on_every_store(
    durable_store: Callable[[], Any],
) -> None:
    # Regression: a second resolve() succeeded again, nesting the first note in the
    # second's error ("resolved by an operator: b (was: resolved by an operator: a)").
    store = durable_store()
    with FaultInjector().crash(charge, after=True), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).execute(order("z").with_id("o-z"))
    await simulate_restart(store)
    await store.close()

    store = durable_store()
    try:
        await store.resolve("o-z", "charged by hand")
        first = await store.get("o-z")
        assert first is not None
        with pytest.raises(SagaAlreadyResolved) as refused:
            await store.resolve("o-z", "refunded by hand")
        again = await store.get("o-z")
    finally:
        await store.close()
    assert again == first  # nothing changed: the first note stands
    assert first.error == "resolved by an operator: charged by hand"
    error = refused.value
    assert isinstance(error, StoreError)
    assert (error.saga_id, error.resolved_at, error.error) == (
        "o-z",
        first.updated_at,
        first.error,
    )
    when = f"{first.updated_at:%Y-%m-%d %H:%M:%S}"
    assert str(error).startswith(
        f"saga 'o-z' was resolved already at {when} UTC (resolved by an operator: charged by "
        "hand); nothing is changed"
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.saga_id, copy.resolved_at, copy.error, str(copy)) == (
        "o-z",
        error.resolved_at,
        error.error,
        str(error),
    )


@pytest.mark.asyncio
async def test_a_compensation_a_crash_interrupted_never_stays_running_on_every_store(
    durable_store: Callable[[], Any],
) -> None:
    # The run goes on past refund's failure (continue_on_compensation_failure) and "dies"
    # in release. Recovery once retried refund first, which failed again, so it stopped
    # there and never retried release: the saga ended FAILED with release's record still
    # "running". Now refund, failed for good, is not run again, and the log shows the run
    # went on past it: recovery goes on too, and runs release again to its end.
    store = durable_store()
    first = SagaOrchestrator(
        store, compensation_retry=Retry(attempts=1), continue_on_compensation_failure=True
    )
    faults = FaultInjector().fail_compensation(charge).crash(reserve, compensation=True)
    with faults, pytest.raises(SimulatedCrash):
        await first.execute(order("broken-r").with_id("o-r"))
    await simulate_restart(store)
    await store.close()

    restarted = SagaOrchestrator(durable_store(), compensation_retry=Retry(attempts=1))
    [outcome] = await restarted.recover()
    final = await restarted.get_saga("o-r")
    await restarted.close()
    assert outcome.status is SagaStatus.FAILED
    assert final is not None
    assert final.status is SagaStatus.FAILED
    injected = "InjectedFault: injected into the compensation of step 'charge', attempt 1"
    assert [(c.name, str(c.status), c.error) for c in final.compensations] == [
        ("charge", "failed", injected),
        ("reserve", "completed", None),
    ]
    assert final.error == (
        f"compensation of step 1 ('charge') failed: {injected}; left uncompensated: charge"
    )
    assert effects == ["reserve broken-r", "charge broken-r", "ship broken-r", "release broken-r"]


@pytest.mark.asyncio
async def test_resolving_a_dead_letter_keeps_why_it_was_parked_on_every_store(
    durable_store: Callable[[], Any],
) -> None:
    # SQLite dropped the dead-letter reason from the resolved saga's error (PG kept it).
    for attempt in range(2):  # the run "crashes", then so does its one recovery
        store = durable_store()
        orchestrator = SagaOrchestrator(store)
        run = (
            orchestrator.execute(order("q").with_id("o-q"))
            if attempt == 0
            else orchestrator.recover(max_attempts=1)
        )
        with FaultInjector().crash(charge), pytest.raises(SimulatedCrash):
            await run
        await simulate_restart(store)
        await store.close()

    store = durable_store()
    assert await SagaOrchestrator(store).recover(max_attempts=1) == []  # parked
    await store.resolve("o-q", "refunded by hand")
    resolved = await store.get("o-q")
    await store.close()
    assert resolved is not None
    assert resolved.error is not None
    assert resolved.error.startswith("resolved by an operator: refunded by hand (was: ")
    assert "max_attempts=1" in resolved.error  # the reason it was parked


@step(retry=Retry(attempts=3, backoff=1.0))
async def charge_again(order: str) -> str:
    effects.append(f"charge {order}")
    return f"c-{order}"


@charge_again.compensate
async def refund_again(order: str) -> None:
    effects.append(f"refund {order}")


@saga(name="crash_sim_careful_order", recovery="compensate")
def careful_order(name: str):  # type: ignore[no-untyped-def]
    yield reserve(name)
    yield charge_again(name)


async def _dies_in_backoff(seconds: float) -> None:
    raise SimulatedCrash("killed while waiting to retry")


@pytest.mark.asyncio
async def test_a_step_a_crash_interrupted_in_its_retry_backoff_ends_as_crashed_on_every_store(
    durable_store: Callable[[], Any],
) -> None:
    # SQLite keeps the error of a retried attempt on the step until its next start, and
    # recovery ended the interrupted step with it ("failed (ConnectionError: busy)", as if
    # it had failed for good); PostgreSQL, which does not write retries, said "interrupted".
    store = durable_store()
    faults = FaultInjector().fail(charge_again, ConnectionError("busy"), times=1)
    orchestrator = SagaOrchestrator(store, sleep=_dies_in_backoff)
    with faults, pytest.raises(SimulatedCrash, match="retry"):
        await orchestrator.execute(careful_order("w").with_id("o-w"))
    await simulate_restart(store)
    await store.close()

    restarted = SagaOrchestrator(durable_store())
    [outcome] = await restarted.recover()
    final = await restarted.get_saga("o-w")
    await restarted.close()
    assert outcome.action == "compensated"
    assert final is not None
    assert final.status is SagaStatus.COMPENSATED
    assert [(s.name, str(s.status), s.error) for s in final.steps] == [
        ("reserve", "completed", None),
        ("charge_again", "failed", "interrupted by a crash of its process"),
    ]
    assert effects == ["reserve w", "refund w", "release w"]


def _dies_once_told(kind: TransitionKind) -> Callable[[Transition], None]:
    """A listener: the process dies once ``kind`` is in the log (listeners hear of a
    transition after it is recorded), before anything else is."""

    def listener(transition: Transition) -> None:
        if transition.kind is kind:
            raise SimulatedCrash(f"killed once {kind} was recorded")

    return listener


@pytest.mark.asyncio
async def test_a_saga_whose_process_died_once_its_step_failed_keeps_its_error_on_every_store(
    durable_store: Callable[[], Any],
) -> None:
    # The saga's error was recorded with a failed step only later, when compensating
    # started: dying in between, SQLite's log kept the step's bare error ("RuntimeError: no
    # courier") and PostgreSQL's none, so the recovered saga's error was that, or "its
    # process died; compensated by recovery", instead of the StepFailed the run had.
    store = durable_store()
    orchestrator = SagaOrchestrator(store, listeners=[_dies_once_told(TransitionKind.STEP_FAILED)])
    with pytest.raises(SimulatedCrash):
        await orchestrator.execute(order("broken-f").with_id("o-f"))
    expected = "StepFailed: step 2 ('ship') failed: RuntimeError: no courier"
    crashed = await store.get("o-f")
    assert crashed is not None
    assert (crashed.status, crashed.error) == (SagaStatus.EXECUTING, expected)
    await simulate_restart(store)
    await store.close()

    restarted = SagaOrchestrator(durable_store())
    [outcome] = await restarted.recover()
    final = await restarted.get_saga("o-f")
    await restarted.close()
    assert (outcome.action, outcome.status) == ("compensated", SagaStatus.COMPENSATED)
    assert final is not None
    assert (final.status, final.error) == (SagaStatus.COMPENSATED, expected)
    assert effects == [
        "reserve broken-f",
        "charge broken-f",
        "ship broken-f",
        "refund broken-f",
        "release broken-f",
    ]


@step(timeout=0.05)
async def hangs(order: str) -> None:
    effects.append(f"hang {order}")
    await asyncio.Event().wait()


@hangs.compensate
async def unhang(order: str) -> None:
    effects.append(f"unhang {order}")
    await asyncio.Event().wait()


@pytest.mark.asyncio
async def test_a_crash_after_a_step_that_hangs_still_comes_at_its_timeout() -> None:
    # crash(after=True) awaited the step with no deadline: a hanging step hung the test.
    effects.clear()
    orchestrator = SagaOrchestrator()
    with FaultInjector().crash(hangs, after=True), pytest.raises(SimulatedCrash):
        async with asyncio.timeout(5):  # a hang fails the test instead of blocking it
            await orchestrator.execute(SagaDefinition(steps=[hangs("a")]))
    assert effects == ["hang a"]


@pytest.mark.asyncio
async def test_a_crash_after_a_compensation_that_hangs_still_comes_at_its_timeout() -> None:
    effects.clear()
    orchestrator = SagaOrchestrator()
    definition = SagaDefinition(steps=[hangs("b")])  # times out: compensated
    with FaultInjector().crash(hangs, after=True, compensation=True), pytest.raises(SimulatedCrash):
        async with asyncio.timeout(5):
            await orchestrator.execute(definition)
    assert effects == ["hang b", "unhang b"]


def test_crash_options_must_be_booleans() -> None:
    # crash(after="no") was taken as True: the crash came after the step acted.
    with pytest.raises(SagaDefinitionError, match=r"crash\(after=...\) must be True or False"):
        FaultInjector().crash(charge, after="no")  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match=r"crash\(compensation=...\)"):
        FaultInjector().crash(charge, compensation=1)  # type: ignore[arg-type]


@step(name="crash_sim_hold")
async def hold(order: str) -> str:
    effects.append(f"hold {order}")
    return f"h-{order}"


@hold.compensate
async def unhold(order: str) -> None:
    effects.append(f"unhold {order}")


@step
async def declined(order: str) -> None:
    raise ValueError("card declined")


@saga(name="crash_sim_removed_compensation")
def held_order(order: str):  # type: ignore[no-untyped-def]
    yield reserve(order)
    yield hold(order)
    yield declined(order)


def _deploy_held_order_without_holds_compensation() -> None:
    """The code deployed since the crash: ``held_order`` again (recovery finds it by
    name in the registry), its ``hold`` step with no compensation any more."""

    @step(name="crash_sim_hold")
    async def hold_now(order: str) -> str:
        return f"h-{order}"

    @saga(name="crash_sim_removed_compensation")
    def held_order_now(order: str):  # type: ignore[no-untyped-def]
        yield reserve(order)
        yield hold_now(order)
        yield declined(order)


@pytest.mark.asyncio
async def test_a_compensation_interrupted_then_removed_from_the_code_ends_as_crashed(
    durable_store: Callable[[], Any], caplog: pytest.LogCaptureFixture
) -> None:
    # The process died in hold's compensation; the code deployed since declares none for
    # hold, so recovery does not run it again. The saga ended COMPENSATED with that
    # compensation's record left `running` in the log, and nothing said so.
    store = durable_store()
    orchestrator = SagaOrchestrator(store)
    with FaultInjector().crash(hold, compensation=True), pytest.raises(SimulatedCrash):
        await orchestrator.execute(held_order("z").with_id("o-z"))
    await simulate_restart(store)
    await store.close()

    _deploy_held_order_without_holds_compensation()
    restarted = SagaOrchestrator(durable_store())
    [outcome] = await restarted.recover()
    final = await restarted.get_saga("o-z")
    await restarted.close()
    assert (outcome.action, outcome.status) == ("compensated", SagaStatus.COMPENSATED)
    assert final is not None
    assert final.status is SagaStatus.COMPENSATED
    assert [(c.name, str(c.status), c.error) for c in final.compensations] == [
        ("crash_sim_hold", "failed", "interrupted by a crash of its process"),
        ("reserve", "completed", None),
    ]
    assert effects == ["reserve z", "hold z", "release z"]
    assert "compensation of step 1 ('crash_sim_hold') of saga" in caplog.text
    assert "declares no compensation for that step any more" in caplog.text


@pytest.mark.asyncio
async def test_a_compensation_that_failed_for_good_then_removed_from_the_code_still_fails_the_saga(
    durable_store: Callable[[], Any],
) -> None:
    # hold's compensation failed for good, then the process died before the saga's end.
    # The code deployed since declares no compensation for hold: recovery skipped that
    # step before looking at the logged failure, and ended the saga COMPENSATED, running
    # reserve's compensation, where the run (and the docs) end it FAILED at that failure.
    store = durable_store()
    died = _dies_once_told(TransitionKind.COMPENSATION_FAILED)
    orchestrator = SagaOrchestrator(store, listeners=[died])
    faults = FaultInjector().fail_compensation(hold, ConnectionError("hold service down"))
    with faults, pytest.raises(SimulatedCrash):
        await orchestrator.execute(held_order("y").with_id("o-y"))
    await simulate_restart(store)
    await store.close()

    _deploy_held_order_without_holds_compensation()
    restarted = SagaOrchestrator(durable_store())
    [outcome] = await restarted.recover()
    final = await restarted.get_saga("o-y")
    await restarted.close()
    assert (outcome.action, outcome.status) == ("compensated", SagaStatus.FAILED)
    assert outcome.error is not None
    assert outcome.error.startswith(
        "compensation of step 1 ('crash_sim_hold') failed: ConnectionError: hold service down"
    )
    assert final is not None
    assert final.status is SagaStatus.FAILED
    assert [(c.name, str(c.status)) for c in final.compensations] == [("crash_sim_hold", "failed")]
    assert effects == ["reserve y", "hold y"]  # reserve's compensation not run
