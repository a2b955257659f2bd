"""The pytest plugin, run through pytester: fixtures, marker, options, asyncio modes."""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

import pytest

from pytester_helpers.ini import write_ini

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).parent.parent / "examples" / "test_plugin_example.py"

SAGA = """
import asyncio
import pytest
from sagakit import Retry, StepFailed, saga, step

@step
async def reserve(item):
    return f"reserved {item}"

@reserve.compensate
async def release(item):
    return None

@step(retry=Retry(attempts=2, backoff=0.01, jitter=0))
async def ship(item):
    return f"shipped {item}"

@saga
def order(item):
    yield reserve(item)
    yield ship(item)
"""


def test_the_example_file_passes_in_strict_mode(pytester: pytest.Pytester) -> None:
    write_ini(pytester)
    pytester.makepyfile(test_example=EXAMPLE.read_text())
    # In a process of its own, as a user runs it: its saga names are its own.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=7)


def test_auto_mode_needs_no_asyncio_marks(pytester: pytest.Pytester) -> None:
    write_ini(pytester, mode="auto")
    pytester.makepyfile(
        SAGA
        + """
async def test_fault(saga_orchestrator, saga_faults, saga_recorder):
    saga_faults.fail("ship")
    with pytest.raises(StepFailed):
        await saga_orchestrator.execute(order("x"))
    saga_recorder.assert_compensated("reserve")

async def test_matrix(saga_fault_matrix):
    report = await saga_fault_matrix(order("x"))
    assert len(report.cases) == 4
"""
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_strict_mode_without_the_asyncio_mark_is_not_run_by_the_plugin(
    pytester: pytest.Pytester,
) -> None:
    # The plugin never runs a loop itself: an unmarked async test is pytest-asyncio's call.
    write_ini(pytester)
    pytester.makepyfile(
        SAGA
        + """
async def test_unmarked(saga_orchestrator):
    await saga_orchestrator.execute(order("x"))
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "default")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) == 0


def test_faults_apply_only_to_the_test_that_set_them(pytester: pytest.Pytester) -> None:
    write_ini(pytester)
    pytester.makepyfile(
        SAGA
        + """
@pytest.mark.asyncio
async def test_1_sets_a_fault(saga_orchestrator, saga_faults):
    saga_faults.fail("reserve")
    with pytest.raises(StepFailed):
        await saga_orchestrator.execute(order("x"))

@pytest.mark.asyncio
async def test_2_runs_clean(saga_orchestrator, saga_recorder):
    assert await saga_orchestrator.execute(order("y")) == ["reserved y", "shipped y"]
    assert len(saga_recorder.runs) == 1  # a fresh recorder, too

@pytest.mark.asyncio
async def test_3_without_the_fixture_runs_clean():
    from sagakit import SagaOrchestrator
    assert await SagaOrchestrator().execute(order("z")) == ["reserved z", "shipped z"]
"""
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)


MATRIX_CASES = (
    SAGA
    + """
@pytest.mark.asyncio
async def test_cases(saga_fault_matrix, request):
    report = await saga_fault_matrix(order("x"))
    print("MODES", sorted({c.mode for c in report.cases}))

@pytest.mark.saga_fault_matrix(timeouts=False)
@pytest.mark.asyncio
async def test_marked_off(saga_fault_matrix):
    report = await saga_fault_matrix(order("x"))
    print("MARKED", sorted({c.mode for c in report.cases}))

@pytest.mark.saga_fault_matrix(timeouts=True)
@pytest.mark.asyncio
async def test_marked_on(saga_fault_matrix):
    report = await saga_fault_matrix(order("x"))
    print("MARKED_ON", sorted({c.mode for c in report.cases}))
"""
)


@pytest.mark.parametrize(
    ("ini", "args", "plain"),
    [
        ("", [], "['fail', 'timeout']"),
        ("saga_matrix_timeouts = false", [], "['fail']"),
        ("saga_matrix_timeouts = false", ["--saga-matrix-timeouts=yes"], "['fail', 'timeout']"),
        ("saga_matrix_timeouts = true", ["--saga-matrix-timeouts=no"], "['fail']"),
    ],
)
def test_marker_beats_option_beats_ini(
    pytester: pytest.Pytester, ini: str, args: list[str], plain: str
) -> None:
    write_ini(pytester, extra=ini)
    pytester.makepyfile(MATRIX_CASES)
    result = pytester.runpytest("-p", "no:cacheprovider", "-s", *args)
    result.assert_outcomes(passed=3)
    output = result.stdout.str()
    assert f"MODES {plain}" in output
    # the marker keyword beats the command line and the ini file, either way
    assert "MARKED ['fail']" in output
    assert "MARKED_ON ['fail', 'timeout']" in output


@pytest.mark.parametrize(("option", "waits"), [([], False), (["--saga-instant-sleep=no"], True)])
def test_instant_sleep_option(pytester: pytest.Pytester, option: list[str], waits: bool) -> None:
    write_ini(pytester)
    pytester.makepyfile(
        SAGA
        + f"""
@pytest.mark.asyncio
async def test_backoff(saga_orchestrator, saga_faults, saga_sleep):
    saga_faults.fail("ship", times=1)
    await saga_orchestrator.execute(order("x"))
    assert saga_sleep.scale == {1.0 if waits else 0.0}  # 1.0: it really waited
    assert saga_sleep.delays == [0.01]  # recorded either way: the test reads the same
"""
    )
    pytester.runpytest("-p", "no:cacheprovider", *option).assert_outcomes(passed=1)


def test_ini_key_for_instant_sleep(pytester: pytest.Pytester) -> None:
    write_ini(pytester, extra="saga_instant_sleep = false")
    pytester.makepyfile(
        SAGA
        + """
@pytest.mark.asyncio
async def test_backoff(saga_orchestrator, saga_faults, saga_sleep):
    saga_faults.fail("ship", times=1)
    await saga_orchestrator.execute(order("x"))
    assert saga_sleep.scale == 1.0
    assert saga_sleep.delays == [0.01]
"""
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_a_failing_matrix_reads_well_in_the_report(pytester: pytest.Pytester) -> None:
    write_ini(pytester)
    pytester.makepyfile(
        """
import pytest
from sagakit import saga, step

@step
async def book(item):
    return None

@book.compensate
async def cancel(item):
    raise RuntimeError("cannot cancel")

@step
async def pay(item):
    return None

@saga
def trip(item):
    return [book(item), pay(item)]

@pytest.mark.saga_fault_matrix(timeouts=False)
@pytest.mark.asyncio
async def test_trip(saga_fault_matrix):
    await saga_fault_matrix(trip("x"))
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*fault matrix of saga 'trip': 2 cases*",
            "*ok   step 0 'book' fails: ended compensated, undid nothing*",
            "*FAIL step 1 'pay' fails: a compensation failed*cannot cancel*",
        ]
    )


