"""FaultInjector: the end of a ``with`` block ends its faults for every task, and a
fault class must be buildable from a message.

Regressions: a saga started inside the block still got the faults after it ended
(docs/testing.md, "Scope": "never after the block"); a fault class needing more than a
message (``CalledProcessError``) broke the saga with a bare ``TypeError``.
"""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import pytest

from sagakit import SagaDefinitionError, SagaOrchestrator, saga, step
from sagakit.testing import FaultInjector


@step
async def fs_wait(gate: asyncio.Event) -> None:
    await gate.wait()


@step
async def fs_ship(gate: asyncio.Event) -> str:
    return "shipped"


@saga
def fs_order(gate: asyncio.Event) -> Any:
    yield fs_wait(gate)
    yield fs_ship(gate)


@pytest.mark.asyncio
@pytest.mark.parametrize("use_activate", [False, True])
async def test_faults_end_with_their_block_also_for_tasks_started_in_it(
    use_activate: bool,
) -> None:
    gate = asyncio.Event()
    injector = FaultInjector().fail("fs_ship")
    scope = injector.activate() if use_activate else injector
    with scope:
        # A saga started inside the block, still running when the block ends.
        task = asyncio.create_task(SagaOrchestrator().execute(fs_order(gate)))
        await asyncio.sleep(0)
    gate.set()  # fs_ship runs only now, after the block
    assert await task == ["shipped"]
    assert injector.fired == []


@pytest.mark.asyncio
async def test_an_outer_block_still_applies_once_an_inner_one_ended() -> None:
    gate = asyncio.Event()
    outer = FaultInjector().fail("fs_ship", ValueError("outer"))
    inner = FaultInjector()
    with outer:
        with inner:
            task = asyncio.create_task(SagaOrchestrator().execute(fs_order(gate)))
            await asyncio.sleep(0)
        gate.set()
        with pytest.raises(Exception, match="outer"):
            await task
    assert [f.step_name for f in outer.fired] == ["fs_ship"]


@pytest.mark.asyncio
async def test_exiting_a_block_from_a_task_that_inherited_it_is_a_clear_error() -> None:
    injector = FaultInjector()
    with injector:

        async def leave() -> None:
            injector.__exit__(None, None, None)

        with pytest.raises(RuntimeError, match="did not enter it"):
            await asyncio.create_task(leave())


def test_a_fault_class_that_cannot_be_built_from_a_message_is_refused() -> None:
    with pytest.raises(SagaDefinitionError, match="pass an instance instead"):
        FaultInjector().fail(fs_ship, subprocess.CalledProcessError)
    # An instance of it is fine.
    FaultInjector().fail(fs_ship, subprocess.CalledProcessError(1, "make"))
