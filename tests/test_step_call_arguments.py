"""A step call is checked against the step's signature when it is made.

The docs say calling a step "binds" its arguments, but a call the function cannot take was
accepted, and the TypeError came only when the step ran (after the steps before it had run
and had to be compensated), or from binding the compensation's arguments.
"""

from __future__ import annotations

import copy
import pickle
import re
from typing import Any

import pytest

from sagakit import SagaDefinition, SagaDefinitionError, SagaOrchestrator, StepFailed, saga, step


@step
async def sca_debit(account: str, amount: float, note: str = "") -> str:
    return f"{account}-{amount}{note}"


@step
async def sca_tag(order_id: str, *, label: str) -> str:
    return f"{order_id}:{label}"


@pytest.mark.parametrize(
    ("make", "complaint"),
    [
        (lambda: sca_debit("A"), "missing a required argument: 'amount'"),
        (lambda: sca_debit("A", 1.0, "n", "extra"), "too many positional arguments"),
        (lambda: sca_debit("A", 1.0, memo="x"), "unexpected keyword argument 'memo'"),
        (lambda: sca_debit("A", 1.0, account="B"), "multiple values for argument 'account'"),
        # inspect's own words, which Python 3.12 made more precise ("keyword-only").
        (lambda: sca_tag("o-1"), "missing a required (keyword-only )?argument: 'label'"),
        (lambda: sca_tag("o-1", "red"), "too many positional arguments"),
    ],
)
def test_a_call_the_step_cannot_take_is_refused_when_made(make: Any, complaint: str) -> None:
    with pytest.raises(SagaDefinitionError) as info:
        make()
    message = str(info.value)
    assert re.search(complaint, message), message
    assert "step 'sca_" in message  # names the step
    assert "its parameters are (" in message  # and how to call it
    assert isinstance(info.value, TypeError)


def test_calls_the_step_can_take_are_accepted() -> None:
    assert sca_debit("A", 1.0).args == ("A", 1.0)
    assert sca_debit("A", 1.0, "n").args == ("A", 1.0, "n")
    assert sca_debit(account="A", amount=1.0).kwargs == {"account": "A", "amount": 1.0}
    assert sca_debit("A", amount=1.0, note="n").kwargs == {"amount": 1.0, "note": "n"}
    assert sca_tag("o-1", label="red").kwargs == {"label": "red"}
    # The same shape again, from the check's memo.
    assert sca_debit(account="B", amount=2.0).kwargs == {"account": "B", "amount": 2.0}


@step
async def sca_ping() -> None:
    return None


@step
async def sca_page(first: int = 0, size: int = 10) -> list[int]:
    return list(range(first, first + size))


def test_a_call_keeps_the_arguments_given_not_the_defaults_left_out() -> None:
    # Each parameter count, arguments left to defaults, by keyword, none, too many.
    assert (sca_page().args, sca_page(5).args, sca_page(5, 2).args) == ((), (5,), (5, 2))
    assert (sca_page(size=2).args, dict(sca_page(size=2).kwargs)) == ((), {"size": 2})
    assert (sca_page(1, size=2).args, dict(sca_page(1, size=2).kwargs)) == ((1,), {"size": 2})
    assert (sca_ping().args, dict(sca_ping().kwargs)) == ((), {})
    with pytest.raises(SagaDefinitionError, match="too many positional arguments"):
        sca_ping(1)
    with pytest.raises(SagaDefinitionError, match="too many positional arguments"):
        sca_page(1, 2, 3)
    with pytest.raises(SagaDefinitionError, match="unexpected keyword argument 'x'"):
        sca_ping(x=1)


class ScaBank:
    @step
    async def withdraw(self, account: str, amount: int) -> int:
        return amount


def test_a_bound_method_step_call_is_checked_without_self() -> None:
    bank = ScaBank()
    assert bank.withdraw("A", 1).args == ("A", 1)
    assert bank.withdraw(account="A", amount=1).kwargs == {"account": "A", "amount": 1}
    with pytest.raises(SagaDefinitionError, match="missing a required argument: 'amount'"):
        bank.withdraw("A")
    with pytest.raises(SagaDefinitionError, match="too many positional arguments"):
        bank.withdraw("A", 1, 2)
    assert ScaBank.withdraw(bank, "A", 1).args == ("A", 1)
    with pytest.raises(SagaDefinitionError, match="missing a required argument: 'self'"):
        ScaBank.withdraw()


def test_a_plain_step_reached_through_a_class_is_checked_as_called() -> None:
    class Holder:
        debit = sca_debit

    assert Holder.debit("A", 1.0).args == ("A", 1.0)
    with pytest.raises(SagaDefinitionError, match="too many positional arguments"):
        Holder.debit("A", 1.0, "n", "extra")


