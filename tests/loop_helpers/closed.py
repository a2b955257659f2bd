"""Event loops closed while sagas ran: what ``loop.close()`` with tasks still pending
leaves, and what the garbage collector then does to those tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

Then = Callable[[list[asyncio.Task[Any]]], Awaitable[None]]


async def nothing(tasks: list[asyncio.Task[Any]]) -> None:
    pass


def abandon(
    coroutines: list[Coroutine[Any, Any, Any]], then: Then = nothing, turns: int = 50
) -> list[asyncio.Task[Any]]:
    """Run each of ``coroutines`` as a task of a new loop, run it ``turns`` turns (by then
    each waits), ``then(tasks)``, and close the loop with the tasks still pending: return
    every task it left pending (those started here, and any they started)."""
    loop = asyncio.new_event_loop()
    tasks = [loop.create_task(coroutine) for coroutine in coroutines]

    async def until_waiting() -> None:
        for _ in range(turns):
            await asyncio.sleep(0)
        await then(tasks)

    loop.run_until_complete(until_waiting())
    left = list(asyncio.all_tasks(loop))
    loop.close()
    return left


def close_in_a_later_loop(
    tasks: list[asyncio.Task[Any]], then: Callable[[], Awaitable[T]]
) -> tuple[T, list[str]]:
    """What the garbage collector does to the pending tasks of a closed loop, during the
    next ``asyncio.run()``: close their coroutines. Then ``then()`` in that run. Returns
    its result and what closing raised (it must raise nothing)."""
    raised: list[BaseException] = []

    async def later() -> T:
        for task in tasks:
            try:
                task.get_coro().close()  # type: ignore[union-attr]
            except BaseException as error:  # (not raised from a test's own frame)
                raised.append(error)
        return await then()

    found = asyncio.run(later())
    return found, [describe(error) for error in raised]


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
