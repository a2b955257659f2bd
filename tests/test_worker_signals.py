"""run_worker's SIGTERM handling, with real signals sent to a worker in a child process:
a second SIGTERM stops a worker that is still stopping, and the application's own SIGTERM
handler is called as well while a worker runs, and put back after it."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

GIVE_UP = 60.0

CHILD = """
import asyncio, logging, os, signal, sys
from sagakit import PostgresStore, SagaOrchestrator, SQLiteStore, saga, step
from sagakit.testing import FaultInjector, SimulatedCrash

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="LOG %(message)s")
where, how = sys.argv[1], sys.argv[2]


worker = None  # the worker's task


def cancel_worker(signum=signal.SIGTERM, frame=None):  # an application's handler stopping it
    print("APP HANDLER", signum, flush=True)
    if worker is not None and not worker.done():
        asyncio.get_running_loop().call_soon_threadsafe(worker.cancel)


def remove_handler():  # an application's loop handler removing itself
    print("APP HANDLER", signal.SIGTERM, flush=True)
    asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)


@step(timeout=600)
async def hang() -> None:
    if how == "later-loop-handler":  # set once the worker runs
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, cancel_worker)
    if how == "later-handler":
        signal.signal(signal.SIGTERM, cancel_worker)
    print("HANGING", flush=True)
    await asyncio.Event().wait()


@saga
def stuck():
    yield hang()


def app_handler(signum=signal.SIGTERM, frame=None):
    print("APP HANDLER", signum, flush=True)


async def main() -> None:
    if where.startswith("postgresql://"):
        dsn, schema = where.split("#")
        store = PostgresStore(dsn, schema=schema, connect_timeout=600)
    else:
        store = SQLiteStore(where)
    if how == "crash":  # leave the saga for the worker of the next process
        async with SagaOrchestrator(store) as orchestrator:
            with FaultInjector().crash(hang):
                try:
                    await orchestrator.execute(stuck(), saga_id="s-1")
                except SimulatedCrash:
                    return
    if how.startswith("app-handler"):  # the application's own SIGTERM handler
        signal.signal(signal.SIGTERM, app_handler)
    if how == "app-loop-handler":  # ... set on the event loop
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, app_handler)
    if how == "app-removes-handler":  # ... which removes the loop's SIGTERM handler
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, remove_handler)
    if how == "ignored":  # the process ignores SIGTERM
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    before = signal.getsignal(signal.SIGTERM)
    async with SagaOrchestrator(store) as orchestrator:
        if how == "app-handler-error":  # the worker stops with an error
            async def failing_claim(**options):
                raise RuntimeError("the claim broke")
            store.claim_orphans = failing_claim
        if how == "silent-release":  # a release on a connection gone silent
            async def silent(**options):
                print("RELEASING", flush=True)
                await asyncio.Event().wait()
            store.release_leases = silent
        global worker
        worker = asyncio.create_task(orchestrator.run_worker(poll_interval=0.05))
        try:
            await asyncio.wait([worker])
            if how.startswith("later") and worker.cancelled():
                print("WORKER CANCELLED", flush=True)
            else:
                worker.result()
        except BaseException as error:
            print("RAISED", type(error).__name__, flush=True)
            raise
        finally:
            print("HANDLER RESTORED", signal.getsignal(signal.SIGTERM) == before, flush=True)
            handle = getattr(asyncio.get_running_loop(), "_signal_handlers", {}).get(signal.SIGTERM)
            kept = getattr(handle, "_callback", signal.getsignal(signal.SIGTERM))
            print("APP HANDLER KEPT", kept is cancel_worker, flush=True)
        print("RETURNED", flush=True)
        meta = await orchestrator.get_saga("s-1")
        print("STATUS", meta.status, flush=True)
        if how.startswith(("app", "later")) or how == "ignored":  # once it stopped
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(0.1)
            print("AFTER", flush=True)


