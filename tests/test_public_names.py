"""Every type a public class's signature names can be imported from a public module, so
that code calling it can be annotated (``PostgresStore.stats -> PostgresStats``,
``SQLiteStore(synchronous: Synchronous)`` and ``RecoveryOutcome.action: Action`` named
types that only a private module held)."""

from __future__ import annotations

import builtins
import collections.abc
import importlib
import inspect
import re
import typing
from typing import Any

import pytest

import sagakit
import sagakit.exceptions
import sagakit.records
import sagakit.status
import sagakit.stores
import sagakit.testing
import sagakit.transitions

# Standard library (and OpenTelemetry's) names the signatures use, and type variables.
ELSEWHERE = {"datetime", "os.PathLike", "asyncio.Event", "P", "R", "trace.TracerProvider"}
# What a saga function returns (a generator of step calls, or a list of them), in
# ``saga(fn: Callable[P, SagaBody])``: a user annotates their own function with
# ``Generator[StepCall[Any], Any, None]`` or ``list[StepCall[Any]]``, never with this.
# (Nothing else may be listed here: ``StepCall.spec -> StepSpec`` hid behind this set.)
INTERNAL = {"SagaBody"}


def _names(annotation: object) -> set[str]:
    return set(re.findall(r"[A-Za-z_][\w.]*", str(annotation)))


def _annotated(cls: type) -> dict[str, set[str]]:
    """The names in the annotations of ``cls``'s public methods, properties and fields."""
    found: dict[str, set[str]] = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") and name != "__init__":
            continue
        raw = inspect.getattr_static(cls, name, None)
        fn = raw.fget if isinstance(raw, property) else member
        if not callable(fn):
            continue
        try:
            annotations = inspect.get_annotations(fn)
        except TypeError:
            continue
        for annotation in annotations.values():
            for used in _names(annotation):
                found.setdefault(used, set()).add(f"{cls.__name__}.{name}")
    return found


def _public_modules() -> list[Any]:
    """Every public module: the classes' test once read only the first two, and missed
    ``sagakit.testing``'s (``FiredFault.fault`` named a private ``_SimulatedTimeout``)."""
    modules: list[Any] = [
        sagakit,
        sagakit.stores,
        sagakit.testing,
        sagakit.records,
        sagakit.status,
        sagakit.transitions,
        sagakit.exceptions,
    ]
    try:
        otel = importlib.import_module("sagakit.otel")
    except ImportError:  # OpenTelemetry is an extra
        pass
    else:
        modules.append(otel)
    return modules


def _public_classes() -> list[type]:
    modules = _public_modules()
    return [
        value
        for module in modules
        for value in (getattr(module, name) for name in module.__all__)
        if inspect.isclass(value)
    ]


def _public_functions() -> list[Any]:
    modules = _public_modules()
    return [
        value
        for module in modules
        for value in (getattr(module, name) for name in module.__all__)
        if inspect.isfunction(value)
    ]


def _function_annotated(fn: Any) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for annotation in inspect.get_annotations(fn).values():
        for used in _names(annotation):
            found.setdefault(used, set()).add(fn.__name__)
    return found


def _missing(annotated: dict[str, set[str]]) -> dict[str, list[str]]:
    exported = {name for module in _public_modules() for name in module.__all__}
    return {
        used: sorted(where)
        for used, where in annotated.items()
        if used not in exported | ELSEWHERE | INTERNAL
        and not any(hasattr(module, used) for module in (builtins, typing, collections.abc))
    }


@pytest.mark.parametrize(
    "cls", _public_classes(), ids=lambda cls: f"{cls.__module__}.{cls.__name__}"
)
def test_every_type_a_public_signature_names_is_exported(cls: type) -> None:
    assert _missing(_annotated(cls)) == {}


@pytest.mark.parametrize("fn", _public_functions(), ids=lambda fn: f"{fn.__module__}.{fn.__name__}")
def test_every_type_a_public_function_names_is_exported(fn: Any) -> None:
    # The classes' test missed the functions (``saga``, ``step``, ``current_step``...).
    assert _missing(_function_annotated(fn)) == {}


def test_the_functions_and_modules_are_checked() -> None:
    names = {fn.__name__ for fn in _public_functions()}
    assert {"saga", "current_step", "simulate_restart", "run_fault_matrix"} <= names
    assert sagakit.testing.FiredFault in _public_classes()
    # The testing types that FaultInjector.fault_for and FiredFault.fault name:
    assert "SimulatedTimeout" in _annotated(sagakit.testing.FiredFault)
    assert isinstance(sagakit.testing.SIMULATED_TIMEOUT, sagakit.testing.SimulatedTimeout)
    assert "CrashAfter" in _annotated(sagakit.testing.FaultInjector)
    assert "saga" in _function_annotated(sagakit.saga)["SagaBody"]


def test_the_store_names_are_exported() -> None:
    from sagakit.stores import PostgresStats, Synchronous

    assert typing.get_args(Synchronous) == ("NORMAL", "FULL", "normal", "full")
    assert PostgresStats(1, 1, 0, 0).statements == 1
    assert typing.get_args(sagakit.RecoveryAction) == ("resumed", "compensated", "dead_lettered")
    for module in (sagakit, sagakit.stores):
        assert len(set(module.__all__)) == len(module.__all__)
        for name in module.__all__:
            assert hasattr(module, name), name
