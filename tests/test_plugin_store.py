"""The ``saga_store`` fixture: ``saga_orchestrator``'s store, overridden for a durable one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pg_helpers.db import dsn_or_skip, query
from pytester_helpers.ini import write_ini

pytest_plugins = ["pytester"]

TESTING_MD = Path(__file__).parent.parent / "docs" / "testing.md"

SAGA = """
import pytest
from sagakit import MemoryStore, SQLiteStore, StepFailed, saga, step

@step
async def reserve(item):
    return f"reserved {item}"

@reserve.compensate
async def release(item):
    return None

@step
async def ship(item):
    return f"shipped {item}"

@saga
def order(item):
    yield reserve(item)
    yield ship(item)
"""

# Run by a test in either mode (strict needs the mark, auto accepts it).
DURABLE_TESTS = """
@pytest.mark.asyncio
async def test_a_saga_is_logged(saga_orchestrator, saga_store, saga_recorder):
    assert saga_orchestrator.store is saga_store
    assert saga_store.durable
    await saga_orchestrator.execute(order("x").with_id("o-1"))
    assert (await saga_orchestrator.get_saga("o-1")).status == "completed"
    saga_recorder.assert_completed("reserve", "ship")

@pytest.mark.asyncio
async def test_faults_and_the_matrix_work_on_it(saga_orchestrator, saga_faults, saga_recorder,
                                                saga_fault_matrix):
    assert await saga_orchestrator.get_saga("o-1") is None  # a fresh log per test
    saga_faults.fail("ship")
    with pytest.raises(StepFailed):
        await saga_orchestrator.execute(order("y").with_id("o-2"))
    saga_recorder.assert_compensated("reserve")
    assert (await saga_orchestrator.get_saga("o-2")).status == "compensated"
    saga_faults.clear()
    report = await saga_fault_matrix(order("z"), orchestrator=saga_orchestrator)
    assert report.ok
"""


def _doc_conftest(heading: str) -> str:
    """The ``py`` block following ``heading`` in docs/testing.md (a conftest.py)."""
    text = TESTING_MD.read_text(encoding="utf-8")
    section = text[text.index(f"\n{heading}\n") :]
    found = re.search(r"^```py\n(.*?)^```", section, re.S | re.M)
    assert found is not None, f"no ```py block under {heading!r}"
    assert found.group(1).startswith("# conftest.py")
    return found.group(1)


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_the_default_is_a_fresh_memory_store_per_test(pytester: pytest.Pytester, mode: str) -> None:
    write_ini(pytester, mode)
    pytester.makepyfile(
        SAGA
        + """
seen = []

@pytest.mark.asyncio
async def test_1(saga_orchestrator, saga_store):
    assert type(saga_store) is MemoryStore and saga_orchestrator.store is saga_store
    assert saga_store.history_limit == MemoryStore().history_limit
    await saga_orchestrator.execute(order("x"))
    seen.append(saga_store)

@pytest.mark.asyncio
async def test_2(saga_orchestrator):
    assert saga_orchestrator.store is not seen[0]
    assert await saga_orchestrator.get_history() == []

def test_3_sync(saga_orchestrator):
    assert type(saga_orchestrator.store) is MemoryStore
"""
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_the_documented_sqlite_override(pytester: pytest.Pytester, mode: str) -> None:
    write_ini(pytester, mode)
    pytester.makeconftest(
        _doc_conftest("### On a durable store")
        + """

@pytest.fixture(autouse=True)
def closed_at_teardown(saga_store):
    # Torn down after saga_orchestrator: the store must be closed by then.
    yield
    import asyncio
    from sagakit import StoreError
    try:
        asyncio.run(saga_store.get("o-1"))
    except StoreError as error:
        print("CLOSED:", error)
