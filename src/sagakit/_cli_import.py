"""The modules ``sagakit recover --import`` names: importing them with a one-line error
that says what to pass instead, and finding the modules that declare a saga."""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence

from ._sagas import registered_saga
from .exceptions import error_text


def _declared_in(names: Sequence[str]) -> list[str]:
    """The modules declaring the sagas of ``names`` registered by now (reading the log
    imports the module of a stored value's class, often the saga's own)."""
    modules = set()
    for name in names:
        function = registered_saga(name)
        module = getattr(function, "__module__", None)
        if isinstance(module, str) and module != "__main__":
            modules.add(module)
    return sorted(modules)


def _module_of_path(text: str) -> str | None:
    """What to say of a file path given to ``--import`` (``myapp/sagas.py``: its module
    name, ``myapp.sagas``), or None if ``text`` does not look like one."""
    if not (text.endswith(".py") or "/" in text or os.sep in text):
        return None
    try:
        path = os.path.relpath(os.path.abspath(text.removesuffix(".py")))
    except OSError:  # the current directory was deleted: no path is relative to it
        path = ""
    parts = path.replace(os.sep, ".").replace("/", ".").split(".")
    if not all(part.isidentifier() for part in parts):  # outside the current directory
        return (
            "run sagakit from your application's directory and pass the module's "
            "dotted name, as an import statement names it"
        )
    return f"--import {'.'.join(parts)}"


def _current_directory() -> str | None:
    """The current directory, or ``None`` where it was deleted under the shell (a deploy
    that removed the release directory an operator's shell sits in)."""
    try:
        return os.getcwd()
    except OSError:
        return None


def _import_all(modules: Sequence[str]) -> None:
    """Import each module given with ``--import`` (``show``'s and ``recover``'s), in order."""
    for module in modules:
        _import(module)


def _import(module: str) -> None:
    """Import an ``--import`` module; whatever it raises becomes one ``ImportError`` line
    (a ``SystemExit`` too: a script that exits, or parses its command line, when imported)."""
    try:
        importlib.import_module(module)
    except (Exception, SystemExit) as error:
        message = f"cannot import {module!r}: {error_text(error)}"
        meant = _module_of_path(module)
        named, colon, _ = module.partition(":")
        if colon and named and meant is None:
            # `--import app:main`, as uvicorn and gunicorn name an application.
            message = (
                f"cannot import {module!r}: --import takes a module name, not a "
                f"module:attribute reference: --import {named}"
            )
        elif module.startswith(".") and meant is None:
            # A relative name: the hint below, `python -c 'import .sagas'`, is a SyntaxError.
            message = (
                f"cannot import {module!r}: --import takes a module's whole dotted name, as an "
                "import statement outside its package names it (myapp.sagas), not a relative one"
            )
        elif meant is not None:
            # `--import myapp/sagas.py`: the hints below (the current directory, a
            # traceback from `python -c 'import myapp/sagas.py'`) would mislead.
            message = (
                f"cannot import {module!r}: --import takes a module name, not a file path: {meant}"
            )
        elif isinstance(error, SystemExit):
            # sys.exit() or argparse's usage error in the module: its status was sagakit's.
            message += (
                " (the module exits when imported, as a script does: sagakit imports it, so "
                'put what runs it under `if __name__ == "__main__":`)'
            )
        elif module and not isinstance(error, ImportError):
            message += f" (python -c 'import {module}' shows the traceback)"
        elif isinstance(error, ModuleNotFoundError) and module.startswith(str(error.name)):
            cwd = _current_directory()
            message += (
                " (the current directory was deleted: cd to your application's directory, "
                "or add it to PYTHONPATH)"
                if cwd is None
                else f" (the current directory is {cwd!r}: run sagakit from your "
                "application's directory, or add it to PYTHONPATH)"
            )
        raise ImportError(message) from error
