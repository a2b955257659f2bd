"""The ``sagakit`` command where its output cannot be written: one line, no traceback.

``sagakit list > report.txt`` on a full disk (or ``> /dev/full``, or a file on a mount
gone bad) ended in an ``OSError`` traceback, then a second one, "Exception ignored", as
Python flushed standard output at exit.
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sagakit import CompensationFailed, SagaOrchestrator, SQLiteStore, saga, step
from sagakit.cli import main


@step
async def reserve(item: str) -> str:
    return f"held {item}"


@reserve.compensate
async def release(item: str) -> None:
    raise RuntimeError("the warehouse is down")


@step
async def ship(item: str) -> str:
    if item == "nothing":
        raise ValueError("nothing to ship")
    return f"shipped {item}"


@saga(name="output_errors_order")
def order(item: str):  # type: ignore[no-untyped-def]
    yield reserve(item)
    yield ship(item)


async def _two_sagas(db: str) -> None:
    store = SQLiteStore(db)
    try:
        orchestrator = SagaOrchestrator(store)
        await orchestrator.execute(order("book"), saga_id="o-1")
        with pytest.raises(CompensationFailed):  # o-2 ends failed: resolve takes it
            await orchestrator.execute(order("nothing"), saga_id="o-2")
    finally:
        await store.close()


@pytest.fixture
def log(tmp_path: Path) -> str:
    db = str(tmp_path / "sagas.db")
    asyncio.run(_two_sagas(db))
    return db


class DiskFull(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize(
    "command", [["list"], ["list", "--json"], ["show", "o-1"], ["dead-letters"], ["upgrade"]]
)
def test_output_that_cannot_be_written_is_one_line_and_status_1(
    log: str, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--db", log, *command], DiskFull()) == 1
    assert capsys.readouterr().err == (
        "sagakit: cannot write its output: [Errno 28] No space left on device\n"
    )


def test_a_change_whose_output_cannot_be_written_says_it_was_made(
    log: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The write to the log was made before the line saying so: an operator who reads
    # only "cannot write" would run it again, and be told it was resolved already.
    assert main(["--db", log, "resolve", "o-2", "--note", "refunded"], DiskFull()) == 1
    assert capsys.readouterr().err == (
        "sagakit: cannot write its output: [Errno 28] No space left on device "
        f"(resolve was done all the same: `sagakit --db {log} show o-2` shows the saga)\n"
    )
    assert main(["--db", log, "show", "o-2", "--json"], out := io.StringIO()) == 0
    assert '"error": "resolved by an operator: refunded' in out.getvalue()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("command", [["list"], ["list", "--json"], ["show", "o-1"]])
def test_the_command_writing_to_a_full_disk_ends_without_a_traceback(
    log: str, command: list[str]
) -> None:
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "sagakit", "--db", log, *command],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    assert (result.returncode, result.stderr) == (
        1,
        "sagakit: cannot write its output: [Errno 28] No space left on device\n",
    )


def test_the_command_without_a_standard_output_says_so(log: str) -> None:
    # `sagakit ... >&-` (a service started with its stdout closed): Python has no
    # sys.stdout, and the command ended in an AttributeError traceback, after `resolve`
    # had changed the log. It now refuses before it opens the log.
    result = subprocess.run(
        [sys.executable, "-m", "sagakit", "--db", log, "resolve", "o-2", "--note", "refunded"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=lambda: os.close(1),
    )
    assert (result.returncode, result.stderr) == (
        1,
        "sagakit: standard output is closed: give it one (a file, /dev/null) to write to\n",
    )
    assert main(["--db", log, "list", "--status", "failed"], out := io.StringIO()) == 0
    assert "o-2" in out.getvalue()  # not resolved
