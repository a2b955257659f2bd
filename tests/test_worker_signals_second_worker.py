"""run_worker's SIGTERM handling when a second worker starts on the same event loop after
the application replaced the first worker's SIGTERM handler there (in a child process,
with real signals).

The handler the application set is its last word for the worker that ran before it (it
stops that one itself); a worker started afterwards with ``handle_signals=True`` sets its
own again, which calls the application's, and puts the application's back when it stops.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

GIVE_UP = 60.0  # seconds before the child is declared hung (a guard, not a measurement)

CHILD = """
import asyncio, signal, sys
from sagakit import SagaOrchestrator, SQLiteStore

heard = []


async def main() -> None:
    loop = asyncio.get_running_loop()
    first_stop = asyncio.Event()

    def app_handler():  # the application's own, set once the first worker runs
        print("APP HANDLER", flush=True)
        heard.append(1)
        first_stop.set()  # it stops the worker whose handler it replaced itself

    async with SagaOrchestrator(SQLiteStore(sys.argv[1])) as orchestrator:
        first = asyncio.create_task(orchestrator.run_worker(poll_interval=0.05, stop=first_stop))
        while loop._signal_handlers.get(signal.SIGTERM) is None:
            await asyncio.sleep(0.01)  # until the first worker runs, its handler set
        loop.add_signal_handler(signal.SIGTERM, app_handler)
        second = asyncio.create_task(orchestrator.run_worker(poll_interval=0.05))
        for _ in range(500):  # until the second worker runs, its handler set (a guard)
            if loop._signal_handlers[signal.SIGTERM]._callback is not app_handler:
                break
            await asyncio.sleep(0.01)
        signal.raise_signal(signal.SIGTERM)
        done, _ = await asyncio.wait([first, second], timeout=10)
        print("FIRST STOPPED", first in done, flush=True)
        print("SECOND STOPPED", second in done, flush=True)
        for task in (first, second):
            task.cancel()
        await asyncio.gather(first, second, return_exceptions=True)
        handle = loop._signal_handlers.get(signal.SIGTERM)
        print("APP HANDLER BACK", getattr(handle, "_callback", None) is app_handler, flush=True)
        signal.raise_signal(signal.SIGTERM)  # the application's alone now
        await asyncio.sleep(0.1)
        print("HEARD", len(heard), flush=True)


asyncio.run(main())
"""


def test_a_worker_started_after_the_application_replaced_the_first_ones_handler_hears_sigterm(
    tmp_path: Path,
) -> None:
    # Regression: the second worker joined the first one's handler, which the application
    # had replaced on the loop: SIGTERM reached the application's handler only, and the
    # second worker, started with handle_signals=True, never stopped.
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "log.db")],
        capture_output=True,
        text=True,
        timeout=GIVE_UP,
    )
    seen = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    assert seen == [
        "APP HANDLER",  # called by the second worker's handler
        "FIRST STOPPED True",  # by the application's handler
        "SECOND STOPPED True",  # by its own
        "APP HANDLER BACK True",
        "APP HANDLER",  # the application's alone, once both stopped
        "HEARD 2",
    ], done.stdout + done.stderr
