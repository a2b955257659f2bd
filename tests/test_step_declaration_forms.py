"""Declaring steps in unusual but recognisable ways gets an error that names the real problem."""

from __future__ import annotations

from typing import Any

import pytest

from sagakit import SagaDefinitionError, step


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
