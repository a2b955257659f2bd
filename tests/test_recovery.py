"""Recovery in one process: a store that 'dies' at a transition leaves a log behind,
and a second store (another owner) recovers it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    LeaseLost,
    MemoryStore,
    SagaDefinition,
    SagaDefinitionError,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StepStatus,
    StoreError,
    Transition,
    TransitionKind,
    current_step,
    saga,
    step,
)
from sagakit._runs import SagaRun
from sagakit.testing import simulate_restart
from store_helpers.crashing import Crash, CrashingStore

effects: list[str] = []


def at(kind: TransitionKind, step_name: str | None = None) -> Callable[[Transition], bool]:
    return lambda t: t.kind is kind and (step_name is None or t.step_name == step_name)


@step
async def book(item: str) -> str:
    context = current_step()
    assert context is not None
    effects.append(f"book {item} {context.idempotency_key}")
    return f"booking-{item}"


@book.compensate
async def cancel(booking: str, item: str) -> None:
    effects.append(f"cancel {booking}")


@step
async def pay(item: str) -> str:
    effects.append(f"pay {item}")
    if item == "declined":
        raise ValueError("card declined")
    return f"paid-{item}"


@pay.compensate
async def refund(item: str) -> None:
    effects.append(f"refund {item}")
    if item == "stuck":
        raise RuntimeError("refund service down")


@saga
def rec_order(item: str):  # type: ignore[no-untyped-def]
    booking = yield book(item)
    assert booking == f"booking-{item}"  # replay feeds the recorded result
    yield pay(item)


@saga(recovery="compensate")
def rec_careful_order(item: str):  # type: ignore[no-untyped-def]
    yield book(item)
    yield pay(item)


@saga
def rec_changing(item: str):  # type: ignore[no-untyped-def]
    yield book(item)
    yield pay(item)


class Shop:
    @classmethod
    @saga(name="rec_shop_order")
    def order(cls, item: str):  # type: ignore[no-untyped-def]
        yield book(f"{cls.__name__} {item}")
        yield pay(item)


class Outlet(Shop):
    pass


PAYING: dict[str, asyncio.Event] = {}  # set once pay_later(item) is running


@step
async def pay_later(item: str) -> None:
    effects.append(f"pay later {item}")
    PAYING[item].set()
    await asyncio.Event().wait()  # until cancelled


@saga
def rec_slow_order(item: str):  # type: ignore[no-untyped-def]
    yield book(item)
    yield pay_later(item)


@pytest.fixture(autouse=True)
def _clear() -> None:
    effects.clear()
    PAYING.clear()


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "sagas.db")


async def crash(db: str, definition: SagaDefinition, saga_id: str, when: Any) -> None:
    store = CrashingStore(db, when)
    orchestrator = SagaOrchestrator(store)
    with pytest.raises(Crash):
        await orchestrator.execute(definition, saga_id=saga_id)
    await orchestrator.close()


@pytest.mark.asyncio
async def test_resume_runs_only_the_steps_not_recorded(db: str) -> None:
    await crash(db, rec_order("bike"), "o1", at(TransitionKind.STEP_COMPLETED, "pay"))
    assert effects == ["book bike o1:0", "pay bike"]
    async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
        outcomes = await orchestrator.recover()
        assert [(o.saga_id, o.action, o.status) for o in outcomes] == [
            ("o1", "resumed", SagaStatus.COMPLETED)
        ]
        meta = await orchestrator.get_saga("o1")
        assert meta is not None
        assert meta.events == ("booking-bike", "paid-bike")
        assert await orchestrator.recover() == []
    # pay ran but its completion never reached the log: it runs again; book does not.
    assert effects == ["book bike o1:0", "pay bike", "pay bike"]


@pytest.mark.asyncio
async def test_compensate_policy_undoes_completed_steps(db: str) -> None:
    await crash(db, rec_careful_order("car"), "o2", at(TransitionKind.STEP_STARTED, "pay"))
    async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
        (outcome,) = await orchestrator.recover()
        assert (outcome.action, outcome.status) == ("compensated", SagaStatus.COMPENSATED)
    assert effects == ["book car o2:0", "cancel booking-car"]


@pytest.mark.asyncio
async def test_a_failed_step_is_compensated_whatever_the_policy(db: str) -> None:
    # Crash right after the failure was recorded, before compensating started.
    await crash(db, rec_order("declined"), "o3", at(TransitionKind.COMPENSATION_STARTED))
    async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
        (outcome,) = await orchestrator.recover()
    assert (outcome.action, outcome.status) == ("compensated", SagaStatus.COMPENSATED)
    assert effects == ["book declined o3:0", "pay declined", "cancel booking-declined"]


@pytest.mark.asyncio
async def test_a_failing_compensation_ends_the_recovered_saga_failed(db: str) -> None:
    @step
    async def ship(item: str) -> None:
        raise ValueError("no truck")

    @saga(name="rec_stuck")
    def stuck(item: str):  # type: ignore[no-untyped-def]
        yield pay(item)
        yield ship(item)

    await crash(db, stuck("stuck"), "o4", at(TransitionKind.COMPENSATION_STARTED))
    async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
        (outcome,) = await orchestrator.recover()
        assert (outcome.action, outcome.status) == ("compensated", SagaStatus.FAILED)
        assert outcome.error is not None
        assert "refund service down" in outcome.error
        assert await orchestrator.running_count() == 0


@pytest.mark.asyncio
async def test_changed_code_is_dead_lettered_without_running_anything(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    await crash(db, rec_changing("tv"), "o5", at(TransitionKind.STEP_STARTED, "pay"))

    @saga(name="rec_changing")
    def changed(item: str):  # type: ignore[no-untyped-def]
        yield pay(item)  # was book(item)
        yield book(item)

    store = SQLiteStore(db)
    async with SagaOrchestrator(store) as orchestrator:
        (outcome,) = await orchestrator.recover()
        assert outcome.action == "dead_lettered"
        assert outcome.error is not None
        assert "NonDeterminismError" in outcome.error
        assert "yielded step 'pay' at index 0" in outcome.error
        assert "the code of saga rec_changing (o5) changed" in caplog.text
        (letter,) = await store.dead_letters()
        assert letter.saga_id == "o5"
        assert await orchestrator.running_count() == 0
        assert await orchestrator.recover() == []  # parked sagas are not retried
        await store.resolve("o5", "cancelled the booking by hand")
        assert await store.dead_letters() == []
        meta = await orchestrator.get_saga("o5")
        assert meta is not None
        assert meta.status is SagaStatus.FAILED
    assert effects == ["book tv o5:0"]


@pytest.mark.asyncio
async def test_changed_code_that_ends_sooner_is_parked_saying_what_to_do(db: str) -> None:
    # Regression: the message a body ending before a logged step gives named the change
    # but not what to do about it, unlike the one for a different step.
    await crash(db, rec_changing("map"), "o6", at(TransitionKind.STEP_COMPLETED, "pay"))

    @saga(name="rec_changing")
    def shorter(item: str):  # type: ignore[no-untyped-def]
        yield book(item)  # pay was dropped

    async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
        (outcome,) = await orchestrator.recover()
    assert outcome.action == "dead_lettered"
    assert outcome.error == (
        "NonDeterminismError: saga 'rec_changing' (o6) ended after 1 step on replay, but its "
        "log records step 1 'pay': the saga's code changed since this run started; finish or "
        "resolve it with the old code"
    )
    assert effects == ["book map o6:0", "pay map"]


@pytest.mark.asyncio
async def test_builder_sagas_are_dead_lettered_with_the_reason(db: str) -> None:
    definition = SagaDefinition("builder-1").add_step(book("lamp")).add_step(pay("lamp"))
    await crash(db, definition, "builder-1", at(TransitionKind.STEP_STARTED, "pay"))
    async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
        (outcome,) = await orchestrator.recover()
    assert outcome.action == "dead_lettered"
    assert outcome.error is not None
    assert "declare it with @saga" in outcome.error


@pytest.mark.asyncio
async def test_recover_on_start_and_names_filter(db: str) -> None:
    await crash(db, rec_order("desk"), "o6", at(TransitionKind.STEP_STARTED, "pay"))
    store = SQLiteStore(db)
    assert await store.claim_orphans(names={"someone_else"}) == []
    async with SagaOrchestrator(store, recover_on_start=True) as orchestrator:
        meta = await orchestrator.get_saga("o6")
        assert meta is not None
        assert meta.status is SagaStatus.COMPLETED
    assert effects == ["book desk o6:0", "pay desk"]


@pytest.mark.asyncio
async def test_a_failed_recover_on_start_closes_the_store(db: str) -> None:
    # Regression: when recover() raised in ``async with`` (the log could not be read:
    # a database blip), __aexit__ never ran and the store stayed open, a PostgreSQL
    # store with its connection pool and heartbeat, for the life of the process.
    store = SQLiteStore(db)
    close = store.close
    closed: list[bool] = []

    async def failing_claim(**options: Any) -> Any:
        raise StoreError("the log went away")

    async def recorded_close() -> None:
        closed.append(True)
        await close()

    store.claim_orphans = failing_claim  # type: ignore[method-assign]
    store.close = recorded_close  # type: ignore[method-assign]
    with pytest.raises(StoreError, match="went away"):
        async with SagaOrchestrator(store, recover_on_start=True):
            pytest.fail("entered although recovery failed")
    assert closed == [True]


@pytest.mark.asyncio
async def test_memory_store_has_nothing_to_recover() -> None:
    async with SagaOrchestrator(MemoryStore()) as orchestrator:
        assert await orchestrator.recover() == []


def test_max_recovery_attempts_is_checked() -> None:
    with pytest.raises(SagaDefinitionError, match="max_recovery_attempts"):
        SagaOrchestrator(max_recovery_attempts=0)
    # Past a 64-bit integer, every claim of a PostgreSQL store failed ("out of range").
    with pytest.raises(SagaDefinitionError, match="max_recovery_attempts must be at most"):
        SagaOrchestrator(max_recovery_attempts=2**63)


@pytest.mark.asyncio
@pytest.mark.parametrize("attempts", [0, -1, True, 1.5, 10**20])
async def test_recover_max_attempts_is_checked_before_anything_is_claimed(
    db: str, attempts: Any
) -> None:
    # Regression: recover(max_attempts=0) parked every orphan as a dead letter ("died
    # during each of 0 recovery attempts") without trying it, and returned [].
    await crash(db, rec_order("lamp"), "o-attempts", at(TransitionKind.STEP_COMPLETED, "pay"))
    store = SQLiteStore(db)
    async with SagaOrchestrator(store) as orchestrator:
        with pytest.raises(SagaDefinitionError, match="max_attempts"):
            await orchestrator.recover(max_attempts=attempts)
        assert await store.dead_letters() == []
        outcomes = await orchestrator.recover()
        assert [(o.saga_id, o.action) for o in outcomes] == [("o-attempts", "resumed")]


@pytest.mark.asyncio
@pytest.mark.parametrize("limit", [-1, True, 1.5, "3"])
async def test_recover_limit_is_checked_before_anything_is_claimed(db: str, limit: Any) -> None:
    # Regression: recover(limit=...) was never checked: "3" raised a bare TypeError from
    # a comparison, -1 and True recovered nothing or one silently, 1.5 recovered two.
    await crash(db, rec_order("vase"), "o-limit", at(TransitionKind.STEP_COMPLETED, "pay"))
    async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
        with pytest.raises(SagaDefinitionError, match="limit must be a whole number >= 0"):
            await orchestrator.recover(limit=limit)
        assert await orchestrator.recover(limit=0) == []
        outcomes = await orchestrator.recover(limit=1)
        assert [(o.saga_id, o.action) for o in outcomes] == [("o-limit", "resumed")]


@pytest.mark.asyncio
async def test_an_unreadable_orphan_does_not_stop_recover_before_the_others(db: str) -> None:
    # Regression: recover() claims one orphan at a time and stopped at the first claim
    # that returned nothing, so an older orphan whose log could not be read back
    # (dead-lettered by the claim) left every newer orphan unrecovered.
    await crash(db, rec_order("sofa"), "o-garbled", at(TransitionKind.STEP_STARTED, "pay"))
    await crash(db, rec_order("rug"), "o-fine", at(TransitionKind.STEP_STARTED, "pay"))
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            "UPDATE sagakit_sagas SET arguments = '{\"__sk__\": \"nope\"}' WHERE id = 'o-garbled'"
        )
    store = SQLiteStore(db)
    async with SagaOrchestrator(store) as orchestrator:
        outcomes = await orchestrator.recover()
        assert [(o.saga_id, o.action) for o in outcomes] == [("o-fine", "resumed")]
        (letter,) = await store.dead_letters()
        assert letter.saga_id == "o-garbled"
        assert "cannot be read back" in letter.reason


@saga
def rec_picky(item: str):  # type: ignore[no-untyped-def]
    booking = yield book(item)
    if item == "unlucky":
        raise ValueError(f"cannot pay for {booking}")
    yield pay(item)


@pytest.mark.asyncio
async def test_a_resumed_saga_body_that_raises_does_not_stop_recover(db: str) -> None:
    # Regression: an exception other than a SagaError raised by the saga's body after
    # resuming (here: its own check on a step's result) propagated out of recover()
    # once the saga was compensated: recover_on_start failed, and the other orphans
    # were left running.
    await crash(db, rec_picky("unlucky"), "o-raises", at(TransitionKind.STEP_COMPLETED, "book"))
    await crash(db, rec_order("chair"), "o-next", at(TransitionKind.STEP_STARTED, "pay"))
    async with SagaOrchestrator(SQLiteStore(db), recover_on_start=True) as orchestrator:
        raised = await orchestrator.get_saga("o-raises")
        assert raised is not None
        assert raised.status is SagaStatus.COMPENSATED
        assert raised.error == "ValueError: cannot pay for booking-unlucky"
        following = await orchestrator.get_saga("o-next")
        assert following is not None
        assert following.status is SagaStatus.COMPLETED
    effects.clear()
    await crash(db, rec_picky("unlucky"), "o-again", at(TransitionKind.STEP_COMPLETED, "book"))
    async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
        (outcome,) = await orchestrator.recover()
    assert (outcome.action, outcome.status) == ("resumed", SagaStatus.COMPENSATED)
    assert outcome.error == "ValueError: cannot pay for booking-unlucky"
    assert effects == ["book unlucky o-again:0", "book unlucky o-again:0", "cancel booking-unlucky"]


@pytest.mark.asyncio
async def test_the_worker_backs_off_while_claims_keep_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the database away the worker retried every poll_interval, a warning each
    # time (20 a second at poll_interval=0.05), for as long as the outage lasted.
    from sagakit import _worker

    store = SQLiteStore(tmp_path / "sagas.db")
    outage = [True]
    claim = store.claim_orphans

    async def claim_orphans(**options: Any) -> Any:
        if outage[0]:
            raise StoreError("the database is away")
        return await claim(**options)

    store.claim_orphans = claim_orphans  # type: ignore[method-assign]
    waits: list[float] = []
    stop = asyncio.Event()

    async def no_wait(events: Any, seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 8:
            outage[0] = False  # back: the next wait is poll_interval again
        if len(waits) == 10:
            stop.set()

    monkeypatch.setattr(_worker, "_wait", no_wait)
    await SagaOrchestrator(store).run_worker(poll_interval=0.5, stop=stop, handle_signals=False)
    await store.close()
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 0.5, 0.5]


@pytest.mark.asyncio
async def test_a_worker_whose_cancellation_is_lost_while_claiming_still_stops(db: str) -> None:
    # Regression: Python 3.11's asyncio.wait_for (which psycopg_pool waits for a
    # connection with) returns normally when the cancellation arrives just as the
    # connection is handed over: the cancelled worker's claim came back as if nothing
    # happened, and the worker looped on for good (its canceller waited forever).
    await crash(db, rec_order("kite"), "o-lost", at(TransitionKind.STEP_COMPLETED, "book"))
    store = SQLiteStore(db)
    claim = store.claim_orphans
    claiming = asyncio.Event()
    claims = 0

    async def losing_claim(**options: Any) -> Any:
        nonlocal claims
        claims += 1
        if claims == 1:
            claiming.set()
            # Lost on the way, as wait_for loses it: still requested on the task.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
        return await claim(**options)

    store.claim_orphans = losing_claim  # type: ignore[method-assign]
    worker = asyncio.create_task(
        SagaOrchestrator(store).run_worker(poll_interval=0.01, handle_signals=False)
    )
    await claiming.wait()
    worker.cancel()
    done, _ = await asyncio.wait({worker}, timeout=10.0)  # a guard
    if not done:  # the bug: stop it for good before failing
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    assert worker in done, f"the cancelled worker ran on ({claims} claims)"
    assert worker.cancelled()
    assert claims == 1
    # What that claim took was not dropped, nor run: it was given back, for the next
    # recovery (which the given-back claim did not cost an attempt).
    meta = await store.get("o-lost")
    assert meta is not None
    assert meta.status is SagaStatus.EXECUTING
    assert effects == ["book kite o-lost:0"]
    outcomes = await SagaOrchestrator(store).recover(max_attempts=1)
    assert [(o.saga_id, o.status) for o in outcomes] == [("o-lost", SagaStatus.COMPLETED)]
    # (book ran, but the crash kept its completion out of the log: it ran again.)
    assert effects == ["book kite o-lost:0", "book kite o-lost:0", "pay kite"]
    await store.close()


@pytest.mark.asyncio
async def test_a_claim_that_fails_midway_lets_go_of_what_it_claimed(db: str) -> None:
    # Regression: when parking an unreadable orphan failed, claim_orphans raised but
    # the orphans it had claimed kept this live process as their owner: nobody could
    # recover them until the process exited.
    await crash(db, rec_order("sofa"), "o-garbled2", at(TransitionKind.STEP_STARTED, "pay"))
    await crash(db, rec_order("rug"), "o-fine2", at(TransitionKind.STEP_STARTED, "pay"))
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            "UPDATE sagakit_sagas SET arguments = '{\"__sk__\": \"nope\"}' WHERE id = 'o-garbled2'"
        )
    store = SQLiteStore(db)

    async def dead_letter(saga_id: str, reason: str) -> None:
        raise StoreError("disk full")

    store.dead_letter = dead_letter  # type: ignore[method-assign]
    with pytest.raises(StoreError, match="disk full"):
        await store.claim_orphans()
    store.dead_letter = SQLiteStore.dead_letter.__get__(store)  # type: ignore[method-assign]
    # The same live process claims them again at once: nothing is left owned, and the
    # claim let go of counted no recovery attempt (nobody ran the saga).
    claimed = await store.claim_orphans(max_attempts=1)
    await store.close()
    assert [(orphan.saga_id, orphan.recovery_attempts) for orphan in claimed] == [("o-fine2", 1)]


@saga
def rec_list_order(item: str):  # type: ignore[no-untyped-def]
    return [book(item), pay(item)]


@pytest.mark.asyncio
async def test_a_saga_extended_with_add_step_is_not_resumed_without_its_added_step(
    db: str,
) -> None:
    # Regression: add_step() on a definition a @saga list function returned kept the
    # function as its factory, so recovery rebuilt the saga from the function alone:
    # it resumed the two original steps, never ran the added one, and ended COMPLETED.
    extended = rec_list_order("pen").add_step(book("ink"))
    assert extended.factory is None  # no longer what rec_list_order(...) builds
    await crash(db, extended, "o-extended", at(TransitionKind.STEP_STARTED, "pay"))
    async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
        (outcome,) = await orchestrator.recover()
        assert outcome.action == "dead_lettered"
        assert outcome.error is not None
        assert "add_step" in outcome.error
        assert await orchestrator.running_count() == 0
    assert effects == ["book pen o-extended:0"]  # nothing ran on a half-rebuilt saga


@pytest.mark.asyncio
async def test_a_saga_the_log_refused_to_park_is_not_logged_parked(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: recovery logged "parked saga" at ERROR before the dead letter was
    # written; a write refused (a lost lease, a full disk) left an ERROR saying the
    # saga was parked beside a saga still running in the log.
    await crash(
        db,
        rec_list_order("cup").add_step(book("lid")),
        "o-unparked",
        at(TransitionKind.STEP_STARTED, "pay"),
    )
    store = SQLiteStore(db)

    async def dead_letter(saga_id: str, reason: str) -> None:
        raise StoreError("disk full")

    store.dead_letter = dead_letter  # type: ignore[method-assign]
    caplog.set_level(logging.INFO, logger="sagakit")
    async with SagaOrchestrator(store) as orchestrator:
        with pytest.raises(StoreError, match="disk full"):
            await orchestrator.recover()
        assert not [r for r in caplog.records if "parked saga" in r.getMessage()]
        store.dead_letter = SQLiteStore.dead_letter.__get__(store)  # type: ignore[method-assign]
        (outcome,) = await orchestrator.recover()  # given back: the next claim parks it
        assert outcome.action == "dead_lettered"
    [parked] = [r for r in caplog.records if "parked saga" in r.getMessage()]
    assert parked.levelno == logging.ERROR
    assert "o-unparked" in parked.getMessage()


holding: asyncio.Event | None = None


@step
async def rec_hold(item: str) -> str:
    effects.append(f"hold {item}")
    if holding is not None:  # the recovery that is cancelled here
        holding.set()
        await asyncio.sleep(3600)
    return f"held-{item}"


@saga
def rec_held_order(item: str):  # type: ignore[no-untyped-def]
    yield book(item)
    yield rec_hold(item)
    yield pay(item)


@pytest.mark.asyncio
async def test_a_cancelled_recover_hands_the_saga_back_for_the_next_recovery(db: str) -> None:
    # A cancelled recover() (Ctrl-C on `sagakit recover`, a shutdown) compensated the
    # saga it was resuming, as a cancelled execute() does: a saga whose policy says
    # "resume" was undone because its recovery was interrupted. It is now left as a
    # crash leaves it, and the next recovery finishes it per its policy.
    global holding
    holding = asyncio.Event()
    await crash(
        db, rec_held_order("hat"), "o-cancelled", at(TransitionKind.STEP_STARTED, "rec_hold")
    )
    store = SQLiteStore(db)
    async with SagaOrchestrator(store) as orchestrator:
        recovering = asyncio.create_task(orchestrator.recover())
        await holding.wait()
        recovering.cancel()
        with pytest.raises(asyncio.CancelledError):
            await recovering
        meta = await orchestrator.get_saga("o-cancelled")
        assert meta is not None
        assert meta.status is SagaStatus.EXECUTING  # not compensated
        assert [(s.name, s.status) for s in meta.steps] == [
            ("book", StepStatus.COMPLETED),
            ("rec_hold", StepStatus.RUNNING),  # its outcome unknown, as after a crash
        ]
        await simulate_restart(store)  # this process "exits"
    holding = None
    async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
        outcomes = await orchestrator.recover()
        assert [(o.saga_id, o.action, o.status) for o in outcomes] == [
            ("o-cancelled", "resumed", SagaStatus.COMPLETED)
        ]
    assert effects == ["book hat o-cancelled:0", "hold hat", "hold hat", "pay hat"]


@pytest.mark.asyncio
async def test_a_class_method_saga_runs_on_a_durable_log_and_is_recovered_with_its_class(
    db: str,
) -> None:
    # Its class comes first in its arguments, which the log records: execute() refused
    # it with SerializationError ("Outlet objects cannot be stored as JSON; make it a
    # dataclass ..." though it was the class), so no class method saga ran durably.
    async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
        assert await orchestrator.execute(Shop.order("pen"), saga_id="o-shop") == [
            "booking-Shop pen",
            "paid-pen",
        ]
    await crash(db, Outlet.order("hat"), "o-outlet", at(TransitionKind.STEP_STARTED, "pay"))
    async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
        outcomes = await orchestrator.recover()
        assert [(o.saga_id, o.action, o.status) for o in outcomes] == [
            ("o-outlet", "resumed", SagaStatus.COMPLETED)
        ]
        meta = await orchestrator.get_saga("o-outlet")
        assert meta is not None
        assert meta.events == ("booking-Outlet hat", "paid-hat")  # replayed as Outlet's


@pytest.mark.asyncio
async def test_a_malformed_orphan_row_is_dead_lettered_not_raised(db: str) -> None:
    # Arguments that decode but have the wrong shape made recover() raise (PostgreSQL
    # parked such a saga): every recover() then failed on it.
    await crash(db, rec_order("lamp"), "o-shape", at(TransitionKind.STEP_STARTED, "pay"))
    await crash(db, rec_order("desk"), "o-good", at(TransitionKind.STEP_STARTED, "pay"))
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE sagakit_sagas SET arguments = '[1]' WHERE id = 'o-shape'")
    store = SQLiteStore(db)
    async with SagaOrchestrator(store) as orchestrator:
        outcomes = await orchestrator.recover()
        assert [(o.saga_id, o.action) for o in outcomes] == [("o-good", "resumed")]
        (letter,) = await store.dead_letters()
        assert letter.saga_id == "o-shape"
        assert "cannot be read back" in letter.reason


@pytest.mark.asyncio
async def test_recover_on_start_without_async_with_says_nothing_was_recovered(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    # recover_on_start=True silently did nothing when the orchestrator was not entered.
    await crash(db, rec_order("chair"), "o-unentered", at(TransitionKind.STEP_STARTED, "pay"))
    orchestrator = SagaOrchestrator(SQLiteStore(db), recover_on_start=True)
    with caplog.at_level("WARNING", logger="sagakit"):
        await orchestrator.execute(rec_order("stool"))
        await orchestrator.execute(rec_order("bench"))
    said = [r.getMessage() for r in caplog.records if "recover_on_start" in r.getMessage()]
    assert len(said) == 1  # once, not per saga
    assert "was not entered, so nothing was recovered" in said[0]
    await orchestrator.close()

    caplog.clear()
    async with SagaOrchestrator(SQLiteStore(db), recover_on_start=True) as entered:
        with caplog.at_level("WARNING", logger="sagakit"):
            await entered.execute(rec_order("table"))
    assert not [r for r in caplog.records if "recover_on_start" in r.getMessage()]


@pytest.mark.asyncio
async def test_a_cancelled_recover_tells_listeners_the_saga_stopped(db: str) -> None:
    # A listener (not only the built-in tracer) must learn that a run it heard start
    # will not finish here: it hears SAGA_STOPPED, with why, and nothing after it.
    global holding
    holding = asyncio.Event()
    await crash(db, rec_held_order("cap"), "o-told", at(TransitionKind.STEP_STARTED, "rec_hold"))
    heard: list[Transition] = []
    try:
        async with SagaOrchestrator(SQLiteStore(db), listeners=[heard.append]) as orchestrator:
            recovering = asyncio.create_task(orchestrator.recover())
            await holding.wait()
            recovering.cancel()
            with pytest.raises(asyncio.CancelledError):
                await recovering
    finally:
        holding = None
    assert [t.kind for t in heard][-2:] == [
        TransitionKind.STEP_STARTED,
        TransitionKind.SAGA_STOPPED,
    ]
    stopped = heard[-1]
    assert stopped.saga_id == "o-told"
    assert stopped.status is SagaStatus.EXECUTING  # unfinished: the log still says so
    assert isinstance(stopped.error, asyncio.CancelledError)
    assert "the next recovery finishes the saga" in str(stopped.error)


class FencedOnCompensation(SQLiteStore):
    """Another worker takes the saga over as recovery starts compensating it."""

    async def record(self, run: SagaRun, transition: Transition) -> None:
        if transition.kind is TransitionKind.COMPENSATION_STARTED:
            # Another worker owns it now: a token of another host, always alive here.
            await self._writer.submit(
                lambda conn: conn.execute(
                    "UPDATE sagakit_sagas SET owner = 'other-host/1/1/ns' WHERE id = ?",
                    (transition.saga_id,),
                ),
                alone=False,
            )
            raise LeaseLost(transition.saga_id)
        await super().record(run, transition)


@pytest.mark.asyncio
async def test_recovery_fenced_out_while_compensating_tells_saga_stopped(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    await crash(db, rec_careful_order("mug"), "o-fenced", at(TransitionKind.STEP_STARTED, "pay"))
    heard: list[Transition] = []
    async with SagaOrchestrator(FencedOnCompensation(db), listeners=[heard.append]) as orchestrator:
        with caplog.at_level("INFO", logger="sagakit"):
            assert await orchestrator.recover() == []
    assert heard[-1].kind is TransitionKind.SAGA_STOPPED
    assert heard[-1].status is SagaStatus.COMPENSATING
    assert isinstance(heard[-1].error, LeaseLost)
    assert TransitionKind.SAGA_FINISHED not in [t.kind for t in heard]
    assert effects == ["book mug o-fenced:0"]  # nothing undone from here
    stopped = [r for r in caplog.records if getattr(r, "transition", None) == "saga_stopped"]
    assert len(stopped) == 1
    assert stopped[0].levelname == "INFO"  # recovery's own line warns, once
    assert "saga_stopped: LeaseLost: lost the lease" in stopped[0].getMessage()
    warned = [
        r for r in caplog.records if r.levelname == "WARNING" and "LeaseLost" in r.getMessage()
    ]
    assert warned == []


body_runs: list[str] = []


def _counted(item: str):  # type: ignore[no-untyped-def]
    body_runs.append("enter")
    try:
        yield book(item)
        yield pay(item)
    finally:
        body_runs.append("exit")


rec_counted_order = saga(name="rec_counted_order")(_counted)
rec_counted_careful = saga(name="rec_counted_careful", recovery="compensate")(_counted)


@pytest.mark.asyncio
@pytest.mark.parametrize("where", ["between steps", "inside a step"])
async def test_recovery_runs_a_generator_body_once(db: str, where: str) -> None:
    # Regression: recovery ran the body once to check the replay against the log, closed
    # it (its finally: block ran), then ran it again to resume: a body with an
    # enter/exit pair (a span, a lock, a counter) saw two of each per recovery.
    when = (
        at(TransitionKind.STEP_STARTED, "pay")
        if where == "between steps"
        else at(TransitionKind.STEP_COMPLETED, "pay")
    )
    await crash(db, rec_counted_order("cup"), "o-once", when)
    body_runs.clear()
    async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
        (outcome,) = await orchestrator.recover()
    assert (outcome.action, outcome.status) == ("resumed", SagaStatus.COMPLETED)
    assert body_runs == ["enter", "exit"]


@pytest.mark.asyncio
async def test_recovery_compensating_runs_a_generator_body_once(db: str) -> None:
    await crash(db, rec_counted_careful("jug"), "o-once-c", at(TransitionKind.STEP_STARTED, "pay"))
    body_runs.clear()
    async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
        (outcome,) = await orchestrator.recover()
    assert (outcome.action, outcome.status) == ("compensated", SagaStatus.COMPENSATED)
    assert body_runs == ["enter", "exit"]
    assert effects[-1] == "cancel booking-jug"


@pytest.mark.asyncio
async def test_an_unreadable_orphan_is_parked_naming_the_value_that_cannot_be_read(
    db: str,
) -> None:
    # Regression: the reason said only "stored value has type ...", not whether the
    # saga's arguments or which step's result could not be read back.
    await crash(db, rec_order("sofa"), "o-result", at(TransitionKind.STEP_STARTED, "pay"))
    await crash(db, rec_order("rug"), "o-args", at(TransitionKind.STEP_STARTED, "pay"))
    gone = '{"__sk__":"enum","t":"no_such_module_xyz:Gone","v":1}'
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            "UPDATE sagakit_steps SET result = ? WHERE saga_id = 'o-result' AND idx = 0",
            (gone,),
        )
        conn.execute(
            "UPDATE sagakit_sagas SET arguments = ? WHERE id = 'o-args'", (f"[[{gone}],{{}}]",)
        )
    store = SQLiteStore(db)
    async with SagaOrchestrator(store) as orchestrator:
        assert await orchestrator.recover() == []
        reasons = {letter.saga_id: letter.reason for letter in await store.dead_letters()}
    assert "the result of step 0 ('book'): " in reasons["o-result"]
    assert "the arguments of saga 'rec_order': " in reasons["o-args"]
    assert "no_such_module_xyz" in reasons["o-args"]


@pytest.mark.asyncio
async def test_a_simulated_crash_in_a_worker_s_saga_is_logged_not_left_unretrieved(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: the worker's task for a saga that hit a simulated crash ended with the
    # SimulatedCrash that nobody awaits: asyncio reported "Task exception was never
    # retrieved" (with the whole traceback) when the task was collected.
    import gc

    from sagakit.testing import FaultInjector

    effects.clear()
    await crash(db, rec_order("vase"), "o-sim", at(TransitionKind.STEP_COMPLETED, "book"))
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    store = SQLiteStore(db)
    stop = asyncio.Event()
    try:
        with FaultInjector().crash(pay):
            worker = asyncio.create_task(
                SagaOrchestrator(store).run_worker(
                    poll_interval=0.01, stop=stop, handle_signals=False
                )
            )
            for _ in range(1000):  # a guard: 10 s at most
                if "crashed (simulated" in caplog.text or reported:
                    break
                await asyncio.sleep(0.01)
        stop.set()
        await worker
        gc.collect()
    finally:
        loop.set_exception_handler(None)
        await store.close()
    assert reported == []
    assert "saga o-sim crashed (simulated" in caplog.text
    reader = SQLiteStore(db, read_only=True)
    meta = await reader.get("o-sim")
    await reader.close()
    assert meta is not None
    assert meta.status is SagaStatus.EXECUTING  # left as a crash leaves it, for recovery


@pytest.mark.asyncio
async def test_a_saga_parked_for_its_attempts_is_logged_with_why_and_the_fix(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: the ERROR record of a saga the claim parked after its recovery attempts
    # said only "too many recovery attempts": not how many, nor the limit, nor what an
    # operator does about it, where its dead letter's reason and `sagakit show` say them.
    await crash(db, rec_order("kite"), "o-attempts", at(TransitionKind.STEP_STARTED, "pay"))
    store = SQLiteStore(db)
    assert len(await store.claim_orphans(max_attempts=1)) == 1  # a recovery that then dies
    await simulate_restart(store)
    await store.close()
    caplog.set_level(logging.INFO, logger="sagakit")
    store = SQLiteStore(db)
    try:
        assert await store.claim_orphans(max_attempts=1) == []  # attempt 2 > 1: parked
        (letter,) = await store.dead_letters()
    finally:
        await store.close()
    [parked] = [r for r in caplog.records if "parked saga" in r.getMessage()]
    assert parked.levelno == logging.ERROR
    assert parked.getMessage() == (
        f"sagakit parked saga rec_order (o-attempts): {letter.reason}; "
        "`sagakit resume` it once its cause is fixed, or `sagakit resolve` it"
    )
    assert "none of its 1 recovery attempt finished it" in letter.reason
    assert "(max_attempts=1)" in letter.reason
