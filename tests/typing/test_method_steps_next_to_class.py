"""Class and static method steps with compensations in the form docs/concepts/steps.md shows,
which both mypy --strict and pyright accept (read by mypy, never run; CI runs mypy only).

The step and its compensation are declared next to the class and made class or static
methods in it: pyright refuses a plain function in a class body whose first parameter is
annotated as anything but an instance of the class ('Type of parameter "cls" must be a
supertype of its class "Inventory"'), which the form of test_class_method_steps.py needs.
As elsewhere in tests/typing, each expected mypy error carries its code.
"""

# pyright: strict

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, assert_type

from sagakit import SagaDefinition, StepCall, saga, step
from sagakit.testing import FaultInjector, SagaRecorder


@step
async def _reserve(cls: type[Inventory], sku: str) -> str:
    return f"{cls.__name__}:{sku}"


# The compensation names its first parameter cls, as the step does: it gets the class first
# (then the result) at run time too.
@_reserve.compensate
async def _release(cls: type[Inventory], reservation: str | None, sku: str) -> None:
    return None


@step
async def _hold(cls: type[Inventory], sku: str, quantity: int) -> int:
    return quantity


@_hold.compensate  # the arguments form
async def _unhold(cls: type[Inventory], sku: str, quantity: int) -> None:
    return None


@step
async def _audit(sku: str) -> bool:
    return True


@_audit.compensate
async def _unaudit(audited: bool | None, sku: str) -> None:
    return None


# Mistakes are flagged: the result taken without None, a parameter of the wrong type.
@step
async def _count(cls: type[Inventory], sku: str) -> int:
    return 1


@_count.compensate  # type: ignore[arg-type]
async def _uncount(cls: type[Inventory], counted: int, sku: str) -> None:
    return None


@step
async def _void(entry: str) -> int:
    return 1


@_void.compensate  # type: ignore[arg-type]
async def _unvoid(entry: int) -> None:
    return None


class Inventory:
    reserve = classmethod(_reserve)
    hold = classmethod(_hold)
    audit = staticmethod(_audit)

    @saga
    def restock(self, sku: str) -> list[StepCall[Any]]:
        return [self.reserve(sku), self.audit(sku)]

    @classmethod
    @saga
    def order(cls, sku: str) -> list[StepCall[Any]]:
        return [cls.reserve(sku), cls.hold(sku, 1)]

    @staticmethod
    @saga
    def check(sku: str) -> list[StepCall[Any]]:
        return [Inventory.audit(sku)]


class Warehouse(Inventory):
    pass


async def class_and_static_method_steps(inventory: Inventory) -> None:
    assert_type(Inventory.reserve("book"), StepCall[str])
    assert_type(await Inventory.reserve("book"), str)
    assert_type(Warehouse.reserve("book"), StepCall[str])
    assert_type(inventory.reserve("book"), StepCall[str])
    assert_type(Warehouse().hold("book", 2), StepCall[int])
    assert_type(Inventory.audit("book"), StepCall[bool])
    assert_type(await inventory.audit("book"), bool)
    Inventory.hold("book", "2")  # type: ignore[arg-type]
    inventory.audit(inventory, "book")  # type: ignore[call-arg, arg-type]
    # The compensations keep their own parameters: the class, then the result.
    await _release(Inventory, None, "book")
    await _unaudit(True, "book")
    await _release(None, "book")  # type: ignore[call-arg, arg-type]


def saga_methods(inventory: Inventory) -> None:
    assert_type(inventory.restock("book"), SagaDefinition)
    assert_type(Inventory.restock(inventory, "book"), SagaDefinition)
    assert_type(Inventory.order("book"), SagaDefinition)
    assert_type(Warehouse().order("book"), SagaDefinition)
    assert_type(Inventory.check("book"), SagaDefinition)
    assert_type(inventory.check("book"), SagaDefinition)
    Inventory.order(Inventory, "book")  # type: ignore[call-arg, arg-type]


release: Callable[[type[Inventory], str | None, str], Awaitable[None]] = _release


def fault_targets() -> None:
    FaultInjector().fail(Inventory.reserve).fail_compensation(Inventory().hold)
    SagaRecorder().assert_compensated(Inventory.reserve, Warehouse.hold, "_audit", _audit)
