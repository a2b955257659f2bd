"""The ``sagakit`` command run from a directory deleted under the shell.

A deploy that swaps release directories (``/srv/app/releases/41`` removed while an
operator's shell sits in it) leaves the shell in a directory that no longer exists. Every
``sagakit`` command there ended in a ``FileNotFoundError`` traceback from
``os.getcwd()``, before it looked at ``--db``, even one given as an absolute path.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from sagakit import SagaOrchestrator, SQLiteStore, saga, step

CONSOLE_SCRIPT = """import sys
from sagakit.cli import main
sys.exit(main())
"""


@step
async def hold(item: str) -> str:
    return item


@saga(name="deleted_directory_order")
def order(item: str):  # type: ignore[no-untyped-def]
    yield hold(item)


async def _one_saga(db: str) -> None:
    store = SQLiteStore(db)
    try:
        await SagaOrchestrator(store).execute(order("book"), saga_id="o-1")
    finally:
        await store.close()


def _sagakit_in_a_deleted_directory(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``sagakit *argv`` (the console script) whose current directory is removed before it
    starts, as a shell's is by a deploy."""
    script = tmp_path / "sagakit"
    script.write_text(CONSOLE_SCRIPT, encoding="utf-8")
    gone = tmp_path / "releases" / "41"
    gone.mkdir(parents=True)
    return subprocess.run(
        [sys.executable, str(script), *argv],
        cwd=gone,
        preexec_fn=lambda: os.rmdir(gone),  # in the child, once it is there
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_log_given_by_its_absolute_path_is_read_from_a_deleted_directory(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "sagas.db")
    asyncio.run(_one_saga(db))
    listed = _sagakit_in_a_deleted_directory(tmp_path, "--db", db, "list")
    assert (listed.returncode, listed.stderr) == (0, "")
    assert listed.stdout.splitlines()[1].split()[:3] == [
        "o-1",
        "deleted_directory_order",
        "completed",
    ]


def test_a_module_not_found_from_a_deleted_directory_says_the_directory_is_gone(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "sagas.db")
    asyncio.run(_one_saga(db))
    recovered = _sagakit_in_a_deleted_directory(
        tmp_path, "--db", db, "recover", "--import", "shop.sagas"
    )
    assert recovered.returncode == 1
    assert recovered.stderr == (
        "sagakit: cannot import 'shop.sagas': ModuleNotFoundError: No module named 'shop' "
        "(the current directory "
        "was deleted: cd to your application's directory, or add it to PYTHONPATH)\n"
    )