def test_a_crash_around_the_matrix_fails_its_discovery_with_an_explanation(
    pytester: pytest.Pytester,
) -> None:
    # Regression: a crash fault (a SimulatedCrash, a BaseException) that stopped the
    # discovery run came out raw, not as the explanatory AssertionError other faults get.
    write_ini(pytester)
    pytester.makepyfile(
        SAGA
        + """
@pytest.mark.asyncio
async def test_matrix(saga_faults, saga_fault_matrix):
    saga_faults.crash(reserve)
    await saga_fault_matrix(order("x"))
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E*AssertionError: the fault matrix runs saga 'order' once without faults of its "
            'own to discover its steps, but that run failed: SimulatedCrash("simulated crash '
            "at step 'reserve'\"); a fault active around the call fired in it "
            "(at step 'reserve')*",
        ]
    )


def test_markers_on_the_module_class_and_test_combine(pytester: pytest.Pytester) -> None:
    write_ini(pytester)
    pytester.makepyfile(
        SAGA
        + """
pytestmark = pytest.mark.saga_fault_matrix(timeouts=False)

@pytest.mark.saga_fault_matrix(error=ConnectionError)
class TestOrder:
    @pytest.mark.saga_fault_matrix(failures=True)
    @pytest.mark.asyncio
    async def test_matrix(self, saga_fault_matrix):
        report = await saga_fault_matrix(order("x"))
        assert {case.mode for case in report.cases} == {"fail"}
        assert all(isinstance(case.error.__cause__, ConnectionError) for case in report.cases)

@pytest.mark.saga_fault_matrix(timeouts=True)
@pytest.mark.asyncio
async def test_the_closest_keyword_wins(saga_fault_matrix):
    report = await saga_fault_matrix(order("x"))
    assert {case.mode for case in report.cases} == {"fail", "timeout"}
"""
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_bad_marker_use_is_a_clear_error(pytester: pytest.Pytester) -> None:
    write_ini(pytester)
    pytester.makepyfile(
        SAGA
        + """
@pytest.mark.saga_fault_matrix(order("x"))
@pytest.mark.asyncio
async def test_positional(saga_fault_matrix):
    pass

@pytest.mark.saga_fault_matrix(timeout=False)
@pytest.mark.asyncio
async def test_typo(saga_fault_matrix):
    pass

@pytest.mark.saga_fault_matrix(timeouts="no")
@pytest.mark.asyncio
async def test_not_a_bool(saga_fault_matrix):
    await saga_fault_matrix(order("x"))

@pytest.mark.saga_fault_matrix(error="smtp down")
@pytest.mark.asyncio
async def test_not_an_exception(saga_fault_matrix):
    await saga_fault_matrix(order("x"))

@pytest.mark.saga_fault_matrix(error=KeyboardInterrupt)
@pytest.mark.asyncio
async def test_not_compensated(saga_fault_matrix):
    await saga_fault_matrix(order("x"))
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=5)
    output = result.stdout.str()
    assert "saga_fault_matrix takes keyword options only" in output
    assert "saga_fault_matrix got unknown options ['timeout']; it takes failures" in output
    # Regression: the error named run_fault_matrix(timeouts=...), which the test never
    # called, and came from the test's body, not from the marker's fixture.
    assert (
        "@pytest.mark.saga_fault_matrix(timeouts=...) must be True or False, got 'no'"
    ) in output
    # Regression: a bad error= failed the test's body with "a fault must be an exception
    # instance or class", naming neither the marker nor error=, from sagakit's frames.
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at setup of test_not_an_exception _*",
            "@pytest.mark.saga_fault_matrix(error=...) must be an exception instance or class,"
            " such as ValueError('boom') or ConnectionError, got 'smtp down'",
            "*_ ERROR at setup of test_not_compensated _*",
            "@pytest.mark.saga_fault_matrix(error=...) must be an Exception, got "
            "KeyboardInterrupt: *",
        ]
    )
    result.stdout.no_fnmatch_line("*During handling*")