@pytest.mark.asyncio
async def test_a_generator_saga_making_a_bad_call_stops_before_running_it() -> None:
    ran: list[str] = []

    @step
    async def sca_first(x: int) -> int:
        ran.append("first")
        return x

    @sca_first.compensate
    async def sca_undo_first(x: int) -> None:
        ran.append("undo first")

    @step
    async def sca_second(x: int) -> int:
        ran.append("second")
        return x

    @saga
    def sca_flow():  # type: ignore[no-untyped-def]
        yield sca_first(1)
        yield sca_second(1, 2)  # type: ignore[call-arg]

    with pytest.raises(SagaDefinitionError, match="step 'sca_second'"):
        await SagaOrchestrator().execute(sca_flow())
    assert ran == ["first", "undo first"]


def test_a_list_saga_making_a_bad_call_is_refused_when_built() -> None:
    with pytest.raises(SagaDefinitionError, match="step 'sca_debit'"):
        SagaDefinition("sca-1", steps=[sca_debit("A")])  # type: ignore[call-arg]


@pytest.mark.asyncio
async def test_awaiting_a_good_call_still_runs_and_a_failing_step_still_fails() -> None:
    assert await sca_debit("A", 1.0, note="!") == "A-1.0!"

    @step
    async def sca_boom(x: int) -> None:
        raise TypeError("from inside the step")

    with pytest.raises(StepFailed, match="from inside the step"):
        await SagaOrchestrator().execute(SagaDefinition("sca-2").add_step(sca_boom(1)))


@saga
def sca_payment(account: str) -> list[Any]:
    return [sca_debit(account, amount=10.0, note="!"), sca_debit(account, 5.0)]


@pytest.mark.asyncio
async def test_a_definitions_step_calls_keep_their_keyword_arguments() -> None:
    # Regression: StepCall.kwargs was the call's own dict, so a definition documented as
    # immutable changed when it was changed (and a call without keywords got some).
    definition = sca_payment("A")
    with_keywords, without = definition.steps or ()
    for call in (with_keywords, without):
        with pytest.raises(TypeError):
            call.kwargs["amount"] = 0  # type: ignore[index]
        with pytest.raises(AttributeError):
            call.kwargs = {}  # type: ignore[misc]
    assert with_keywords.kwargs == {"amount": 10.0, "note": "!"}
    assert dict(without.kwargs) == {}
    assert await SagaOrchestrator().execute(definition) == ["A-10.0!", "A-5.0"]
    assert await with_keywords == "A-10.0!"  # a call awaited on its own
    assert repr(with_keywords) == "<StepCall sca_debit('A', amount=10.0, note='!')>"
    for copied in (pickle.loads(pickle.dumps(definition)), copy.deepcopy(definition)):
        assert [dict(call.kwargs) for call in copied.steps or ()] == [
            {"amount": 10.0, "note": "!"},
            {},
        ]


@pytest.mark.asyncio
async def test_a_definitions_step_calls_are_read_only() -> None:
    # Regression: only kwargs was read-only; `call.args = (...)` (or step, fn, instance,
    # spec) changed a call of a definition documented as immutable, and what it ran.
    definition = sca_payment("A")
    call = (definition.steps or ())[1]
    for attribute, value in [
        ("args", ("B", 99.0)),
        ("step", sca_tag),
        ("fn", sca_tag.__wrapped__),
        ("instance", object()),
        ("spec", call.spec),
        ("name", "other"),
    ]:
        with pytest.raises(AttributeError):
            setattr(call, attribute, value)
    with pytest.raises(AttributeError):
        call.extra = 1  # type: ignore[attr-defined]
    assert (call.args, call.instance, call.name) == (("A", 5.0), None, "sca_debit")
    assert call.step is sca_debit
    assert call.fn is sca_debit.__wrapped__
    assert call.spec.name == "sca_debit"
    assert await SagaOrchestrator().execute(definition) == ["A-10.0!", "A-5.0"]


def test_a_calls_spec_is_the_public_read_only_step() -> None:
    # Regression: `spec` returned the internal StepSpec, a type no public module exports,
    # shared by every call of the step: `call.spec.timeout = 0` changed the timeout of
    # every call of it, through a call documented as immutable.
    call = sca_debit("A", 5.0)
    assert call.spec is sca_debit
    assert (call.spec.name, call.spec.timeout) == ("sca_debit", sca_debit.timeout)
    timeout = sca_debit.timeout
    with pytest.raises(AttributeError):
        call.spec.timeout = 0.001  # type: ignore[misc]
    assert sca_debit("B", 1.0).spec.timeout == timeout
