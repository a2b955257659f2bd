"""How the SQLite store decides that a saga's owner process is dead.

Regressions: a killed owner not yet reaped (a zombie) counted as alive, so its sagas
were never recovered; a live owner in another PID namespace with the same hostname
(another container) counted as dead, so its running saga was claimed. The process
tests run a real child that starts a saga on a shared SQLite log.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sagakit import SagaOrchestrator, SQLiteStore, StoreError, saga, step
from sagakit.stores._sqlite_owner import current_owner, owner_alive

CHILD = r"""
import asyncio, os, signal, sys
from sagakit import SagaOrchestrator, SQLiteStore, saga, step

DB, MODE, FLAG = sys.argv[1], sys.argv[2], sys.argv[3]

@step
async def ow_hold(x: str) -> str:
    print("started", flush=True)
    if MODE == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    while not os.path.exists(FLAG):          # "live": still working on the step
        await asyncio.sleep(0.02)
    return x

@saga
def ow_owned(x: str):
    yield ow_hold(x)

async def main() -> None:
    async with SagaOrchestrator(SQLiteStore(DB)) as orchestrator:
        await orchestrator.execute(ow_owned("x"), saga_id="ow-owned")

asyncio.run(main())
"""


def _state(pid: int) -> str:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return data[data.rfind(b")") + 2 :].split()[0].decode()


def _wait_started(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "started", proc.stderr.read() if proc.stderr else line


async def _claim(db: str) -> list[str]:
    store = SQLiteStore(db)
    try:
        return [orphan.saga_id for orphan in await store.claim_orphans(names=None, limit=10)]
    finally:
        await store.close()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_dead_but_unreaped_owner_is_dead(tmp_path: Path) -> None:
    """A SIGKILLed owner that its parent has not wait()ed for yet (a zombie) is gone:
    it will never write to the log again, so its saga must be claimable. (In a
    container whose PID 1 does not reap, such a zombie stays forever.)"""
    db = str(tmp_path / "sagas.db")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, db, "die", str(tmp_path / "go")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_started(proc)
        deadline = time.monotonic() + 10
        while _state(proc.pid) != "Z":  # killed, not reaped (no wait() yet)
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert asyncio.run(_claim(db)) == ["ow-owned"]
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_a_live_owner_in_another_pid_namespace_is_not_claimed(tmp_path: Path) -> None:
    """Two containers of one Kubernetes pod (or a `docker run --network host`
    container and the host) share the hostname but not the pid namespace. A live
    owner there must not be taken for dead because its pid means nothing here."""
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", "true"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip("unprivileged pid namespaces are not available here")
    db = str(tmp_path / "sagas.db")
    flag = tmp_path / "go"
    proc = subprocess.Popen(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "--pid",
            "--fork",
            "--mount-proc",
            sys.executable,
            "-c",
            CHILD,
            db,
            "live",
            str(flag),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_started(proc)
        # The owner is alive and still inside its step: nobody else may take the saga.
        assert asyncio.run(_claim(db)) == []
    finally:
        flag.touch()
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()


FORKED = r"""
import asyncio, os, sys
from sagakit import SagaDefinition, SagaOrchestrator, SQLiteStore, StoreError, step

@step
async def fk_step() -> int:
    return 1

store = SQLiteStore(sys.argv[1])
asyncio.run(store.get("warm-up"))  # the store's thread and reader exist before the fork

async def child() -> None:
    try:
        await asyncio.wait_for(store.get("anything"), 10)
    except StoreError as error:
        print("get:", error, flush=True)
    try:
        async with SagaOrchestrator(store) as orchestrator:
            await orchestrator.execute(SagaDefinition("fk").add_step(fk_step()))
    except StoreError as error:
        print("execute:", error, flush=True)

pid = os.fork()
if pid == 0:
    asyncio.run(child())
    os._exit(0)
os.waitpid(pid, 0)
"""


def test_a_store_carried_across_fork_is_refused_in_the_child(tmp_path: Path) -> None:
    """A store opened before fork() (at import, by a pre-forking server) hung the child's
    first read forever (the writer thread does not survive a fork), and its writes ran
    the parent's SQLite connection under the parent's owner token: sagas a crashed
    child left behind were never recovered while the parent lived."""
    db = str(tmp_path / "sagas.db")
    done = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", FORKED, db],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout + done.stderr
    assert lines[0].startswith("get: ")
    assert lines[1].startswith("execute: ")
    assert all("before a fork()" in line for line in lines)


def test_tokens_without_a_pid_namespace_are_read_as_before() -> None:
    # Logs written before the namespace was recorded hold "<host>/<pid>/<start>".
    host, pid, start, namespace = current_owner().split("/")
    assert owner_alive(f"{host}/{pid}/{start}")  # this process
    assert not owner_alive(f"{host}/{pid}/1")  # this pid, another start: not us
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert not owner_alive(f"{host}/{child.stdout.strip()}/?")  # gone
    assert owner_alive(f"other-host/{pid}/{start}")  # elsewhere: never presumed dead
    assert owner_alive(f"{host}/{pid}/{start}/pid:[1]")  # another PID namespace
    assert owner_alive(f"{host}/{pid}/{start}/{namespace}")


@pytest.mark.asyncio
async def test_release_refuses_a_saga_this_store_is_running(tmp_path: Path) -> None:
    # Regression: store.release(id) in the process running the saga (an admin endpoint,
    # say) cleared its owner while it ran: a recovery elsewhere then claimed it and ran
    # its step a second time.
    runs: list[str] = []
    started, go_on = asyncio.Event(), asyncio.Event()

    @step
    async def so_hold(n: str) -> None:
        runs.append(n)
        started.set()
        await go_on.wait()

    @saga(name="test_sqlite_owners.so_held")
    def so_held(n: str) -> Any:
        return [so_hold(n)]

    store = SQLiteStore(tmp_path / "sagas.db")
    async with SagaOrchestrator(store) as orchestrator:
        running = asyncio.create_task(orchestrator.execute(so_held("a"), saga_id="held-a"))
        await started.wait()
        with pytest.raises(StoreError, match="'held-a' is running in this store"):
            await store.release("held-a")
        async with SagaOrchestrator(SQLiteStore(tmp_path / "sagas.db")) as other:
            assert await other.recover() == []  # still owned: not claimed, not run again
        go_on.set()
        await running
    assert runs == ["a"]
