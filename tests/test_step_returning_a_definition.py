"""A step or compensation returning a saga definition — a nested saga it forgot to
execute — fails clearly, in every store, rather than completing without running it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from misuse_helpers.wrong_results import (
    STORES,
    run_a_wrong_compensation,
    run_a_wrong_step,
    store_of,
)
from sagakit import (
    CompensationFailed,
    SagaDefinition,
    SagaDefinitionError,
    SagaOrchestrator,
    StepFailed,
    saga,
    step,
)

ran: list[str] = []


@step
async def rdef_reserve(item: str) -> list[str]:
    ran.append(f"reserve {item}")
    return [f"reserved {item}"]


@rdef_reserve.compensate
async def rdef_release(item: str) -> list[str]:
    ran.append(f"release {item}")
    return [f"released {item}"]


@step
async def rdef_pay(item: str) -> list[str]:
    ran.append(f"pay {item}")
    return [f"paid {item}"]


@saga
def rdef_payment(item: str) -> Iterator[Any]:
    yield rdef_pay(item)


@step
async def rdef_run_payment(item: str) -> SagaDefinition:
    # The mistake: `return await current_step().orchestrator.execute(rdef_payment(item))`.
    return rdef_payment(item)


@step
async def rdef_ship(item: str) -> list[str]:
    return [f"shipped {item}"]


@rdef_ship.compensate
async def rdef_unship(item: str) -> SagaDefinition:
    return rdef_payment(item)  # a refund saga it forgot to execute


@step
async def rdef_fail(item: str) -> None:
    raise LookupError(item)


@pytest.fixture(autouse=True)
def _clear() -> None:
    ran.clear()


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return store_of(request.param, tmp_path)


@pytest.mark.asyncio
async def test_a_step_returning_a_definition_fails_and_earlier_steps_are_undone(
    store: Any,
) -> None:
    # Regression: in memory the step completed with the definition as its one event, the
    # inner saga never ran and nothing said so; a durable store failed it as an
    # unstorable result, saying to make the definition a dataclass or register a codec.
    message, _ = await run_a_wrong_step(
        store, rdef_reserve("x"), rdef_run_payment("x"), "d", events=("reserved x",)
    )
    assert (
        "step 1 ('rdef_run_payment') returned the saga definition "
        "<SagaDefinition rdef_payment steps=?> instead of running it" in message
    )
    assert "await current_step().orchestrator.execute(rdef_payment(...))" in message
    assert ran == ["reserve x", "release x"]  # the inner saga never ran


@pytest.mark.asyncio
async def test_a_compensation_returning_a_definition_fails_that_compensation(
    store: Any,
) -> None:
    steps = [rdef_reserve("x"), rdef_ship("x"), rdef_fail("x")]
    failure, _ = await run_a_wrong_compensation(store, steps, "u", ["released x"])
    assert "the compensation of step 1 ('rdef_ship') returned the saga definition" in str(failure)


@step
async def rdef_run_built(item: str) -> SagaDefinition:
    return SagaDefinition("rdef-inner", steps=[rdef_pay(item)])


@pytest.mark.asyncio
async def test_a_built_definition_is_named_as_the_builder() -> None:
    async with SagaOrchestrator() as orchestrator:
        with pytest.raises(SagaDefinitionError) as raised:
            await orchestrator.execute(SagaDefinition(steps=[rdef_run_built("x")]))
    message = str(raised.value)
    assert "returned the saga definition <SagaDefinition rdef-inner" in message
    assert "current_step().orchestrator.execute(SagaDefinition(...))" in message
    assert ran == []


@pytest.mark.asyncio
async def test_a_step_awaited_on_its_own_returning_a_definition_is_refused() -> None:
    # Regression: `await rdef_run_payment("x")` outside a saga returned the definition, the
    # nested saga never ran, and nothing said so (in a saga it was refused).
    with pytest.raises(SagaDefinitionError) as raised:
        await rdef_run_payment("x")
    message = str(raised.value)
    assert (
        "step 'rdef_run_payment' returned the saga definition "
        "<SagaDefinition rdef_payment steps=?> instead of running it" in message
    )
    assert "orchestrator.execute(rdef_payment(...))" in message
    assert ran == []  # the inner saga never ran


@pytest.mark.asyncio
async def test_a_step_awaited_inside_a_step_returning_a_definition_is_refused() -> None:
    @step
    async def rdef_outer(item: str) -> None:
        await rdef_run_payment(item)

    async with SagaOrchestrator() as orchestrator:
        with pytest.raises(StepFailed) as raised:
            await orchestrator.execute(SagaDefinition(steps=[rdef_outer("x")]))
    # The outer step raised it: its failure, as any exception a step raises.
    assert isinstance(raised.value.__cause__, SagaDefinitionError)
    assert "step 'rdef_run_payment' returned the saga definition" in str(raised.value.__cause__)
    assert ran == []


@step
async def rdef_refund(item: str) -> SagaDefinition:
    return rdef_payment(item)


@step
async def rdef_hold(item: str) -> list[str]:
    return [f"held {item}"]


rdef_hold.compensate(rdef_refund)  # a step declared as the compensation


@pytest.mark.asyncio
async def test_a_step_declared_as_a_compensation_returning_a_definition_is_named_so() -> None:
    async with SagaOrchestrator(continue_on_compensation_failure=True) as orchestrator:
        with pytest.raises(CompensationFailed) as raised:
            await orchestrator.execute(SagaDefinition(steps=[rdef_hold("x"), rdef_fail("x")]))
    assert isinstance(raised.value.error, SagaDefinitionError)
    assert "the compensation of step 0 ('rdef_hold') returned the saga definition" in str(
        raised.value
    )
    assert ran == []
