"""The pytest plugin keeps a saga declared inside a test from replacing, for the tests
after it, the module-level saga of its name that recovery finds."""

from __future__ import annotations

import pytest

from pytester_helpers.ini import write_ini

pytest_plugins = ["pytester"]

APPLICATION = """
from pathlib import Path

import pytest

from sagakit import SQLiteStore, saga, step
from sagakit.testing import SimulatedCrash, simulate_restart


@step
async def preg_reserve(item):
    return None


@step
async def preg_charge(item):
    return None


@saga
def preg_order(item):
    yield preg_reserve(item)
    yield preg_charge(item)


@pytest.fixture
def saga_store(tmp_path: Path) -> SQLiteStore:
    return SQLiteStore(tmp_path / "sagas.db")


@pytest.mark.asyncio
async def test_a_crash_is_recovered(saga_orchestrator, saga_store, saga_faults):
    saga_faults.crash(preg_charge)
    with pytest.raises(SimulatedCrash):
        await saga_orchestrator.execute(preg_order("book"), saga_id="o-1")
    await simulate_restart(saga_store)
    [outcome] = await saga_orchestrator.recover()
    assert outcome.status == "completed", outcome
"""

LOCAL_DECLARATION = """
import pytest

from sagakit import saga, step


@step
async def preg_other(item):
    return None


@pytest.mark.asyncio
async def test_a_saga_of_its_own(saga_orchestrator):
    @saga
    def preg_order(item):  # named as the application's saga, for this test alone
        yield preg_other(item)

    await saga_orchestrator.execute(preg_order("x"))
"""


def test_a_saga_declared_in_a_test_is_forgotten_when_the_test_ends(
    pytester: pytest.Pytester,
) -> None:
    # Regression: the local saga took over the name for good, so a later test's recovery
    # rebuilt it instead of the application's saga and parked the run
    # (NonDeterminismError): a test passed or failed by the order the tests ran in.
    write_ini(pytester)
    pytester.makepyfile(test_0_local=LOCAL_DECLARATION, test_1_application=APPLICATION)
    files = ["test_0_local.py", "test_1_application.py"]  # in this order
    result = pytester.runpytest("-p", "no:cacheprovider", *files)
    result.assert_outcomes(passed=2)


def test_a_saga_declared_in_a_test_still_replaces_the_name_within_it(
    pytester: pytest.Pytester,
) -> None:
    # Simulating a deploy of changed code: recovery, in the same test, rebuilds the saga
    # declared there.
    write_ini(pytester)
    pytester.makepyfile(
        APPLICATION
        + """

@pytest.mark.asyncio
async def test_changed_code_is_parked(saga_orchestrator, saga_store, saga_faults):
    saga_faults.crash(preg_charge)
    with pytest.raises(SimulatedCrash):
        await saga_orchestrator.execute(preg_order("lamp"), saga_id="o-2")

    @saga(name="preg_order")
    def changed(item):
        yield preg_charge(item)  # was preg_reserve(item)

    await simulate_restart(saga_store)
    [outcome] = await saga_orchestrator.recover()
    assert outcome.action == "dead_lettered", outcome
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


FIXTURE_DECLARATION = """
import pytest

from sagakit import saga, step
from sagakit._sagas import registered_saga


@step
async def preg_fixture_step(item):
    return None


@pytest.fixture
def own_order():
    @saga(name="preg_order")  # named as the application's saga, for one test alone
    def own(item):
        yield preg_fixture_step(item)

    yield own
    assert registered_saga("preg_order") is own  # still its own in its teardown


@pytest.fixture
def own_saga():
    @saga(name="preg_fixture_only")
    def only(item):
        yield preg_fixture_step(item)

    return only


@pytest.mark.asyncio
async def test_a_saga_of_a_fixture(saga_orchestrator, own_order, own_saga):
    assert registered_saga("preg_order") is own_order
    assert registered_saga("preg_fixture_only") is own_saga
    await saga_orchestrator.execute(own_order("x"))


def test_the_fixtures_sagas_are_forgotten():
    assert registered_saga("preg_fixture_only") is None
    assert registered_saga("preg_order").__module__ == "test_1_application"
"""


def test_a_saga_declared_in_a_fixture_is_forgotten_at_its_teardown(
    pytester: pytest.Pytester,
) -> None:
    # Regression: only the sagas a test declared inside itself gave their names back, so
    # a function-scoped fixture's kept the application's name (the next test's recovery
    # rebuilt the fixture's saga and parked the run) and its own names for good.
    write_ini(pytester)
    pytester.makepyfile(test_0_fixture=FIXTURE_DECLARATION, test_1_application=APPLICATION)
    files = ["test_0_fixture.py", "test_1_application.py"]  # in this order
    result = pytester.runpytest("-p", "no:cacheprovider", *files)
    result.assert_outcomes(passed=3)