"""
    )
    pytester.makepyfile(SAGA + DURABLE_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=2)
    assert result.stdout.str().count("is closed") == 2, result.stdout.str()


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_a_yielding_async_override_that_closes_the_store_itself(
    pytester: pytest.Pytester, mode: str
) -> None:
    write_ini(pytester, mode)
    decorator = "pytest_asyncio.fixture" if mode == "strict" else "pytest.fixture"
    pytester.makeconftest(
        f"""
import pytest, pytest_asyncio
from sagakit import SQLiteStore

@{decorator}
async def saga_store(tmp_path):
    store = SQLiteStore(tmp_path / "sagas.db")
    yield store
    await store.close()  # closed already by saga_orchestrator: harmless
    print("TORN DOWN")
"""
    )
    pytester.makepyfile(SAGA + DURABLE_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=2)
    assert result.stdout.str().count("TORN DOWN") == 2


def test_a_module_scoped_store_is_left_open_between_tests(pytester: pytest.Pytester) -> None:
    write_ini(pytester, "strict")
    pytester.makepyfile(
        SAGA
        + """
import pytest_asyncio

@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def saga_store(tmp_path_factory):
    store = SQLiteStore(tmp_path_factory.mktemp("log") / "sagas.db")
    yield store
    await store.close()

@pytest.mark.asyncio(loop_scope="module")
async def test_1(saga_orchestrator):
    await saga_orchestrator.execute(order("x").with_id("o-1"))

@pytest.mark.asyncio(loop_scope="module")
async def test_2(saga_orchestrator):
    assert (await saga_orchestrator.get_saga("o-1")).status == "completed"
"""
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


BAD_STORES = {
    "the_class": (
        "return SQLiteStore",
        "the saga_store fixture must give a sagakit store (return or yield one), not the "
        "class SQLiteStore; return an instance: `return SQLiteStore(...)`",
    ),
    "a_path": (
        'return str(tmp_path / "sagas.db")',
        "the saga_store fixture must give a sagakit store (return or yield one), not the "
        "path '*sagas.db'; open a store on it: `return SQLiteStore(path)`",
    ),
    "a_path_object": ('return tmp_path / "sagas.db"', "*not the path *PosixPath*"),
    "a_coroutine": (
        "return make_store(tmp_path)",
        "the saga_store fixture must give a sagakit store (return or yield one), not a "
        "coroutine (make_store() called without `await`); await it in an async fixture "
        "(@pytest_asyncio.fixture), or return the store itself",
    ),
    "nothing": (
        "pass",
        '*it gave None (no `return` or `yield`?): e.g. `return SQLiteStore(tmp_path / "sagas.db")`',
    ),
    "something_else": ("return {}", "*or an implementation of sagakit.stores.SagaStore, not {}*"),
}


@pytest.mark.parametrize("mode", ["strict", "auto"])
@pytest.mark.parametrize("case", BAD_STORES)
def test_an_override_giving_no_store_is_a_clear_error(
    pytester: pytest.Pytester, mode: str, case: str
) -> None:
    body, message = BAD_STORES[case]
    write_ini(pytester, mode)
    pytester.makeconftest(
        f"""
import pytest
from sagakit import SQLiteStore

async def make_store(path):
    return SQLiteStore(path / "sagas.db")

@pytest.fixture
def saga_store(tmp_path):
    {body}
"""
    )
    pytester.makepyfile(
        SAGA
        + """
@pytest.mark.asyncio
async def test_it(saga_orchestrator):
    pass
"""
    )
    # (filterwarnings = error: a coroutine left unawaited would also fail the run.)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*_ ERROR at setup of test_it _*", message])
    result.stdout.no_fnmatch_line("*never awaited*")


def test_an_undecorated_async_override_in_strict_mode_names_the_fix(
    pytester: pytest.Pytester,
) -> None:
    write_ini(pytester, "strict")
    pytester.makeconftest(
        """
import pytest
from sagakit import SQLiteStore

@pytest.fixture
async def saga_store(tmp_path):
    yield SQLiteStore(tmp_path / "sagas.db")
