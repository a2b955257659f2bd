"""``import sagakit`` is cheap: the pytest plugin, which pytest imports at every start
wherever sagakit is installed, loads none of the library until a test uses it.

Each check runs in a fresh interpreter: this suite's process has long imported it all.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import json
import logging
import pkgutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import sagakit

pytest_plugins = ["pytester"]

# What `import sagakit` (and so the plugin) may load: the package, the plugin, and the
# module configuring the "sagakit" logger (see test_the_logger_is_set_up_by_any_import).
LIGHT = {"sagakit", "sagakit._logger", "sagakit.pytest_plugin"}
# Some of what the library imports and a pytest start must not.
HEAVY = {"sagakit._orchestrator", "sagakit.stores", "sagakit._steps", "sqlite3", "wrapt"}


def _run(code: str) -> Any:
    """What ``code``, run by a fresh interpreter, prints as JSON."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("module", ["sagakit.pytest_plugin", "sagakit"])
def test_importing_the_plugin_loads_none_of_the_library(module: str) -> None:
    # Regression: it imported the whole library (orchestrator, stores, sqlite3...),
    # ~60 ms added to every pytest start, in projects whose tests never use sagakit too.
    loaded = _run(
        "import json, sys\n"
        "import pytest\n"
        "before = set(sys.modules)\n"
        f"import {module}\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    assert set(loaded) <= LIGHT
    assert not HEAVY & set(loaded)


def test_a_pytest_run_not_using_sagakit_loads_none_of_it(pytester: pytest.Pytester) -> None:
    # The hooks run for every session and test (options, markers, ids, fault checks)
    # import nothing of the library.
    pytester.makepyfile(
        f"""
        import sys

        import pytest

        @pytest.mark.parametrize("value", [1, "two", None])
        def test_nothing_of_sagakit(value, request):
            assert request.config.pluginmanager.has_plugin("sagakit")
            loaded = {{name for name in sys.modules if name.startswith("sagakit")}}
            assert loaded <= set({sorted(LIGHT)!r})
            assert not set({sorted(HEAVY)!r}) & set(sys.modules)
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=3)


def _submodules() -> list[Any]:
    """Every module of sagakit but the optional ones (``otel``: OpenTelemetry)."""
    names = [
        info.name
        for info in pkgutil.walk_packages(sagakit.__path__, "sagakit.")
        if info.name not in {"sagakit.otel", "sagakit.__main__"}
    ]
    return [importlib.import_module(name) for name in names]


@pytest.mark.parametrize("name", sorted(set(sagakit.__all__) - {"__version__"}))
def test_every_public_name_is_its_modules_object(name: str) -> None:
    value = getattr(sagakit, name)
    defined_in = [
        module.__name__ for module in _submodules() if vars(module).get(name, None) is value
    ]
    assert defined_in, f"sagakit.{name} is no submodule's {name}"


def test_the_public_names_are_listed_before_they_are_loaded() -> None:
    found = _run(
        "import json, sys\n"
        "import sagakit\n"
        "names = dir(sagakit)\n"
        "loaded = 'sagakit._orchestrator' in sys.modules\n"
        "namespace = {}\n"
        "exec('from sagakit import *', namespace)\n"
        "del namespace['__builtins__']\n"
        "print(json.dumps([names, loaded, sorted(namespace)]))\n"
    )
    names, loaded, star = found
    assert set(sagakit.__all__) <= set(names)
    assert not loaded  # dir() loads nothing
    assert star == sorted(sagakit.__all__)


def test_the_public_submodules_are_listed_before_they_are_loaded() -> None:
    # Regression: dir(sagakit) listed `stores` and the others only once imported, so a
    # shell's completion of `sagakit.sto` after `import sagakit` offered nothing, where it
    # offered `stores` when the package imported them all.
    found = _run(
        "import json, sys\n"
        "import sagakit\n"
        "names = dir(sagakit)\n"
        "print(json.dumps([names, 'sagakit.stores' in sys.modules]))\n"
    )
    names, loaded = found
    assert {"exceptions", "records", "status", "stores", "transitions"} <= set(names)
    assert not loaded


def test_a_name_is_the_module_sagakit_uses_after_a_reimport() -> None:
    # Regression: kept in the package once loaded, a name outlived its module. pytester's
    # in-process runs drop the modules they imported from sys.modules; the next run
    # imported them afresh, and `from sagakit import SagaOrchestrator` gave the old class,
    # which run_fault_matrix (on the new module) refused: "must be a SagaOrchestrator,
    # got <SagaOrchestrator ...>".
    found = _run(
        "import json, sys\n"
        "import sagakit\n"
        "saved = dict(sys.modules)\n"
        "first = sagakit.SagaOrchestrator\n"
        "sys.modules.clear()\n"
        "sys.modules.update(saved)\n"
        "from sagakit.testing._matrix import SagaOrchestrator as used\n"
        "print(json.dumps([used is first, sagakit.SagaOrchestrator is used]))\n"
    )
    assert found == [False, True]


def test_a_name_used_while_another_thread_imports_its_module_waits_for_it() -> None:
    # Regression: the name was taken from the module found in sys.modules, half-initialised
    # while another thread imported it: 16 threads starting with `from sagakit import
    # SagaOrchestrator, SQLiteStore, step` raised ImportError in 38 processes of 40.
    # Here the first thread's import is held while the second uses the name; it is let go
    # once the second is done (the error) or waiting in the import system.
    found = _run(
        "import json, sys, threading, time\n"
        "import sagakit\n"
        "importing, go = threading.Event(), threading.Event()\n"
        "class HoldTheImport:  # the first import _orchestrator makes waits for `go`\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if 'sagakit._orchestrator' in sys.modules and not importing.is_set():\n"
        "            importing.set()\n"
        "            go.wait()\n"
        "        return None\n"
        "sys.meta_path.insert(0, HoldTheImport())\n"
        "first = threading.Thread(target=__import__, args=('sagakit._orchestrator',))\n"
        "first.start()\n"
        "importing.wait()\n"
        "used = []\n"
        "def use():\n"
        "    try:\n"
        "        used.append(sagakit.SagaOrchestrator.__name__)\n"
        "    except AttributeError as error:\n"
        "        used.append(str(error))\n"
        "second = threading.Thread(target=use)\n"
        "second.start()\n"
        "def in_the_import_system(thread):\n"
        "    frame = sys._current_frames().get(thread.ident)\n"
        "    while frame is not None:\n"
        "        if frame.f_code.co_filename == '<frozen importlib._bootstrap>':\n"
        "            return True\n"
        "        frame = frame.f_back\n"
        "    return False\n"
        "while second.is_alive() and not in_the_import_system(second):\n"
        "    time.sleep(0.001)\n"
        "go.set()\n"
        "first.join()\n"
        "second.join()\n"
        "print(json.dumps(used))\n"
    )
    assert found == ["SagaOrchestrator"]


def test_the_type_checkers_names_are_those_loaded() -> None:
    # mypy and IDEs read the imports under TYPE_CHECKING; the names and modules they give
    # are those __getattr__ loads.
    tree = ast.parse(Path(sagakit.__file__).read_text(encoding="utf-8"))
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    imported = {
        alias.name: f"sagakit.{node.module}"
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert imported == sagakit._MODULE_OF
    assert sorted({*imported, "__version__"}) == sorted(sagakit.__all__)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match=r"^module 'sagakit' has no attribute 'Sagaa'$"):
        _ = sagakit.Sagaa  # type: ignore[attr-defined]
    with pytest.raises(ImportError, match=r"^cannot import name 'Sagaa' from 'sagakit'"):
        from sagakit import Sagaa  # type: ignore[attr-defined]  # noqa: F401


def test_the_version_is_the_package_metadatas() -> None:
    found = _run("import json, sagakit\nprint(json.dumps(sagakit.__version__))\n")
    try:
        expected = importlib.metadata.version("sagakit")
    except importlib.metadata.PackageNotFoundError:
        expected = "0+unknown"
    assert found == expected == sagakit.__version__


def test_the_public_submodules_are_attributes_after_import_sagakit() -> None:
    # `import sagakit` then `sagakit.stores.SQLiteStore` worked when the package imported
    # them all; it still does.
    found = _run(
        "import json, sagakit\n"
        "print(json.dumps([sagakit.stores.SQLiteStore.__name__, "
        "sagakit.exceptions.StepFailed.__name__, sagakit.records.StepRecord.__name__, "
        "sagakit.status.SagaStatus.__name__, sagakit.transitions.Transition.__name__]))\n"
    )
    assert found == ["SQLiteStore", "StepFailed", "StepRecord", "SagaStatus", "Transition"]


def test_the_logger_is_set_up_by_any_import() -> None:
    # The "sagakit" logger's NullHandler and the filter giving every record the structured
    # fields were set up by the orchestrator's import, which `import sagakit` no longer
    # does: a store used alone logged records a formatter using %(saga_id)s could not
    # format, and its warnings went to stderr with no logging configured.
    found = _run(
        "import json, logging\n"
        "import sagakit.stores.sqlite\n"
        "logger = logging.getLogger('sagakit')\n"
        "print(json.dumps([[type(h).__name__ for h in logger.handlers], "
        "[type(f).__name__ for f in logger.filters]]))\n"
    )
    assert found == [["NullHandler"], ["_StructuredFields"]]
    logger = logging.getLogger("sagakit")
    assert [type(f).__name__ for f in logger.filters] == ["_StructuredFields"]