def test_marker_and_options_are_documented(pytester: pytest.Pytester) -> None:
    write_ini(pytester)
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.saga_fault_matrix(failures=True, timeouts=True*"])
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "sagakit saga testing:",
            "*--saga-matrix-timeouts*",
            "*--saga-instant-sleep*",
        ]
    )
    result.stdout.fnmatch_lines(["*saga_matrix_timeouts (bool)*", "*saga_instant_sleep (bool)*"])


def test_importing_the_plugin_stays_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, sagakit.pytest_plugin;"
        "heavy = [m for m in ('sagakit.testing', 'opentelemetry') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_faults_work_with_module_and_session_scoped_loops(pytester: pytest.Pytester) -> None:
    write_ini(pytester)
    pytester.makepyfile(
        SAGA
        + """
@pytest.mark.asyncio(loop_scope="module")
async def test_1(saga_orchestrator, saga_faults):
    saga_faults.fail("reserve")
    with pytest.raises(StepFailed):
        await saga_orchestrator.execute(order("x"))

@pytest.mark.asyncio(loop_scope="module")
async def test_2(saga_orchestrator):
    await saga_orchestrator.execute(order("x"))

@pytest.mark.asyncio(loop_scope="session")
async def test_3(saga_orchestrator, saga_faults):
    saga_faults.timeout("ship")
    with pytest.raises(StepFailed):
        await saga_orchestrator.execute(order("x"))

@pytest.mark.asyncio(loop_scope="session")
async def test_4(saga_orchestrator):
    await saga_orchestrator.execute(order("x"))
"""
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=4)


def test_a_fault_on_a_misspelt_step_errors_at_teardown(pytester: pytest.Pytester) -> None:
    write_ini(pytester)
    pytester.makepyfile(
        SAGA
        + """
@pytest.mark.asyncio
async def test_typo(saga_orchestrator, saga_faults):
    saga_faults.fail("shpi")
    await saga_orchestrator.execute(order("x"))
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*_ ERROR at teardown of test_typo _*", "FaultInjector: no step is named 'shpi' (*"]
    )
    result.stdout.no_fnmatch_line("*contextlib*")  # the message alone, not the fixture's code


def test_a_misspelt_step_is_named_on_the_failure_it_caused(pytester: pytest.Pytester) -> None:
    # The fault never fired, so pytest.raises saw nothing: the test's own failure says
    # why, once, rather than a separate error at teardown with the fixture's internals.
    write_ini(pytester)
    pytester.makepyfile(
        SAGA
        + """
@pytest.mark.asyncio
async def test_typo(saga_orchestrator, saga_faults):
    saga_faults.fail("shpi")
    with pytest.raises(StepFailed):
        await saga_orchestrator.execute(order("x"))

def test_skipped(saga_faults):
    saga_faults.fail("shpi")
    pytest.skip("not today")
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        ["*_ ERROR at teardown of test_skipped _*", "FaultInjector: no step is named 'shpi'*"]
    )
    # Not noted on a skip, which pytest shows no error of: it errors at its teardown.
    result.assert_outcomes(failed=1, skipped=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_typo _*",
            "E       Failed: DID NOT RAISE *StepFailed*",
            "E       FaultInjector: no step is named 'shpi' (did you mean 'ship'?)*",
        ]
    )
    result.stdout.no_fnmatch_line("*ERROR at teardown of test_typo*")
    result.stdout.no_fnmatch_line("*contextlib*")


