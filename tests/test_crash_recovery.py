"""Crash tests: a child process running a saga on SQLite is SIGKILLed at a boundary,
then a fresh process recovers. Side effects are counted in a file outside the database."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from sagakit import SagaStatus, SQLiteStore

HELPER = Path(__file__).parent / "crash_helpers" / "bank.py"


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.db = str(tmp_path / "sagas.db")
        self.log = tmp_path / "effects.log"

    def child(
        self, *args: str, crash: str = "", code: str = ""
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "SAGAKIT_CRASH_LOG": str(self.log),
            "SAGAKIT_CRASH": crash,
            "SAGAKIT_CODE": code,
        }
        return subprocess.run(
            [sys.executable, str(HELPER), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def run(self, saga: str, saga_id: str, target: str = "B", crash: str = "") -> int:
        return self.child("run", self.db, saga, saga_id, target, crash=crash).returncode

    def recover(self, crash: str = "", max_attempts: int = 3, code: str = "") -> list[str]:
        done = self.child("recover", self.db, str(max_attempts), crash=crash, code=code)
        assert done.returncode in (0, -signal.SIGKILL), done.stderr
        return done.stdout.splitlines()

    def effects(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    async def saga(self, saga_id: str) -> tuple[SagaStatus, int]:
        store = SQLiteStore(self.db)
        try:
            meta = await store.get(saga_id)
            assert meta is not None
            return meta.status, await store.running_count()
        finally:
            await store.close()


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


@pytest.mark.asyncio
async def test_killed_after_saga_start_is_resumed(world: World) -> None:
    assert world.run("transfer", "t1", crash="after:saga_started") == -signal.SIGKILL
    assert world.effects() == []
    assert world.recover() == ['["t1", "resumed", "completed"]']
    assert world.effects() == ["step debit t1:0", "step reserve t1:1", "step credit t1:2"]
    assert await world.saga("t1") == (SagaStatus.COMPLETED, 0)


@pytest.mark.asyncio
async def test_killed_inside_a_step_reruns_only_that_step_with_the_same_key(world: World) -> None:
    assert world.run("transfer", "t2", crash="in_step:reserve") == -signal.SIGKILL
    world.recover()
    assert world.effects() == [
        "step debit t2:0",
        "step reserve t2:1",  # interrupted after its effect: not recorded as completed
        "step reserve t2:1",  # re-run with the same idempotency key
        "step credit t2:2",
    ]
    assert await world.saga("t2") == (SagaStatus.COMPLETED, 0)


@pytest.mark.asyncio
async def test_killed_after_a_completion_is_recorded_never_reruns_the_step(world: World) -> None:
    assert world.run("transfer", "t3", crash="after:step_completed:reserve") == -signal.SIGKILL
    world.recover()
    assert world.effects() == ["step debit t3:0", "step reserve t3:1", "step credit t3:2"]
    assert await world.saga("t3") == (SagaStatus.COMPLETED, 0)


@pytest.mark.asyncio
async def test_killed_while_a_completion_is_only_staged_reruns_that_step_once(
    world: World,
) -> None:
    # reserve acted and returned; its completion is staged (it commits with credit's
    # start), and the process dies in the saga's code before that commit.
    assert world.run("transfer", "t7", crash="staged:reserve") == -signal.SIGKILL
    assert world.effects() == ["step debit t7:0", "step reserve t7:1"]
    with closing(sqlite3.connect(world.db)) as conn:
        logged = conn.execute(
            "SELECT idx, status FROM sagakit_steps WHERE saga_id = 't7' ORDER BY idx"
        ).fetchall()
        events = conn.execute("SELECT count(*) FROM sagakit_events WHERE saga_id = 't7'")
        assert events.fetchone()[0] == 1  # debit's, committed with reserve's start
    # debit's completion was committed with reserve's start; reserve is only started.
    assert logged == [(0, "completed"), (1, "running")]
    assert world.recover() == ['["t7", "resumed", "completed"]']
    assert world.effects() == [
        "step debit t7:0",  # recorded as completed: never again
        "step reserve t7:1",
        "step reserve t7:1",  # re-run with the same idempotency key
        "step credit t7:2",
    ]
    store = SQLiteStore(world.db)
    try:
        stream = await store.read_events(saga_id="t7")
        meta = await store.get("t7")
    finally:
        await store.close()
    assert [(e.step_index, e.event) for e in stream] == [
        (0, {"account": "A", "amount": -10}),
        (1, "hold-B"),
        (2, {"account": "B", "amount": 10}),
    ]  # each step's events once: nothing lost, nothing duplicated
    assert meta is not None
    assert meta.status is SagaStatus.COMPLETED
    assert meta.events == tuple(e.event for e in stream)


@pytest.mark.asyncio
async def test_killed_mid_compensation_finishes_compensating_once_in_reverse(world: World) -> None:
    crash = "after:compensation_completed:reserve"
    code = world.run("transfer", "t4", target="REFUSE", crash=crash)
    assert code == -signal.SIGKILL
    assert world.recover() == ['["t4", "compensated", "compensated"]']
    assert world.effects() == [
        "step debit t4:0",
        "step reserve t4:1",
        "step credit t4:2",
        "comp reserve hold-REFUSE t4:1",
        "comp debit t4:0",
    ]
    assert await world.saga("t4") == (SagaStatus.COMPENSATED, 0)


@pytest.mark.asyncio
async def test_a_compensation_interrupted_then_removed_from_the_code_does_not_stay_running(
    world: World,
) -> None:
    # Killed inside reserve's compensation; the code deployed before recovery declares
    # none for reserve, so recovery does not run it again. The saga ended COMPENSATED
    # with that compensation's record still `running` in the log.
    crash = "in_step:comp:reserve"
    assert world.run("transfer", "t9", target="REFUSE", crash=crash) == -signal.SIGKILL
    code = "release-removed"
    assert world.recover(code=code) == ['["t9", "compensated", "compensated"]']
    assert world.effects() == [
        "step debit t9:0",
        "step reserve t9:1",
        "step credit t9:2",
        "comp reserve hold-REFUSE t9:1",
        "comp debit t9:0",
    ]
    store = SQLiteStore(world.db, read_only=True)
    try:
        meta = await store.get("t9")
    finally:
        await store.close()
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert [(c.name, str(c.status), c.error) for c in meta.compensations] == [
        ("reserve", "failed", "interrupted by a crash of its process"),
        ("debit", "completed", None),
    ]


@pytest.mark.asyncio
async def test_compensate_policy_undoes_completed_and_interrupted_steps(world: World) -> None:
    assert world.run("cautious_transfer", "t5", crash="in_step:reserve") == -signal.SIGKILL
    assert world.recover() == ['["t5", "compensated", "compensated"]']
    effects = world.effects()
    assert effects[:2] == ["step debit t5:0", "step reserve t5:1"]
    # reserve's effect is unknown (like a timeout): compensated, then debit, in reverse.
    assert effects[2:] == ["comp reserve None t5:1", "comp debit t5:0"]
    assert await world.saga("t5") == (SagaStatus.COMPENSATED, 0)


@pytest.mark.asyncio
async def test_a_saga_crashing_every_recovery_is_dead_lettered_then_resumed(
    world: World,
) -> None:
    assert world.run("transfer", "t6", crash="in_step:reserve") == -signal.SIGKILL
    world.recover(crash="in_step:reserve", max_attempts=2)
    world.recover(crash="in_step:reserve", max_attempts=2)
    assert world.recover(crash="in_step:reserve", max_attempts=2) == []  # parked, not retried
    assert world.effects().count("step reserve t6:1") == 3
    store = SQLiteStore(world.db)
    try:
        parked = await store.dead_letters()
        assert [letter.saga_id for letter in parked] == ["t6"]
        assert "2 recovery attempts" in parked[0].reason
        assert await store.running_count() == 0
        await store.resume_dead_letter("t6")
    finally:
        await store.close()
    assert world.recover() == ['["t6", "resumed", "completed"]']
    assert world.effects().count("step debit t6:0") == 1
    assert world.effects()[-1] == "step credit t6:2"
    assert await world.saga("t6") == (SagaStatus.COMPLETED, 0)


def test_two_processes_executing_the_same_id(world: World) -> None:
    env = {**os.environ, "SAGAKIT_CRASH_LOG": str(world.log), "SAGAKIT_CRASH": "wait:reserve"}
    first = subprocess.Popen(
        [sys.executable, str(HELPER), "run", world.db, "transfer", "same", "B"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        while "step reserve same:1" not in world.effects():
            assert first.poll() is None
        second = world.child("run", world.db, "transfer", "same", "B")
        assert second.stdout.strip() == "already-executing"
        Path(str(world.log) + ".go").touch()
        out, _ = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0
    again = world.child("run", world.db, "transfer", "same", "B")
    assert again.returncode == 0
    assert again.stdout == out  # the recorded events, nothing ran again
    assert world.effects() == ["step debit same:0", "step reserve same:1", "step credit same:2"]


def test_recovery_leaves_a_live_process_alone(world: World) -> None:
    env = {**os.environ, "SAGAKIT_CRASH_LOG": str(world.log), "SAGAKIT_CRASH": "wait:reserve"}
    first = subprocess.Popen(
        [sys.executable, str(HELPER), "run", world.db, "transfer", "live", "B"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        while "step reserve live:1" not in world.effects():
            assert first.poll() is None
        assert world.recover() == []
        Path(str(world.log) + ".go").touch()
        first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0
    assert world.effects() == ["step debit live:0", "step reserve live:1", "step credit live:2"]
