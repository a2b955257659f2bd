"""A saga given where a step is wanted (``fail(order)``, ``assert_completed(order(...))``)
says how to fix it.

Regression: it got the generic "name a step by name ('debit') or by its @step object
(debit), got <saga order>", which did not say that a saga is not one of its steps, nor
that the fault matrix faults each step of a saga in turn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sagakit import SagaDefinitionError, SagaOrchestrator, saga, step
from sagakit.testing import FaultInjector, SagaRecorder


@step(name="fsg.reserve")
async def reserve(item: str) -> None: ...


@reserve.compensate
async def release(item: str) -> None: ...


@step(name="fsg.charge")
async def charge(item: str) -> None: ...


@saga(name="fsg.order")
def order(item: str) -> Any:
    yield reserve(item)
    yield charge(item)


@saga(name="fsg.listed")
def listed(item: str) -> Any:
    return [reserve(item), charge(item)]


INJECTOR_METHODS = [
    ("fail", lambda f, s: f.fail(s)),
    ("timeout", lambda f, s: f.timeout(s)),
    ("fail_compensation", lambda f, s: f.fail_compensation(s)),
    ("timeout_compensation", lambda f, s: f.timeout_compensation(s)),
    ("crash", lambda f, s: f.crash(s)),
]


@pytest.mark.parametrize(("method", "add"), INJECTOR_METHODS)
@pytest.mark.parametrize(
    ("given", "what"),
    [
        (order, "the saga 'fsg.order'"),
        (order("lamp"), "a definition of saga 'fsg.order'"),
    ],
)
def test_every_injector_method_says_to_pass_a_step_of_the_saga(
    method: str, add: Callable[[FaultInjector, Any], object], given: object, what: str
) -> None:
    with pytest.raises(SagaDefinitionError) as caught:
        add(FaultInjector(), given)
    assert str(caught.value) == (
        f"{method}() got {what}, where one of its steps is wanted: pass the step, by name "
        f"or as its @step object; to fault each step of the saga in turn, run the fault "
        f"matrix: await run_fault_matrix(order(...))"
    )


def test_a_definition_whose_steps_are_known_lists_them() -> None:
    with pytest.raises(SagaDefinitionError) as caught:
        FaultInjector().fail(listed("lamp"))
    assert str(caught.value).startswith(
        "fail() got a definition of saga 'fsg.listed', where one of its steps is wanted "
        "('fsg.reserve', 'fsg.charge'): pass the step, by name or as its @step object"
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("method", ["assert_completed", "assert_compensated"])
async def test_the_recorder_says_to_pass_the_steps(method: str) -> None:
    recorder = SagaRecorder()
    await SagaOrchestrator(listeners=[recorder]).execute(order("lamp"))
    with pytest.raises(SagaDefinitionError) as caught:
        getattr(recorder, method)(order)
    assert str(caught.value) == (
        f"{method}() got the saga 'fsg.order', where one of its steps is wanted: pass the "
        "steps, by name or as their @step objects; check the saga's outcome with "
        "assert_status()"
    )
