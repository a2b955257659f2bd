"""Recovery of a saga whose process died after a compensation failed for good.

Regression: recovery ran that compensation again (only completed ones were left out), so
a saga the run would have ended ``FAILED`` at that compensation came back ``COMPENSATED``,
its earlier compensations run against the orchestrator's policy. Recovery must end it as
the run would have without the crash: ``FAILED`` at that compensation, the same
``CompensationFailed`` text, and (``continue_on_compensation_failure=False``) the earlier
steps left uncompensated.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    CompensationFailed,
    Retry,
    SagaAlreadyFailed,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StepStatus,
    StoreError,
    Transition,
    TransitionKind,
    saga,
    step,
)
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart
from store_helpers.refusing import refuse_record

pytestmark = pytest.mark.asyncio

effects: list[str] = []


@step
async def reserve(order: str) -> str:
    effects.append(f"reserve {order}")
    return f"r-{order}"


@reserve.compensate
async def release(order: str) -> None:
    effects.append(f"release {order}")


@step
async def charge(order: str) -> str:
    effects.append(f"charge {order}")
    return f"c-{order}"


@charge.compensate
async def refund(order: str) -> None:
    effects.append(f"refund {order}")


@step
async def ship(order: str) -> str:
    effects.append(f"ship {order}")
    raise RuntimeError("no courier")


@saga(name="failed_comp_order")
def order(name: str):  # type: ignore[no-untyped-def]
    yield reserve(name)
    yield charge(name)
    yield ship(name)


@pytest.fixture(autouse=True)
def _clean() -> None:
    effects.clear()


ONCE = Retry(attempts=1)


def _dies_once_told(kind: TransitionKind) -> Callable[[Transition], None]:
    """A listener: the process dies once ``kind`` is in the log (listeners hear of a
    transition after it is recorded), before anything else is."""

    def listener(transition: Transition) -> None:
        if transition.kind is kind:
            raise SimulatedCrash(f"killed once {kind} was recorded")

    return listener


def _refund_fails(how: str) -> FaultInjector:
    if how == "timeout":
        return FaultInjector().timeout_compensation(charge)
    return FaultInjector().fail_compensation(charge)


async def _without_a_crash(how: str, *, keep_going: bool) -> str:
    """The ``CompensationFailed`` text of the same saga run to its end, no crash."""
    orchestrator = SagaOrchestrator(
        compensation_retry=ONCE, continue_on_compensation_failure=keep_going
    )
    with _refund_fails(how), pytest.raises(CompensationFailed) as failure:
        await orchestrator.execute(order("x"))
    effects.clear()
    return str(failure.value)


async def _dies_after_refund_failed(store: Any, saga_id: str, how: str) -> None:
    """Run ``saga_id``: refund fails for good, then the process dies before anything else
    (the next compensation, the saga's end) is written."""
    dying = SagaOrchestrator(
        store,
        compensation_retry=ONCE,
        listeners=[_dies_once_told(TransitionKind.COMPENSATION_FAILED)],
    )
    with _refund_fails(how), pytest.raises(SimulatedCrash):
        await dying.execute(order("x").with_id(saga_id))
    crashed = await store.get(saga_id)
    assert crashed is not None
    assert crashed.status is SagaStatus.COMPENSATING
    assert [(c.name, c.status) for c in crashed.compensations] == [
        ("charge", StepStatus.TIMED_OUT if how == "timeout" else StepStatus.FAILED)
    ]
    await simulate_restart(store)
    await store.close()


@pytest.mark.parametrize("how", ["fail", "timeout"])
async def test_a_compensation_that_failed_for_good_is_not_run_again_and_ends_the_saga_failed(
    durable_store: Callable[[], Any], how: str
) -> None:
    expected = await _without_a_crash(how, keep_going=False)
    assert "left uncompensated: charge, reserve" in expected
    await _dies_after_refund_failed(durable_store(), "fc-1", how)

    restarted = SagaOrchestrator(durable_store())  # continue_on_compensation_failure=False
    [outcome] = await restarted.recover()
    final = await restarted.get_saga("fc-1")
    await restarted.close()
    assert (outcome.action, outcome.status, outcome.error) == (
        "compensated",
        SagaStatus.FAILED,
        expected,
    )
    assert final is not None
    assert (final.status, final.error) == (SagaStatus.FAILED, expected)
    [refunded] = final.compensations
    assert refunded.name == "charge"
    assert refunded.status is not StepStatus.COMPLETED
    # Neither refund (failed for good) nor release (after it, with this policy) ran.
    assert effects == ["reserve x", "charge x", "ship x"]


async def test_recovery_that_continues_past_failures_runs_the_others_but_not_the_failed_one(
    durable_store: Callable[[], Any],
) -> None:
    expected = await _without_a_crash("fail", keep_going=True)
    assert expected.endswith("left uncompensated: charge")
    await _dies_after_refund_failed(durable_store(), "fc-2", "fail")

    restarted = SagaOrchestrator(durable_store(), continue_on_compensation_failure=True)
    [outcome] = await restarted.recover()
    final = await restarted.get_saga("fc-2")
    await restarted.close()
    assert (outcome.status, outcome.error) == (SagaStatus.FAILED, expected)
    assert final is not None
    assert (final.status, final.error) == (SagaStatus.FAILED, expected)
    assert [(c.name, c.status) for c in final.compensations] == [
        ("charge", StepStatus.FAILED),
        ("reserve", StepStatus.COMPLETED),
    ]
    assert effects == ["reserve x", "charge x", "ship x", "release x"]


async def test_a_run_that_went_on_past_the_failure_is_recovered_going_on(
    durable_store: Callable[[], Any],
) -> None:
    # The run continued past refund's failure and died as release started: the log shows
    # it going on, so recovery runs release again (interrupted: its effect is unknown)
    # even under an orchestrator that would have stopped, and never refund.
    expected = await _without_a_crash("fail", keep_going=True)
    store = durable_store()
    dying = SagaOrchestrator(store, compensation_retry=ONCE, continue_on_compensation_failure=True)
    faults = FaultInjector().fail_compensation(charge).crash(reserve, compensation=True)
    with faults, pytest.raises(SimulatedCrash):
        await dying.execute(order("x").with_id("fc-3"))
    await simulate_restart(store)
    await store.close()

    restarted = SagaOrchestrator(durable_store())  # continue_on_compensation_failure=False
    [outcome] = await restarted.recover()
    final = await restarted.get_saga("fc-3")
    await restarted.close()
    assert (outcome.status, outcome.error) == (SagaStatus.FAILED, expected)
    assert final is not None
    assert [(c.name, c.status) for c in final.compensations] == [
        ("charge", StepStatus.FAILED),
        ("reserve", StepStatus.COMPLETED),
    ]
    assert effects == ["reserve x", "charge x", "ship x", "release x"]


async def test_a_saga_whose_end_could_not_be_written_keeps_its_failed_compensation(
    tmp_path: Path,
) -> None:
    # The run ended FAILED at refund, but its end could not be written: the saga went to
    # recovery, which ran refund again and ended it COMPENSATED.
    expected = await _without_a_crash("fail", keep_going=False)
    store = SQLiteStore(tmp_path / "s.db")
    refuse_record(store, TransitionKind.SAGA_FINISHED, after=False)
    orchestrator = SagaOrchestrator(store, compensation_retry=ONCE)
    with FaultInjector().fail_compensation(charge), pytest.raises(StoreError):
        await orchestrator.execute(order("x").with_id("fc-4"))
    del store.record  # type: ignore[method-assign]
    [outcome] = await orchestrator.recover()  # handed over at once, in this process
    final = await orchestrator.get_saga("fc-4")
    await orchestrator.close()
    assert (outcome.status, outcome.error) == (SagaStatus.FAILED, expected)
    assert final is not None
    assert (final.status, final.error) == (SagaStatus.FAILED, expected)
    assert effects == ["reserve x", "charge x", "ship x"]


async def test_dead_letter_resume_adopt_and_resolve_of_such_a_saga(
    durable_store: Callable[[], Any],
) -> None:
    expected = await _without_a_crash("fail", keep_going=True)
    await _dies_after_refund_failed(durable_store(), "fc-5", "fail")
    # Its one recovery dies too, as release starts; the next claim parks it.
    store = durable_store()
    recovering = SagaOrchestrator(store, continue_on_compensation_failure=True)
    with FaultInjector().crash(reserve, compensation=True), pytest.raises(SimulatedCrash):
        await recovering.recover(max_attempts=1)
    await simulate_restart(store)
    await store.close()
    store = durable_store()
    assert await SagaOrchestrator(store).recover(max_attempts=1) == []
    assert [d.saga_id for d in await store.dead_letters()] == ["fc-5"]

    # Resumed, it is adopted by execute() of its id and ends as the run would have:
    # release (interrupted) runs again, refund does not.
    await store.resume_dead_letter("fc-5")
    orchestrator = SagaOrchestrator(store)
    with pytest.raises(SagaAlreadyFailed):
        await orchestrator.execute(order("x").with_id("fc-5"))
    final = await store.get("fc-5")
    assert final is not None
    assert (final.status, final.error) == (SagaStatus.FAILED, expected)
    assert effects == ["reserve x", "charge x", "ship x", "release x"]

    await store.resolve("fc-5", "refunded by hand")
    resolved = await store.get("fc-5")
    await store.close()
    assert resolved is not None
    assert resolved.status is SagaStatus.FAILED
    assert resolved.error == f"resolved by an operator: refunded by hand (was: {expected})"
