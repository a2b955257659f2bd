"""SIGKILL in the middle of group commits: every acknowledged record survives, the file
opens intact, and recovery finishes every saga without re-running a completed step."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from sagakit import SagaStatus, SQLiteStore, StepStatus

HELPER = Path(__file__).parent / "crash_helpers" / "bank.py"
SAGAS = 300


def _wait_for_lines(log: Path, child: subprocess.Popen[bytes], wanted: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().count("acked") >= wanted:
            return
        assert child.poll() is None, "the swarm finished before it could be killed"
        time.sleep(0.005)
    pytest.fail("the swarm made no progress")


async def _check_acknowledged(db: str, acked: set[str]) -> None:
    store = SQLiteStore(db)  # opens: the file is whole
    try:
        for key in acked:  # every acknowledged completion is in the log
            saga_id, index = key.rsplit(":", 1)
            meta = await store.get(saga_id)
            assert meta is not None
            assert meta.steps[int(index)].status is StepStatus.COMPLETED
        assert await store.running_count() > 0  # the kill left work to recover
    finally:
        await store.close()


async def _check_all_finished(db: str) -> None:
    store = SQLiteStore(db)
    try:
        assert await store.running_count() == 0
        finished = await store.history()
        assert finished
        assert all(meta.status is SagaStatus.COMPLETED for meta in finished)
    finally:
        await store.close()


def test_kill_during_group_commits(tmp_path: Path) -> None:
    db = str(tmp_path / "sagas.db")
    log = tmp_path / "effects.log"
    env = {**os.environ, "SAGAKIT_CRASH_LOG": str(log), "SAGAKIT_SWARM": "1"}
    child = subprocess.Popen([sys.executable, str(HELPER), "swarm", db, str(SAGAS)], env=env)
    try:
        _wait_for_lines(log, child, SAGAS // 2)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    lines = log.read_text().splitlines()
    acked = {line.split()[1] for line in lines if line.startswith("acked")}

    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    asyncio.run(_check_acknowledged(db, acked))

    recovered = subprocess.run(
        [sys.executable, str(HELPER), "recover", db], env=env, check=False, timeout=120
    )
    assert recovered.returncode == 0

    asyncio.run(_check_all_finished(db))
    effects = Counter(
        line.split(" ", 2)[2] for line in log.read_text().splitlines() if line.startswith("step")
    )
    for key in acked:
        assert effects[key] == 1, f"step {key} was completed before the kill and ran again"
    assert all(count in (1, 2) for count in effects.values())  # at most one re-run, if interrupted