"""
    )
    pytester.makepyfile(
        SAGA
        + """
@pytest.mark.asyncio
async def test_it(saga_orchestrator):
    pass
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at setup of test_it _*",
            "the saga_store fixture is an `async def` that pytest-asyncio does not run (in "
            "strict mode it runs only fixtures decorated with @pytest_asyncio.fixture); "
            "decorate it with @pytest_asyncio.fixture, or make it a plain `def`*",
        ]
    )


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_the_documented_postgres_override(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    dsn = dsn_or_skip()
    monkeypatch.setenv("TEST_POSTGRES_DSN", dsn)
    write_ini(pytester, mode)
    pytester.makeconftest(_doc_conftest("#### On PostgreSQL"))
    pytester.makepyfile(
        SAGA
        + DURABLE_TESTS
        + """
@pytest.mark.asyncio
async def test_in_a_schema_of_its_own(saga_orchestrator, saga_store):
    print("SCHEMA", saga_store.schema)
    await saga_orchestrator.execute(order("x"))
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=3)
    schemas = re.findall(r"SCHEMA (test_sagas_\w+)", result.stdout.str())
    assert len(schemas) == 1
    left = query(
        dsn,
        "SELECT schema_name FROM information_schema.schemata WHERE schema_name = %s",
        (schemas[0],),
    )
    assert left == []  # dropped at the test's teardown


def test_the_documented_postgres_override_skips_without_a_dsn(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEST_POSTGRES_DSN", raising=False)
    write_ini(pytester, "strict")
    pytester.makeconftest(_doc_conftest("#### On PostgreSQL"))
    pytester.makepyfile(SAGA + DURABLE_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*set TEST_POSTGRES_DSN to run the saga tests on PostgreSQL*"])


def test_the_documented_postgres_override_with_a_bad_dsn_errors_once(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: with a DSN no server answers, the setup error (saga_orchestrator opening
    # the store) was followed by a second, raw one at teardown: the fixture connected to
    # drop a schema that had never been created.
    dsn_or_skip()  # psycopg and a server to test against: this DSN names another port
    monkeypatch.setenv("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:1/test")
    write_ini(pytester, "strict")
    pytester.makeconftest(_doc_conftest("#### On PostgreSQL"))
    pytester.makepyfile(SAGA + DURABLE_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    out = result.stdout.str()
    assert out.count("ERROR at setup of") == 2, out
    assert "ERROR at teardown" not in out, out


@pytest.mark.parametrize("opens", [False, True])
def test_a_module_scoped_postgres_store_in_a_module_loop(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, opens: bool
) -> None:
    # Regression: saga_orchestrator opened a store of a wider scope in its own loop, that of
    # asyncio_default_fixture_loop_scope (function), where a PostgresStore binds to the
    # loop that opens it: the tests, in the store's module loop, failed "opened in an event
    # loop that has ended", and with a store its fixture had opened, every setup failed.
    monkeypatch.setenv("TEST_POSTGRES_DSN", dsn_or_skip())
    write_ini(pytester, "strict")
    pytester.makepyfile(
        SAGA
        + f"""
import os
import uuid
import psycopg
import pytest_asyncio
from sagakit import PostgresStore

pytestmark = pytest.mark.asyncio(loop_scope="module")

@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def saga_store():
    dsn = os.environ["TEST_POSTGRES_DSN"]
    schema = f"test_sagas_{{uuid.uuid4().hex[:12]}}"
    store = PostgresStore(dsn, schema=schema)
    if {opens}:
        await store.open()
    yield store
    await store.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{{schema}}" CASCADE')

async def test_1(saga_orchestrator):
    await saga_orchestrator.execute(order("x").with_id("o-1"))

async def test_2(saga_orchestrator):
    assert (await saga_orchestrator.get_saga("o-1")).status == "completed"
"""
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
