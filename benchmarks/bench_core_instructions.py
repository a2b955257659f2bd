"""bench_core's comparison counted in CPU instructions, which no load on the machine moves.

Each case runs under ``valgrind --tool=callgrind`` twice, with 1,000 and 3,000 sagas; the
difference divided by 2,000 is the instructions per saga, start-up excluded (the garbage
collector's work included). Prints them and the ratio sagakit / hand-written per path.
Needs valgrind; takes about a minute per case (nine cases).

    python benchmarks/bench_core_instructions.py [--cases ok-hand,ok-list,...]

``--run CASE N`` is what valgrind runs: N sagas of one case, nothing printed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from bench_core import hand_written, make_steps  # beside this file: on sys.path[0]

from sagakit import SagaDefinition, SagaOrchestrator, saga

PATHS = ("ok", "fail", "gather")
VARIANTS = ("hand", "list", "gen")
CASES = [f"{path}-{variant}" for path in PATHS for variant in VARIANTS]


def _runner(case: str) -> Callable[[], Awaitable[Any]]:
    path, variant = case.split("-")
    fails = path == "fail"
    if variant == "hand":
        return lambda: hand_written(fails)
    logging.getLogger("sagakit").setLevel(logging.CRITICAL)
    orchestrator = SagaOrchestrator(history_limit=1_000)
    steps = make_steps(fails)
    if variant == "list":
        definition = SagaDefinition(steps=[s(i) for i, s in enumerate(steps)])
        return lambda: orchestrator.execute(definition)

    @saga
    def generator() -> Any:
        for i, s in enumerate(steps):
            yield s(i)

    return lambda: orchestrator.execute(generator())


async def _run(case: str, sagas: int) -> None:
    run = _runner(case)
    if case.startswith("gather"):
        for _ in range(sagas // 1_000):
            await asyncio.gather(*(run() for _ in range(1_000)), return_exceptions=True)
        return
    for i in range(sagas):
        try:  # noqa: SIM105 - as in bench_core
            await run()
        except Exception:
            pass
        if i % 100 == 99:
            await asyncio.sleep(0)


def _instructions(case: str, sagas: int) -> int:
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--run",
            case,
            str(sagas),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{done.stderr}")
    return int(found.group(1))


def main(cases: list[str]) -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed: apt install valgrind")
    counts: dict[str, int] = {}
    print(f"{'case':<12} {'instructions/saga':>18} {'ratio':>7}")
    for case in cases:
        counts[case] = (_instructions(case, 3_000) - _instructions(case, 1_000)) // 2_000
        hand = counts.get(case.split("-")[0] + "-hand")
        ratio = f"{counts[case] / hand:7.2f}" if hand else ""
        print(f"{case:<12} {counts[case]:>18,} {ratio}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--run", nargs=2, metavar=("CASE", "SAGAS"))
    options = parser.parse_args()
    if options.run:
        asyncio.run(_run(options.run[0], int(options.run[1])))
    else:
        main(options.cases.split(","))
