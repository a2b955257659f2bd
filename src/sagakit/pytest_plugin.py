"""The sagakit pytest plugin (registered through the ``pytest11`` entry point).

A thin layer over :mod:`sagakit.testing`. Fixtures: ``saga_store`` (a fresh in-memory store;
override it in a conftest.py for a durable one), ``saga_orchestrator`` (a fresh orchestrator on
``saga_store``, wired to ``saga_recorder`` and ``saga_sleep``), ``saga_recorder``,
``saga_faults`` (a fault injector active for the test), ``saga_sleep`` and
``saga_fault_matrix``. Markers: ``@pytest.mark.saga_fault_matrix(failures=..., timeouts=...)``
and ``@pytest.mark.saga_faults(strict=...)``. Options: ``--saga-matrix-timeouts`` /
``saga_matrix_timeouts``, ``--saga-instant-sleep`` / ``saga_instant_sleep`` and
``--saga-strict-faults`` / ``saga_strict_faults`` (off by default: a passing test whose
``saga_faults`` fault never fired errors at its teardown); a marker keyword beats the
command line, which beats the ini file.
The plugin never creates or manages the tests' event loops; async tests need pytest-asyncio.
A test leaving a fault injector active fails, and a fixture doing so errors at its teardown (its
faults would hit the tests after it), and a saga a test declares inside itself gives its
name back to the module-level saga it replaced when the test ends (one a fixture declares,
at the fixture's teardown). A saga definition or
step call parametrizing a test is named by its saga's or step's name in the test's id. A
``saga_fault_matrix`` marker with a bad keyword, or placed on a test that does not use the
fixture, errors the test's setup. A ``SQLiteStore`` or ``PostgresStore`` that ``saga_store``
gave and no one closed errors the teardown of the test (or wider-scoped fixture) that left
it open, and is closed. ``saga_faults`` applies to the sagas of tasks created before it too
(a worker an async fixture started).

pytest imports this module at every start wherever sagakit is installed, so it imports
sagakit's library only in the fixtures and hooks using it, never at import or in the
hooks every session and test run (``sys.modules`` tells those whether sagakit is in use).

PYTEST_DONT_REWRITE: it has no assert for pytest to rewrite, so a conftest may import from it
(``FaultMatrix``) and list it in ``pytest_plugins`` without pytest warning that it cannot.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import AsyncIterator, Coroutine, Generator, Iterator
from types import MethodType
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from typing import TypedDict

    from typing_extensions import Unpack

    from sagakit import SagaDefinition, SagaOrchestrator
    from sagakit._sagas import SagaFunction
    from sagakit._steps import Step, StepCall, _BoundStep
    from sagakit.stores import PostgresStore, SagaStore, SQLiteStore
    from sagakit.testing import Fault, FaultInjector, FaultMatrixReport, InstantSleep, SagaRecorder

    class _MatrixOptions(TypedDict, total=False):
        """The keywords of ``saga_fault_matrix(...)``: those of ``run_fault_matrix``."""

        orchestrator: SagaOrchestrator | None
        failures: bool
        timeouts: bool
        error: Fault
        check: bool


_MARKER = "saga_fault_matrix"
_FAULTS = "saga_faults"
_STORE = "saga_store"
# ini key -> (help, default); each also a --saga-... command line option, yes or no.
_SETTINGS = {
    "saga_matrix_timeouts": ("also time out each step in the fault matrix", True),
    "saga_instant_sleep": ("saga_orchestrator skips retry backoff waits", True),
    "saga_strict_faults": (
        "a passing test whose saga_faults fault never fired errors at its teardown",
        False,
    ),
}
_MATRIX_KWARGS = ("failures", "timeouts", "error")


# The names pytest registers this module under: its entry point's (autoloaded, `-p sagakit`)
# and its own (`pytest_plugins = ["sagakit.pytest_plugin"]`, `-p sagakit.pytest_plugin`).
_NAMES = ("sagakit", __name__)


def pytest_plugin_registered(plugin: object, manager: pytest.PytestPluginManager) -> None:
    """Registered under one of its names, block the other, so that a conftest listing the
    module (for runs with autoloading off) also works with it on: pytest would register
    the module a second time and stop ("Plugin already registered under a different
    name"). A block only keeps pytest from loading it again; ``-p no:sagakit`` still
    turns the autoloaded plugin off (listed by a conftest, ``-p no:sagakit.pytest_plugin``
    turns that off: a block by one name does not stop a registration by the other)."""
    if plugin is not sys.modules[__name__]:
        return
    for name in _NAMES:
        if manager.get_plugin(name) is None and not manager.is_blocked(name):
            manager.set_blocked(name)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sagakit", "sagakit saga testing")
    for ini, (help_text, default) in _SETTINGS.items():
        group.addoption(
            f"--{ini.replace('_', '-')}",
            dest=ini,
            choices=("yes", "no"),
            default=None,
            help=f"{help_text} (yes/no; default from the {ini} ini key, "
            f"else {'yes' if default else 'no'})",
        )
        parser.addini(
            ini, help=f"{help_text} (default {str(default).lower()})", type="bool", default=default
        )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(failures=True, timeouts=True, error=InjectedFault): options of the "
        "saga_fault_matrix fixture, which runs a saga once per step failing and timing out",
    )
    config.addinivalue_line(
        "markers",
        f"{_FAULTS}(strict=True): options of the saga_faults fixture; strict: a passing test "
        "whose fault never fired errors at its teardown",
    )
    for ini in _SETTINGS:
        try:
            config.getini(ini)
        except (ValueError, TypeError, pytest.UsageError) as error:
            # pytest's own message ("invalid truth value 'maybe'") names no key, and came
            # at the setup of each test using the fixture.
            raise pytest.UsageError(f"the {ini} ini key must be true or false: {error}") from error
    config.pluginmanager.register(_async_fixtures(config), "sagakit-async-fixtures")


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    """A saga definition or ``@saga`` function parametrizing a test is named by its saga's
    name, a step or step call by its step's (``test_matrix[transfer]``, not
    ``test_matrix[definition0]``; ``billing.charge`` for ``@step(name="billing.charge")``,
    not its function's name)."""
    # The classes are looked up, not imported: the plugin imports no sagakit module.
    sagas = sys.modules.get("sagakit._sagas")
    if sagas is not None:
        named: tuple[type[SagaDefinition], type[SagaFunction[...]]]
        named = (sagas.SagaDefinition, sagas.SagaFunction)
        if isinstance(val, named):
            return str(val.name)
    steps = sys.modules.get("sagakit._steps")
    if steps is None:
        return None
    step_call: type[StepCall[Any]] = steps.StepCall
    bound_step: type[_BoundStep[..., Any]] = steps._BoundStep
    step: type[Step[..., Any]] = steps.Step
    if isinstance(val, step_call):
        return str(val.step.name)
    if isinstance(val, bound_step):  # a step looked up on a class or an instance
        val = val._self_parent
    elif isinstance(val, MethodType):  # a class method step looked up, from Python 3.13
        val = val.__func__
    return str(val.name) if isinstance(val, step) else None


def _fault_state() -> tuple[Any, ...]:
    """The active fault scopes, if sagakit is loaded (no faults can be active otherwise)."""
    hooks = sys.modules.get("sagakit._hooks")
    faults = sys.modules.get("sagakit.testing._faults")
    return (
        None if hooks is None else hooks.active_faults.get(),
        () if faults is None else faults._scopes.get(),
    )


def _restore_fault_state(state: tuple[Any, ...]) -> None:
    active, scopes = state
    sys.modules["sagakit._hooks"].active_faults.set(active)
    faults = sys.modules.get("sagakit.testing._faults")
    if faults is not None:
        faults._scopes.set(scopes)


def _open_scopes() -> list[Any]:
    """The fault scopes (``with injector:`` blocks) active here and not yet left."""
    hooks = sys.modules.get("sagakit._hooks")
    scope = None if hooks is None else hooks.active_faults.get()
    found = []
    while scope is not None:
        if getattr(scope, "open", False):
            found.append(scope)
        scope = getattr(scope, "outer", None)
    return found


def _take_back(leaked: list[Any]) -> None:
    """End the faults of scopes never left, as if their blocks had been, for every task."""
    for scope in leaked:
        scope.open = False
    active = sys.modules["sagakit._hooks"].active_faults
    top = active.get()
    while top is not None and any(top is scope for scope in leaked):
        top = top.outer
    active.set(top)  # what was active before them (a closed scope lower down asks its outer)
    faults = sys.modules["sagakit.testing._faults"]
    # Out of the stack of entered blocks too, so that the next block left is its own.
    entered = faults._scopes.get()
    faults._scopes.set(tuple(e for e in entered if not any(e[1] is s for s in leaked)))


class _FixtureScopes:
    """The fault scopes a fixture entered in its setup; those open as its teardown began."""

    __slots__ = ("entered", "open_at_teardown")

    def __init__(self, entered: list[Any]) -> None:
        self.entered = entered
        self.open_at_teardown: list[Any] = []

    def note_teardown(self) -> None:
        self.open_at_teardown = _open_scopes()


_FIXTURE_SCOPES = pytest.StashKey[dict[Any, _FixtureScopes]]()
# The registry before and after a fixture's setup declared sagas inside itself.
_FIXTURE_SAGAS = pytest.StashKey[dict[Any, tuple[dict[str, Any], dict[str, Any]]]]()


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> Generator[None, object, object]:
    """Note the fault scopes a fixture enters, for :func:`pytest_fixture_post_finalizer`."""
    __tracebackhide__ = True  # a fixture's error passes through: not a frame of its traceback
    before = _open_scopes()
    sagas = _saga_registry()
    try:
        try:
            result = yield
        except pytest.fail.Exception:
            func = fixturedef.func
            if fixturedef.argname == _STORE and (
                inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)
            ):
                # pytest's own message names neither pytest-asyncio nor the fix.
                pytest.fail(_ASYNC_STORE, pytrace=False)
            raise
        if fixturedef.argname == _STORE:  # checked closed after its teardown
            request.config.stash.setdefault(_STORES, {})[fixturedef] = result
        return result
    finally:
        declared = _saga_registry()
        if declared.keys() != sagas.keys() or any(sagas[n] is not f for n, f in declared.items()):
            request.config.stash.setdefault(_FIXTURE_SAGAS, {})[fixturedef] = (sagas, declared)
        noted = _FixtureScopes([scope for scope in _open_scopes() if scope not in before])
        request.config.stash.setdefault(_FIXTURE_SCOPES, {})[fixturedef] = noted
        fixturedef.addfinalizer(noted.note_teardown)  # runs before the fixture's teardown


