"""Declaring steps in unusual but recognisable ways: an error that names the real problem, or
the behaviour the form means."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sagakit import SagaDefinition, SagaDefinitionError, SagaOrchestrator, StepFailed, saga, step


@pytest.mark.parametrize("kind", [staticmethod, classmethod])
@pytest.mark.parametrize("options", [{}, {"timeout": 5}])
def test_step_above_staticmethod_or_classmethod_says_to_swap_them(
    kind: Any, options: dict[str, Any]
) -> None:
    # It said the function was "not a coroutine function; declare it with 'async def'" (or
    # that "options are keyword-only") about an 'async def'.
    async def fetch(x: int) -> int:
        return x

    decorate = step(**options) if options else step
    with pytest.raises(SagaDefinitionError) as info:
        decorate(kind(fetch))
    message = str(info.value)
    assert f"put @step below @{kind.__name__}" in message
    assert "fetch" in message
    assert "declare it with 'async def'" not in message
    assert "keyword-only" not in message


def test_the_working_order_of_staticmethod_and_classmethod_is_unchanged() -> None:
    class Shop:
        @staticmethod
        @step
        async def price(sku: str) -> int:
            return 1

        @classmethod
        @step
        async def stock(cls, sku: str) -> int:
            return 2

    assert Shop.price("a").args == ("a",)
    assert Shop.stock("a").args == ("a",)


async def _alone(call: Any) -> Any:
    return await call


def test_a_class_method_step_is_bound_to_the_class_it_is_looked_up_through() -> None:
    # Python 3.13's classmethod calls the step with the class as its first argument
    # instead of binding through the step: the call then carried the class among its
    # arguments (in its repr, its log and its compensation's arguments) and no instance.
    class Shop:
        @classmethod
        @step
        async def stock(cls, sku: str, count: int = 1) -> str:
            return f"{cls.__name__}:{sku}x{count}"

    class Outlet(Shop):
        pass

    for owner, call in [
        (Shop, Shop.stock("a")),
        (Shop, Shop().stock("a")),
        (Outlet, Outlet.stock("a")),
        (Outlet, Outlet().stock("a", count=2)),
    ]:
        assert call.args == ("a",)
        assert call.instance is owner
        assert repr(call).startswith("<StepCall stock('a'")
        assert call.fn.__self__ is owner  # type: ignore[attr-defined]
    assert asyncio.run(_alone(Outlet.stock("b", 3))) == "Outlet:bx3"
    with pytest.raises(SagaDefinitionError, match="cannot be called with these arguments"):
        Shop.stock()


def test_a_class_passed_to_a_plain_step_stays_an_argument() -> None:
    # Only a step that is a class method of that class binds it.
    @step
    async def make(cls: type, size: int) -> object:
        return cls(size)

    class Box:
        def __init__(self, size: int) -> None:
            self.size = size

    call = make(Box, 3)
    assert (call.args, call.instance) == ((Box, 3), None)
    made = asyncio.run(_alone(call))
    assert isinstance(made, Box)
    assert made.size == 3


def test_class_and_static_method_steps_run_in_a_saga_through_class_and_instance() -> None:
    # The supported order (@step below @classmethod/@staticmethod), looked up either way:
    # the class method step and its compensation get the class, the static one no instance.
    undone: list[Any] = []

    class Shelf:
        @step
        async def _stock(cls, sku: str) -> str:
            return f"{cls.__name__}:{sku}"

        # Declared on the step before it is made a class method (a classmethod object
        # has no .compensate).
        @_stock.compensate
        async def unstock(cls, held: str | None, sku: str) -> None:
            undone.append((cls, held, sku))

        stock = classmethod(_stock)

        @classmethod
        @step
        async def count(cls, sku: str) -> int:
            return len(cls.__name__)

        @staticmethod
        @step
        async def refuse(sku: str) -> None:
            raise RuntimeError(f"no {sku}")

    @saga
    def order(sku: str) -> list[Any]:
        shelf = Shelf()
        return [Shelf.stock(sku), shelf.stock(sku), shelf.count(sku), shelf.refuse(sku)]

    async def run() -> None:
        async with SagaOrchestrator() as orchestrator:
            with pytest.raises(StepFailed, match="no lamp") as info:
                await orchestrator.execute(order("lamp"))
            assert (info.value.step_index, info.value.step_name) == (3, "refuse")

    asyncio.run(run())
    assert undone == [(Shelf, "Shelf:lamp", "lamp"), (Shelf, "Shelf:lamp", "lamp")]


def test_class_and_static_method_steps_with_compensations_as_the_docs_show() -> None:
    # A classmethod or staticmethod object has no .compensate: the step gets its
    # compensation first (itself made a class or static method, for type checkers), then is
    # made a class or static method.
    undone: list[Any] = []

    class Ledger:
        @step
        async def _open(cls: type[Ledger], owner: str) -> str:
            return f"{cls.__name__}:{owner}"

        @classmethod
        @_open.compensate
        async def close(cls, account: str | None, owner: str) -> None:
            undone.append((cls, account, owner))

        open = classmethod(_open)

        @step
        async def _post(entry: str, amount: int) -> int:
            return amount * 2

        @staticmethod
        @_post.compensate
        async def unpost(posted: int | None, entry: str, amount: int) -> None:
            undone.append((posted, entry, amount))

        post = staticmethod(_post)

        @staticmethod
        @step
        async def refuse(entry: str) -> None:
            raise RuntimeError(f"no {entry}")

    class SubLedger(Ledger):
        pass

    assert Ledger._open.compensation is vars(Ledger)["close"].__func__
    assert Ledger._open.compensation_takes_result
    assert Ledger._post.compensation is Ledger.unpost
    assert Ledger._post.compensation_takes_result

    @saga
    def book(entry: str) -> list[Any]:
        return [
            Ledger.open("ann"),
            SubLedger().open("bob"),
            Ledger.post(entry, 1),
            Ledger().post(entry, 2),
            Ledger.refuse(entry),
        ]

    with pytest.raises(StepFailed, match="no rent"):
        asyncio.run(SagaOrchestrator().execute(book("rent")))
    assert undone == [
        (4, "rent", 2),
        (2, "rent", 1),
        (SubLedger, "SubLedger:bob", "bob"),
        (Ledger, "Ledger:ann", "ann"),
    ]


# The form docs/concepts/steps.md shows for class and static method steps with a
# compensation, which pyright accepts too: the step and its compensation are declared next
# to the class (pyright refuses a plain function in a class body whose first parameter is
# annotated as anything but the instance), then made class or static methods in it.
@step
async def _dfm_open(cls: type[Vault], owner: str) -> str:
    return f"{cls.__name__}:{owner}"


@_dfm_open.compensate
async def _dfm_close(cls: type[Vault], account: str | None, owner: str) -> None:
    vault_undone.append((cls, account, owner))


@step
async def _dfm_post(entry: str, amount: int) -> int:
    return amount * 2


@_dfm_post.compensate
async def _dfm_unpost(posted: int | None, entry: str, amount: int) -> None:
    vault_undone.append((posted, entry, amount))


@step
async def _dfm_refuse(entry: str) -> None:
    raise RuntimeError(f"no {entry}")


vault_undone: list[Any] = []


class Vault:
    open = classmethod(_dfm_open)
    post = staticmethod(_dfm_post)
    refuse = staticmethod(_dfm_refuse)


class SubVault(Vault):
    pass


def test_class_and_static_method_steps_declared_next_to_their_class() -> None:
    # The class method step's compensation names its first parameter cls, as the step
    # does: it gets the class, then the result.
    assert _dfm_open.compensation is _dfm_close
    assert _dfm_open.compensation_takes_result
    assert _dfm_post.compensation_takes_result

    @saga(name="test_step_declaration_forms.vault_book")
    def book(entry: str) -> list[Any]:
        return [
            Vault.open("ann"),
            SubVault().open("bob"),
            Vault.post(entry, 1),
            Vault().post(entry, 2),
            Vault.refuse(entry),
        ]

    async def run() -> None:
        async with SagaOrchestrator() as orchestrator:
            with pytest.raises(StepFailed, match="no rent"):
                await orchestrator.execute(book("rent"))

    vault_undone.clear()
    asyncio.run(run())
    assert vault_undone == [
        (4, "rent", 2),
        (2, "rent", 1),
        (SubVault, "SubVault:bob", "bob"),
        (Vault, "Vault:ann", "ann"),
    ]


def test_a_step_decorated_again_is_refused() -> None:
    # The outer step wrapped the inner one: the inner's compensation and options were
    # silently ignored by sagas running the outer one.
    @step
    async def debit(account: str) -> None: ...

    @debit.compensate
    async def undo_debit(account: str) -> None: ...

    with pytest.raises(SagaDefinitionError) as info:
        step(timeout=5)(debit)
    message = str(info.value)
    assert "'debit' is already a step" in message
    assert "__wrapped__" in message
    with pytest.raises(SagaDefinitionError, match="already a step"):
        step(debit)
    # The way the message shows: another step from the same function.
    again = step(timeout=5, name="debit-fast")(debit.__wrapped__)
    assert again.timeout == 5
    assert again.compensation is None


@pytest.mark.parametrize("first", ["cls", "self"])
def test_a_plain_function_whose_first_parameter_is_named_cls_is_not_a_method(
    first: str,
) -> None:
    # A module-level or local step was taken for a method by the name of its first
    # parameter: its result-form compensation got the result and that argument swapped.
    namespace: dict[str, Any] = {}
    exec(
        f"async def classify({first}, item):\n    return 'label-' + {first}\n"
        f"async def unclassify(label, {first}, item):\n    return (label, {first}, item)\n",
        namespace,
    )
    classify = step(namespace["classify"])
    classify.compensate(namespace["unclassify"])
    assert classify.compensation_takes_result
    call = classify("fruit", "apple")
    undo = call.compensation_call("label-fruit")
    assert undo is not None
    assert asyncio.run(undo) == ("label-fruit", "fruit", "apple")


def test_a_method_step_still_gets_self_before_the_result() -> None:
    class Labeller:
        @step
        async def classify(self, item: str) -> str:
            return "label"

        @classify.compensate
        async def unclassify(self, label: str | None, item: str) -> tuple[Any, ...]:
            return (self, label, item)

        @step
        async def _tally(cls, item: str) -> int:
            return 1

        @_tally.compensate
        async def untally(cls, count: int | None, item: str) -> tuple[Any, ...]:
            return (cls, count, item)

        tally = classmethod(_tally)

    labeller = Labeller()
    undo = labeller.classify("apple").compensation_call("label")
    assert undo is not None
    assert asyncio.run(undo) == (labeller, "label", "apple")
    undo = Labeller.tally("apple").compensation_call(1)
    assert undo is not None
    assert asyncio.run(undo) == (Labeller, 1, "apple")


async def fdf_withdraw(self: Any, amount: int) -> str:
    return "receipt"


async def fdf_undo_withdraw(self: Any, receipt: str | None, amount: int) -> tuple[Any, ...]:
    return (self, receipt, amount)


def test_a_function_defined_outside_a_class_and_used_as_a_method_stays_one() -> None:
    # Its compensation names the first parameter as it does: self, then the result.
    withdraw = step(fdf_withdraw)
    withdraw.compensate(fdf_undo_withdraw)

    class Till:
        take = withdraw

    till = Till()
    undo = till.take(5).compensation_call("receipt")
    assert undo is not None
    assert asyncio.run(undo) == (till, "receipt", 5)


def test_compensate_with_parentheses_says_to_drop_them() -> None:
    # Regression: @debit.compensate() failed with Python's "compensate() missing 1
    # required positional argument: 'fn'", naming neither the decorator nor the fix.
    @step(name="debit money")
    async def debit(account: str) -> None:
        pass

    with pytest.raises(SagaDefinitionError, match=r"without parentheses, @debit\.compensate,"):

        @debit.compensate()  # type: ignore[call-overload]
        async def undo_debit(account: str) -> None:
            pass

    assert debit.compensation is None  # nothing was registered

    @debit.compensate  # the right form still works afterwards
    async def refund(account: str) -> None:
        pass

    assert debit.compensation is refund


@pytest.mark.asyncio
async def test_step_with_empty_parentheses_is_the_bare_form() -> None:
    @step()
    async def reserve(item: str) -> list[str]:
        return [f"reserved {item}"]

    assert reserve.timeout == 30
    assert await SagaOrchestrator().execute(SagaDefinition(steps=[reserve("x")])) == ["reserved x"]


@pytest.mark.parametrize("kind", [staticmethod, classmethod])
def test_compensate_above_staticmethod_or_classmethod_says_to_swap_them(kind: Any) -> None:
    # The compensation given as a staticmethod said it was "an 'async def' wrapped by a
    # decorator whose wrapper is a plain 'def'", and as a classmethod that it was "not a
    # coroutine function; declare it with 'async def'": both of an 'async def'. As for @step,
    # the order is named.
    @step
    async def post(entry: str) -> int:
        return 1

    async def unpost(entry: str) -> None:
        return None

    with pytest.raises(SagaDefinitionError) as info:
        post.compensate(kind(unpost))
    name = kind.__name__
    assert str(info.value) == (
        f"@post.compensate needs the function itself, but got the {name} "
        "test_compensate_above_staticmethod_or_classmethod_says_to_swap_them.<locals>.unpost; "
        f"put @post.compensate below @{name}"
    )
    assert post.compensation is None  # nothing registered: the fixed order still works
    post.compensate(unpost)
    assert post.compensation is unpost


def test_step_on_a_saga_says_to_run_it_from_a_step() -> None:
    # It said the saga "is not a coroutine function; declare it with 'async def'".
    @step
    async def debit(account: str) -> None: ...

    @saga(name="step_declaration_forms.refund")
    def refund(account: str) -> list[Any]:
        return [debit(account)]

    with pytest.raises(SagaDefinitionError) as info:
        step(refund)  # type: ignore[arg-type]  # mypy refuses it too
    message = str(info.value)
    assert message == (
        "@step needs an 'async def' function, but "
        "test_step_on_a_saga_says_to_run_it_from_a_step.<locals>.refund is not a coroutine "
        "function; it is a @saga function: run it as a nested saga from a step: an @step "
        "that awaits orchestrator.execute(refund(...))"
    )


def test_compensate_with_options_says_where_they_go() -> None:
    # Regression: @debit.compensate(retry=3) (options, as @step takes) failed with Python's
    # "Step.compensate() got an unexpected keyword argument 'retry'", naming no fix.
    @step
    async def sdf_hold(account: str) -> None:
        pass

    with pytest.raises(SagaDefinitionError) as refused:

        @sdf_hold.compensate(retry=3, timeout=5)  # type: ignore[call-overload]
        async def sdf_unhold(account: str) -> None:
            pass

    message = str(refused.value)
    assert "@sdf_hold.compensate takes no options (got retry, timeout)" in message
    assert "@step(compensation_timeout=..., compensation_retry=...)" in message
    assert sdf_hold.compensation is None  # nothing was registered

    async def sdf_release(account: str) -> None:
        pass

    # Given with the function too (sdf_hold.compensate(fn, retry=3)): the same error.
    with pytest.raises(
        SagaDefinitionError,
        match=r"takes no options \(got retry: did you mean @step\(compensation_retry=\.\.\.\)\?\)",
    ):
        sdf_hold.compensate(sdf_release, retry=3)  # type: ignore[call-overload]
    assert sdf_hold.compensation is None


def test_step_given_more_than_one_function_says_to_decorate_each() -> None:
    # Regression: step(f, g) failed with Python's "step() takes from 0 to 1 positional
    # arguments but 2 were given", a bare TypeError naming no fix.
    async def sdf_extra_a(x: int) -> int:
        return x

    async def sdf_extra_b(x: int) -> int:
        return x

    with pytest.raises(SagaDefinitionError) as refused:
        step(sdf_extra_a, sdf_extra_b)  # type: ignore[call-overload]
    message = str(refused.value)
    assert "@step takes one function (got 2 positional arguments)" in message
    assert "decorate each function with its own @step" in message
    assert "options are keyword-only" in message


def test_compensate_given_more_than_one_function_says_to_give_one() -> None:
    # Regression: debit.compensate(f, g) failed with Python's bare "takes from 1 to 2
    # positional arguments but 3 were given".
    @step
    async def sdf_extra_hold(account: str) -> None:
        pass

    async def sdf_extra_unhold(account: str) -> None:
        pass

    async def sdf_extra_release(account: str) -> None:
        pass

    with pytest.raises(SagaDefinitionError) as refused:
        sdf_extra_hold.compensate(sdf_extra_unhold, sdf_extra_release)  # type: ignore[call-overload]
    message = str(refused.value)
    assert "@sdf_extra_hold.compensate takes one function (got 2 positional arguments)" in message
    assert "a step has at most one compensation" in message
    assert sdf_extra_hold.compensation is None  # nothing was registered
