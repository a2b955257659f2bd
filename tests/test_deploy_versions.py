"""Deploying new code while sagas are in flight: two versions of one saga module, run by
separate processes against one log (a rolling deploy, or a restart after a crash), each
change of docs/durability.md's "Deploying new code" table tried both ways round."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sagakit import SQLiteStore

HELPER = Path(__file__).resolve().parent / "crash_helpers" / "versions.py"

STEPS = """
from sagakit import saga, step
from versions import effect

@step
async def a(n: int) -> int:
    await effect("a")
    return n

@step
async def b(n: int) -> int:
    await effect("b")
    return n

@step
async def c(n: int) -> int:
    await effect("c")
    return n

@step
async def x(n: int) -> int:
    await effect("x")
    return n
"""


def compensation(name: str) -> str:
    return f"""
@{name}.compensate
async def undo_{name}(result: int, n: int) -> None:
    await effect("undo-{name}")
"""


class Deploy:
    """Versions of ``deploymod`` in directories of their own, run against one log."""

    def __init__(self, tmp_path: Path, db: str) -> None:
        self.tmp_path, self.db = tmp_path, db
        self.effects = tmp_path / "effects.log"
        self.stderr = ""

    def version(self, tag: str, sagas: str, compensated: str = "abcx") -> str:
        code = self.tmp_path / tag
        code.mkdir()
        text = STEPS + "".join(compensation(name) for name in compensated) + sagas
        (code / "deploymod.py").write_text(text)
        return str(code)

    def env(self, die_in: str = "", block_in: str = "") -> dict[str, str]:
        return {
            **os.environ,
            "SAGAKIT_CRASH_LOG": str(self.effects),
            "SAGAKIT_DIE_IN": die_in,
            "SAGAKIT_BLOCK_IN": block_in,
            "PYTHONPATH": os.pathsep.join(
                [str(HELPER.parent), str(Path(__file__).resolve().parents[1] / "src")]
            ),
        }

    def child(self, code: str, *argv: str, die_in: str = "") -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, str(HELPER), code, *argv],
            env=self.env(die_in),
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.stderr = done.stderr
        return done

    def crash(self, code: str, saga: str, saga_id: str, die_in: str, *args: str) -> None:
        done = self.child(code, "run", self.db, saga, saga_id, *args or ("1",), die_in=die_in)
        assert done.returncode == -9, done.stderr

    def recover(self, code: str) -> list[list[str]]:
        done = self.child(code, "recover", self.db)
        assert done.returncode == 0, done.stderr
        result: list[list[str]] = json.loads(done.stdout)
        return result

    def ran(self) -> list[str]:
        """The effects so far, each step and compensation once per run of it."""
        if not self.effects.exists():
            return []
        return [line.split()[0] for line in self.effects.read_text().splitlines()]


@pytest.fixture
def deploy(tmp_path: Path) -> Deploy:
    return Deploy(tmp_path, str(tmp_path / "sagas.db"))


def listed(*steps: str) -> str:
    calls = ", ".join(f"{name}(n)" for name in steps)
    return f"\n@saga\ndef transfer(n: int):\n    return [{calls}]\n"


def generator(*steps: str) -> str:
    body = "".join(f"    yield {name}(n)\n" for name in steps)
    return f"\n@saga\ndef transfer(n: int):\n{body}"


def parked(deploy: Deploy) -> dict[str, str]:
    """The dead letters of the log, with why each was parked."""

    async def read() -> dict[str, str]:
        store = SQLiteStore(deploy.db, read_only=True)
        try:
            return {letter.saga_id: letter.reason for letter in await store.dead_letters()}
        finally:
            await store.close()

    return asyncio.run(read())


FORMS = pytest.mark.parametrize("form", [listed, generator])


@FORMS
def test_a_step_added_applies_to_the_steps_a_run_has_not_reached(deploy: Deploy, form: Any) -> None:
    v1 = deploy.version("v1", form("a", "b"))
    v2 = deploy.version("v2", form("a", "b", "c"))
    # v1's run, finished by v2 (the deploy's direction): v2's steps from where it stopped.
    deploy.crash(v1, "transfer", "old-1", "b")
    assert deploy.recover(v2) == [["old-1", "resumed", "completed"]]
    assert deploy.ran() == ["a", "b", "b", "c"]
    assert "the code of saga transfer (old-1) changed since it started" in deploy.stderr
    # v2's run, finished by v1 (a rolling deploy's old worker, a rollback): v1's steps,
    # so it completes without c. Only a new saga name keeps the two apart.
    deploy.crash(v2, "transfer", "new-1", "b")
    assert deploy.recover(v1) == [["new-1", "resumed", "completed"]]
    assert deploy.ran()[4:] == ["a", "b", "b"]


@FORMS
@pytest.mark.parametrize(
    ("old", "new"),
    [
        (("a", "b", "c"), ("a", "c")),  # removed
        (("a", "b", "c"), ("a", "x", "c")),  # renamed
        (("a", "b", "c"), ("a", "c", "b")),  # reordered
        (("a", "b"), ("a", "x", "b")),  # inserted
    ],
)
@pytest.mark.parametrize("rollback", [False, True])
def test_a_step_changed_where_a_run_stands_parks_it_unrun_until_its_version_resumes_it(
    deploy: Deploy, form: Any, old: tuple[str, ...], new: tuple[str, ...], rollback: bool
) -> None:
    if rollback:  # the new code's run, recovered by the old code
        old, new = new, old
    v1, v2 = deploy.version("v1", form(*old)), deploy.version("v2", form(*new))
    deploy.crash(v1, "transfer", "old-1", old[1])
    assert deploy.recover(v2) == [["old-1", "dead_lettered", "executing"]]
    assert deploy.ran() == ["a", old[1]]  # nothing run, nothing compensated
    assert "NonDeterminismError" in parked(deploy)["old-1"]
    # The version it started under finishes it, once an operator hands it back.
    done = deploy.child(v1, "resume", deploy.db, "old-1")
    assert done.returncode == 0, done.stderr
    assert deploy.recover(v1) == [["old-1", "resumed", "completed"]]
    assert deploy.ran() == ["a", old[1], *old[1:]]


def test_a_compensation_added_is_run_by_the_recovery_of_a_run_that_started_without_it(
    deploy: Deploy,
) -> None:
    v1 = deploy.version(
        "v1",
        generator("a", "b", "c").replace("@saga", "@saga(recovery='compensate')"),
        compensated="ac",
    )
    v2 = deploy.version(
        "v2",
        generator("a", "b", "c").replace("@saga", "@saga(recovery='compensate')"),
        compensated="abc",
    )
    deploy.crash(v1, "transfer", "old-1", "c")
    assert deploy.recover(v2) == [["old-1", "compensated", "compensated"]]
    assert deploy.ran() == ["a", "b", "c", "undo-c", "undo-b", "undo-a"]


def test_a_step_renamed_under_its_old_name_with_new_parameters_is_replayed_and_undone(
    deploy: Deploy,
) -> None:
    compensate = "@saga(recovery='compensate')"
    v1 = deploy.version("v1", generator("a", "b", "c").replace("@saga", compensate))
    v2 = deploy.version(
        "v2",
        """
