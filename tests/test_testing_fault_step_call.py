"""A step call given where a step is wanted (``fail(charge("a", 1))``) says how to fix it.

Regression: it got the generic "name a step by name ('debit') or by its @step object
(debit), got <StepCall charge('a', 1)>", which neither says that a call is not the step nor
that a fault cannot be limited to given arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sagakit import SagaDefinitionError, SagaOrchestrator, saga, step
from sagakit.testing import FaultInjector, SagaRecorder


@step(name="fsc.billing.charge")
async def charge(who: str, amount: int) -> str:
    return who


@charge.compensate
async def refund(who: str, amount: int) -> None: ...


class Bank:
    @step(name="fsc.debit")
    async def debit(self, who: str, amount: int) -> str:
        return who


@saga(name="fsc.pay")
def pay() -> Any:
    yield charge("a", 1)


TAIL = (
    ". A fault hits the step whatever its arguments; to aim it at one use of a step the saga "
    "runs more than once, give its position: {method}({written}, index=N)"
)


@pytest.mark.parametrize(
    ("method", "add"),
    [
        ("fail", lambda f, c: f.fail(c)),
        ("timeout", lambda f, c: f.timeout(c)),
        ("fail_compensation", lambda f, c: f.fail_compensation(c)),
        ("timeout_compensation", lambda f, c: f.timeout_compensation(c)),
        ("crash", lambda f, c: f.crash(c, compensation=True)),
    ],
)
def test_every_injector_method_says_to_pass_the_step_not_a_call(
    method: str, add: Callable[[FaultInjector, Any], object]
) -> None:
    injector = FaultInjector()
    with pytest.raises(SagaDefinitionError) as caught:
        add(injector, charge("a", 1))
    assert str(caught.value) == (
        f"{method}() got a step call charge('a', 1); pass the step itself: {method}(charge) "
        "(or its name, 'fsc.billing.charge')" + TAIL.format(method=method, written="charge")
    )
    with pytest.raises(SagaDefinitionError) as caught:
        add(injector, Bank().debit("b", amount=2))
    assert str(caught.value).startswith(
        f"{method}() got a step call Bank.debit('b', amount=2); pass the step itself: "
        f"{method}(Bank.debit) (or its name, 'fsc.debit')"
    )
    assert injector._rules == []  # nothing was added


@pytest.mark.asyncio
async def test_the_recorder_says_to_pass_the_step_not_a_call() -> None:
    recorder = SagaRecorder()
    await SagaOrchestrator(listeners=[recorder]).execute(pay())
    with pytest.raises(SagaDefinitionError) as caught:
        recorder.assert_completed(charge("a", 1))
    assert str(caught.value) == (
        "assert_completed() got a step call charge('a', 1); pass the step itself: "
        "assert_completed(charge) (or its name, 'fsc.billing.charge')"
    )
    recorder.assert_completed(charge)  # as it says


class Ledger:
    @step(name="fsc.ledger.book")
    async def book(self, who: str) -> str:
        return who

    @book.compensate
    async def unbook(self, who: str) -> None: ...


@pytest.mark.parametrize(
    ("method", "add", "fix"),
    [
        ("fail", lambda f, c: f.fail(c), "fail_compensation({step})"),
        ("timeout", lambda f, c: f.timeout(c), "timeout_compensation({step})"),
        ("fail_compensation", lambda f, c: f.fail_compensation(c), "fail_compensation({step})"),
        (
            "timeout_compensation",
            lambda f, c: f.timeout_compensation(c),
            "timeout_compensation({step})",
        ),
        ("crash", lambda f, c: f.crash(c), "crash({step}, compensation=True)"),
        ("assert_compensated", lambda r, c: r.assert_compensated(c), "assert_compensated({step})"),
    ],
)
@pytest.mark.asyncio
async def test_a_compensation_given_where_a_step_is_wanted_names_its_step(
    method: str, add: Callable[[Any, Any], object], fix: str
) -> None:
    # Regression: `fail_compensation(refund)`, or `assert_compensated(refund)`, got the
    # generic "name a step by name ('debit') or by its @step object (debit), got <function
    # refund at 0x...>", which did not say that refund is the compensation, nor of which step.
    target: object = FaultInjector()
    if method.startswith("assert_"):
        target = SagaRecorder()
        await SagaOrchestrator(listeners=[target]).execute(pay())
    for compensation, written, name in (
        (refund, "charge", "fsc.billing.charge"),
        (Ledger.unbook, "Ledger.book", "fsc.ledger.book"),
        (Ledger().unbook, "Ledger.book", "fsc.ledger.book"),
    ):
        with pytest.raises(SagaDefinitionError) as caught:
            add(target, compensation)
        qualname = compensation.__qualname__
        assert str(caught.value) == (
            f"{method}() got {qualname}, the compensation of step {name!r}, where a step is "
            f"wanted; pass the step: {fix.format(step=written)}"
        )
