"""Saga names are unique among module-level sagas: recovery rebuilds a saga by its name."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sagakit import SagaDefinitionError, saga, step
from sagakit._sagas import registered_saga

SOURCE = """
from sagakit import saga, step

@step
async def sn_ship(item):
    return item

@saga{options}
def sn_{name}(item):
    yield sn_ship(item)
"""


@pytest.fixture
def modules(tmp_path: Path) -> Iterator[Any]:
    """Write and import throwaway modules; they are unloaded afterwards."""
    sys.path.insert(0, str(tmp_path))
    imported: list[str] = []

    def load(module: str, name: str, options: str = "") -> Any:
        (tmp_path / f"{module}.py").write_text(SOURCE.format(name=name, options=options))
        importlib.invalidate_caches()
        imported.append(module)
        return importlib.import_module(module)

    yield load
    sys.path.remove(str(tmp_path))
    for module in imported:
        sys.modules.pop(module, None)


def test_a_second_module_level_saga_under_a_taken_name_is_refused(modules: Any) -> None:
    first = modules("sn_orders", "checkout")
    with pytest.raises(SagaDefinitionError) as refused:
        modules("sn_subscriptions", "checkout")
    message = str(refused.value)
    assert "'sn_checkout' is already taken by sn_orders.sn_checkout" in message
    assert "@saga(name='sn_subscriptions.sn_checkout')" in message
    # Recovery still finds the saga that holds the name.
    assert registered_saga("sn_checkout") is first.sn_checkout


def test_a_name_of_its_own_resolves_the_clash(modules: Any) -> None:
    first = modules("sn_orders2", "pay")
    second = modules("sn_billing2", "pay", options="(name='billing.pay')")
    assert registered_saga("sn_pay") is first.sn_pay
    assert registered_saga("billing.pay") is second.sn_pay


def test_a_reloaded_module_replaces_its_own_saga(modules: Any) -> None:
    module = modules("sn_reloaded", "refund")
    earlier = module.sn_refund
    reloaded = importlib.reload(module)
    assert reloaded.sn_refund is not earlier
    assert registered_saga("sn_refund") is reloaded.sn_refund


def test_a_name_whose_module_was_unloaded_can_be_taken(modules: Any) -> None:
    modules("sn_gone", "archive")
    del sys.modules["sn_gone"]
    replacement = modules("sn_new_home", "archive")
    assert registered_saga("sn_archive") is replacement.sn_archive


def test_a_saga_declared_in_a_function_is_declared_again_on_every_call() -> None:
    @step
    async def sn_note(item: str) -> str:
        return item

    def declare() -> Any:
        @saga(name="sn_local_flow")
        def flow(item: str) -> Any:
            yield sn_note(item)

        return flow

    first, second = declare(), declare()
    assert first is not second
    assert registered_saga("sn_local_flow") is second


CLASS_SOURCE = """
from sagakit import saga, step

@step
async def sn_pack(item):
    return item

class Warehouse:
    @classmethod
    @saga(name="sn_dispatch")
    def dispatch(cls, item):
        yield sn_pack(item)
"""


def test_a_class_method_saga_holds_its_name_too(modules: Any, tmp_path: Path) -> None:
    # Its module holds it as a class method (looked up, a bound method), which was not
    # recognised as the module still holding it: another saga took its name silently.
    (tmp_path / "sn_warehouse.py").write_text(CLASS_SOURCE)
    importlib.invalidate_caches()
    try:
        warehouse = importlib.import_module("sn_warehouse")
        with pytest.raises(SagaDefinitionError, match="'sn_dispatch' is already taken by"):
            modules("sn_shipping", "dispatch")
        assert registered_saga("sn_dispatch") is warehouse.Warehouse.dispatch.__func__
    finally:
        sys.modules.pop("sn_warehouse", None)


@step
async def sn_lambda_note(item: str) -> str:
    return item


def test_a_lambda_saga_needs_a_name() -> None:
    # Regression: every lambda is named '<lambda>', and one lambda saga replaced another in
    # the registry without a word (same module and qualified name): recovery of a run of the
    # first rebuilt it from the second.
    with pytest.raises(SagaDefinitionError) as refused:
        saga(lambda item: [sn_lambda_note(item)])
    message = str(refused.value)
    assert "a lambda" in message
    assert "saga(name=...)(lambda ...)" in message
    assert registered_saga("<lambda>") is None

    named = saga(name="sn_lambda_flow")(lambda item: [sn_lambda_note(item)])
    assert named.name == "sn_lambda_flow"
    assert registered_saga("sn_lambda_flow") is named
