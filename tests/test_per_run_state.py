"""A long-running orchestrator keeps no per-run state once its runs end, on every way out.

Its own containers, its watchdog's and its store's go back to what they held before a
batch of runs ended by completion, compensation, a failed compensation, a cancellation
(in a step, between steps, while compensating), a timeout, a BaseException, a refused
log write and a nested saga.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable
from typing import Any

import pytest

from sagakit import SagaOrchestrator, TransitionKind, saga, step
from sagakit._runs import SagaRun
from store_helpers.refusing import refuse_record

pytestmark = pytest.mark.asyncio

orchestrators: list[SagaOrchestrator] = []


class Fatal(BaseException):
    pass


@step
async def first(mode: str) -> str:
    return "first"


@first.compensate
async def undo_first(mode: str) -> None:
    if mode == "compensation fails":
        raise ValueError("cannot undo")
    if mode == "cancelled while compensating":
        await asyncio.sleep(0.01)


@step(timeout=0.05)
async def second(mode: str) -> str:
    if mode in ("compensated", "compensation fails", "cancelled while compensating"):
        raise ValueError("no")
    if mode == "cancelled in a step":
        await asyncio.Event().wait()
    if mode == "timed out":
        await asyncio.sleep(1)
    if mode == "base exception":
        raise Fatal
    if mode == "cancelled between steps":
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # lands once this step returned
    if mode == "nested":
        await orchestrators[-1].execute(inner())
    return "second"


@step
async def third(mode: str) -> str:
    return "third"


@saga(name="per_run_outer")
def outer(mode: str):  # type: ignore[no-untyped-def]
    yield first(mode)
    yield second(mode)
    yield third(mode)


@saga(name="per_run_inner")
def inner():  # type: ignore[no-untyped-def]
    yield third("inner")


MODES = [
    "completed",
    "compensated",
    "compensation fails",
    "cancelled in a step",
    "cancelled between steps",
    "cancelled while compensating",
    "timed out",
    "base exception",
    "nested",
    "log write refused",
]


def sizes(orchestrator: SagaOrchestrator) -> dict[str, int]:
    """The size of every container of the orchestrator, its watchdog, store and writer."""
    found: dict[str, int] = {}
    owners: list[tuple[str, Any]] = [("orchestrator", orchestrator)]
    for name, owner in owners:
        attributes = dict(getattr(owner, "__dict__", {}))
        for slot in getattr(type(owner), "__slots__", ()):
            if hasattr(owner, slot):
                attributes[slot] = getattr(owner, slot)
        for key, value in attributes.items():
            if isinstance(value, dict | set | list):
                found[f"{name}.{key}"] = len(value)
            elif key in ("_watchdog", "_store", "_writer"):
                owners.append((f"{name}.{key}", value))
    found.pop("orchestrator._store._history", None)  # bounded by history_limit
    # Ended runs' entries are dropped lazily, at a later firing (test_watchdog_scale.py).
    found.pop("orchestrator._watchdog._heap", None)
    return found


async def run(orchestrator: SagaOrchestrator, mode: str) -> None:
    store: Any = orchestrator.store
    record = store.record
    if mode == "log write refused":
        refuse_record(store, TransitionKind.STEP_STARTED, 2, after=False)
    task = asyncio.create_task(orchestrator.execute(outer(mode)))
    if mode in ("cancelled in a step", "cancelled while compensating"):
        await asyncio.sleep(0.005)
        task.cancel()
    with contextlib.suppress(BaseException):  # each mode's own outcome is tested elsewhere
        await task
    store.record = record


async def check(orchestrator: SagaOrchestrator) -> None:
    orchestrators.append(orchestrator)
    for mode in MODES:  # once, for the caches any first run fills
        await run(orchestrator, mode)
    await asyncio.sleep(0)
    before = sizes(orchestrator)
    for mode in MODES:
        for _ in range(5):
            await run(orchestrator, mode)
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
        assert sizes(orchestrator) == before, mode
    orchestrators.pop()


async def test_ended_runs_leave_no_per_run_state_in_memory() -> None:
    orchestrator = SagaOrchestrator(history_limit=0)
    await check(orchestrator)
    gc.collect()
    ours = ("per_run_outer", "per_run_inner")  # other tests' runs may still be about
    assert [o for o in gc.get_objects() if type(o) is SagaRun and o.name in ours] == []


async def test_ended_runs_leave_no_per_run_state_in_a_durable_store(
    durable_store: Callable[..., Any],
) -> None:
    async with SagaOrchestrator(durable_store()) as orchestrator:
        await check(orchestrator)
