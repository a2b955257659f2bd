"""A misused ``saga_fault_matrix`` marker errors the test's setup, fixture or not."""

from __future__ import annotations

import pytest

from pytester_helpers.ini import write_ini

pytest_plugins = ["pytester"]

SAGA = """
import pytest
from sagakit import saga, step
from sagakit.testing import run_fault_matrix

@step
async def reserve(item):
    return f"reserved {item}"

@reserve.compensate
async def release(item):
    return None

@saga
def order(item):
    yield reserve(item)
"""


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_a_misspelt_keyword_errors_a_test_without_the_fixture(
    pytester: pytest.Pytester, mode: str
) -> None:
    # Regression: the keywords were checked by the fixture only, so on a test calling
    # run_fault_matrix itself the misspelt `timeout=` was silently ignored.
    write_ini(pytester, mode)
    pytester.makepyfile(
        SAGA
        + """
@pytest.mark.saga_fault_matrix(timeout=False)
@pytest.mark.asyncio
async def test_typo():
    await run_fault_matrix(order("x"))

@pytest.mark.saga_fault_matrix(failures="no")
def test_not_a_bool():
    pass

@pytest.mark.saga_fault_matrix(error=KeyboardInterrupt)
def test_not_compensated():
    pass
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at setup of test_typo _*",
            "@pytest.mark.saga_fault_matrix got unknown options ['timeout']; "
            "it takes failures, timeouts, error",
            "*_ ERROR at setup of test_not_a_bool _*",
            "@pytest.mark.saga_fault_matrix(failures=...) must be True or False, got 'no'",
            "*_ ERROR at setup of test_not_compensated _*",
            "@pytest.mark.saga_fault_matrix(error=...) must be an Exception, got *",
        ]
    )
    result.stdout.no_fnmatch_line("*During handling*")


def test_a_marker_on_a_test_without_the_fixture_is_an_error(pytester: pytest.Pytester) -> None:
    # Regression: a marker that configures nothing (the test runs the matrix itself, or
    # not at all) was silently ignored.
    write_ini(pytester, "strict")
    pytester.makepyfile(
        SAGA
        + """
@pytest.mark.saga_fault_matrix(timeouts=False)
@pytest.mark.asyncio
async def test_runs_it_itself():
    report = await run_fault_matrix(order("x"))
    assert {case.mode for case in report.cases} == {"fail"}

@pytest.mark.parametrize(
    "item", [pytest.param("x", marks=pytest.mark.saga_fault_matrix(failures=False)), "y"]
)
def test_param(item):
    pass
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at setup of test_runs_it_itself _*",
            "@pytest.mark.saga_fault_matrix only sets the options of the saga_fault_matrix "
            "fixture, which this test does not use, so it has no effect; request the fixture "
            "(`async def test_runs_it_itself(saga_fault_matrix): "
            "await saga_fault_matrix(...)`) or remove the marker",
            "*_ ERROR at setup of test_param?x? _*",
            "*(`async def test_param(saga_fault_matrix): *",
        ]
    )


def test_module_and_class_markers_may_cover_tests_without_the_fixture(
    pytester: pytest.Pytester,
) -> None:
    # Defaults for a module's or class's tests that use the fixture are no mistake on its
    # other tests; a test using the fixture through another fixture uses it too.
    write_ini(pytester, "auto")
    pytester.makepyfile(
        SAGA
        + """
pytestmark = pytest.mark.saga_fault_matrix(timeouts=False)

def test_helper():
    pass

@pytest.mark.saga_fault_matrix(error=ConnectionError)
class TestOrder:
    def test_other(self):
        pass

    async def test_matrix(self, saga_fault_matrix):
        report = await saga_fault_matrix(order("x"))
        assert {case.mode for case in report.cases} == {"fail"}

@pytest.fixture
def matrix(saga_fault_matrix):
    return saga_fault_matrix

@pytest.mark.saga_fault_matrix(failures=False, timeouts=True)
async def test_through_a_fixture(matrix):
    report = await matrix(order("x"))
    assert {case.mode for case in report.cases} == {"timeout"}
"""
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=4)


def test_a_misspelt_module_marker_errors_every_test_it_covers(pytester: pytest.Pytester) -> None:
    write_ini(pytester, "strict")
    pytester.makepyfile(
        SAGA
        + """
pytestmark = pytest.mark.saga_fault_matrix(timout=False)

def test_helper():
    pass

@pytest.mark.asyncio
async def test_matrix(saga_fault_matrix):
    await saga_fault_matrix(order("x"))
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*got unknown options ?'timout'?; it takes*"] * 2)
