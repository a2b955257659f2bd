"""A ``saga_store`` a test asked for without ``saga_orchestrator`` and never closed."""

from __future__ import annotations

import pytest

from pytester_helpers.ini import write_ini

pytest_plugins = ["pytester"]

CONFTEST = """
import pytest
from sagakit import SQLiteStore

@pytest.fixture
def saga_store(tmp_path):
    return SQLiteStore(tmp_path / "sagas.db")
"""


def test_a_store_the_test_never_closed_errors_its_teardown_and_is_closed(
    pytester: pytest.Pytester,
) -> None:
    # Regression: its connection was left to the garbage collector, which (from Python
    # 3.13, with filterwarnings = error) failed whichever later test it ran in with an
    # "unclosed database" ResourceWarning, naming neither the store nor the test.
    write_ini(pytester)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
import pytest

left = []

@pytest.mark.asyncio
async def test_forgets_to_close(saga_store):
    assert await saga_store.get("nothing") is None
    left.append(saga_store)

@pytest.mark.asyncio
async def test_closes_it(saga_store):
    assert left[0].closed  # closed by the plugin
    await saga_store.close()

@pytest.mark.asyncio
async def test_uses_the_orchestrator(saga_orchestrator, saga_store):
    assert await saga_orchestrator.get_saga("nothing") is None
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_forgets_to_close*",
            "*the saga_store fixture's <SQLiteStore * was left open by test "
            "test_a_store_the_test_never_closed*.py::test_forgets_to_close;*the plugin closed it",
        ]
    )
    assert "await saga_store.close()" in result.stdout.str()


def test_a_wider_scoped_store_its_fixture_never_closed_errors_its_teardown(
    pytester: pytest.Pytester,
) -> None:
    write_ini(pytester)
    pytester.makepyfile(
        """
import pytest
from sagakit import SQLiteStore

@pytest.fixture(scope="module")
def saga_store(tmp_path_factory):
    return SQLiteStore(tmp_path_factory.mktemp("log") / "sagas.db")

@pytest.mark.asyncio
async def test_1(saga_orchestrator):
    assert await saga_orchestrator.get_saga("nothing") is None

@pytest.mark.asyncio
async def test_2(saga_orchestrator):
    assert await saga_orchestrator.get_saga("nothing") is None
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_2*",
            "*was left open by its module-scoped fixture; a saga_store of a wider scope is "
            "closed by its own fixture*the plugin closed it",
        ]
    )


def test_a_postgres_store_the_test_never_closed_errors_its_teardown_and_is_closed(
    pytester: pytest.Pytester, dsn: str, schema: str
) -> None:
    # Regression: only a SQLiteStore was checked, so a PostgresStore left open kept its
    # connection pool (and lease heartbeat) to the garbage collector, unnamed.
    write_ini(pytester)
    pytester.makeconftest(
        f"""
import pytest
from sagakit import PostgresStore

@pytest.fixture
def saga_store():
    return PostgresStore({dsn!r}, schema={schema!r})
"""
    )
    pytester.makepyfile(
        """
import pytest

left = []

@pytest.mark.asyncio
async def test_forgets_to_close(saga_store):
    assert await saga_store.get("nothing") is None  # opened on first use
    left.append(saga_store)

@pytest.mark.asyncio
async def test_closes_it(saga_store):
    assert left[0].closed  # closed by the plugin
    assert await saga_store.get("nothing") is None
    await saga_store.close()

@pytest.mark.asyncio
async def test_never_opens_it(saga_store):
    assert saga_store.closed  # nothing to close

@pytest.mark.asyncio
async def test_uses_the_orchestrator(saga_orchestrator, saga_store):
    assert await saga_orchestrator.get_saga("nothing") is None
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_forgets_to_close*",
            "*the saga_store fixture's <PostgresStore * was left open by test "
            "test_a_postgres_store_the_test*.py::test_forgets_to_close;*Left open, its "
            "connection pool keeps its connections to the server*",
        ]
    )
    assert "await saga_store.close()" in result.stdout.str()
