"""FaultInjector ``skip=N``: let through the first N attempts a fault would hit, then hit."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import pytest

from sagakit import (
    CompensationFailed,
    Retry,
    SagaDefinitionError,
    SagaOrchestrator,
    StepFailed,
    saga,
    step,
)
from sagakit.testing import FaultInjector, InstantSleep, SimulatedCrash

calls: list[str] = []


@step(name="skip.reserve")
async def reserve(item: str) -> str:
    calls.append(f"reserve {item}")
    return f"reserved {item}"


@reserve.compensate
async def release(item: str) -> None:
    calls.append(f"release {item}")


@step(name="skip.charge", retry=Retry(attempts=3, backoff=1.0, jitter=0, on=ConnectionError))
async def charge(item: str) -> str:
    calls.append(f"charge {item}")
    if item.startswith("flaky") and calls.count(f"charge {item}") == 1:
        raise ConnectionError("card network busy")  # its first attempt, really
    return f"charged {item}"


@step(name="skip.ship")
async def ship(item: str) -> str:
    calls.append(f"ship {item}")
    return f"shipped {item}"


@saga(name="skip.order")
def order(item: str) -> Any:
    yield reserve(item)
    yield charge(item)
    yield ship(item)


@saga(name="skip.double_reserve")
def double_reserve(item: str) -> Any:
    yield reserve(f"{item}-a")
    yield reserve(f"{item}-b")


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    calls.clear()


def _orchestrator() -> SagaOrchestrator:
    return SagaOrchestrator(sleep=InstantSleep())


async def _outcome(run: Awaitable[Any]) -> str:
    try:
        await run
    except StepFailed as failed:
        return f"failed at {failed.step_name}: {failed.error!r}"
    return "completed"


@pytest.mark.asyncio
async def test_the_first_n_sagas_run_the_step_and_the_later_ones_fail() -> None:
    orchestrator = _orchestrator()
    with FaultInjector().fail(ship, ValueError("label printer jammed"), skip=2) as faults:
        outcomes = [await _outcome(orchestrator.execute(order(f"o{n}"))) for n in range(4)]
    jammed = "failed at skip.ship: ValueError('label printer jammed')"
    assert outcomes == ["completed", "completed", jammed, jammed]
    assert [c for c in calls if c.startswith("ship")] == ["ship o0", "ship o1"]
    # Only what fired is recorded, not the attempts let through.
    assert [(f.step_name, f.step_index, f.attempt) for f in faults.fired] == [
        ("skip.ship", 2, 1),
        ("skip.ship", 2, 1),
    ]


@pytest.mark.asyncio
async def test_skip_counts_only_the_attempts_times_lets_the_fault_hit() -> None:
    # times=1: only first attempts count, and are hit: the third saga's charge fails once,
    # then its retry runs; the fourth saga's first attempt is hit too.
    orchestrator = _orchestrator()
    with FaultInjector().fail(charge, ConnectionError("busy"), times=1, skip=2) as faults:
        for n in range(4):
            await orchestrator.execute(order(f"o{n}"))
    assert [c for c in calls if c.startswith("charge")] == [
        "charge o0",
        "charge o1",
        "charge o2",
        "charge o3",
    ]
    assert [f.attempt for f in faults.fired] == [1, 1]


@pytest.mark.asyncio
async def test_a_retry_that_fails_differently() -> None:
    # The step really fails its first attempt (retried); the fault makes the second fail
    # with an error no retry covers.
    with FaultInjector().fail(charge, ValueError("card blocked"), skip=1) as faults:
        outcome = await _outcome(_orchestrator().execute(order("flaky")))
    assert outcome == "failed at skip.charge: ValueError('card blocked')"
    assert calls == ["reserve flaky", "charge flaky", "release flaky"]
    assert [f.attempt for f in faults.fired] == [2]


@pytest.mark.asyncio
async def test_attempts_another_fault_took_count_too() -> None:
    # Attempt 1 is taken by another fault (of this injector, or of one entered inside its
    # block, asked first): it still counts, so skip=1 hits attempt 2, as it would if the
    # step itself had failed attempt 1.
    faults = (
        FaultInjector()
        .fail(charge, ConnectionError("first"), times=1)
        .fail(charge, ValueError("second"), skip=1)
    )
    with faults, pytest.raises(StepFailed) as caught:
        await _orchestrator().execute(order("a"))
    assert isinstance(caught.value.error, ValueError)
    assert [(f.attempt, type(f.fault)) for f in faults.fired] == [
        (1, ConnectionError),
        (2, ValueError),
    ]
    outer = FaultInjector().fail(charge, ValueError("second"), skip=1)
    inner = FaultInjector().fail(charge, ConnectionError("first"), times=1)
    with outer, pytest.raises(StepFailed) as caught, inner:
        await _orchestrator().execute(order("b"))
    assert isinstance(caught.value.error, ValueError)
    assert [f.attempt for f in inner.fired] == [1]
    assert [f.attempt for f in outer.fired] == [2]


@pytest.mark.asyncio
async def test_skip_with_index_counts_the_step_at_that_index_only() -> None:
    orchestrator = _orchestrator()
    with FaultInjector().fail(reserve, index=1, skip=1) as faults:
        first = await _outcome(orchestrator.execute(double_reserve("x")))
        second = await _outcome(orchestrator.execute(double_reserve("y")))
    assert first == "completed"  # reserve ran twice in it, once at index 1
    assert second.startswith("failed at skip.reserve")
    assert [(f.step_index, f.attempt) for f in faults.fired] == [(1, 1)]


@pytest.mark.asyncio
async def test_compensation_faults_skip_compensations() -> None:
    orchestrator = _orchestrator()
    faults = FaultInjector().fail(ship).fail_compensation(reserve, OSError("ledger down"), skip=1)
    with faults:
        first = await _outcome(orchestrator.execute(order("a")))
        with pytest.raises(CompensationFailed):
            await orchestrator.execute(order("b"))
    assert first.startswith("failed at skip.ship")
    assert calls.count("release a") == 1
    assert "release b" not in calls
    assert [(f.step_name, f.compensation) for f in faults.fired][-1] == ("skip.reserve", True)


@pytest.mark.asyncio
async def test_a_crash_at_a_later_saga() -> None:
    orchestrator = _orchestrator()
    with FaultInjector().crash(charge, skip=1) as faults:
        await orchestrator.execute(order("a"))
        with pytest.raises(SimulatedCrash):
            await orchestrator.execute(order("b"))
        await orchestrator.execute(order("c"))  # a process dies once
    assert [c for c in calls if c.startswith("charge")] == ["charge a", "charge c"]
    assert [f.step_name for f in faults.fired] == ["skip.charge"]


@pytest.mark.asyncio
async def test_the_count_spans_blocks_and_clear_starts_it_over() -> None:
    orchestrator = _orchestrator()
    faults = FaultInjector().fail(ship, skip=1)
    with faults:
        await orchestrator.execute(order("a"))  # let through
    await orchestrator.execute(order("b"))  # outside the block: not counted
    with faults, pytest.raises(StepFailed):
        await orchestrator.execute(order("c"))
    faults.clear()
    faults.fail(ship, skip=1)
    with faults:
        await orchestrator.execute(order("d"))  # counted from zero again: let through
    assert [c for c in calls if c.startswith("ship")] == ["ship a", "ship b", "ship d"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f: f.fail("x", skip=-1), "skip must be a whole number >= 0"),
        (lambda f: f.fail("x", skip=True), "got True"),
        (lambda f: f.timeout("x", skip=1.5), "got 1.5"),
        (lambda f: f.fail_compensation("x", skip=None), "got None"),
        (lambda f: f.timeout_compensation("x", skip="2"), "got '2'"),
        (lambda f: f.crash("x", skip=-2), "skip must be"),
        (lambda f: f.crash("x", after=2), r"to crash at a later attempt, pass skip=2"),
    ],
)
def test_bad_skips_are_clear_errors(call: Any, message: str) -> None:
    with pytest.raises(SagaDefinitionError, match=message):
        call(FaultInjector())


async def _expect_a_failure(*sagas: Any) -> None:
    """What ``pytest.raises`` does when nothing is raised: fail."""
    for call in sagas:
        await _orchestrator().execute(call)
    raise AssertionError("expected a fault to stop it")


async def _notes(faults: FaultInjector, *items: str) -> list[str]:
    """The notes on the failure of a block whose sagas were expected to fail but did not."""
    with pytest.raises(AssertionError) as caught, faults:
        await _expect_a_failure(*(order(item) for item in items))
    return getattr(caught.value, "__notes__", [])


@pytest.mark.asyncio
async def test_a_fault_whose_skip_let_every_attempt_through_is_noted() -> None:
    assert await _notes(FaultInjector().fail(ship, skip=2), "a", "b") == [
        "FaultInjector: the fault on step 'skip.ship' never fired: only 2 attempts it would "
        "hit ran (counted over every saga run where the injector is active), all let "
        "through by skip=2"
    ]
    # times=1 with skip=1 never reaches past attempt 1 of one use: the note says the fix.
    assert await _notes(FaultInjector().fail(charge, ValueError, times=1, skip=1), "flaky") == [
        "FaultInjector: the fault on step 'skip.charge' never fired: only 1 attempt it would "
        "hit ran (counted over every saga run where the injector is active), let through by "
        "skip=1; only attempts up to times=1 of each use of the step count "
        "(to fault attempt 2 of one use, give times=2, skip=1)"
    ]


@pytest.mark.asyncio
async def test_an_index_fault_skipped_at_its_index_says_so_with_where_else_it_ran() -> None:
    faults = FaultInjector().fail(reserve, index=1, skip=1)
    with pytest.raises(AssertionError) as caught, faults:
        await _expect_a_failure(double_reserve("x"))
    assert caught.value.__notes__ == [
        "FaultInjector: the fault on step 'skip.reserve' with index=1 never fired: it ran at "
        "index 0 of the saga under test; at index 1, only 1 attempt it would hit ran "
        "(counted over every saga run where the injector is active), let through by "
        "skip=1"
    ]


@pytest.mark.asyncio
async def test_an_injector_entered_again_in_its_own_block_counts_each_attempt_once() -> None:
    # Regression: an injector active twice (`with faults:` inside `with faults:`) was asked
    # once per block, so each attempt counted twice toward `skip`: skip=1 let nothing through.
    orchestrator = _orchestrator()
    faults = FaultInjector().fail(ship, ValueError("jammed"), skip=1)
    with faults, faults:
        first = await _outcome(orchestrator.execute(order("a")))
        second = await _outcome(orchestrator.execute(order("b")))
    assert (first, second) == ("completed", "failed at skip.ship: ValueError('jammed')")
    # An attempt another of its faults took counts once too: skip=2 lets attempt 2 through.
    taken = FaultInjector().fail(charge, ConnectionError("busy"), times=1)
    taken.fail(charge, ValueError("blocked"), skip=2)
    with taken, taken:
        assert await _outcome(orchestrator.execute(order("c"))) == "completed"
    assert [(f.attempt, type(f.fault)) for f in taken.fired] == [(1, ConnectionError)]


@pytest.mark.asyncio
async def test_the_saga_faults_fixture_entered_again_counts_each_attempt_once(
    saga_faults: FaultInjector,
) -> None:
    # `with saga_faults.fail(...):` enters the fixture's injector, active for the test, again.
    orchestrator = _orchestrator()
    with saga_faults.fail(ship, ValueError("jammed"), skip=1):
        first = await _outcome(orchestrator.execute(order("a")))
        second = await _outcome(orchestrator.execute(order("b")))
    assert (first, second) == ("completed", "failed at skip.ship: ValueError('jammed')")
