"""examples/postgres_workers.py against the real server: it prints what it promises."""

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
