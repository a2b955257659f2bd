"""Durable sagas on SQLite: sagakit against hand-written logging, in one run.

A 5-step saga (each step awaits once, like an I/O call, and returns a small dict)
runs durably through ``SagaOrchestrator(store=SQLiteStore(...))`` and through
hand-written code that does one ``INSERT`` + ``COMMIT`` per step with the same
pragmas (WAL, ``synchronous=NORMAL``, busy timeout). Both run sequentially and with
50 sagas in flight. Prints sagas/s for each and the ratio sagakit / hand-written
(higher is better; targets: >= 0.5 sequential, >= 1.0 with 50 in flight).

    python benchmarks/bench_sqlite.py [--sagas 2000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sagakit import SagaOrchestrator, SQLiteStore, saga, step

STEPS = 5
IN_FLIGHT = 50


def _make_step(index: int) -> Any:
    async def forward(order: int) -> dict[str, int]:
        await asyncio.sleep(0)
        return {"step": index, "order": order}

    async def undo(order: int) -> None:
        return None

    forward.__name__ = f"step_{index}"
    the_step = step(timeout=10)(forward)
    the_step.compensate(undo)
    return the_step


STEP_FNS = [_make_step(index) for index in range(STEPS)]
RAW_FNS = [the_step.__wrapped__ for the_step in STEP_FNS]


@saga
def five_steps(order: int):  # type: ignore[no-untyped-def]
    for the_step in STEP_FNS:
        yield the_step(order)


def _fresh(directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    return path


class HandWritten:
    """One INSERT + COMMIT per step on a connection with the store's pragmas."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, timeout=5.0)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("CREATE TABLE log (saga_id TEXT, step INTEGER, result TEXT, at REAL)")
        self.conn.commit()

    async def run(self, order: int) -> list[Any]:
        events = []
        for index, fn in enumerate(RAW_FNS):
            result = await fn(order)
            self.conn.execute(
                "INSERT INTO log VALUES (?, ?, ?, ?)",
                (f"saga-{order}", index, json.dumps(result), time.time()),
            )
            self.conn.commit()
            events.append(result)
        return events


async def _measure(run: Callable[[int], Awaitable[Any]], sagas: int, in_flight: int) -> float:
    counter = iter(range(sagas))

    async def worker() -> None:
        for order in counter:
            await run(order)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return sagas / (time.perf_counter() - started)


async def _sagakit(path: str, sagas: int, in_flight: int) -> tuple[float, int]:
    store = SQLiteStore(path)
    async with SagaOrchestrator(store) as orchestrator:

        async def run(order: int) -> Any:
            return await orchestrator.execute(five_steps(order))

        rate = await _measure(run, sagas, in_flight)
        commits = store.commits
        assert await orchestrator.history_count() == sagas
    return rate, commits


async def _hand(path: str, sagas: int, in_flight: int) -> float:
    hand = HandWritten(path)
    try:
        return await _measure(hand.run, sagas, in_flight)
    finally:
        hand.conn.close()


async def main(sagas: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        print(f"{STEPS}-step saga, {sagas} sagas per measure, best of {rounds} rounds")
        for label, in_flight, target in (("sequential", 1, 0.5), ("50 in flight", IN_FLIGHT, 1.0)):
            best_kit = best_hand = 0.0
            commits = 0
            for round_no in range(rounds):
                kit, commits = await _sagakit(
                    _fresh(directory, f"kit{round_no}.db"), sagas, in_flight
                )
                hand = await _hand(_fresh(directory, f"hand{round_no}.db"), sagas, in_flight)
                best_kit, best_hand = max(best_kit, kit), max(best_hand, hand)
            ratio = best_kit / best_hand
            verdict = "ok" if ratio >= target else "below target"
            print(
                f"{label:>13}: sagakit {best_kit:8.0f} sagas/s ({commits / sagas:.2f} commits/saga)"
                f"   hand-written {best_hand:8.0f} sagas/s   ratio {ratio:.2f}"
                f"  (target >= {target}: {verdict})"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sagas", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="300 sagas, one round")
    options = parser.parse_args()
    if options.quick:
        asyncio.run(main(300, 1))
    else:
        asyncio.run(main(options.sagas, 3))