def test_the_saga_faults_injector_entered_again_says_a_misspelt_step_once(
    pytester: pytest.Pytester,
) -> None:
    # Regression: `with saga_faults.fail("shpi"):` raised the misspelt step at the end of
    # its block, and the fixture noted the same line again on that error (or, when the
    # block failed, both noted it).
    write_ini(pytester)
    pytester.makepyfile(
        SAGA
        + """
@pytest.mark.asyncio
async def test_block_passes(saga_orchestrator, saga_faults):
    with saga_faults.fail("shpi"):
        await saga_orchestrator.execute(order("x"))

@pytest.mark.asyncio
async def test_block_fails(saga_orchestrator, saga_faults):
    with saga_faults.fail("shpi"), pytest.raises(StepFailed):
        await saga_orchestrator.execute(order("x"))
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--tb=short")
    result.assert_outcomes(failed=2)
    # The failures' own lines ("E   ..."), not the short summary, which repeats a message
    # when the terminal is wide enough or pytest runs under CI.
    said = [
        line
        for line in result.outlines
        if line.startswith("E ") and "no step is named 'shpi'" in line
    ]
    assert len(said) == 2, result.outlines  # once per test


def test_a_fault_never_fired_is_shown_on_a_failure_pytest_shows_by_its_message_alone(
    pytester: pytest.Pytester,
) -> None:
    # Regression: pytest shows a `pytest.fail(..., pytrace=False)` by its message alone,
    # without its notes, so the note saying why (a misspelt step) was lost, and the test's
    # teardown, told it was said, said nothing either. The same with a `with` block.
    write_ini(pytester)
    pytester.makepyfile(
        SAGA
        + """
from sagakit.testing import FaultInjector

def check_failed(saga_orchestrator):
    pytest.fail("the order should have failed", pytrace=False)

@pytest.mark.asyncio
async def test_fixture(saga_orchestrator, saga_faults):
    saga_faults.fail("shpi")
    await saga_orchestrator.execute(order("x"))
    check_failed(saga_orchestrator)

@pytest.mark.asyncio
async def test_block(saga_orchestrator):
    with FaultInjector().fail("shpi", index=1):
        await saga_orchestrator.execute(order("x"))
        check_failed(saga_orchestrator)
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    for test in ("test_fixture", "test_block"):
        result.stdout.fnmatch_lines(
            [
                f"*_ {test} _*",
                "the order should have failed",
                "FaultInjector: no step is named 'shpi' (did you mean 'ship'?)*",
            ]
        )


def test_an_index_fault_that_never_fired_is_noted_on_the_test_failure(
    pytester: pytest.Pytester,
) -> None:
    write_ini(pytester)
    pytester.makepyfile(
        SAGA
        + """
@pytest.mark.asyncio
async def test_wrong_index(saga_orchestrator, saga_faults):
    saga_faults.fail("ship", index=0)  # ship is step 1
    with pytest.raises(StepFailed):
        await saga_orchestrator.execute(order("x"))
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E       Failed: DID NOT RAISE *StepFailed*",
            "E       FaultInjector: the fault on step 'ship' with index=0 never fired: it ran at "
            "index 1 of the saga under test",
        ]
    )


def test_an_expected_failure_run_with_runxfail_is_noted_as_any_failure(
    pytester: pytest.Pytester,
) -> None:
    # Regression: an xfail test's failure was never noted (pytest shows none), but with
    # --runxfail pytest shows it as any failure, and the note saying why was missing.
    write_ini(pytester)
    pytester.makepyfile(
        SAGA
        + """
@pytest.mark.xfail(reason="a known bug")
@pytest.mark.asyncio
async def test_wrong_index(saga_orchestrator, saga_faults):
    saga_faults.fail("ship", index=0)  # ship is step 1
    with pytest.raises(StepFailed):
        await saga_orchestrator.execute(order("x"))
"""
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(xfailed=1)
    result = pytester.runpytest("-p", "no:cacheprovider", "--runxfail")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["E       FaultInjector: the fault on step 'ship' with index=0 never fired: *"]
    )


def test_sagas_and_step_calls_parametrizing_a_test_are_named_in_its_ids(
    pytester: pytest.Pytester,
) -> None:
    # Regression: `parametrize("definition", [order("x"), ...])` gave test ids such as
    # test_matrix[definition0]: a failing case did not say which saga it was.
    write_ini(pytester)
    pytester.makepyfile(
        SAGA
        + """
@saga
def refund(item):
    return [ship(item)]

@pytest.mark.parametrize("definition", [order("x"), refund("x"), refund("y")])
@pytest.mark.asyncio
async def test_matrix(definition, saga_fault_matrix):
    await saga_fault_matrix(definition)

@pytest.mark.parametrize("call", [reserve("x"), ship("x")])
def test_calls(call):
    pass

@pytest.mark.parametrize("value", [1, "a"])
def test_others_untouched(value):
    pass
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q")
    ids = [line.partition("::")[2] for line in result.outlines if "::" in line]
    assert ids == [
        "test_matrix[order]",
        "test_matrix[refund0]",
        "test_matrix[refund1]",
        "test_calls[reserve]",
        "test_calls[ship]",
        "test_others_untouched[1]",
        "test_others_untouched[a]",
    ]


def test_steps_and_sagas_parametrizing_a_test_are_named_as_recorded(
    pytester: pytest.Pytester,
) -> None:
    # Regression: a step or saga declared with a name of its own was named in the test id
    # by its function's name (test_faults[charge_card]), where its calls and definitions,
    # its faults and its records say "billing.charge".
    write_ini(pytester)
    pytester.makepyfile(
        """
import pytest
from sagakit import saga, step

@step(name="billing.charge")
async def charge_card(item):
    return None

@step
async def ship(item):
    return None

class Bank:
    @step(name="bank.debit")
    async def debit(self, item):
        return None

@saga(name="shop.order")
def place_order(item):
    yield charge_card(item)

@pytest.mark.parametrize("target", [charge_card, ship, Bank.debit, Bank().debit])
def test_steps(target):
    pass

@pytest.mark.parametrize("function", [place_order, charge_card("x"), place_order("x")])
def test_sagas(function):
    pass
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q")
    ids = [line.partition("::")[2] for line in result.outlines if "::" in line]
    assert ids == [
        "test_steps[billing.charge]",
        "test_steps[ship]",
        "test_steps[bank.debit0]",
        "test_steps[bank.debit1]",
        "test_sagas[shop.order0]",
        "test_sagas[billing.charge]",
        "test_sagas[shop.order1]",
    ]


def test_a_test_leaving_a_fault_injector_active_fails_not_the_next_one(
    pytester: pytest.Pytester,
) -> None:
    # Its faults stayed active, and a later, innocent test failed instead.
    write_ini(pytester)
    pytester.makepyfile(
        SAGA
        + """
from sagakit import SagaOrchestrator
from sagakit.testing import FaultInjector

def test_leaky():
    FaultInjector().fail("reserve").__enter__()

def test_leaky_and_failing():
    FaultInjector().fail("reserve").__enter__()
    assert False, "its own failure"

def test_tidy():
    with FaultInjector().fail("reserve"):
        pass

@pytest.mark.asyncio
async def test_innocent():
    await SagaOrchestrator().execute(order("x"))
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*::test_leaky FAILED*",
            "*::test_leaky_and_failing FAILED*",
            "*::test_tidy PASSED*",
            "*::test_innocent PASSED*",
            "*_ test_leaky _*",
            "the test left a FaultInjector active (entered, never exited)*",
            "*_ test_leaky_and_failing _*",
            "*its own failure*",
        ]
    )


def test_a_fixture_leaving_a_fault_injector_active_errors_not_the_next_test(
    pytester: pytest.Pytester,
) -> None:
    # The check saw only the test body: a fixture's injector hit every later test.
    write_ini(pytester)
    pytester.makepyfile(
        SAGA
        + """
import pytest_asyncio
from sagakit import SagaOrchestrator
from sagakit.testing import FaultInjector

@pytest.fixture
def leaky():
    return FaultInjector().fail("reserve").__enter__()

@pytest.fixture
def leaky_at_teardown():
    yield
    FaultInjector().fail("reserve").__enter__()

@pytest.fixture(scope="module")
def leaky_module():
    return FaultInjector().fail("reserve").__enter__()

@pytest.fixture(scope="module")
def tidy_module():
    with FaultInjector().fail("ship") as faults:
        yield faults

@pytest.fixture
def tidy():
    with FaultInjector().fail("reserve") as faults:
        yield faults

@pytest.fixture(scope="module")
def plain_module():
    return "plain"

@pytest_asyncio.fixture
async def entered_async():  # pytest-asyncio takes back what an async fixture set
    return FaultInjector().fail("reserve").__enter__()

async def clean():
    assert await SagaOrchestrator().execute(order("x")) == ["reserved x", "shipped x"]

def test_leaky(leaky):
    pass

@pytest.mark.asyncio
async def test_innocent_1():
    await clean()

def test_leaky_at_teardown(leaky_at_teardown):
    pass

@pytest.mark.asyncio
async def test_tidy(tidy, tidy_module, saga_faults, saga_orchestrator):
    with pytest.raises(StepFailed):
        await saga_orchestrator.execute(order("x"))

@pytest.mark.asyncio
async def test_entered_async(entered_async):
    pass

def test_a_wider_fixture_set_up_while_faults_are_active(saga_faults, request):
    assert request.getfixturevalue("plain_module") == "plain"  # it entered nothing

@pytest.mark.asyncio
async def test_leaky_module(leaky_module):
    with pytest.raises(StepFailed):
        await SagaOrchestrator().execute(order("x"))

@pytest.mark.asyncio
async def test_tidy_module_still_active(tidy_module):
    with pytest.raises(StepFailed):  # both module fixtures are still set up
        await SagaOrchestrator().execute(order("x"))
"""
    )
    pytester.makepyfile(
        test_z_after="""
import pytest
from test_a_fixture_leaving_a_fault_injector_active_errors_not_the_next_test import clean

@pytest.mark.asyncio
async def test_innocent_2():
    await clean()
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=9, errors=3)
    result.stdout.fnmatch_lines(
        [
            "*::test_leaky PASSED*",
            "*::test_leaky ERROR*",
            "*::test_innocent_1 PASSED*",
            "*::test_leaky_at_teardown PASSED*",
            "*::test_leaky_at_teardown ERROR*",
            "*::test_tidy PASSED*",
            "*::test_entered_async PASSED*",
            "*::test_a_wider_fixture_set_up_while_faults_are_active PASSED*",
            "*::test_leaky_module PASSED*",
            "*::test_tidy_module_still_active PASSED*",
            "*::test_tidy_module_still_active ERROR*",
            "*::test_innocent_2 PASSED*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_leaky _*",
            "fixture 'leaky' (function scope, set up for *::test_leaky) left a FaultInjector"
            " active (entered, never exited), so its faults would hit the tests after it;*",
            "*_ ERROR at teardown of test_leaky_at_teardown _*",
            "fixture 'leaky_at_teardown' (function scope, set up for *::test_leaky_at_teardown)*",
            "*_ ERROR at teardown of test_tidy_module_still_active _*",
            "fixture 'leaky_module' (module scope, set up for test_a_fixture_*.py) left*",
        ]
    )


@pytest.mark.parametrize("ini", ["saga_matrix_timeouts", "saga_instant_sleep"])
def test_an_ini_value_that_is_not_true_or_false_is_a_usage_error_naming_its_key(
    pytester: pytest.Pytester, ini: str
) -> None:
    # Regression: pytest's "invalid truth value 'maybe'" named no key, and came as an
    # error at the setup of each test using the fixture (none for a session without one).
    write_ini(pytester, extra=f"{ini} = maybe")
    pytester.makepyfile("def test_nothing_to_do_with_sagas():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: the {ini} ini key must be true or false: *'maybe'*"])


def test_the_plugin_is_switched_on_and_off_as_the_testing_page_says(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # docs/testing.md: active through its entry point, `-p no:sagakit` turns it off; with
    # autoloading off, `-p sagakit` or `pytest_plugins` turn it on; listing it in a
    # conftest while it is autoloaded too is harmless (see the test after this one).
    pytester.makepyfile("def test_fixture(saga_recorder):\n    assert saga_recorder.runs == []\n")
    flags = ["-p", "no:cacheprovider"]
    pytester.runpytest_subprocess(*flags).assert_outcomes(passed=1)
    off = pytester.runpytest_subprocess(*flags, "-p", "no:sagakit")
    off.assert_outcomes(errors=1)
    off.stdout.fnmatch_lines(["*fixture 'saga_recorder' not found*"])
    pytester.makeconftest('pytest_plugins = ["sagakit.pytest_plugin"]')
    pytester.runpytest_subprocess(*flags).assert_outcomes(passed=1)
    # Listed by a conftest, it is registered by its module's name: `-p no:sagakit` alone
    # (the entry point's name) leaves it on; with the module's name too, it is off.
    pytester.runpytest_subprocess(*flags, "-p", "no:sagakit").assert_outcomes(passed=1)
    both = ("-p", "no:sagakit", "-p", "no:sagakit.pytest_plugin")
    pytester.runpytest_subprocess(*flags, *both).assert_outcomes(errors=1)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.runpytest_subprocess(*flags).assert_outcomes(passed=1)  # the conftest's
    off = ("-p", "no:sagakit.pytest_plugin")
    pytester.runpytest_subprocess(*flags, *off).assert_outcomes(errors=1)
    pytester.makeconftest("")
    pytester.runpytest_subprocess(*flags).assert_outcomes(errors=1)
    pytester.runpytest_subprocess(*flags, "-p", "sagakit").assert_outcomes(passed=1)
    # saga_orchestrator is pytest-asyncio's fixture: that plugin is turned on too.
    pytester.makepyfile(
        "def test_fixture(saga_orchestrator, saga_recorder):\n"
        "    assert saga_orchestrator is not None\n"
    )
    # Regression: the page said `-p asyncio`, which pytest warns about once sagakit is
    # loaded (PytestAssertRewriteWarning: Module already imported so cannot be rewritten;
    # asyncio -- the standard library's, which sagakit imported then), failing a suite with
    # `filterwarnings = error`. `-p pytest_asyncio.plugin` names the plugin's module.
    rewrite = "error::pytest.PytestAssertRewriteWarning"
    for order in (("sagakit", "pytest_asyncio.plugin"), ("pytest_asyncio.plugin", "sagakit")):
        given = [arg for name in order for arg in ("-p", name)]
        cli = pytester.runpytest_subprocess(*flags, *given, "-W", rewrite)
        cli.assert_outcomes(passed=1)
    # In either order, and no warning (pytest warns of a plugin imported before it is
    # registered: it cannot rewrite its asserts), so `filterwarnings = error` is fine.
    for plugins in (
        '"sagakit.pytest_plugin", "pytest_asyncio.plugin"',
        '"pytest_asyncio.plugin", "sagakit.pytest_plugin"',
    ):
        pytester.makeconftest(f"pytest_plugins = [{plugins}]")
        listed = pytester.runpytest_subprocess(*flags, "-W", rewrite)
        listed.assert_outcomes(passed=1)


def test_the_plugin_named_by_its_module_while_autoloaded_is_registered_once(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: a conftest listing `pytest_plugins = ["sagakit.pytest_plugin"]` (so that
    # it works with autoloading off too), or `-p sagakit.pytest_plugin`, made pytest stop
    # before running anything once the entry point had loaded the plugin as `sagakit`
    # (or the other way round): "ValueError: Plugin already registered under a different
    # name", with a dump of every plugin. The module is registered once, whichever name
    # came first, and asked no more under the other.
    write_ini(pytester)  # filterwarnings = error: no warning either
    pytester.makepyfile("def test_fixture(saga_recorder):\n    assert saga_recorder.runs == []\n")
    flags = ["-p", "no:cacheprovider", "--trace-config"]
    registered = "PLUGIN registered: <module 'sagakit.pytest_plugin' from *"

    def once(*args: str) -> None:
        result = pytester.runpytest_subprocess(*flags, *args)
        result.assert_outcomes(passed=1)
        lines = [line for line in result.outlines if fnmatch(line, registered)]
        assert len(lines) == 1, result.outlines

    once("-p", "sagakit.pytest_plugin")  # before the entry point is loaded
    pytester.makeconftest('pytest_plugins = ["sagakit.pytest_plugin"]')
    once()  # after it
    once("-p", "sagakit")
    once("-p", "sagakit.pytest_plugin")
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    asyncio = ("-p", "pytest_asyncio.plugin")  # its ini keys are known then
    once(*asyncio)
    once(*asyncio, "-p", "sagakit")
    pytester.makeconftest("")
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    # `-p no:sagakit` still turns the autoloaded plugin off.
    off = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:sagakit")
    off.assert_outcomes(errors=1)
    off.stdout.fnmatch_lines(["*fixture 'saga_recorder' not found*"])


def test_a_conftest_importing_the_fault_matrix_type_may_list_the_plugin(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: with autoloading off, a conftest importing FaultMatrix (the type the
    # testing page gives for annotations) and listing the plugin in pytest_plugins made
    # pytest warn "Module already imported so cannot be rewritten; sagakit.pytest_plugin",
    # which stopped the run under `filterwarnings = error`: the module has no assert to
    # rewrite, and says so.
    write_ini(pytester)
    pytester.makeconftest(
        """
import pytest
from sagakit.pytest_plugin import FaultMatrix

pytest_plugins = ["sagakit.pytest_plugin"]

@pytest.fixture
def matrix(saga_fault_matrix: FaultMatrix) -> FaultMatrix:
    return saga_fault_matrix
"""
    )
    pytester.makepyfile("def test_it(matrix):\n    assert matrix.options\n")
    flags = ["-p", "no:cacheprovider"]
    pytester.runpytest_subprocess(*flags).assert_outcomes(passed=1)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = pytester.runpytest_subprocess(*flags, "-p", "pytest_asyncio.plugin")
    result.assert_outcomes(passed=1)


def test_the_orchestrator_fixture_without_pytest_asyncio_says_what_to_do(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: pytest's own message named no plugin to turn on, and every later test
    # using the fixture failed with a bare AssertionError from pytest's fixture code.
    pytester.makepyfile(
        """
def test_first(saga_orchestrator):
    pass

def test_second(saga_orchestrator):
    pass

def test_other_fixtures_still_work(saga_faults, saga_recorder):
    assert saga_recorder.runs == []
"""
    )
    flags = ["-p", "no:cacheprovider"]
    turned_off = pytester.runpytest_subprocess(*flags, "-p", "no:asyncio")
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    not_turned_on = pytester.runpytest_subprocess(*flags, "-p", "sagakit")
    for result in (turned_off, not_turned_on):
        result.assert_outcomes(passed=1, errors=2)
        result.stdout.fnmatch_lines(
            [
                "*_ ERROR at setup of test_first _*",
                "the saga_orchestrator fixture is async, run by pytest-asyncio, and the "
                "pytest-asyncio plugin is not active here *; turn it on with "
                "`-p pytest_asyncio.plugin` or *",
                "*_ ERROR at setup of test_second _*",
                "the saga_orchestrator fixture is async, run by pytest-asyncio, *",
            ]
        )
        result.stdout.no_fnmatch_line("*AssertionError*")


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_the_orchestrator_fixture_closes_its_orchestrator(
    pytester: pytest.Pytester, mode: str
) -> None:
    # Regression: saga_orchestrator was a plain function whose orchestrator (and store)
    # nothing ever closed: a store holding connections or files leaked one per test.
    write_ini(pytester, mode=mode)
    pytester.makeconftest(
        """
import pytest
from sagakit import MemoryStore

closed = []

@pytest.fixture(autouse=True)
def _note_closes(monkeypatch):  # set up first, so still patched at the teardown
    async def close(self):
        closed.append(self)
    monkeypatch.setattr(MemoryStore, "close", close)
"""
    )
    pytester.makepyfile(
        SAGA
        + """
from conftest import closed

used = []

@pytest.mark.asyncio
async def test_1_async(saga_orchestrator):
    await saga_orchestrator.execute(order("x"))
    used.append(saga_orchestrator.store)
    assert closed == []

@pytest.mark.asyncio(loop_scope="module")
async def test_2_module_loop(saga_orchestrator):
    await saga_orchestrator.execute(order("x"))
    used.append(saga_orchestrator.store)

def test_3_sync(saga_orchestrator):
    used.append(saga_orchestrator.store)

class TestInAClass:
    @pytest.mark.asyncio
    async def test_4(self, saga_orchestrator):
        used.append(saga_orchestrator.store)

def test_5_each_was_closed_once_at_its_teardown():
    assert len(used) == 4
    assert [id(store) for store in closed] == [id(store) for store in used]
"""
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=5)


def test_a_failing_helper_shows_the_test_line_not_sagakit_internals(
    pytester: pytest.Pytester,
) -> None:
    # Regression: a failed assert_* helper showed two frames of sagakit's recorder, and a
    # failed fault matrix printed the whole source of run_fault_matrix, before the message.
    write_ini(pytester)
    pytester.makepyfile(
        SAGA
        + """
@step
async def fragile(item):
    return None

@fragile.compensate
async def unfragile(item):
    raise RuntimeError("cannot undo")

@saga
def breakable(item):
    yield fragile(item)
    yield ship(item)

@pytest.mark.asyncio
async def test_recorder(saga_orchestrator, saga_recorder):
    await saga_orchestrator.execute(order("x"))
    saga_recorder.assert_compensated("reserve")

@pytest.mark.asyncio
async def test_run(saga_orchestrator, saga_recorder):
    await saga_orchestrator.execute(order("x"))
    saga_recorder.run().assert_status("compensated")

def test_nothing_recorded(saga_recorder):
    saga_recorder.assert_trail("saga_started")

@pytest.mark.asyncio
async def test_matrix(saga_fault_matrix):
    await saga_fault_matrix(breakable("x"), timeouts=False)

@pytest.mark.asyncio
async def test_matrix_alone():
    from sagakit.testing import run_fault_matrix
    await run_fault_matrix(breakable("x"), timeouts=False)

@pytest.mark.asyncio
async def test_misspelt(saga_orchestrator):
    from sagakit.testing import FaultInjector
    with FaultInjector().fail("shpi"):
        await saga_orchestrator.execute(order("x"))
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=6)
    result.stdout.fnmatch_lines(
        [
            '>       saga_recorder.assert_compensated("reserve")',
            "E       AssertionError: saga 'order' (id *): compensations differ*",
            '>       saga_recorder.run().assert_status("compensated")',
            "E       AssertionError: saga 'order' (id *) ended completed, expected compensated",
            '>       saga_recorder.assert_trail("saga_started")',
            "E       AssertionError: no saga run was recorded*",
            '>       await saga_fault_matrix(breakable("x"), timeouts=False)',
            "E       AssertionError: fault matrix of saga 'breakable': 2 cases",
            '>       await run_fault_matrix(breakable("x"), timeouts=False)',
            "E       AssertionError: fault matrix of saga 'breakable': 2 cases",
            '>       with FaultInjector().fail("shpi"):',
            "E       sagakit.exceptions.SagaDefinitionError: FaultInjector: no* is named 'shpi'*",
        ]
    )
    for internal in ("_recorder.py", "_matrix.py", "_faults.py", "pytest_plugin.py"):
        result.stdout.no_fnmatch_line(f"*sagakit*{internal}*")
    result.stdout.no_fnmatch_line("*def run_fault_matrix*")


def test_a_fault_matrix_never_awaited_fails_the_test(pytester: pytest.Pytester) -> None:
    # Regression: `saga_fault_matrix(order("x"))` without `await` ran nothing and the test
    # passed (with a RuntimeWarning at most), checking nothing.
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = strict
        asyncio_default_fixture_loop_scope = function
        """
    )
    pytester.makepyfile(
        SAGA
        + """
@pytest.mark.asyncio
async def test_forgot_the_await(saga_fault_matrix):
    saga_fault_matrix(order("x"))

@pytest.mark.asyncio
async def test_awaited(saga_fault_matrix):
    report = await saga_fault_matrix(order("x"))
    assert len(report.cases) == 4
"""
    )
    # In a process of its own: this suite's `filterwarnings = error` is not the user's.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*::test_forgot_the_await ERROR*",
            "*_ ERROR at teardown of test_forgot_the_await _*",
            "saga_fault_matrix(...) was called 1 time and never awaited, so no fault matrix"
            " ran; write `await saga_fault_matrix(...)`",
        ]
    )
    result.stdout.no_fnmatch_line("*RuntimeWarning*")
