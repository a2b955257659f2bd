"""A step that runs an inner saga under an id derived from its idempotency key, with the
process dying inside that inner saga: recovery must finish both, consistently."""

from __future__ import annotations

import asyncio
import gc
import logging
import subprocess
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    SagaAlreadyExecuting,
    SagaDefinition,
    SagaDefinitionError,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StepFailed,
    Transition,
    TransitionKind,
    current_step,
    saga,
    step,
)
from sagakit.stores import RecoverableStore
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

effects: list[str] = []
orchestrators: dict[str, SagaOrchestrator] = {}  # the one this "process" runs
gates: dict[str, asyncio.Event] = {}


@step
async def nr_reserve(order: str) -> str:
    effects.append(f"reserve {order}")
    return f"reservation-{order}"


@nr_reserve.compensate
async def nr_unreserve(order: str) -> None:
    effects.append(f"unreserve {order}")


@step
async def nr_authorize(order: str) -> str:
    effects.append(f"authorize {order}")
    return f"auth-{order}"


@nr_authorize.compensate
async def nr_void(order: str) -> None:
    effects.append(f"void {order}")


@step
async def nr_capture(order: str) -> str:
    effects.append(f"capture {order}")
    gate = gates.get("capture")
    if gate is not None:
        await gate.wait()
    return f"captured-{order}"


@saga
def nr_payment(order: str) -> Any:
    yield nr_authorize(order)
    yield nr_capture(order)


@step
async def nr_pay(order: str) -> list[Any]:
    context = current_step()
    assert context is not None
    # The inner saga's id comes from this step's idempotency key: run again by
    # recovery, the step executes the same inner saga.
    inner = f"{context.idempotency_key}/payment"
    return await orchestrators["current"].execute(nr_payment(order), saga_id=inner)


@nr_pay.compensate
async def nr_refund(order: str) -> None:
    effects.append(f"refund {order}")


@step
async def nr_ship(order: str) -> str:
    effects.append(f"ship {order}")
    return f"shipped-{order}"


@saga
def nr_order(order: str) -> Any:
    yield nr_reserve(order)
    yield nr_pay(order)
    yield nr_ship(order)


@pytest.fixture(autouse=True)
def _clear() -> None:
    effects.clear()
    orchestrators.clear()
    gates.clear()


async def _crashed_capturing(durable_store: Callable[[], Any], saga: Any, saga_id: str) -> None:
    """``saga`` started as ``saga_id``, and its process died as its inner saga's
    ``nr_capture`` step began."""
    store = durable_store()
    orchestrators["current"] = SagaOrchestrator(store)
    with FaultInjector().crash(nr_capture), pytest.raises(SimulatedCrash):
        await orchestrators["current"].execute(saga, saga_id=saga_id)
    await simulate_restart(store)
    await store.close()


@pytest.mark.asyncio
async def test_a_crash_inside_an_inner_saga_is_finished_by_the_outer_ones_recovery(
    durable_store: Callable[[], Any],
) -> None:
    # Regression: recovery resumed the outer saga first (the oldest), its step ran the
    # inner saga's id again, and the log still had that id executing (its process had
    # died): SagaAlreadyExecuting failed the step, the outer saga was compensated, and
    # the inner one was resumed afterwards and captured the payment of a cancelled order.
    await _crashed_capturing(durable_store, nr_order("o1"), "order-1")
    assert effects == ["reserve o1", "authorize o1"]

    async with SagaOrchestrator(durable_store()) as restarted:
        orchestrators["current"] = restarted
        outcomes = await restarted.recover()
        assert [(o.saga_id, o.action, o.status) for o in outcomes] == [
            ("order-1", "resumed", SagaStatus.COMPLETED)
        ]
        inner = await restarted.get_saga("order-1:1/payment")
        assert inner is not None
        assert inner.status is SagaStatus.COMPLETED
        assert await restarted.recover() == []  # nothing left behind
        outer = await restarted.get_saga("order-1")
        assert outer is not None
        assert outer.steps[1].events == ("auth-o1", "captured-o1")
    assert effects == ["reserve o1", "authorize o1", "capture o1", "ship o1"]


