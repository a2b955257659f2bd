"""Sagas for the PostgreSQL worker tests: every step and compensation logs its effect.

The effects go to ``<schema>.effects`` through a connection of their own, outside
the saga log, so a test can count how often each step really ran.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

from sagakit import current_step, saga, step


@dataclass
class Settings:
    """Per-process knobs, set by ``worker.py`` from its command line."""

    pool: Any = None
    schema: str = ""
    worker: str = ""
    hang_at: int = -1  # step index at which this process hangs inside the step
    hang: float = 0.0
    hang_file: str = ""  # or hang until this file exists


SETTINGS = Settings()


async def record_effect(kind: str) -> None:
    ctx = current_step()
    assert ctx is not None
    async with SETTINGS.pool.connection() as conn:
        await conn.execute(
            f'INSERT INTO "{SETTINGS.schema}".effects (saga_id, step_index, kind, worker) '
            "VALUES (%s, %s, %s, %s)",
            (ctx.saga_id, ctx.step_index, kind, SETTINGS.worker),
        )


def _wait_for_file(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.02)


@step(timeout=120)
async def work(n: int) -> list[str]:
    await record_effect("do")
    ctx = current_step()
    assert ctx is not None
    if ctx.step_index == SETTINGS.hang_at:
        print(f"HANG {ctx.saga_id}", flush=True)
        await asyncio.sleep(SETTINGS.hang)
        if SETTINGS.hang_file:
            await asyncio.to_thread(_wait_for_file, SETTINGS.hang_file)
    return [f"{ctx.saga_id}:{n}"]


@work.compensate
async def undo_work(result: list[str], n: int) -> None:
    await record_effect("undo")


@saga
def chain(steps: int):  # type: ignore[no-untyped-def]
    for n in range(steps):
        yield work(n)
