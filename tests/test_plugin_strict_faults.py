"""Strict ``saga_faults``: a passing test whose injected fault never fired errors at its
teardown, naming the fault (opt-in: marker, command line or ini key)."""

from __future__ import annotations

import pytest

from pytester_helpers.ini import write_ini

pytest_plugins = ["pytester"]

SAGAS = """
import pytest

from sagakit import StepFailed, saga, step


@step
async def strict_debit(n):
    return n


@step
async def strict_credit(n):
    return n


@step
async def strict_notify(n):  # a step the saga never runs
    return n


@saga
def strict_transfer(n):
    yield strict_debit(n)
    yield strict_credit(n)
"""

HOLLOW = """

@pytest.mark.asyncio
async def test_hollow(saga_orchestrator, saga_faults):
    saga_faults.fail(strict_notify)  # never runs: the test passes without its fault
    saga_faults.fail(strict_credit, index=0)  # runs at index 1 only
    await saga_orchestrator.execute(strict_transfer(1))


@pytest.mark.asyncio
async def test_fired(saga_orchestrator, saga_faults):
    saga_faults.fail(strict_credit)
    with pytest.raises(StepFailed):
        await saga_orchestrator.execute(strict_transfer(2))
"""


def _hollow_errors(result: pytest.RunResult) -> None:
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_hollow*",
            "*saga_faults is strict, and 2 of its faults never fired*",
        ]
    )
    out = result.stdout.str()
    assert "the fault on step 'strict_notify' never fired: the step never ran" in out
    assert "the fault on step 'strict_credit' with index=0 never fired: it ran at index 1" in out
    assert "@pytest.mark.saga_faults(strict=False)" in out
    assert "test_fired" not in out.split("short test summary info")[-1]


def test_a_fault_that_never_fired_errors_a_passing_test_with_the_ini_key(
    pytester: pytest.Pytester,
) -> None:
    write_ini(pytester, extra="saga_strict_faults = true")
    pytester.makepyfile(SAGAS + HOLLOW)
    _hollow_errors(pytester.runpytest("-p", "no:cacheprovider"))


def test_a_fault_that_never_fired_is_no_error_by_default(pytester: pytest.Pytester) -> None:
    write_ini(pytester)
    pytester.makepyfile(SAGAS + HOLLOW)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_the_command_line_turns_it_on_and_off(pytester: pytest.Pytester) -> None:
    write_ini(pytester, extra="saga_strict_faults = true")
    pytester.makepyfile(SAGAS + HOLLOW)
    result = pytester.runpytest("-p", "no:cacheprovider", "--saga-strict-faults=no")
    result.assert_outcomes(passed=2)
    write_ini(pytester)
    _hollow_errors(pytester.runpytest("-p", "no:cacheprovider", "--saga-strict-faults=yes"))


def test_the_marker_beats_the_command_line(pytester: pytest.Pytester) -> None:
    write_ini(pytester)
    pytester.makepyfile(
        SAGAS
        + """
pytestmark = pytest.mark.saga_faults(strict=True)


@pytest.mark.asyncio
async def test_hollow(saga_orchestrator, saga_faults):
    saga_faults.fail(strict_notify)
    await saga_orchestrator.execute(strict_transfer(1))


@pytest.mark.saga_faults(strict=False)  # the closest marker wins
@pytest.mark.asyncio
async def test_lenient(saga_orchestrator, saga_faults):
    saga_faults.fail(strict_notify)
    await saga_orchestrator.execute(strict_transfer(1))
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--saga-strict-faults=no")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_hollow*",
            "*saga_faults is strict, and 1 of its faults never fired*",
        ]
    )


def test_a_failing_skipped_or_xfailing_test_gets_no_strict_error(
    pytester: pytest.Pytester,
) -> None:
    # A failure says already why (a note naming the fault that never fired).
    write_ini(pytester, extra="saga_strict_faults = true")
    pytester.makepyfile(
        SAGAS
        + """

@pytest.mark.asyncio
async def test_fails(saga_orchestrator, saga_faults):
    saga_faults.fail(strict_notify)
    with pytest.raises(StepFailed):
        await saga_orchestrator.execute(strict_transfer(1))


@pytest.mark.asyncio
async def test_skips(saga_orchestrator, saga_faults):
    saga_faults.fail(strict_notify)
    pytest.skip("not today")


@pytest.mark.xfail(reason="known", strict=True)
@pytest.mark.asyncio
async def test_xfails(saga_orchestrator, saga_faults):
    saga_faults.fail(strict_notify)
    await saga_orchestrator.execute(strict_transfer(1))
    assert False
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, skipped=1, xfailed=1)
    result.stdout.fnmatch_lines(["*the fault on step 'strict_notify' never fired*"])
    assert "saga_faults is strict" not in result.stdout.str()


@pytest.mark.parametrize(
    ("marker", "said"),
    [
        ("saga_faults(True)", "takes the keyword strict only"),
        ("saga_faults(strict='yes')", "(strict=...) must be True or False, got 'yes'"),
        ("saga_faults(stric=True)", "got unknown options ['stric']"),
        ("saga_faults", "takes the keyword strict only"),
    ],
)
def test_a_misused_marker_errors_the_setup(
    pytester: pytest.Pytester, marker: str, said: str
) -> None:
    write_ini(pytester)
    pytester.makepyfile(
        SAGAS
        + f"""

@pytest.mark.{marker}
def test_x(saga_faults):
    pass
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ERROR at setup of test_x*"])
    assert said in result.stdout.str()


def test_a_marker_on_a_test_without_the_fixture_errors_its_setup(
    pytester: pytest.Pytester,
) -> None:
    write_ini(pytester)
    pytester.makepyfile(
        """
import pytest

@pytest.mark.saga_faults(strict=True)
def test_x():
    pass
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    assert "only sets the options of the saga_faults fixture" in result.stdout.str()


def test_a_bad_ini_value_is_a_usage_error(pytester: pytest.Pytester) -> None:
    write_ini(pytester, extra="saga_strict_faults = maybe")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "the saga_strict_faults ini key must be true or false" in result.stderr.str()