@pytest.mark.asyncio
async def test_a_worker_claiming_the_outer_and_the_inner_saga_together_finishes_both(
    durable_store: Callable[[], Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: a worker claims every orphan it can run at once, the outer saga and
    # its inner one both, and recovers each in a task of its own. The outer one's step
    # executed the inner id while the inner one's recovery was still capturing: the
    # claim of adopt() found it held (by this very store), SagaAlreadyExecuting failed
    # the step, and the order was cancelled while its payment was captured.
    await _crashed_capturing(durable_store, nr_order("o1"), "order-1")
    gates["capture"] = asyncio.Event()  # the inner saga's recovery captures, slowly

    def let_capture_end(transition: Transition) -> None:
        if transition.saga_id == "order-1" and transition.kind is TransitionKind.STEP_FAILED:
            gates["capture"].set()  # (without waiting, the outer step failed at once)

    waited: list[logging.LogRecord] = []

    class WaitsForTheInnerRecovery(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "is being recovered here" in record.getMessage():
                waited.append(record)
                gates["capture"].set()

    caplog.set_level(logging.INFO, logger="sagakit")
    handler = WaitsForTheInnerRecovery()
    logging.getLogger("sagakit").addHandler(handler)
    try:
        async with SagaOrchestrator(durable_store(), listeners=[let_capture_end]) as restarted:
            orchestrators["current"] = restarted
            stop = asyncio.Event()
            worker = asyncio.create_task(
                restarted.run_worker(poll_interval=0.01, stop=stop, handle_signals=False)
            )
            for _ in range(5000):
                outer = await restarted.get_saga("order-1")
                assert outer is not None
                if outer.status is not SagaStatus.EXECUTING:
                    break
                await asyncio.sleep(0.01)
            stop.set()
            await worker
            assert outer.status is SagaStatus.COMPLETED
            inner = await restarted.get_saga("order-1:1/payment")
            assert inner is not None
            assert inner.status is SagaStatus.COMPLETED
    finally:
        logging.getLogger("sagakit").removeHandler(handler)
    assert effects == ["reserve o1", "authorize o1", "capture o1", "ship o1"]
    # The record names the saga, as every sagakit record about one does (it had no name).
    assert waited
    assert [(r.saga_id, r.saga_name) for r in waited] == [  # type: ignore[attr-defined]
        ("order-1:1/payment", "nr_payment")
    ] * len(waited)
    assert "nr_payment (order-1:1/payment)" in waited[0].getMessage()


@pytest.mark.asyncio
async def test_an_id_a_live_process_runs_is_still_refused(tmp_path: Path) -> None:
    # Only an orphan is finished by execute(): an id this (live) process runs stays refused.
    import asyncio

    gate = asyncio.Event()

    @step
    async def nr_hold(order: str) -> None:
        await gate.wait()

    @saga
    def nr_held(order: str) -> Any:
        yield nr_hold(order)

    async with SagaOrchestrator(SQLiteStore(tmp_path / "sagas.db")) as orchestrator:
        running = asyncio.create_task(orchestrator.execute(nr_held("x"), saga_id="held-1"))
        await asyncio.sleep(0.05)
        with pytest.raises(SagaAlreadyExecuting):
            await orchestrator.execute(nr_held("x"), saga_id="held-1")
        gate.set()
        await running


@pytest.mark.asyncio
async def test_executing_a_dead_lettered_id_says_it_is_parked(
    durable_store: Callable[[], Any],
) -> None:
    # It said "already executing; wait for it to finish": nothing ever finishes a parked
    # saga until someone resumes or resolves it.
    await _crashed_capturing(durable_store, nr_payment("o2"), "pay-2")
    async with SagaOrchestrator(durable_store()) as restarted:
        parked = restarted.store
        assert isinstance(parked, RecoverableStore)
        assert [o.saga_id for o in await parked.claim_orphans(saga_ids=["pay-2"])] == ["pay-2"]
        await parked.dead_letter("pay-2", "held for review")
        with pytest.raises(SagaAlreadyExecuting) as info:
            await restarted.execute(nr_payment("o2"), saga_id="pay-2")
    assert info.value.dead_letter is not None
    assert "held for review" in info.value.dead_letter
    assert "is dead-lettered" in str(info.value)
    assert "sagakit resume" in str(info.value)
    assert effects == ["authorize o2"]  # nothing ran again


@pytest.mark.asyncio
async def test_claim_orphans_refuses_one_id_given_as_a_string(
    durable_store: Callable[[], Any],
) -> None:
    # A string is a collection of its characters: "pay-3" would claim sagas "p", "a", ...
    store = durable_store()
    assert isinstance(store, RecoverableStore)
    with pytest.raises(SagaDefinitionError, match=r"pass saga_ids=\['pay-3'\]"):
        await store.claim_orphans(saga_ids="pay-3")
    # So is a name: "nr_payment" claimed the sagas named "n", "r", "_", ..., none.
    with pytest.raises(SagaDefinitionError, match=r"pass names=\['nr_payment'\]"):
        await store.claim_orphans(names="nr_payment")
    await store.close()


async def _orphan_with_attempts(store: Any, saga_id: str, attempts: int) -> None:
    """``nr_payment("o9")`` crashed in ``nr_capture``; then ``attempts`` recoveries claimed it
    and died too."""
    assert isinstance(store, RecoverableStore)
    orchestrators["current"] = SagaOrchestrator(store)
    with FaultInjector().crash(nr_capture), pytest.raises(SimulatedCrash):
        await orchestrators["current"].execute(nr_payment("o9"), saga_id=saga_id)
    await simulate_restart(store)
    for _ in range(attempts):
        assert [o.saga_id for o in await store.claim_orphans(saga_ids=[saga_id])] == [saga_id]
        await simulate_restart(store)


@pytest.mark.asyncio
async def test_executing_an_orphan_goes_by_the_orchestrators_max_recovery_attempts(
    durable_store: Callable[[], Any],
) -> None:
    # execute() adopted an orphan under the default of 3 attempts, whatever the
    # orchestrator's max_recovery_attempts: one recover() would still run was parked.
    store = durable_store()
    await _orphan_with_attempts(store, "pay-9", 3)
    await store.close()
    async with SagaOrchestrator(durable_store(), max_recovery_attempts=5) as restarted:
        orchestrators["current"] = restarted
        events = await restarted.execute(nr_payment("o9"), saga_id="pay-9")
        assert events == ["auth-o9", "captured-o9"]
        assert await restarted.store.dead_letters() == []  # type: ignore[attr-defined]
    assert effects == ["authorize o9", "capture o9"]


@pytest.mark.asyncio
async def test_executing_an_orphan_past_its_attempts_parks_it_and_says_so(
    durable_store: Callable[[], Any],
) -> None:
    # With max_recovery_attempts=1, execute() ran it a second time (the default 3
    # applied); and the claim that parks it raised "already executing; wait for it to
    # finish", which nothing will ever do.
    store = durable_store()
    await _orphan_with_attempts(store, "pay-10", 1)
    await store.close()
    async with SagaOrchestrator(durable_store(), max_recovery_attempts=1) as restarted:
        orchestrators["current"] = restarted
        with pytest.raises(SagaAlreadyExecuting) as info:
            await restarted.execute(nr_payment("o9"), saga_id="pay-10")
        (parked,) = await restarted.store.dead_letters()  # type: ignore[attr-defined]
    assert parked.saga_id == "pay-10"
    assert info.value.dead_letter is not None
    assert "is dead-lettered" in str(info.value)
    assert effects == ["authorize o9"]  # nothing ran again


@pytest.mark.asyncio
async def test_a_step_reaches_the_orchestrator_running_it(tmp_path: Path) -> None:
    seen: list[tuple[SagaOrchestrator, bool]] = []

    @step
    async def nr_where() -> None:
        context = current_step()
        assert context is not None
        seen.append((context.orchestrator, context.compensating))

    @nr_where.compensate
    async def nr_where_undo() -> None:
        context = current_step()
        assert context is not None
        seen.append((context.orchestrator, context.compensating))

    @step
    async def nr_fail() -> None:
        raise LookupError("no")

    first, second = SagaOrchestrator(), SagaOrchestrator()
    await first.execute(SagaDefinition(steps=[nr_where()]))
    with pytest.raises(StepFailed):
        await second.execute(SagaDefinition(steps=[nr_where(), nr_fail()]))
    assert seen == [(first, False), (second, False), (second, True)]
    assert "orchestrator" not in repr(current_step_context(first))


@pytest.mark.asyncio
async def test_a_run_does_not_keep_its_orchestrator_alive() -> None:
    # Regression: each run in the in-memory history held its orchestrator, a reference
    # cycle: an orchestrator made per request outlived its last use until the cyclic
    # garbage collector ran (with the whole history it kept).
    @step
    async def nr_plain() -> None:
        return None

    gc.disable()
    try:
        orchestrator = SagaOrchestrator()
        await orchestrator.execute(SagaDefinition(steps=[nr_plain()]))
        assert await orchestrator.history_count() == 1
        gone = weakref.ref(orchestrator)
        del orchestrator
        assert gone() is None  # freed by its last reference, no collection needed
    finally:
        gc.enable()


def current_step_context(orchestrator: SagaOrchestrator) -> Any:
    """A StepContext as a step of ``orchestrator`` gets it (for its repr)."""
    from sagakit._runs import StepContext

    return StepContext("s", "n", 0, "step", 1, False, orchestrator)


NESTED_APP = """
import json
from sagakit import current_step, saga, step

def effect(text):
    with open("effects.txt", "a") as log:
        log.write(text + "\\n")

@step
async def authorize(order: str) -> str:
    effect(f"authorize {order}")
    return f"auth-{order}"

@step
async def capture(order: str) -> str:
    effect(f"capture {order}")
    return f"captured-{order}"

@saga
def payment(order: str):
    yield authorize(order)
    yield capture(order)

@step
async def pay(order: str) -> list:
    context = current_step()
    # The orchestrator running this step: the application's, or `sagakit recover`'s.
    inner = f"{context.idempotency_key}/payment"
    return await context.orchestrator.execute(payment(order), saga_id=inner)

@pay.compensate
async def refund(order: str) -> None:
    effect(f"refund {order}")

@step
async def ship(order: str) -> str:
    effect(f"ship {order}")
    return f"shipped-{order}"

@saga
def place_order(order: str):
    yield pay(order)
    yield ship(order)
"""

CRASH_INSIDE_PAYMENT = """
import asyncio
from sagakit import SagaOrchestrator, SQLiteStore
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart
from nested_app import capture, place_order

async def main():
    store = SQLiteStore("sagas.db")
    with FaultInjector().crash(capture):
        try:
            await SagaOrchestrator(store).execute(place_order("o1"), saga_id="order-1")
        except SimulatedCrash:
            pass
    await simulate_restart(store)
    await store.close()

asyncio.run(main())
"""


def test_sagakit_recover_finishes_a_nested_saga_through_the_step_orchestrator(
    tmp_path: Path,
) -> None:
    # Regression (of the documented pattern): the outer step ran its inner saga with a
    # module-level orchestrator that `sagakit recover` never sets, so the recovered step
    # failed, the order was compensated, and the payment saga was resumed afterwards and
    # captured the payment of a cancelled order. With current_step().orchestrator the
    # CLI's orchestrator runs the inner saga too.
    (tmp_path / "nested_app.py").write_text(NESTED_APP, encoding="utf-8")
    subprocess.run(
        [sys.executable, "-c", CRASH_INSIDE_PAYMENT], cwd=tmp_path, check=True, timeout=60
    )
    effects_file = tmp_path / "effects.txt"
    assert effects_file.read_text().split("\n")[:-1] == ["authorize o1"]
    recovered = subprocess.run(
        [sys.executable, "-m", "sagakit", "--db", "sagas.db", "recover", "--import", "nested_app"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert recovered.returncode == 0, recovered.stderr
    assert effects_file.read_text().split("\n")[:-1] == ["authorize o1", "capture o1", "ship o1"]

    async def read() -> tuple[Any, Any]:
        async with SagaOrchestrator(SQLiteStore(tmp_path / "sagas.db")) as reader:
            return await reader.get_saga("order-1"), await reader.get_saga("order-1:0/payment")

    outer, inner = asyncio.run(read())
    assert (outer.status, inner.status) == (SagaStatus.COMPLETED, SagaStatus.COMPLETED)
    assert outer.steps[0].events == ("auth-o1", "captured-o1")
