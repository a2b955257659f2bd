"""A fault on a real step that never fired is noted on the failure of its block (or test)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import pytest

from pytester_helpers.ini import write_ini
from sagakit import CompensationFailed, SagaOrchestrator, StepFailed, saga, step
from sagakit.testing import FaultInjector, SimulatedCrash, _faults

pytest_plugins = ["pytester"]


@step(name="never_fired.reserve")
async def nf_reserve(item: str) -> str:
    return f"reserved {item}"


@nf_reserve.compensate
async def nf_release(item: str) -> None:
    return None


@step(name="never_fired.ship")
async def nf_ship(item: str) -> str:
    return f"shipped {item}"


@step(name="never_fired.elsewhere")
async def nf_elsewhere(item: str) -> str:  # a real step, of no saga here
    return f"elsewhere {item}"


@saga(name="never_fired.order")
def nf_order(item: str) -> Any:
    yield nf_reserve(item)
    yield nf_ship(item)


async def _expect_a_failure(run: Awaitable[Any]) -> None:
    """What ``pytest.raises`` does when nothing is raised: fail."""
    await run
    raise AssertionError("expected the fault to stop it")


async def _notes(faults: FaultInjector) -> list[str]:
    """The notes on the failure of a block whose saga was expected to fail but did not."""
    with pytest.raises(AssertionError) as caught, faults:
        await _expect_a_failure(SagaOrchestrator().execute(nf_order("book")))
    return getattr(caught.value, "__notes__", [])


@pytest.mark.asyncio
async def test_a_fault_on_a_step_that_never_ran_is_noted_on_the_failing_block() -> None:
    # Regression: a fault on a real step the saga does not run (the wrong step, or the
    # wrong saga) failed the test with "DID NOT RAISE StepFailed" and nothing more, where
    # a misspelt name, or an index the step did not run at, said why.
    assert await _notes(FaultInjector().fail(nf_elsewhere)) == [
        "FaultInjector: the fault on step 'never_fired.elsewhere' never fired: the step never "
        "ran where the injector is active (is it a step of the saga under test?)"
    ]
    # Nothing failed, so nothing was compensated (expected: CompensationFailed).
    assert await _notes(FaultInjector().fail_compensation("never_fired.reserve")) == [
        "FaultInjector: the fault on the compensation of step 'never_fired.reserve' never "
        "fired: the step was never compensated where the injector is active"
    ]


@pytest.mark.asyncio
async def test_a_fault_another_fault_came_before_is_noted() -> None:
    shadowed = "FaultInjector: the fault on step 'never_fired.ship' never fired: another fault "
    # An earlier fault of the same injector on the same step takes every attempt.
    faults = FaultInjector().fail(nf_ship, ValueError("first")).timeout(nf_ship)
    with pytest.raises(StepFailed) as caught, faults:
        await SagaOrchestrator().execute(nf_order("book"))
    [note] = caught.value.__notes__
    assert note.startswith(shadowed + "on it was injected first (the first matching fault wins")
    # So does one of an injector entered inside this one's block: asked first.
    outer = FaultInjector().timeout(nf_ship)
    with (
        pytest.raises(StepFailed) as caught,
        outer,
        FaultInjector().fail(nf_ship, ValueError("inner")),
    ):
        await SagaOrchestrator().execute(nf_order("book"))
    [note] = caught.value.__notes__
    assert note.startswith(shadowed)
    assert "an injector entered inside this one's block is asked first" in note


@pytest.mark.asyncio
async def test_a_fault_asked_only_past_its_times_is_noted() -> None:
    faults = FaultInjector().fail(nf_ship, times=1)

    def ask_past_times_then_fail() -> None:
        assert faults.fault_for(nf_ship, 2, compensation=False) is None
        raise AssertionError("the test failed")

    with pytest.raises(AssertionError) as caught, faults:
        ask_past_times_then_fail()
    assert caught.value.__notes__ == [
        "FaultInjector: the fault on step 'never_fired.ship' never fired: it ran only at "
        "attempts past times=1"
    ]


@pytest.mark.asyncio
async def test_faults_that_did_not_fire_are_no_error_and_fired_ones_no_note() -> None:
    # A fault on a step the saga did not reach is a fine thing to set up: no error.
    with FaultInjector().fail(nf_elsewhere).fail_compensation(nf_reserve):
        await SagaOrchestrator().execute(nf_order("book"))
    # The fault that fired is not noted on the failure it caused; the one that did not is.
    faults = FaultInjector().fail(nf_ship).fail(nf_elsewhere).fail_compensation(nf_reserve)

    async def fail_after_the_faults_fired() -> None:
        with pytest.raises(CompensationFailed):
            await SagaOrchestrator().execute(nf_order("book"))
        raise AssertionError("a later check of the test failed")

    with pytest.raises(AssertionError) as caught, faults:
        await fail_after_the_faults_fired()
    [note] = caught.value.__notes__
    assert note == (
        "FaultInjector: the fault on step 'never_fired.elsewhere' never fired: the step "
        "never ran where the injector is active (is it a step of the saga under test?)"
    )
    # clear() forgets what ran too.
    faults.clear()
    faults.fail(nf_ship)
    with pytest.raises(AssertionError) as caught, faults:
        raise AssertionError("before any saga ran")
    assert "the step never ran" in caught.value.__notes__[0]


def test_the_saga_faults_fixture_notes_it_on_the_test_failure(pytester: pytest.Pytester) -> None:
    write_ini(pytester)
    pytester.makepyfile(
        """
