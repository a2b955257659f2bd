"""The orchestrator's methods defined in its helper modules (_recording, _ending,
_compensating) are named as SagaOrchestrator's: in coroutine and task reprs, and in the
frames that profilers and debuggers show."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

from sagakit import SagaOrchestrator, StepFailed, saga, step


def test_every_method_is_named_as_the_orchestrator_s() -> None:
    methods = {
        name: value for name, value in vars(SagaOrchestrator).items() if inspect.isfunction(value)
    }
    assert {"_undo", "_finish", "_emit"} <= methods.keys()  # one of each module
    for name, method in methods.items():
        assert method.__qualname__ == f"SagaOrchestrator.{name}"
        assert method.__code__.co_qualname == f"SagaOrchestrator.{name}"


def _awaited_names(task: asyncio.Task[Any]) -> list[str]:
    """The qualified names of the coroutines a suspended task awaits, outermost first."""
    names: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        if isinstance(awaited, asyncio.Task):
            awaited = awaited.get_coro()
        if inspect.iscoroutine(awaited):
            names.append(awaited.__qualname__)
            awaited = awaited.cr_await
        elif inspect.isgenerator(awaited):
            awaited = awaited.gi_yieldfrom
        else:
            break
    return names


@pytest.mark.asyncio
async def test_a_compensating_run_awaits_coroutines_named_as_the_orchestrator_s() -> None:
    undoing = asyncio.Event()
    release = asyncio.Event()

    @step
    async def names_reserve() -> str:
        return "reserved"

    @names_reserve.compensate
    async def names_unreserve(_: str) -> None:
        undoing.set()
        await release.wait()

    @step
    async def names_ship() -> None:
        raise RuntimeError("no carrier")

    @saga
    def names_order() -> Any:
        yield names_reserve()
        yield names_ship()

    orchestrator = SagaOrchestrator()
    run = asyncio.create_task(orchestrator.execute(names_order()))
    await undoing.wait()
    names = _awaited_names(run)
    release.set()
    with pytest.raises(StepFailed):
        await run
    await orchestrator.close()

    assert "SagaOrchestrator._compensate" in names
    assert "SagaOrchestrator._undo" in names
    assert not [name for name in names if name.startswith("_")]