def pytest_fixture_post_finalizer(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> None:
    """Error a fixture that leaves a ``FaultInjector`` active: its faults hit later tests.
    Error a ``saga_store`` left open, closing it (see :func:`_closed_if_left_open`).
    Forget the sagas the fixture declared inside itself, as a test's at its end."""
    declared = request.config.stash.get(_FIXTURE_SAGAS, {}).pop(fixturedef, None)
    if declared is not None:
        sys.modules["sagakit._sagas"].forget_local_sagas(*declared)
    left_open = None
    if fixturedef.argname == _STORE:
        store = request.config.stash.get(_STORES, {}).pop(fixturedef, None)
        left_open = _closed_if_left_open(store, fixturedef, request)
    noted = request.config.stash.get(_FIXTURE_SCOPES, {}).pop(fixturedef, None)
    if noted is None:
        if left_open is not None:
            pytest.fail(left_open, pytrace=False)
        return
    leaked = [
        scope
        for scope in _open_scopes()
        if scope in noted.entered or scope not in noted.open_at_teardown
    ]
    if not leaked:
        if left_open is not None:
            pytest.fail(left_open, pytrace=False)
        return
    _take_back(leaked)
    where = request.node.nodeid or "the session"
    pytest.fail(
        f"fixture {fixturedef.argname!r} ({fixturedef.scope} scope, set up for {where}) left "
        "a FaultInjector active (entered, never exited), so its faults would hit the tests "
        "after it; leave it in the fixture's teardown (`with injector: yield injector`) or "
        "use the saga_faults fixture",
        pytrace=False,
    )


_STORES = pytest.StashKey[dict[Any, object]]()


def _left_open(store: object) -> bool:
    """Whether ``store``, what ``saga_store`` gave, is a ``SQLiteStore`` or a
    ``PostgresStore`` still open (``closed`` false): a SQLite connection, left to the
    garbage collector, warns (``ResourceWarning``, from Python 3.13) in whichever later
    test the collector runs; a PostgreSQL pool keeps its connections and renews its
    leases."""
    for module, name in _CLOSABLE:
        found = sys.modules.get(module)  # not imported: no such store was made
        if found is None:
            continue
        closable: type[SQLiteStore | PostgresStore] = getattr(found, name)
        if isinstance(store, closable):
            return not store.closed
    return False


# The stores whose ``closed`` property says whether they hold connections.
_CLOSABLE = (("sagakit.stores.sqlite", "SQLiteStore"), ("sagakit.stores.postgres", "PostgresStore"))


def _closed_if_left_open(
    store: object, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> str | None:
    """Close ``store`` if its test (or, of a wider scope, its fixture) left it open, in an
    event loop of its own (a store is adopted by the next loop once its own has ended);
    what the teardown error says (None if it was closed)."""
    if not _left_open(store):
        return None
    import asyncio

    closed = "the plugin closed it"
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # none running here, as expected of pytest's teardown
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(store.close())  # type: ignore[attr-defined]
        except Exception as error:  # said, not raised over the error naming the test
            if not store.closed:  # type: ignore[attr-defined]
                closed = f"closing it here failed too ({type(error).__name__}: {error})"
            else:  # a PostgresStore whose event loop (the test's) has ended: forgotten
                closed = (
                    "the plugin let it go without closing its connections, whose event "
                    "loop (the test's) had ended"
                )
        finally:
            loop.close()
    else:
        closed = "it could not be closed here, inside a running event loop"
    if fixturedef.scope == "function":
        who = f"test {request.node.nodeid}"
        fix = (
            "a test asking for saga_store without saga_orchestrator opens and closes its "
            "store itself: `await saga_store.close()` at its end (or `async with "
            "SagaOrchestrator(saga_store):`)"
        )
    else:
        who = f"its {fixturedef.scope}-scoped fixture"
        fix = (
            "a saga_store of a wider scope is closed by its own fixture: an async fixture "
            "with `await store.close()` after its `yield`"
        )
    sqlite = sys.modules["sagakit.stores.sqlite"]  # (imported by sagakit.stores)
    if isinstance(store, sqlite.SQLiteStore):
        harm = (
            "Left to the garbage collector, its connection fails whichever later test the "
            "collector runs in (an unclosed-database ResourceWarning, from Python 3.13)"
        )
    else:
        harm = (
            "Left open, its connection pool keeps its connections to the server, and the "
            "leases of its sagas are not released"
        )
    return f"the saga_store fixture's {store!r} was left open by {who}; {fix}. {harm}; {closed}"


_FAULTS_NOTED = pytest.StashKey[bool]()
_PASSED = pytest.StashKey[bool]()  # the test's call raised nothing


def _note_faults_never_fired(item: pytest.Item, error: BaseException) -> None:
    """Note on a failing test's error that a fault of ``saga_faults`` names no step (a
    typo, say), or never fired (its step never ran, or not at its ``index``): the likely
    reason its
    ``pytest.raises(StepFailed)`` saw nothing raised.
    Not on a skip or an expected failure, whose error is not shown: its teardown says it
    (with ``--runxfail`` an xfail test's failure is shown, so it is noted)."""
    if isinstance(error, pytest.skip.Exception | pytest.xfail.Exception):
        return
    shown = item.config.getoption("runxfail", False)  # --runxfail: shown as any failure
    if item.get_closest_marker("xfail") is not None and not shown:
        return
    injector = getattr(item, "funcargs", {}).get("saga_faults")
    faults = sys.modules.get("sagakit.testing._faults")  # imported if the fixture ran
    if faults is None:
        return
    injector_class: type[FaultInjector] = faults.FaultInjector
    if not isinstance(injector, injector_class):
        return
    if injector._note_failure(error):
        item.stash[_FAULTS_NOTED] = True  # said once: the fixture's teardown says no more


def _saga_registry() -> dict[str, Any]:
    """A copy of the ``@saga`` registry, if sagakit is loaded (empty otherwise)."""
    sagas = sys.modules.get("sagakit._sagas")
    return {} if sagas is None else dict(sagas.saga_registry())


def _forget_local_sagas(before: dict[str, Any]) -> None:
    """Undo what sagas the test declared inside a function did to the registry."""
    sagas = sys.modules.get("sagakit._sagas")
    if sagas is not None:
        sagas.forget_local_sagas(before)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Fail a test that leaves a ``FaultInjector`` active: its faults hit later tests.
    Forget the sagas it declared inside itself: recovery in the tests after it finds
    a saga by its name, which such a saga took from a module's."""
    before = _fault_state()
    sagas = _saga_registry()
    try:
        outcome = yield
    except BaseException as error:
        _forget_local_sagas(sagas)
        if _fault_state() != before:
            _restore_fault_state(before)
        _note_faults_never_fired(item, error)
        raise
    item.stash[_PASSED] = True  # (strict saga_faults ask it at their teardown)
    _forget_local_sagas(sagas)
    if _fault_state() != before:
        _restore_fault_state(before)
        pytest.fail(
            "the test left a FaultInjector active (entered, never exited), so its faults "
            "would hit the tests after it; use `with injector:` or the saga_faults fixture",
            pytrace=False,
        )
    return outcome


def _setting(config: pytest.Config, ini: str) -> bool:
    option = config.getoption(ini)
    if option is not None:
        return bool(option == "yes")
    return bool(config.getini(ini))


def _marker_problem(item: pytest.Item) -> str | None:
    """What is wrong with the test's ``saga_fault_matrix`` markers, if anything: a
    positional argument, a keyword it does not take or a bad value, on any of them (a
    module's or class's too), or one put on the test itself, which has no effect when the
    test does not use the fixture."""
    uses_fixture = _MARKER in getattr(item, "fixturenames", ())
    for node, marker in item.iter_markers_with_node(_MARKER):
        if marker.args:
            return (
                f"@pytest.mark.{_MARKER} takes keyword options only "
                f"({', '.join(_MATRIX_KWARGS)}); pass the saga to the fixture: "
                "await saga_fault_matrix(transfer('A', 'B', 10))"
            )
        unknown = sorted(set(marker.kwargs) - set(_MATRIX_KWARGS))
        if unknown:
            return (
                f"@pytest.mark.{_MARKER} got unknown options {unknown}; "
                f"it takes {', '.join(_MATRIX_KWARGS)}"
            )
        for option in ("failures", "timeouts"):
            value = marker.kwargs.get(option, True)
            if not isinstance(value, bool):
                return f"@pytest.mark.{_MARKER}({option}=...) must be True or False, got {value!r}"
        if "error" in marker.kwargs:
            from sagakit.exceptions import SagaDefinitionError
            from sagakit.testing._matrix import check_matrix_error

            try:
                check_matrix_error(marker.kwargs["error"], f"@pytest.mark.{_MARKER}(error=...)")
            except SagaDefinitionError as error:
                return str(error)
        if node is item and not uses_fixture:
            # A module's or class's marker sets defaults for those of its tests using the
            # fixture; one on the test itself configures nothing else.
            return (
                f"@pytest.mark.{_MARKER} only sets the options of the {_MARKER} fixture, "
                f"which this test does not use, so it has no effect; request the fixture "
                f"(`async def {item.name.partition('[')[0]}({_MARKER}): "
                f"await {_MARKER}(...)`) or remove the marker"
            )
    return None


def _faults_marker_problem(item: pytest.Item) -> str | None:
    """What is wrong with the test's ``saga_faults`` markers, if anything (as for
    :func:`_marker_problem`)."""
    for node, marker in item.iter_markers_with_node(_FAULTS):
        if marker.args or not marker.kwargs:
            return (
                f"@pytest.mark.{_FAULTS} takes the keyword strict only: "
                f"@pytest.mark.{_FAULTS}(strict=True) (or strict=False)"
            )
        unknown = sorted(set(marker.kwargs) - {"strict"})
        if unknown:
            return f"@pytest.mark.{_FAULTS} got unknown options {unknown}; it takes strict"
        if not isinstance(marker.kwargs["strict"], bool):
            return (
                f"@pytest.mark.{_FAULTS}(strict=...) must be True or False, "
                f"got {marker.kwargs['strict']!r}"
            )
        if node is item and _FAULTS not in getattr(item, "fixturenames", ()):
            return (
                f"@pytest.mark.{_FAULTS} only sets the options of the {_FAULTS} fixture, "
                "which this test does not use, so it has no effect; request the fixture or "
                "remove the marker"
            )
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Error a test whose ``saga_fault_matrix`` or ``saga_faults`` marker is misused,
    whether or not the test uses the fixture (a misspelt keyword would otherwise be
    ignored)."""
    problem = _marker_problem(item) or _faults_marker_problem(item)
    if problem is not None:
        pytest.fail(problem, pytrace=False)


@pytest.fixture
def saga_store() -> SagaStore:
    """The store of ``saga_orchestrator``: a fresh in-memory one. Override it in a
    conftest.py to run the tests on a durable store (``SQLiteStore(tmp_path / "sagas.db")``);
    ``saga_orchestrator`` opens it and closes it at the test's teardown."""
    from sagakit.stores import MemoryStore

    return MemoryStore()


_ASYNC_STORE = (
    f"the {_STORE} fixture is an `async def` that pytest-asyncio does not run (in strict "
    "mode it runs only fixtures decorated with @pytest_asyncio.fixture); decorate it with "
    "@pytest_asyncio.fixture, or make it a plain `def`: saga_orchestrator opens the store "
    "and closes it at the test's teardown"
)


def _store_problem(store: object) -> str | None:
    """Why ``store``, what the ``saga_store`` fixture gave, is not a store (None if it is).
    A coroutine is closed, so that it does not also warn that it was never awaited."""
    from sagakit.stores import SagaStore

    if isinstance(store, SagaStore) and not isinstance(store, type):
        return None
    what = f"the {_STORE} fixture must give a sagakit store (return or yield one)"
    example = 'e.g. `return SQLiteStore(tmp_path / "sagas.db")`'
    if isinstance(store, type):
        name = store.__name__
        return f"{what}, not the class {name}; return an instance: `return {name}(...)`"
    if inspect.iscoroutine(store):
        store.close()
        return (
            f"{what}, not a coroutine ({store.__qualname__}() called without `await`); "
            "await it in an async fixture (@pytest_asyncio.fixture), or return the store itself"
        )
    if inspect.isasyncgen(store) or inspect.isawaitable(store):
        return (
            f"{what}, not {store!r}: an `async def` fixture that pytest-asyncio did not run; "
            "decorate it with @pytest_asyncio.fixture, or make it a plain `def`"
        )
    if isinstance(store, str | bytes) or hasattr(store, "__fspath__"):
        return f"{what}, not the path {store!r}; open a store on it: `return SQLiteStore(path)`"
    if store is None:
        return f"{what}; it gave None (no `return` or `yield`?): {example}"
    return (
        f"{what}: MemoryStore(), SQLiteStore(path), PostgresStore(dsn, schema=...) or an "
        f"implementation of sagakit.stores.SagaStore, not {store!r} ({type(store).__name__}); "
        f"{example}"
    )


def _store_scope(request: pytest.FixtureRequest) -> str:
    """The scope of the ``saga_store`` fixture the test uses (``function`` by default)."""
    info = getattr(request.node, "_fixtureinfo", None)
    defs = getattr(info, "name2fixturedefs", {}).get(_STORE)
    return str(defs[-1].scope) if defs else "function"


@pytest.fixture
def saga_recorder() -> SagaRecorder:
    """A :class:`~sagakit.testing.SagaRecorder` (``saga_orchestrator`` reports to it)."""
    from sagakit.testing import SagaRecorder

    return SagaRecorder()


@pytest.fixture
def saga_sleep(request: pytest.FixtureRequest) -> InstantSleep:
    """An :class:`~sagakit.testing.InstantSleep`: records retry delays, waits for none
    (waits for them in full with ``--saga-instant-sleep=no``)."""
    from sagakit.testing import InstantSleep

    return InstantSleep(scale=0.0 if _setting(request.config, "saga_instant_sleep") else 1.0)


_NO_ASYNCIO = (
    "the saga_orchestrator fixture is async, run by pytest-asyncio, and the pytest-asyncio "
    "plugin is not active here (turned off with `-p no:asyncio`, or not turned on with "
    "PYTEST_DISABLE_PLUGIN_AUTOLOAD=1); turn it on with `-p pytest_asyncio.plugin` or "
    'pytest_plugins = ["pytest_asyncio.plugin"], or build a SagaOrchestrator in the test'
)


def _async_fixtures(config: pytest.Config) -> object:
    """A plugin of the fixtures that are pytest-asyncio's (so in strict mode too), made at
    configure: importing pytest-asyncio with this module, before pytest imports it as a
    plugin listed after this one, would make pytest warn it cannot rewrite its asserts.
    Without the pytest-asyncio plugin, a fixture failing with what to do instead (pytest
    says only that no plugin handled an async fixture, then fails every later test using
    it with a bare ``AssertionError`` from its own fixture code)."""
    plugin = sys.modules.get("pytest_asyncio.plugin")
    if plugin is None or not config.pluginmanager.is_registered(plugin):

        class NoAsyncFixtures:
            @pytest.fixture
            def saga_orchestrator(self) -> SagaOrchestrator:
                """Fails: pytest-asyncio, which runs this async fixture, is not active."""
                pytest.fail(_NO_ASYNCIO, pytrace=False)

        return NoAsyncFixtures()

    import pytest_asyncio

    class AsyncFixtures:
        @pytest_asyncio.fixture
        async def saga_orchestrator(
            self,
            request: pytest.FixtureRequest,
            saga_store: SagaStore,
            saga_recorder: SagaRecorder,
            saga_sleep: InstantSleep,
        ) -> AsyncIterator[SagaOrchestrator]:
            """A fresh orchestrator on ``saga_store``, recorded by ``saga_recorder``,
            sleeping ``saga_sleep``. It opens the store (if it has an ``open()``) and closes
            it at the test's teardown, before the teardown of ``saga_store`` runs. A
            ``saga_store`` of a wider scope is its own fixture's: opened there or on first
            use, in the loop of the test using it (not this fixture's loop, which a
            ``PostgresStore`` would bind to), and closed there. A synchronous test may use
            it."""
            from sagakit._orchestrator import SagaOrchestrator

            problem = _store_problem(saga_store)
            if problem is not None:
                pytest.fail(problem, pytrace=False)
            orchestrator = SagaOrchestrator(saga_store, listeners=[saga_recorder], sleep=saga_sleep)
            if _store_scope(request) != "function":
                yield orchestrator
                return
            async with orchestrator:
                await _open(saga_store)
                yield orchestrator

    return AsyncFixtures()


async def _open(store: SagaStore) -> None:
    """Open ``store`` if it has an ``open()`` coroutine (``PostgresStore``: so that a bad
    DSN errors the test's setup); the others open on first use."""
    opener = getattr(store, "open", None)
    if inspect.iscoroutinefunction(opener):
        await opener()


@pytest.fixture
def saga_faults(request: pytest.FixtureRequest) -> Iterator[FaultInjector]:
    """A :class:`~sagakit.testing.FaultInjector` active for this test only (a fault on a
    step no ``@step`` defines fails the test, or errors at its teardown). Strict (marker
    ``saga_faults(strict=True)``, ``--saga-strict-faults``, ini ``saga_strict_faults``), a
    test that passed errors at its teardown if one of its faults never fired."""
    from sagakit.testing import FaultInjector

    injector = FaultInjector()
    with injector._active(test_wide=True):  # in tasks started before it too
        yield injector
    node = request.node
    if _strict_faults(request) and node.stash.get(_PASSED, False):
        problem = injector._strict_problem()
        if problem is not None:
            pytest.fail(problem, pytrace=False)
    problem = injector._unknown_steps()
    if problem is not None and not node.stash.get(_FAULTS_NOTED, False):
        pytest.fail(problem, pytrace=False)


def _strict_faults(request: pytest.FixtureRequest) -> bool:
    """Whether ``saga_faults`` is strict for the test: its closest marker's ``strict``, else
    the command line, else the ini key (checked by pytest_runtest_setup before any fixture)."""
    marker = request.node.get_closest_marker(_FAULTS)
    if marker is not None:
        return bool(marker.kwargs["strict"])
    return _setting(request.config, "saga_strict_faults")


class FaultMatrix:
    """``await saga_fault_matrix(definition)``: :func:`~sagakit.testing.run_fault_matrix`.

    Defaults come from the test's ``saga_fault_matrix`` marker, then the command line,
    then the ini file; keywords given in the call beat them all. A call never awaited
    (which runs nothing) fails the test at its teardown.
    """

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self._calls: list[Coroutine[Any, Any, FaultMatrixReport]] = []

    def __call__(
        self, definition: SagaDefinition, **options: Unpack[_MatrixOptions]
    ) -> Coroutine[Any, Any, FaultMatrixReport]:
        call = self._run(definition, {**self.options, **options})
        self._calls.append(call)
        return call

    async def _run(self, definition: SagaDefinition, options: dict[str, Any]) -> FaultMatrixReport:
        __tracebackhide__ = True  # pytest shows the line of the test that called it
        from sagakit.testing import run_fault_matrix

        return await run_fault_matrix(definition, **options)

    def _close_unawaited(self) -> int:
        """Close the calls never awaited (no "never awaited" warning); how many there were."""
        created = inspect.CORO_CREATED
        unawaited = [call for call in self._calls if inspect.getcoroutinestate(call) == created]
        for call in unawaited:
            call.close()
        return len(unawaited)

    def __repr__(self) -> str:
        return f"<FaultMatrix {self.options}>"


@pytest.fixture
def saga_fault_matrix(request: pytest.FixtureRequest) -> Iterator[FaultMatrix]:
    """An async callable running the fault matrix over a saga definition (a call never
    awaited fails the test at its teardown)."""
    options: dict[str, Any] = {"timeouts": _setting(request.config, "saga_matrix_timeouts")}
    # Module, class and test markers combine; the closest one's keywords win.
    # (Checked by pytest_runtest_setup before any fixture.)
    for marker in reversed(list(request.node.iter_markers(_MARKER))):
        options.update(marker.kwargs)
    matrix = FaultMatrix(options)
    yield matrix
    unawaited = matrix._close_unawaited()
    if unawaited:
        pytest.fail(
            f"saga_fault_matrix(...) was called {unawaited} time{'s' if unawaited > 1 else ''} "
            "and never awaited, so no fault matrix ran; write `await saga_fault_matrix(...)`",
            pytrace=False,
        )
