"""A step or compensation returning something that is not its events fails clearly, in
every store: a saga definition (a nested saga it forgot to execute) rather than completing
without running it, an iterator (a generator, ``map(...)``) as a forgotten ``await`` does."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    CompensationFailed,
    MemoryStore,
    SagaDefinition,
    SagaDefinitionError,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StepFailed,
    StepStatus,
    saga,
    step,
)

ran: list[str] = []


@step
async def noev_reserve(item: str) -> list[str]:
    ran.append(f"reserve {item}")
    return [f"reserved {item}"]


@noev_reserve.compensate
async def noev_release(item: str) -> list[str]:
    ran.append(f"release {item}")
    return [f"released {item}"]


@step
async def noev_pay(item: str) -> list[str]:
    ran.append(f"pay {item}")
    return [f"paid {item}"]


@saga
def noev_payment(item: str) -> Iterator[Any]:
    yield noev_pay(item)


@step
async def noev_run_payment(item: str) -> SagaDefinition:
    # The mistake: `return await current_step().orchestrator.execute(noev_payment(item))`.
    return noev_payment(item)


@step
async def noev_generator(item: str) -> Iterator[str]:
    return (f"charged {part}" for part in item)  # the mistake: not list(...)


@step
async def noev_map(item: str) -> Iterator[str]:
    return map(str.upper, [item])


async def _parts(item: str) -> AsyncIterator[str]:
    yield item


@step
async def noev_async_generator(item: str) -> AsyncIterator[str]:
    return _parts(item)


# Each step above returning no events, what the error says it returned, and its fix.
NOT_EVENTS = [
    pytest.param(
        noev_run_payment,
        "returned the saga definition <SagaDefinition noev_payment steps=?> instead of running it",
        "await current_step().orchestrator.execute(noev_payment(...))",
        id="definition",
    ),
    pytest.param(
        noev_generator, "returned a generator instead of its events", "list(...)", id="generator"
    ),
    pytest.param(noev_map, "returned a map instead of its events", "list(...)", id="map"),
    pytest.param(
        noev_async_generator,
        "returned an async_generator instead of its events",
        "list(...)",
        id="async_generator",
    ),
]


@step
async def noev_ship(item: str) -> list[str]:
    return [f"shipped {item}"]


@noev_ship.compensate
async def noev_unship(item: str) -> SagaDefinition:
    return noev_payment(item)  # a refund saga it forgot to execute


@step
async def noev_send(item: str) -> list[str]:
    return [f"sent {item}"]


@noev_send.compensate
async def noev_unsend(item: str) -> Iterator[str]:
    return iter([f"unsent {item}"])


@step
async def noev_fail(item: str) -> None:
    raise LookupError(item)


@pytest.fixture(autouse=True)
def _clear() -> None:
    ran.clear()


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "s.db")


@pytest.mark.asyncio
@pytest.mark.parametrize(("bad", "said", "fix"), NOT_EVENTS)
async def test_a_step_returning_no_events_fails_and_earlier_steps_are_undone(
    store: Any, bad: Any, said: str, fix: str
) -> None:
    # Regression: in memory the step completed with the definition or the iterator itself
    # as its one event (the inner saga never ran; an iterator was read once, by whoever
    # iterated the events first), and nothing said so; a durable store failed it as an
    # unstorable result, saying to make it a dataclass or register a codec: a saga that
    # passed its tests failed in production.
    async with SagaOrchestrator(store) as orchestrator:
        definition = SagaDefinition(steps=[noev_reserve("x"), bad("x")], saga_id="d")
        with pytest.raises(SagaDefinitionError) as raised:
            await orchestrator.execute(definition)
        metadata = await orchestrator.get_saga("d")
    message = str(raised.value)
    assert f"step 1 ({bad.name!r}) {said}" in message
    assert fix in message
    assert ran == ["reserve x", "release x"]  # an inner saga never ran
    assert metadata is not None
    assert metadata.status is SagaStatus.COMPENSATED
    assert metadata.events == ("reserved x",)  # what it returned is no event
    assert metadata.steps[1].status is StepStatus.FAILED
    assert metadata.steps[1].events == ()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("bad", "said"),
    [
        pytest.param(noev_ship, "returned the saga definition", id="definition"),
        pytest.param(noev_send, "returned a list_iterator", id="iterator"),
    ],
)
async def test_a_compensation_returning_no_events_fails_that_compensation(
    store: Any, bad: Any, said: str
) -> None:
    orchestrator = SagaOrchestrator(store, continue_on_compensation_failure=True)
    async with orchestrator:
        definition = SagaDefinition(
            steps=[noev_reserve("x"), bad("x"), noev_fail("x")], saga_id="u"
        )
        with pytest.raises(CompensationFailed) as raised:
            await orchestrator.execute(definition)
        metadata = await orchestrator.get_saga("u")
    failure = raised.value
    assert isinstance(failure.error, SagaDefinitionError)
    assert f"the compensation of step 1 ({bad.name!r}) {said}" in str(failure)
    assert failure.compensation_events == ["released x"]
    assert ran == ["reserve x", "release x"]  # the compensation after it still ran
    assert metadata is not None
    assert metadata.status is SagaStatus.FAILED
    assert metadata.compensations[0].status is StepStatus.FAILED
    assert metadata.compensations[0].events == ()


@step
async def noev_run_built(item: str) -> SagaDefinition:
    return SagaDefinition("noev-inner", steps=[noev_pay(item)])


@pytest.mark.asyncio
async def test_a_built_definition_is_named_as_the_builder() -> None:
    async with SagaOrchestrator() as orchestrator:
        with pytest.raises(SagaDefinitionError) as raised:
            await orchestrator.execute(SagaDefinition(steps=[noev_run_built("x")]))
    message = str(raised.value)
    assert "returned the saga definition <SagaDefinition noev-inner" in message
    assert "current_step().orchestrator.execute(SagaDefinition(...))" in message
    assert ran == []


@pytest.mark.asyncio
async def test_a_step_awaited_on_its_own_returning_a_definition_is_refused() -> None:
    # Regression: `await noev_run_payment("x")` outside a saga returned the definition, the
    # nested saga never ran, and nothing said so (in a saga it was refused).
    with pytest.raises(SagaDefinitionError) as raised:
        await noev_run_payment("x")
    message = str(raised.value)
    assert (
        "step 'noev_run_payment' returned the saga definition "
        "<SagaDefinition noev_payment steps=?> instead of running it" in message
    )
    assert "orchestrator.execute(noev_payment(...))" in message
    assert ran == []  # the inner saga never ran


@pytest.mark.asyncio
async def test_a_step_awaited_inside_a_step_returning_a_definition_is_refused() -> None:
    @step
    async def noev_outer(item: str) -> None:
        await noev_run_payment(item)

    async with SagaOrchestrator() as orchestrator:
        with pytest.raises(StepFailed) as raised:
            await orchestrator.execute(SagaDefinition(steps=[noev_outer("x")]))
    # The outer step raised it: its failure, as any exception a step raises.
    assert isinstance(raised.value.__cause__, SagaDefinitionError)
    assert "step 'noev_run_payment' returned the saga definition" in str(raised.value.__cause__)
    assert ran == []


@step
async def noev_refund(item: str) -> SagaDefinition:
    return noev_payment(item)


@step
async def noev_hold(item: str) -> list[str]:
    return [f"held {item}"]


noev_hold.compensate(noev_refund)  # a step declared as the compensation


@pytest.mark.asyncio
async def test_a_step_declared_as_a_compensation_returning_a_definition_is_named_so() -> None:
    async with SagaOrchestrator(continue_on_compensation_failure=True) as orchestrator:
        with pytest.raises(CompensationFailed) as raised:
            await orchestrator.execute(SagaDefinition(steps=[noev_hold("x"), noev_fail("x")]))
    assert isinstance(raised.value.error, SagaDefinitionError)
    assert "the compensation of step 0 ('noev_hold') returned the saga definition" in str(
        raised.value
    )
    assert ran == []
