"""Class and static method steps with compensations declared in the class body, as
docs/concepts/steps.md showed them, as mypy --strict sees them (read by mypy, never run).

Pyright refuses this form (the step's first parameter, in a class body, must take an
instance): the docs now show the one of test_method_steps_next_to_class.py, which both mypy
and pyright accept. This one still runs, and mypy still accepts it.

As in test_mistakes.py, each expected error carries its code (warn_unused_ignores makes every
ignore a check) and a comment quotes the message as mypy 2.4 words it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, assert_type

from sagakit import StepCall, step
from sagakit.testing import FaultInjector, SagaRecorder


class Inventory:
    # The class method step declared in the class body: declared on the function, given its
    # compensation (itself a class method), then made a class method. The step's ``cls`` is
    # annotated: mypy types an unannotated first parameter of a plain function in a class
    # body as an instance, and classmethod() then refuses the step.
    @step
    async def _reserve(cls: type[Inventory], sku: str) -> str:
        return f"reservation-{sku}"

    @classmethod
    @_reserve.compensate
    async def release(cls, reservation: str | None, sku: str) -> None:
        return None

    reserve = classmethod(_reserve)

    # The arguments form.
    @step
    async def _hold(cls: type[Inventory], sku: str, quantity: int) -> int:
        return quantity

    @classmethod
    @_hold.compensate
    async def unhold(cls, sku: str, quantity: int) -> None:
        return None

    hold = classmethod(_hold)

    # Mistakes are flagged: 'Argument 1 to "compensate" of "Step" has incompatible type
    # "Callable[[type[Inventory], str, str], Coroutine[Any, Any, None]]"; expected
    # "Callable[[type[Inventory], str], Awaitable[None]]"'.
    @step
    async def _count(cls: type[Inventory], sku: str) -> str:
        return sku

    @classmethod
    @_count.compensate  # type: ignore[arg-type]
    async def uncount(cls, counted: str, sku: str) -> None:  # no None
        return None

    @step
    async def _order(cls: type[Inventory], sku: str) -> str:
        return sku

    @classmethod
    @_order.compensate  # type: ignore[arg-type]
    async def unorder(cls, sku: int) -> None:
        return None

    # Without @classmethod the compensation is a method taking the instance first (so
    # Inventory().unmove(...) would pass it as cls), and mypy refuses it, in the arguments
    # form with 'The erased type of self "type[Inventory]" is not a supertype of its class
    # "Inventory"', in the result form with '"self" parameter missing for a non-static
    # method (or an invalid type for self)' (the error is on the def line).
    @step
    async def _move(cls: type[Inventory], sku: str) -> str:
        return sku

    @_move.compensate
    async def unmove(cls: type[Inventory], sku: str) -> None:  # type: ignore[misc]
        return None

    @step
    async def _ship(cls: type[Inventory], sku: str) -> str:
        return sku

    @_ship.compensate
    async def unship(  # type: ignore[misc]
        cls: type[Inventory], shipment: str | None, sku: str
    ) -> None:
        return None

    # Unannotated, the step's cls is an instance: 'Argument 1 to "classmethod" has
    # incompatible type "Step[[Inventory, str], str]"; expected "Callable[[type[Never],
    # str], StepCall[str]]"' (and again, expecting "type[Any]"), and the attribute needs
    # an annotation ('Need type annotation for "recount"').
    @step
    async def _recount(cls, sku: str) -> str:
        return sku

    recount = classmethod(_recount)  # type: ignore[arg-type, var-annotated]


class Warehouse(Inventory):
    pass


async def class_method_steps() -> None:
    assert_type(Inventory.reserve("book"), StepCall[str])
    assert_type(await Inventory.reserve("book"), str)
    assert_type(Warehouse.reserve("book"), StepCall[str])
    assert_type(Inventory().hold("book", 2), StepCall[int])
    Inventory.hold("book", "2")  # type: ignore[arg-type]
    # The compensation is a class method, as it runs: the class is bound.
    await Inventory.unhold("book", 2)
    await Warehouse().release(None, "book")
    await Inventory.release(None, 1)  # type: ignore[arg-type]


release: Callable[[str | None, str], Awaitable[Any]] = Inventory.release


class Journal:
    # A static method step with a compensation, declared in the class body: the
    # compensation is a static method too (without @staticmethod mypy takes its first
    # parameter for self: '"self" parameter missing for a non-static method').
    @step
    async def _audit(sku: str) -> bool:
        return True

    @staticmethod
    @_audit.compensate
    async def unaudit(sku: str) -> None:
        return None

    audit = staticmethod(_audit)

    @step
    async def _post(entry: str, amount: int) -> int:
        return amount

    @staticmethod
    @_post.compensate
    async def unpost(posted: int | None, entry: str, amount: int) -> None:
        return None

    post = staticmethod(_post)

    @step
    async def _void(entry: str) -> int:
        return 1

    @staticmethod
    @_void.compensate  # type: ignore[arg-type]
    async def unvoid(voided: int, entry: str) -> None:  # no None
        return None

    @step
    async def _note(entry: str) -> int:
        return 1

    # Not a static method: entry is taken for self (the error is on the def line).
    @_note.compensate
    async def unnote(entry: str) -> None:  # type: ignore[misc]
        return None


async def static_method_steps() -> None:
    assert_type(Journal.audit("e"), StepCall[bool])
    assert_type(await Journal().post("e", 1), int)
    await Journal.unpost(None, "e", 1)
    Journal.post("e", "1")  # type: ignore[arg-type]


def fault_targets() -> None:
    # A class method step made with classmethod() is a plain callable to mypy, looked up on
    # its class or an instance; fault injection and the recorder take it.
    FaultInjector().fail(Inventory.reserve).fail_compensation(Inventory().hold)
    SagaRecorder().assert_compensated(Inventory.reserve, Warehouse.hold, "post", Journal._post)
    FaultInjector().fail(Inventory.reserve("book"))  # type: ignore[arg-type]