asyncio.run(main())
"""


class Child:
    """The ``CHILD`` worker process, its output (stdout and stderr) read line by line."""

    def __init__(self, where: str, how: str) -> None:
        subprocess.run([sys.executable, "-c", CHILD, where, "crash"], check=True, timeout=GIVE_UP)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, where, how],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert self.proc.stdout is not None
        self.pump = threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True)
        self.pump.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str) -> None:
        while True:
            try:
                line = self.lines.get(timeout=GIVE_UP)
            except queue.Empty:
                pytest.fail(f"the worker never printed {text!r}:\n" + "\n".join(self.seen))
            self.seen.append(line)
            if text in line:
                return

    def ended(self) -> list[str]:
        """Everything it printed, once it exited (killed if it has not within GIVE_UP)."""
        try:
            self.proc.wait(GIVE_UP)
        except subprocess.TimeoutExpired:
            self.close()
            pytest.fail("the worker did not stop:\n" + "\n".join(self.seen))
        self.pump.join(GIVE_UP)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.seen

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.pump.join(GIVE_UP)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def start(where: str, how: str = "plain") -> Iterator[Child]:
    child = Child(where, how)
    try:
        yield child
    finally:
        child.close()


@pytest.fixture
def sqlite_child(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Child]:
    yield from start(str(tmp_path / "log.db"), getattr(request, "param", "plain"))


@pytest.fixture
def postgres_child(dsn: str, schema: str, request: pytest.FixtureRequest) -> Iterator[Child]:
    yield from start(f"{dsn}#{schema}", getattr(request, "param", "plain"))


def sigterm_twice(child: Child, stopping: str) -> list[str]:
    """SIGTERM to ``child`` once its step hangs, again once it says ``stopping``: all it
    said by its end."""
    child.wait_for("HANGING")
    child.proc.send_signal(signal.SIGTERM)
    child.wait_for(stopping)
    child.proc.send_signal(signal.SIGTERM)
    return child.ended()


def test_a_second_sigterm_hands_back_the_sagas_a_sqlite_worker_waits_for(
    sqlite_child: Child,
) -> None:
    # Regression: a SQLite worker stopped by SIGTERM waits for its running sagas to end;
    # the docs said to stop it again to hand them back, but a second SIGTERM (what a
    # process manager sends) was ignored: the worker waited on until SIGKILL.
    seen = sigterm_twice(sqlite_child, "waiting for 1 running saga to end")
    assert sqlite_child.proc.returncode == 0, seen
    assert "RETURNED" in seen
    assert "HANDLER RESTORED True" in seen
    assert "STATUS executing" in seen  # handed back, for the next recovery


@pytest.mark.parametrize("postgres_child", ["silent-release"], indirect=True)
def test_a_second_sigterm_stops_a_postgres_worker_whose_release_gets_no_answer(
    postgres_child: Child,
) -> None:
    # Regression: a PostgreSQL worker stopped by SIGTERM whose release got no answer (a
    # connection gone silent) waited connect_timeout (here 600 s) whatever SIGTERM came next.
    seen = sigterm_twice(postgres_child, "RELEASING")
    assert postgres_child.proc.returncode == 0, seen
    assert (
        "LOG sagakit worker could not release its saga leases: stopped by a second SIGTERM" in seen
    )
    assert "RETURNED" in seen
    assert "HANDLER RESTORED True" in seen


@pytest.mark.parametrize("sqlite_child", ["app-handler", "app-loop-handler"], indirect=True)
def test_the_applications_sigterm_handler_is_called_while_a_worker_runs(
    sqlite_child: Child,
) -> None:
    # Regression: while a worker ran, SIGTERM went to the worker alone: the application's
    # own handler (a web server's shutdown, say) never heard of it, and the process
    # kept serving once the worker had stopped.
    seen = sigterm_twice(sqlite_child, "waiting for 1 running saga to end")
    assert sqlite_child.proc.returncode == 0, seen
    assert "HANDLER RESTORED True" in seen
    # Once for each SIGTERM to the worker, and once more after it: put back.
    assert seen.count("APP HANDLER 15") == 3, seen
    assert seen.index("RETURNED") < seen.index("AFTER")


@pytest.mark.parametrize("sqlite_child", ["app-handler-error"], indirect=True)
def test_a_worker_stopped_by_an_error_puts_the_applications_sigterm_handler_back(
    sqlite_child: Child,
) -> None:
    seen = sqlite_child.ended()
    assert sqlite_child.proc.returncode == 1, seen
    assert "RAISED RuntimeError" in seen
    assert "HANDLER RESTORED True" in seen


@pytest.mark.parametrize("sqlite_child", ["later-loop-handler", "later-handler"], indirect=True)
def test_a_sigterm_handler_the_application_sets_while_a_worker_runs_stays_after_it(
    sqlite_child: Child,
) -> None:
    # Regression: a handler the application set after the worker started (on the loop,
    # which replaces the worker's there; or with signal.signal(), which the worker's
    # hears along with it) was replaced, once the worker stopped, by the handler in place
    # before the worker (here the default action): the next SIGTERM killed the process.
    # The application's handler cancels the worker each time (the second time, the
    # worker stops waiting for its saga).
    seen = sigterm_twice(sqlite_child, "waiting for 1 running saga to end")
    assert sqlite_child.proc.returncode == 0, seen
    assert "WORKER CANCELLED" in seen
    assert "APP HANDLER KEPT True" in seen
    assert seen.count("APP HANDLER 15") == 3, seen  # twice to stop the worker, once after it
    assert "STATUS executing" in seen  # handed back, for the next recovery
    assert seen.index("RETURNED") < seen.index("AFTER")


@pytest.mark.parametrize("sqlite_child", ["app-removes-handler"], indirect=True)
def test_an_application_handler_removing_the_loops_sigterm_handler_removes_the_workers(
    sqlite_child: Child,
) -> None:
    # As documented: the loop has one SIGTERM handler, the worker's while it runs (it
    # calls the application's). An application handler removing the loop's SIGTERM
    # handler removes the worker's, and the next SIGTERM has the default action: here it
    # kills the worker waiting for its saga (SQLite), which is left for the next recovery.
    seen = sigterm_twice(sqlite_child, "waiting for 1 running saga to end")
    assert sqlite_child.proc.returncode == -signal.SIGTERM, seen
    assert seen.count("APP HANDLER 15") == 1, seen


@pytest.mark.parametrize("sqlite_child", ["ignored"], indirect=True)
def test_a_worker_stops_on_sigterm_in_a_process_that_ignores_it(sqlite_child: Child) -> None:
    # As documented: handle_signals=True (the default) stops the worker on SIGTERM even if
    # the process ignores SIGTERM (SIG_IGN); the process ignores it again once the worker
    # stopped. (handle_signals=False keeps the worker running through SIGTERM.)
    seen = sigterm_twice(sqlite_child, "waiting for 1 running saga to end")
    assert sqlite_child.proc.returncode == 0, seen
    assert "HANDLER RESTORED True" in seen
    assert "STATUS executing" in seen
    assert "AFTER" in seen  # the SIGTERM sent after the worker stopped was ignored
