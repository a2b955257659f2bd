"""sagakit against hand-written asyncio sagas, in one process and one run.

A 10-step saga of no-op steps (each returns one small event, timeout 10 s, each with a
compensation) runs through sagakit and through the equivalent hand-written code:
``async with asyncio.timeout(10)`` around each step, try/except, and a list of completed
compensations run in reverse. Paths: success, failure (step 10 raises) and 1,000 sagas
at once through ``asyncio.gather``. Prints microseconds per saga and the ratio
sagakit / hand-written (lower is better; the target is at most 0.5).

    python benchmarks/bench_core.py [--quick]

sagakit's own log records are switched off (the hand-written code logs nothing); the
cost of the default WARNING record per failure is printed separately.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sagakit import SagaDefinition, SagaOrchestrator, saga, step

STEPS = 10


@dataclass(frozen=True, slots=True)
class Done:
    index: int


class Boom(Exception):
    pass


def make_steps(fail_last: bool) -> list[Any]:
    """Ten steps called with their index, as ``hand_step(i, ...)`` is below."""
    steps = []
    for index in range(STEPS):
        fails = fail_last and index == STEPS - 1

        async def forward(i: int, fails: bool = fails) -> list[Done]:
            if fails:
                raise Boom(i)
            return [Done(i)]

        async def undo(i: int, fails: bool = fails) -> None:
            return None

        forward.__name__ = f"step_{index}"
        the_step = step(timeout=10)(forward)
        the_step.compensate(undo)
        steps.append(the_step)
    return steps


# ----------------------------------------------------------------- hand-written


async def hand_step(i: int, fails: bool) -> list[Done]:
    if fails:
        raise Boom(i)
    return [Done(i)]


async def hand_undo(i: int) -> None:
    return None


async def hand_written(fail_last: bool) -> list[Any]:
    events: list[Any] = []
    completed: list[int] = []
    try:
        for i in range(STEPS):
            async with asyncio.timeout(10):
                result = await hand_step(i, fail_last and i == STEPS - 1)
            events.extend(result)
            completed.append(i)
    except Exception:
        for i in reversed(completed):
            await hand_undo(i)
        raise
    return events


async def hand_written_timed_undo(fail_last: bool) -> list[Any]:
    """The same with a timeout around each compensation too, as sagakit enforces."""
    events: list[Any] = []
    completed: list[int] = []
    try:
        for i in range(STEPS):
            async with asyncio.timeout(10):
                result = await hand_step(i, fail_last and i == STEPS - 1)
            events.extend(result)
            completed.append(i)
    except Exception:
        for i in reversed(completed):
            async with asyncio.timeout(10):
                await hand_undo(i)
        raise
    return events


# --------------------------------------------------------------------- timing

Run = Callable[[], Awaitable[Any]]


async def per_saga_sequential(run: Run, n: int) -> float:
    """One saga after another; the loop gets a turn every 100 sagas, as in any service
    (without it, cancelled timer handles pile up in the loop's heap and slow every
    ``asyncio.timeout`` down)."""
    started = time.perf_counter()
    for i in range(n):
        try:  # noqa: SIM105 - cheaper than contextlib.suppress, for both sides alike
            await run()
        except Exception:
            pass
        if i % 100 == 99:
            await asyncio.sleep(0)
    return (time.perf_counter() - started) / n * 1e6


async def per_saga_gathered(run: Run, n: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(run() for _ in range(n)), return_exceptions=True)
    return (time.perf_counter() - started) / n * 1e6


async def best(
    measure: Callable[[Run, int], Awaitable[float]], run: Run, n: int, repeats: int
) -> float:
    return min([await measure(run, n) for _ in range(repeats)])


async def main(quick: bool) -> None:
    n = 2_000 if quick else 20_000
    repeats = 3 if quick else 7
    logging.getLogger("sagakit").setLevel(logging.CRITICAL)
    orchestrator = SagaOrchestrator(history_limit=1_000)
    ok_steps, failing_steps = make_steps(False), make_steps(True)

    ok_list = SagaDefinition(steps=[s(i) for i, s in enumerate(ok_steps)])
    failing_list = SagaDefinition(steps=[s(i) for i, s in enumerate(failing_steps)])

    @saga
    def ok_generator() -> Any:
        for i, s in enumerate(ok_steps):
            yield s(i)

    @saga
    def failing_generator() -> Any:
        for i, s in enumerate(failing_steps):
            yield s(i)

    cases: list[tuple[str, Callable[[Run, int], Awaitable[float]], int, dict[str, Run]]] = [
        (
            "success",
            per_saga_sequential,
            n,
            {
                "hand-written": lambda: hand_written(False),
                "sagakit list": lambda: orchestrator.execute(ok_list),
                "sagakit generator": lambda: orchestrator.execute(ok_generator()),
            },
        ),
        (
            "failure (step 10 raises)",
            per_saga_sequential,
            n,
            {
                "hand-written": lambda: hand_written(True),
                "hand-written, timed undo": lambda: hand_written_timed_undo(True),
                "sagakit list": lambda: orchestrator.execute(failing_list),
                "sagakit generator": lambda: orchestrator.execute(failing_generator()),
            },
        ),
        (
            "1,000 at once (gather)",
            per_saga_gathered,
            1_000,
            {
                "hand-written": lambda: hand_written(False),
                "sagakit list": lambda: orchestrator.execute(ok_list),
                "sagakit generator": lambda: orchestrator.execute(ok_generator()),
            },
        ),
    ]
    print(f"Python {sys.version.split()[0]}, {STEPS}-step saga, best of {repeats} rounds")
    print(f"{'path':<26} {'variant':<26} {'µs/saga':>9} {'ratio':>7}")
    for path, measure, size, variants in cases:
        # Round-robin rounds, best of each: a burst of load elsewhere hits every
        # variant alike instead of one of them.
        results = {name: float("inf") for name in variants}
        for _ in range(repeats):
            for name, run in variants.items():
                results[name] = min(results[name], await measure(run, size))
        baseline = results["hand-written"]
        for name, micros in results.items():
            print(f"{path:<26} {name:<26} {micros:9.1f} {micros / baseline:7.2f}")
    logging.getLogger("sagakit").setLevel(logging.NOTSET)
    logged = await best(per_saga_sequential, lambda: orchestrator.execute(failing_list), n, repeats)
    print(f"failure path with sagakit's default WARNING records on: {logged:.1f} µs/saga")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sagas, for a smoke run")
    asyncio.run(main(parser.parse_args().quick))
