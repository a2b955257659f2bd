"""Faults on a step awaited on its own, outside a saga or inside another saga's step."""

from __future__ import annotations

from typing import Any

import pytest

from sagakit import Retry, SagaOrchestrator, StepFailed, StepTimeout, saga, step
from sagakit.testing import FaultInjector, InjectedFault, SimulatedCrash, run_fault_matrix

calls: list[str] = []


@step(timeout=7, retry=Retry(attempts=3, backoff=0, jitter=0, on=ConnectionError))
async def look_up(item: str) -> str:
    calls.append(f"look_up {item}")
    return f"price of {item}"


@step
async def quote(item: str) -> str:
    return await look_up(item)  # awaited on its own, inside a saga step


@saga(name="testing_step_alone.pricing")
def pricing(item: str) -> Any:
    yield quote(item)
    yield look_up(item)


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    calls.clear()


@pytest.mark.asyncio
async def test_a_fault_hits_a_step_awaited_outside_any_saga() -> None:
    # It was ignored: the step ran, and the test checked nothing of its failure path.
    with FaultInjector().fail(look_up) as faults, pytest.raises(InjectedFault) as info:
        await look_up("pen")
    assert str(info.value) == "injected into step 'look_up', attempt 1"
    assert calls == []
    [fired] = faults.fired
    assert (fired.step_name, fired.step_index, fired.attempt) == ("look_up", None, 1)
    with FaultInjector().timeout("look_up"), pytest.raises(StepTimeout) as timed_out:
        await look_up("pen")
    assert (timed_out.value.step_index, timed_out.value.timeout) == (-1, 7)
    with FaultInjector().crash(look_up, after=True), pytest.raises(SimulatedCrash):
        await look_up("pen")
    assert calls == ["look_up pen"]  # it acted, then "the process died"


@pytest.mark.asyncio
async def test_a_step_awaited_on_its_own_retries_an_injected_fault() -> None:
    with FaultInjector().fail(look_up, ConnectionError("busy"), times=2) as faults:
        assert await look_up("pen") == "price of pen"
    assert [fired.attempt for fired in faults.fired] == [1, 2]
    assert calls == ["look_up pen"]
    with FaultInjector().fail(look_up, ConnectionError("down")), pytest.raises(ConnectionError):
        await look_up("pen")  # every attempt, then its own exception (no StepFailed)


@pytest.mark.asyncio
async def test_a_step_awaited_inside_a_saga_step_is_faulted_but_has_no_index() -> None:
    with FaultInjector().fail(look_up, times=1), pytest.raises(StepFailed) as info:
        await SagaOrchestrator().execute(pricing("pen"))
    assert (info.value.step_name, type(info.value.error)) == ("quote", InjectedFault)
    # index=0 aims at the saga's step 0 (quote), not at what quote awaits; index=1 hits
    # the saga's own look_up step only.
    with FaultInjector().fail(look_up, index=0) as faults:
        await SagaOrchestrator().execute(pricing("pen"))
    assert faults.fired == []
    with FaultInjector().fail(look_up, index=1) as faults, pytest.raises(StepFailed) as info:
        await SagaOrchestrator().execute(pricing("pen"))
    assert info.value.step_index == 1
    assert [fired.step_index for fired in faults.fired] == [1]


@pytest.mark.asyncio
async def test_the_fault_matrix_leaves_a_step_awaited_inside_a_step_alone() -> None:
    report = await run_fault_matrix(pricing("pen"))
    assert [(case.index, case.step) for case in report.cases] == [
        (0, "quote"),
        (0, "quote"),
        (1, "look_up"),
        (1, "look_up"),
    ]
