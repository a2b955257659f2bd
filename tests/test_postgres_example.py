"""examples/postgres_workers.py against the real server: it prints what it promises.

Without a server, or without psycopg, it says so (never the DSN's password).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "postgres_workers.py"


@pytest.mark.skipif(
    not os.environ.get("SAGAKIT_TEST_POSTGRES_DSN"),
    reason="PostgreSQL tests need SAGAKIT_TEST_POSTGRES_DSN "
    "(e.g. postgresql://postgres@127.0.0.1:5432/test)",
)
def test_postgres_workers_example_finishes_a_killed_process_sagas(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing left in the working directory
    lines = result.stdout.splitlines()
    for expected in [
        "  worker released its leases and stopped (exit code 0)",
        "finished sagas: 10, running: 0",
        "statuses: ['completed']",
        "events in the ordered stream: 20",
        "step calls: debit=10, credit=20",
        "ledger entries: 20, money created or lost: 0",
        "recovery attempts per saga: [1]",
    ]:
        assert expected in lines, result.stdout
    assert lines.count("  worker released its leases and stopped (exit code 0)") == 2


def _run_without_server(tmp_path: Path, code: str, dsn: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("POSTGRES_DSN")}
    return subprocess.run(
        [sys.executable, "-c", code, str(EXAMPLE)],
        cwd=tmp_path,
        env={**env, "SAGAKIT_POSTGRES_DSN": dsn},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


RUN_EXAMPLE = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"


def test_an_unreachable_server_is_said_without_the_dsn_password(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    # Port 1: nothing listens there, and the connection is refused at once.
    result = _run_without_server(tmp_path, RUN_EXAMPLE, "postgresql://app:S3cr3t@127.0.0.1:1/db")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        "PostgreSQL is not reachable at the DSN in SAGAKIT_POSTGRES_DSN (OperationalError)"
    ), result.stdout
    assert "S3cr3t" not in result.stdout + result.stderr


def test_without_psycopg_the_example_says_what_to_install(tmp_path: Path) -> None:
    blocked = "import sys; sys.modules['psycopg'] = None; " + RUN_EXAMPLE
    result = _run_without_server(tmp_path, blocked, "postgresql://postgres@127.0.0.1:1/test")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("this example needs psycopg: pip install 'sagakit[postgres]'")
    assert "not reachable" not in result.stdout