@step(name="b")
async def debit(n: int, fee: int) -> int:
    await effect("debit")
    return n + fee

@debit.compensate
async def refund(result: int, n: int, fee: int) -> None:
    await effect(f"refund-{result}-{n}-{fee}")
"""
        + generator("a", "debit", "c")
        .replace("debit(n)", "debit(n, 5)")
        .replace("@saga", compensate),
    )
    deploy.crash(v1, "transfer", "old-1", "c")
    assert deploy.recover(v2) == [["old-1", "compensated", "compensated"]]
    # v2's compensation, given v1's logged result and v2's arguments.
    assert deploy.ran() == ["a", "b", "c", "undo-c", "refund-1-1-5", "undo-a"]


def test_a_saga_whose_arguments_changed_is_parked_unrun(deploy: Deploy) -> None:
    v1 = deploy.version("v1", generator("a", "b"))
    v2 = deploy.version("v2", generator("a", "b").replace("(n: int)", "(n: int, m: int)"))
    deploy.crash(v1, "transfer", "old-1", "b")
    assert deploy.recover(v2) == [["old-1", "dead_lettered", "executing"]]
    assert (
        "cannot be called with these arguments: missing a required argument: 'm'"
        in parked(deploy)["old-1"]
    )
    assert deploy.ran() == ["a", "b"]


def test_a_saga_only_the_new_version_declares_is_left_for_it(deploy: Deploy) -> None:
    v1 = deploy.version("v1", generator("a", "b"))
    v2 = deploy.version("v2", generator("a", "b").replace("def transfer", "def transfer_v2"))
    deploy.crash(v2, "transfer_v2", "new-1", "b")
    for _ in range(2):
        assert deploy.recover(v1) == []
        # Regression: recovery left it alone without a word.
        assert deploy.stderr.count(NOTICE) == 1, deploy.stderr
        assert "named 'transfer_v2'" in deploy.stderr
    assert parked(deploy) == {}
    assert deploy.recover(v2) == [["new-1", "resumed", "completed"]]
    assert deploy.ran() == ["a", "b", "b"]


NOTICE = "sagakit recovery: the log holds 1 unfinished saga named 'transfer_v2'"


def an_old_worker_leaves_a_new_saga_and_says_so_once(deploy: Deploy) -> None:
    v1 = deploy.version("v1", generator("a", "b"))
    v2 = deploy.version("v2", generator("a", "b").replace("def transfer", "def transfer_v2"))
    deploy.crash(v2, "transfer_v2", "new-1", "b")
    # The old version's worker, for many claims (a PostgreSQL lease runs out after 1 s).
    done = deploy.child(v1, "work", deploy.db, "2.5")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(NOTICE) == 1, done.stderr  # regression: never said
    assert deploy.recover(v2) == [["new-1", "resumed", "completed"]]
    assert deploy.ran() == ["a", "b", "b"]


def test_a_sqlite_worker_of_the_old_version_leaves_a_new_saga_and_says_so_once(
    deploy: Deploy,
) -> None:
    an_old_worker_leaves_a_new_saga_and_says_so_once(deploy)


def test_a_postgres_worker_of_the_old_version_leaves_a_new_saga_and_says_so_once(
    tmp_path: Path, dsn: str, schema: str
) -> None:
    an_old_worker_leaves_a_new_saga_and_says_so_once(Deploy(tmp_path, f"{dsn}#{schema}"))


def test_a_saga_handed_over_by_each_worker_a_rolling_deploy_stops_is_never_parked(
    tmp_path: Path, dsn: str, schema: str
) -> None:
    deploy = Deploy(tmp_path, f"{dsn}#{schema}")
    v1 = deploy.version("v1", generator("a", "b"))
    v2 = deploy.version("v2", generator("a", "b", "c"))
    deploy.crash(v1, "transfer", "s-1", "b")  # the one recovery attempt counted
    # Old and new workers, each stopped (SIGTERM) while the saga's step b runs in it: more
    # handovers than max_attempts (3), which count no recovery attempt.
    for turn, code in enumerate([v1, v2, v1, v2]):
        worker = subprocess.Popen(
            [sys.executable, str(HELPER), code, "work", deploy.db, "600"],
            env=deploy.env(block_in="b"),
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            until(lambda turn=turn: deploy.ran().count("b") == turn + 2)
        finally:
            worker.send_signal(signal.SIGTERM)
            _, stderr = worker.communicate(timeout=60)
        assert worker.returncode == 0, stderr
        assert "released 1 saga lease" in stderr
    Path(f"{deploy.effects}.go").touch()
    assert deploy.recover(v2) == [["s-1", "resumed", "completed"]]
    assert deploy.ran() == ["a", "b", "b", "b", "b", "b", "b", "c"]


def until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (another process's progress), up to a minute."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, "waited a minute"
        time.sleep(0.02)