import pytest
from sagakit import StepFailed, saga, step

@step
async def reserve(item):
    return item

@step
async def send_receipt(item):
    return item

@saga
def order(item):
    yield reserve(item)

@pytest.mark.asyncio
@pytest.mark.asyncio
async def test_wrong_step(saga_orchestrator, saga_faults):
    saga_faults.fail(send_receipt)  # not a step of order
    with pytest.raises(StepFailed):
        await saga_orchestrator.execute(order("x"))

@pytest.mark.asyncio
@pytest.mark.asyncio
async def test_a_step_not_reached_is_no_error(saga_orchestrator, saga_faults):
    saga_faults.fail(send_receipt)
    await saga_orchestrator.execute(order("x"))
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "E       Failed: DID NOT RAISE *StepFailed*",
            "E       FaultInjector: the fault on step 'send_receipt' never fired: the step never "
            "ran where the injector is active (is it a step of the saga under test?)",
        ]
    )


@pytest.mark.asyncio
async def test_a_fault_added_after_a_crash_fired_is_noted_when_it_never_fires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Regression: what a fault did (fired, ran at other indexes, attempts let through)
    # was kept by id() of its rule, and a fired crash's rule, removed, left its id there:
    # a fault added later whose rule reused that id (CPython reuses a freed object's)
    # counted as fired, so the note saying it never fired was left out. Every rule is
    # given one id here, as reuse would.
    real_id = id
    monkeypatch.setattr(
        _faults,
        "id",
        lambda obj: 1 if isinstance(obj, _faults._Rule) else real_id(obj),
        raising=False,
    )
    faults = FaultInjector().crash(nf_reserve)
    with pytest.raises(SimulatedCrash), faults:
        await SagaOrchestrator().execute(nf_order("book"))
    faults.fail(nf_elsewhere)
    assert await _notes(faults) == [
        "FaultInjector: the fault on step 'never_fired.elsewhere' never fired: the step never "
        "ran where the injector is active (is it a step of the saga under test?)"
    ]


@pytest.mark.asyncio
async def test_an_injector_entered_again_in_its_own_block_notes_a_failure_once() -> None:
    # Regression: each block left noted it (`with saga_faults.fail(...):` in a test using
    # the fixture: the block, then the fixture), so the failure showed each note twice.
    faults = FaultInjector().fail(nf_elsewhere)
    with pytest.raises(AssertionError) as caught, faults, faults:
        await _expect_a_failure(SagaOrchestrator().execute(nf_order("book")))
    assert len(caught.value.__notes__) == 1
