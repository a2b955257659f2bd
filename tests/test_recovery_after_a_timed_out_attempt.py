"""Recovery of a saga whose process died after a step failed for good by raising, when an
earlier attempt of that step had timed out.

Regression: the run compensates such a step (the attempt that timed out may have acted:
charged the card, only too slowly to say so), as a timed-out step is
(``compensate_on_timeout``). But the log kept only the last attempt's error, so recovery
took it for a step that only raised (``compensate_on_failure``, off by default) and left
the charge standing. Recovery must decide as the run did: the step's logged error says
that an attempt of it timed out, and a step whose attempts all raised stays uncompensated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sagakit import (
    Retry,
    SagaOrchestrator,
    SagaStatus,
    StepFailed,
    StepStatus,
    Transition,
    TransitionKind,
    saga,
    step,
)
from sagakit._runs import ACTED_UNKNOWN
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

pytestmark = pytest.mark.asyncio

effects: list[str] = []


@step
async def reserve(order: str) -> str:
    effects.append(f"reserve {order}")
    return f"r-{order}"


@reserve.compensate
async def release(order: str) -> None:
    effects.append(f"release {order}")


@step(retry=Retry(attempts=2, backoff=0))  # compensate_on_failure=False, the default
async def charge(order: str) -> str:
    effects.append(f"charge {order}")
    raise ValueError("duplicate charge")


@charge.compensate
async def refund(order: str) -> None:
    effects.append(f"refund {order}")


@saga(name="timed_out_then_raised_order")
def order(name: str):  # type: ignore[no-untyped-def]
    yield reserve(name)
    yield charge(name)


@pytest.fixture(autouse=True)
def _clean() -> None:
    effects.clear()


def _attempts(first: str) -> FaultInjector:
    """Charge's first attempt times out (``"timeout"``) or raises (``"raise"``: no fault,
    the step itself raises); its second, the last, raises."""
    faults = FaultInjector()
    if first == "timeout":
        faults.timeout(charge, times=1)  # a faulted attempt stands for a call of the step
    return faults


def _dies_once_told(kind: TransitionKind) -> Callable[[Transition], None]:
    """A listener: the process dies once ``kind`` is in the log (listeners hear of a
    transition after it is recorded), before anything else is."""

    def listener(transition: Transition) -> None:
        if transition.kind is kind:
            raise SimulatedCrash(f"killed once {kind} was recorded")

    return listener


async def _without_a_crash(first: str) -> tuple[list[str], str | None]:
    """What the same saga's run undoes without a crash, and its failed step's error."""
    orchestrator = SagaOrchestrator()
    with _attempts(first), pytest.raises(StepFailed):
        await orchestrator.execute(order("x").with_id("ref"))
    meta = await orchestrator.get_saga("ref")
    await orchestrator.close()
    assert meta is not None
    undone = [line for line in effects if line.startswith(("release", "refund"))]
    effects.clear()
    return undone, meta.steps[1].error


@pytest.mark.parametrize(
    ("first", "compensated"),
    [("timeout", ["refund x", "release x"]), ("raise", ["release x"])],
)
async def test_recovery_compensates_the_failed_step_as_the_run_does(
    durable_store: Callable[[], Any], first: str, compensated: list[str]
) -> None:
    undone, error = await _without_a_crash(first)
    assert undone == compensated  # what the run itself does
    store = durable_store()
    dying = SagaOrchestrator(store, listeners=[_dies_once_told(TransitionKind.STEP_FAILED)])
    with _attempts(first), pytest.raises(SimulatedCrash):
        await dying.execute(order("x").with_id("ta-1"))
    crashed = await store.get("ta-1")
    assert crashed is not None
    assert crashed.status is SagaStatus.EXECUTING
    failed = crashed.steps[1]
    assert (failed.status, failed.attempts) == (StepStatus.FAILED, 2)
    # The log keeps the error the run's own record has (a timed-out attempt said).
    assert failed.error == error
    assert (error or "").endswith(ACTED_UNKNOWN) is (first == "timeout")
    await simulate_restart(store)
    await store.close()
    forward = list(effects)

    restarted = SagaOrchestrator(durable_store())
    [outcome] = await restarted.recover()
    final = await restarted.get_saga("ta-1")
    await restarted.close()
    assert (outcome.action, outcome.status) == ("compensated", SagaStatus.COMPENSATED)
    assert effects == [*forward, *compensated]
    assert final is not None
    assert final.steps[1].error == error
    assert [c.name for c in final.compensations] == [
        "charge" if line.startswith("refund") else "reserve" for line in compensated
    ]


async def test_a_crash_as_the_compensation_starts_is_recovered_with_it_run_once(
    durable_store: Callable[[], Any],
) -> None:
    # The process dies at the step's compensation, before refund is called: recovery
    # runs refund (once), and release after it.
    store = durable_store()
    dying = SagaOrchestrator(store)
    with _attempts("timeout").crash(charge, compensation=True), pytest.raises(SimulatedCrash):
        await dying.execute(order("x").with_id("ta-2"))
    await simulate_restart(store)
    await store.close()
    assert effects == ["reserve x", "charge x"]

    restarted = SagaOrchestrator(durable_store())
    [outcome] = await restarted.recover()
    final = await restarted.get_saga("ta-2")
    await restarted.close()
    assert (outcome.action, outcome.status) == ("compensated", SagaStatus.COMPENSATED)
    assert effects == ["reserve x", "charge x", "refund x", "release x"]
    assert final is not None
    assert [(c.name, c.status) for c in final.compensations] == [
        ("charge", StepStatus.COMPLETED),
        ("reserve", StepStatus.COMPLETED),
    ]
