"""The sagakit CLI over a SQLite log: tables, --json, recover, dead letters."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

import sagakit._cli_read as read_module
from cli_helpers.run import cli
from pg_helpers.db import dsn_or_skip, query
from pg_helpers.roles import as_role, grant_reading
from sagakit import (
    SagaAlreadyFailed,
    SagaAlreadyResolved,
    SagaError,
    SagaOrchestrator,
    SQLiteStore,
    StoreError,
    saga,
    step,
)
from sagakit.cli import main

HELPER = Path(__file__).parent / "crash_helpers" / "bank.py"
HELPERS = str(HELPER.parent)


def child(db: str, log: Path, *args: str, crash: str = "") -> int:
    env = {**os.environ, "SAGAKIT_CRASH_LOG": str(log), "SAGAKIT_CRASH": crash}
    return subprocess.run(
        [sys.executable, str(HELPER), *args],
        env=env,
        capture_output=True,
        check=False,
        timeout=60,
    ).returncode


@contextmanager
def bank_importable(log: Path) -> Iterator[None]:
    """``--import bank`` in this process imports the crash helper afresh, logging to ``log``.

    Unloaded afterwards: a ``bank`` left in ``sys.modules`` made the next ``--import bank``
    a no-op, so it neither read that test's ``SAGAKIT_CRASH_LOG`` nor registered its
    ``transfer`` again over a function-local ``@saga transfer`` another test declared since.
    """
    sys.path.insert(0, HELPERS)
    os.environ["SAGAKIT_CRASH_LOG"] = str(log)
    try:
        yield
    finally:
        sys.path.remove(HELPERS)
        del os.environ["SAGAKIT_CRASH_LOG"]
        sys.modules.pop("bank", None)


ELSEWHERE = "UPDATE sagakit_sagas SET owner = 'elsewhere/1/1' WHERE id = 'far'"


def crashed_in_credit(tmp_path: Path, saga_id: str, then_sql: str) -> tuple[str, Path]:
    """A log where ``transfer`` ``saga_id`` died inside its credit step, then ``then_sql``."""
    db = str(tmp_path / "sagas.db")
    log = tmp_path / "effects.log"
    assert child(db, log, "run", db, "transfer", saga_id, "B", crash="in_step:credit") == (
        -signal.SIGKILL
    )
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(then_sql)
    conn.close()
    return db, log


@pytest.fixture(autouse=True)
def _no_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables at their whole width, as written to a file, whatever ``COLUMNS`` the test
    run has: a test of fitting them to a terminal sets it."""
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.fixture
def log_db(tmp_path: Path) -> tuple[str, Path]:
    db = str(tmp_path / "sagas.db")
    log = tmp_path / "effects.log"
    assert child(db, log, "run", db, "transfer", "ok-1", "B") == 0
    assert child(db, log, "run", db, "transfer", "refused-1", "REFUSE") == 2
    return db, log


def test_list_shows_a_table_and_filters_by_status(log_db: tuple[str, Path]) -> None:
    db, _ = log_db
    code, out = cli("--db", db, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATUS", "STEPS", "STARTED", "ERROR"]
    assert lines[1].split()[:4] == ["refused-1", "transfer", "compensated", "2/?"]
    assert lines[2].split()[:4] == ["ok-1", "transfer", "completed", "3/3"]
    code, out = cli("--db", db, "list", "--status", "completed", "--json")
    assert code == 0
    assert [saga["id"] for saga in json.loads(out)] == ["ok-1"]


def test_show_gives_the_step_trail(log_db: tuple[str, Path]) -> None:
    db, _ = log_db
    code, out = cli("--db", db, "show", "refused-1")
    assert code == 0
    assert "saga refused-1 (transfer): compensated" in out
    assert out.splitlines()[2] == "arguments: ('A', 'REFUSE', 10)"
    rows = [line.split()[:4] for line in out.splitlines()[5:]]
    assert rows == [
        ["step", "0", "debit", "completed"],
        ["step", "1", "reserve", "completed"],
        ["step", "2", "credit", "failed"],
        ["undo", "1", "reserve", "completed"],
        ["undo", "0", "debit", "completed"],
    ]
    code, out = cli("show", "ok-1", "--db", db, "--json")
    data = json.loads(out)
    assert data["status"] == "completed"
    assert data["events"][0] == {"account": "A", "amount": -10}
    assert [s["name"] for s in data["steps"]] == ["debit", "reserve", "credit"]


def test_show_of_a_saga_not_parked_reads_no_dead_letters(
    log_db: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: `show` read every dead letter of the log to find the one saga's, also
    # for a saga that is not parked (its metadata says so), slow on a large log.
    db, _ = log_db

    async def every_dead_letter(self: SQLiteStore) -> list[object]:
        raise AssertionError("show read the log's dead letters")

    monkeypatch.setattr(SQLiteStore, "dead_letters", every_dead_letter)
    code, out = cli("--db", db, "show", "ok-1")
    assert code == 0
    assert "saga ok-1 (transfer): completed" in out
    code, out = cli("--db", db, "show", "ok-1", "--json")
    assert code == 0
    assert json.loads(out)["parked"] is None


def test_unknown_saga_and_missing_log_are_clear_errors(
    log_db: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, _ = log_db
    assert cli("--db", db, "show", "nope")[0] == 1
    assert "no saga 'nope'" in capsys.readouterr().err
    missing = str(tmp_path / "missing.db")
    assert cli("--db", missing, "list")[0] == 1
    assert "no saga log at" in capsys.readouterr().err
    assert not os.path.exists(missing)
    with pytest.raises(SystemExit):
        main(["list"])
    assert "--db" in capsys.readouterr().err


def test_show_prints_what_the_durability_page_shows(log_db: tuple[str, Path]) -> None:
    # The page's `sagakit show` example is this log's saga, times aside: a change to the
    # table's layout must change the page too.
    import re

    page = (Path(__file__).parent.parent / "docs" / "durability.md").read_text("utf-8")
    [shown] = re.findall(r"```text\n\$ sagakit --db sagas\.db show refused-1\n(.*?)```", page, re.S)
    db, _ = log_db
    code, out = cli("--db", db, "show", "refused-1")
    assert code == 0
    when = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
    assert when.sub("<time>", out) == when.sub("<time>", shown)


def test_recover_dead_letters_resume_and_resolve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "sagas.db")
    log = tmp_path / "effects.log"
    assert child(db, log, "run", db, "transfer", "t1", "B", crash="in_step:credit") == (
        -signal.SIGKILL
    )
    assert child(db, log, "run", db, "transfer", "t2", "B", crash="in_step:credit") == (
        -signal.SIGKILL
    )
    # Recovery crashes its process on t1 and t2 each time (max 1 attempt): parked.
    assert child(db, log, "recover", db, "1", crash="in_step:credit") == -signal.SIGKILL
    assert child(db, log, "recover", db, "1", crash="in_step:credit") == -signal.SIGKILL
    assert child(db, log, "recover", db, "1", crash="in_step:credit") == 0
    code, out = cli("--db", db, "dead-letters", "--json")
    letters = json.loads(out)
    assert sorted(letter["id"] for letter in letters) == ["t1", "t2"]
    assert all(letter["recovery_attempts"] == 1 for letter in letters)
    code, out = cli("--db", db, "dead-letters")
    assert out.splitlines()[0].split()[:3] == ["ID", "NAME", "STATUS"]
    # Regression: `show --json` said only "dead_letter": true, without why or since when
    # (its text form gives both).
    shown = json.loads(cli("--db", db, "show", "t1", "--json")[1])
    [letter] = [letter for letter in letters if letter["id"] == "t1"]
    assert shown["dead_letter"] is True
    assert shown["parked"] == {
        key: letter[key] for key in ("recovery_attempts", "reason", "parked_at")
    }
    assert shown["parked"]["reason"]
    assert cli("--db", db, "resume", "t1")[0] == 0
    assert json.loads(cli("--db", db, "show", "t1", "--json")[1])["parked"] is None
    # Regression: a blank note was taken, and the saga settled with no word of what was done.
    for blank in ("", "  "):
        with pytest.raises(SystemExit) as exited:
            cli("--db", db, "resolve", "t2", "--note", blank)
        assert exited.value.code == 2
        assert "--note: must say what an operator did" in capsys.readouterr().err
    assert "t2" in cli("--db", db, "dead-letters")[1]  # still parked
    assert cli("--db", db, "resolve", "t2", "--note", "credited by hand")[0] == 0
    with bank_importable(log):
        code, out = cli("--db", db, "recover", "--import", "bank", "--json")
    assert code == 0
    assert json.loads(out) == [
        {"id": "t1", "name": "transfer", "action": "resumed", "status": "completed", "error": None}
    ]
    assert cli("--db", db, "dead-letters")[1] == "no dead letters\n"
    code, out = cli("--db", db, "show", "t2", "--json")
    assert json.loads(out)["error"].startswith("resolved by an operator: credited by hand")
    assert cli("--db", db, "resume", "t2")[0] == 1


def test_recover_reports_the_sagas_it_dead_lettered(tmp_path: Path) -> None:
    # Regression: a saga parked by `recover` for running out of recovery attempts was
    # not reported: the operator read "nothing to recover" (or only the others' rows).
    db = str(tmp_path / "sagas.db")
    log = tmp_path / "effects.log"
    for saga_id in ("t1", "t2"):
        assert child(db, log, "run", db, "transfer", saga_id, "B", crash="in_step:credit") == (
            -signal.SIGKILL
        )
    # A recovery dies in t1 (its first attempt); t2 is not tried yet.
    assert child(db, log, "recover", db, "1", crash="in_step:credit") == -signal.SIGKILL
    with bank_importable(log):
        code, out = cli("--db", db, "recover", "--import", "bank", "--max-attempts", "1")
    assert code == 3  # a saga parked: an operator is needed
    rows = [line.split()[:4] for line in out.splitlines()]
    assert rows[0] == ["ID", "NAME", "ACTION", "STATUS"]
    assert sorted(rows[1:]) == [
        ["t1", "transfer", "dead_lettered", "executing"],
        ["t2", "transfer", "resumed", "completed"],
    ]
    assert "1 recovery attempt finished" in out
    assert child(db, log, "run", db, "transfer", "t3", "B", crash="in_step:credit") == (
        -signal.SIGKILL
    )
    assert child(db, log, "recover", db, "1", crash="in_step:credit") == -signal.SIGKILL
    code, out = cli("--db", db, "recover", "--max-attempts", "1", "--json")
    assert code == 3
    [parked] = json.loads(out)
    assert parked["id"] == "t3"
    assert parked["action"] == "dead_lettered"
    assert "1 recovery attempt finished" in parked["error"]


def test_recover_reports_a_module_that_does_not_import(
    log_db: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    db, _ = log_db
    assert cli("--db", db, "recover", "--import", "no_such_module_xyz")[0] == 1
    assert "no_such_module_xyz" in capsys.readouterr().err


def test_python_dash_m_sagakit(log_db: tuple[str, Path]) -> None:
    db, _ = log_db
    done = subprocess.run(
        [sys.executable, "-m", "sagakit", "--db", db, "list", "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert {saga["id"] for saga in json.loads(done.stdout)} == {"ok-1", "refused-1"}


def test_release_lets_recovery_take_a_saga_of_another_host(tmp_path: Path) -> None:
    db, log = crashed_in_credit(tmp_path, "far", ELSEWHERE)
    assert child(db, log, "recover", db) == 0
    assert cli("--db", db, "list", "--status", "executing", "--json")[1].count('"far"') == 1
    assert cli("--db", db, "release", "far")[0] == 0
    assert child(db, log, "recover", db) == 0
    code, out = cli("--db", db, "show", "far", "--json")
    assert code == 0
    assert json.loads(out)["status"] == "completed"
    assert cli("--db", db, "release", "far")[0] == 1  # no longer running


def test_recover_names_the_sagas_of_another_host_it_leaves_for_release(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: recover said only "nothing to recover" while `list` showed the saga
    # executing (its owner another container's process, never taken for dead here), and
    # never pointed to `sagakit release`, as it points to the lease on PostgreSQL.
    db, log = crashed_in_credit(tmp_path, "far", ELSEWHERE)
    with bank_importable(log):
        code, out = cli("--db", db, "recover", "--import", "bank")
        assert code == 0
        assert out.splitlines() == [
            "nothing to recover",
            "1 saga (far) is run by a process of another host or container, which no "
            f"recovery here takes over; once you know that process is gone, `sagakit --db "
            f"{shlex.quote(db)} release far` hands it to the next recover",
        ]
        capsys.readouterr()
        code, out = cli("--db", db, "recover", "--import", "bank", "--json")
        assert (code, json.loads(out)) == (0, [])
        assert "1 saga (far) is run by a process of another host" in capsys.readouterr().err
        assert cli("--db", db, "release", "far")[0] == 0
        code, out = cli("--db", db, "recover", "--import", "bank")
    assert code == 0
    assert [line.split()[:4] for line in out.splitlines()] == [
        ["ID", "NAME", "ACTION", "STATUS"],
        ["far", "transfer", "resumed", "completed"],
    ]


def test_release_refuses_a_saga_its_live_owner_on_this_host_is_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: release forgot the owner of a saga a live local process was running,
    # and the next recover ran it a second time, alongside that process.
    db = str(tmp_path / "sagas.db")
    log = tmp_path / "effects.log"
    env = {**os.environ, "SAGAKIT_CRASH_LOG": str(log), "SAGAKIT_CRASH": "wait:reserve"}
    worker = subprocess.Popen(
        [sys.executable, str(HELPER), "run", db, "transfer", "busy", "B"],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        while not log.exists() or "step reserve busy:1" not in log.read_text():
            assert worker.poll() is None
        assert cli("--db", db, "release", "busy") == (1, "")
        [line] = capsys.readouterr().err.splitlines()
        assert line.startswith("sagakit: saga 'busy' is running under a live process ")
        assert child(db, log, "recover", db) == 0  # nothing to take: still its owner's
        Path(str(log) + ".go").touch()
        assert worker.wait(timeout=60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert log.read_text().splitlines() == [
        "step debit busy:0",
        "step reserve busy:1",
        "step credit busy:2",
    ]


def test_release_refuses_a_dead_lettered_saga(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: release of a parked saga said "will be recovered by the next
    # `sagakit recover`", which leaves parked sagas alone.
    db, _ = crashed_in_credit(
        tmp_path, "parked", "UPDATE sagakit_sagas SET dead_letter = 'stuck', owner = NULL"
    )
    assert cli("--db", db, "release", "parked") == (1, "")
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("sagakit: saga 'parked' is dead-lettered (stuck); ")
    assert "sagakit resume" in line


def test_resolve_of_a_saga_of_another_host_says_to_release_it_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: the refusal said to "run recover() once its process is gone", which
    # never takes a saga of another host or container: `release` must come first.
    db, _ = crashed_in_credit(tmp_path, "far", ELSEWHERE)
    assert cli("--db", db, "resolve", "far", "--note", "refunded") == (1, "")
    [line] = capsys.readouterr().err.splitlines()
    assert "under a live process (elsewhere/1/1)" in line
    assert "sagakit release" in line
    assert cli("--db", db, "release", "far")[0] == 0
    assert cli("--db", db, "resolve", "far", "--note", "refunded")[0] == 0


def test_resolve_of_a_saga_a_live_process_of_this_host_runs_names_the_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: the refusal told a `sagakit resolve` user to "run recover() once its
    # process is gone", a Python call, and not that resolve itself settles the saga then.
    from sagakit.stores._sqlite_owner import current_owner

    db, _ = crashed_in_credit(tmp_path, "near", "SELECT 1")
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE sagakit_sagas SET owner = ? WHERE id = 'near'", (current_owner(),))
    assert cli("--db", db, "resolve", "near", "--note", "refunded") == (1, "")
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("sagakit: saga 'near' is still executing under a live process ")
    assert "recover()" not in line, line
    assert "once that process is gone, `sagakit resolve` settles it" in line, line
    assert "`sagakit recover` finishes it" in line, line


# ----------------------------------------------- logs that are not there


def test_a_sqlite_file_that_is_not_a_saga_log_is_refused_not_converted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: the CLI opened any SQLite file as a store, which created sagakit's
    # tables inside an application's own database and answered "no sagas".
    db = tmp_path / "app.db"
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    code, _out = cli("--db", str(db), "list")
    with closing(sqlite3.connect(db)) as conn:
        tables = sorted(
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        )
    assert tables == ["users"], f"the CLI created a saga log inside app.db: {tables}"
    assert code == 1
    assert "no saga log" in capsys.readouterr().err


def test_a_file_that_is_not_sqlite_is_refused_without_advice_to_create_a_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: the message was SQLiteStore's, which says to point it "at a path that
    # does not exist yet to create one"; the CLI never creates a log.
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n", encoding="utf-8")
    assert cli("--db", str(notes), "list") == (1, "")
    [line] = capsys.readouterr().err.splitlines()
    assert line == (
        f"sagakit: no saga log in {str(notes)!r} (it is not a SQLite database); "
        "pass the path your application's SQLiteStore uses"
    )
    assert notes.read_text(encoding="utf-8") == "not a database\n"


@pytest.mark.parametrize("command", [["list"], ["resolve", "x", "--note", "n"]])
def test_a_corrupt_log_is_refused_with_advice_a_cli_user_can_follow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    # Regression: the CLI said the store's advice, "restore it from a backup or point
    # SQLiteStore at another path", which a CLI user has no SQLiteStore to follow.
    db = str(tmp_path / "sagas.db")
    asyncio.run(SQLiteStore(db).close())
    with closing(sqlite3.connect(db)) as conn:
        [page] = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'sagakit_meta'"
        ).fetchone()
        [size] = conn.execute("PRAGMA page_size").fetchone()
    data = bytearray(Path(db).read_bytes())
    data[(page - 1) * size : page * size] = b"\xff" * size  # its schema version's page
    Path(db).write_bytes(bytes(data))
    assert cli("--db", db, *command) == (1, "")
    [line] = capsys.readouterr().err.splitlines()
    assert line == (
        f"sagakit: saga log {db!r} is corrupt or not a sagakit log (database disk image is "
        "malformed); restore it from a backup, or pass --db the path of another saga log"
    )
    # The library's own message keeps its advice, for a library user.
    with pytest.raises(StoreError, match=r"or point SQLiteStore at another path$"):
        SQLiteStore(db)


@pytest.mark.parametrize(
    ("damaged", "command"),
    [
        (None, ["list"]),  # every page past the header: opening read-only finds it
        (None, ["resolve", "x", "--note", "n"]),  # opening read-write finds it
        ("sagakit_sagas_started", ["list"]),  # an index page: the listing finds it
    ],
)
def test_a_log_damaged_elsewhere_is_refused_with_advice_a_cli_user_can_follow(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damaged: str | None,
    command: list[str],
) -> None:
    # Regression: damage found opening the log ("cannot open saga log '...' read-only:
    # database disk image is malformed") or reading it ("cannot read saga log '...': ...")
    # was said with no advice at all.
    db = str(tmp_path / "sagas.db")
    asyncio.run(SQLiteStore(db).close())
    data = bytearray(Path(db).read_bytes())
    if damaged is None:
        data[100:] = b"\xff" * (len(data) - 100)
    else:
        with closing(sqlite3.connect(db)) as conn:
            [page] = conn.execute(
                "SELECT rootpage FROM sqlite_master WHERE name = ?", (damaged,)
            ).fetchone()
            [size] = conn.execute("PRAGMA page_size").fetchone()
        data[(page - 1) * size : page * size] = b"\xff" * size
    Path(db).write_bytes(bytes(data))
    assert cli("--db", db, *command) == (1, "")
    [line] = capsys.readouterr().err.splitlines()
    assert line == (
        f"sagakit: saga log {db!r} is corrupt or not a sagakit log (database disk image is "
        "malformed); restore it from a backup, or pass --db the path of another saga log"
    )


def test_a_damaged_page_a_write_reaches_is_refused_with_advice_a_cli_user_can_follow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: a damaged index page only `resolve`'s write reaches (opening the log
    # and reading the saga do not) said "cannot write saga log '...': DatabaseError:
    # database disk image is malformed", with no advice.
    db, _ = crashed_in_credit(
        tmp_path, "parked", "UPDATE sagakit_sagas SET dead_letter = 'stuck', owner = NULL"
    )
    with closing(sqlite3.connect(db)) as conn:
        [page] = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'sagakit_sagas_status'"
        ).fetchone()
        [size] = conn.execute("PRAGMA page_size").fetchone()
    data = bytearray(Path(db).read_bytes())
    data[(page - 1) * size : page * size] = b"\xff" * size  # updated with a saga's status
    Path(db).write_bytes(bytes(data))
    assert cli("--db", db, "resolve", "parked", "--note", "refunded by hand") == (1, "")
    [line] = capsys.readouterr().err.splitlines()
    assert line == (
        f"sagakit: saga log {db!r} is corrupt or not a sagakit log (database disk image is "
        "malformed); restore it from a backup, or pass --db the path of another saga log"
    )


def test_a_log_without_a_valid_schema_version_is_refused_saying_what_to_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: "has no valid schema version", and nothing of what to do about it.
    db = str(tmp_path / "sagas.db")
    asyncio.run(SQLiteStore(db).close())
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE sagakit_meta SET value = '0' WHERE key = 'schema_version'")
    assert cli("--db", db, "list") == (1, "")
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"sagakit: saga log {db!r} has no valid schema version ('0'): ")
    assert "it is not a sagakit log, or it is damaged" in line
    assert line.endswith(
        f"(`sqlite3 {shlex.quote(db)} 'PRAGMA integrity_check'`), then restore it from a backup"
    )


@pytest.mark.parametrize("name", ["logs#1.db", "why?.db", "x%41.db"])
def test_a_log_whose_path_has_uri_characters_is_found(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: the read-only check opened "file:<path>?mode=ro" unquoted, so "#" and
    # "?" cut the path short: a real log was refused as "no saga log", and an empty
    # file named after the prefix ("logs", "why") was created next to it.
    db = tmp_path / name
    log = tmp_path / "effects.log"
    assert child(str(db), log, "run", str(db), "transfer", "ok-1", "B") == 0
    before = sorted(path.name for path in tmp_path.iterdir())
    code, out = cli("--db", str(db), "list")
    assert (code, capsys.readouterr().err) == (0, "")
    assert "ok-1" in out
    # Reading a WAL log read-only leaves SQLite's (empty) -wal and -shm files, no others.
    wal_files = {f"{name}-wal", f"{name}-shm"}
    after = sorted(path.name for path in tmp_path.iterdir() if path.name not in wal_files)
    assert after == before


def test_a_postgres_schema_without_a_saga_log_is_refused_not_created(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Regression: a mistyped --schema was created and migrated, then "no sagas".
    dsn = dsn_or_skip()
    schema = "sk_cli_missing_" + uuid.uuid4().hex[:8]
    try:
        code, out = cli("--db", dsn, "--schema", schema, "list")
        created = query(
            dsn, "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (schema,)
        )
        assert not created, f"the CLI created schema {schema!r} (output {out!r})"
        assert code == 1
    finally:
        query(dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_a_bad_postgres_url_is_one_line_naming_the_cause() -> None:
    # Regression: the pool retried for connect_timeout, logging a warning per attempt,
    # and the last line only said "PoolTimeout", not why.
    dsn = dsn_or_skip()
    bad = dsn.rsplit("/", 1)[0] + "/sk_cli_no_such_database"
    result = subprocess.run(
        [sys.executable, "-m", "sagakit", "--db", bad, "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, f"stderr has {len(lines)} lines:\n{result.stderr}"
    assert lines[0].startswith("sagakit: ")
    assert "does not exist" in lines[0]


def test_an_unknown_saga_on_postgres_does_not_print_the_password(
    dsn: str, schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: "no saga 'x' in <--db>" echoed the whole URL, password included.
    import asyncio
    from urllib.parse import urlsplit, urlunsplit

    from sagakit import PostgresStore

    parts = urlsplit(dsn)
    if parts.password is None:  # trust authentication ignores a password it gets
        user, _, host = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{user or 'postgres'}:s3cret-pw@{host}")
    secret_dsn = urlunsplit(parts)
    password = urlsplit(secret_dsn).password
    assert password

    async def create_log() -> None:
        store = PostgresStore(dsn, schema=schema)
        await store.open()
        await store.close()

    asyncio.run(create_log())
    assert cli("--db", secret_dsn, "--schema", schema, "show", "nope")[0] == 1
    err = capsys.readouterr().err
    assert "no saga 'nope'" in err
    assert schema in err
    assert "`sagakit list` lists its sagas" in err
    assert password not in err, err
    assert cli("--db", secret_dsn, "--schema", schema, "resolve", "nope", "--note", "x")[0] == 1
    err = capsys.readouterr().err
    assert "no saga 'nope'" in err  # as `show` says it
    assert "`sagakit list` lists its sagas" in err


APP_MODULE = """
from dataclasses import dataclass

from sagakit import saga, step


@dataclass(frozen=True)
class Moved:
    account: str
    amount: int


@step
async def move(account: str, amount: int) -> Moved:
    return Moved(account, amount)


@saga
def pay(account: str, amount: int):
    yield move(account, amount)
"""

# What pip writes for the ``sagakit`` console script: its directory, not the current
# one, is sys.path[0].
CONSOLE_SCRIPT = """import sys
from sagakit.cli import main
sys.exit(main())
"""


def test_the_sagakit_command_imports_modules_from_the_current_directory(
    tmp_path: Path,
) -> None:
    # Regression: `sagakit recover --import myapp` failed with "No module named 'myapp'"
    # for a module in the current directory (`python -m sagakit` found it), and `show`
    # printed that module's events as tagged JSON.
    app = tmp_path / "app"
    app.mkdir()
    (app / "review_app.py").write_text(APP_MODULE, encoding="utf-8")
    make_log = (
        "import asyncio\n"
        "from sagakit import SagaOrchestrator, SQLiteStore\n"
        "from review_app import pay\n"
        "async def main():\n"
        "    async with SagaOrchestrator(SQLiteStore('sagas.db')) as o:\n"
        "        await o.execute(pay('alice', 5), saga_id='pay-1')\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", make_log], cwd=app, check=True, timeout=60)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sagakit").write_text(CONSOLE_SCRIPT, encoding="utf-8")

    def sagakit(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(bin_dir / "sagakit"), "--db", "sagas.db", *argv],
            cwd=app,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    recovered = sagakit("recover", "--import", "review_app")
    assert recovered.returncode == 0, recovered.stderr
    assert recovered.stdout == "nothing to recover\n"
    shown = sagakit("show", "pay-1")
    assert shown.returncode == 0, shown.stderr
    assert "Moved(account='alice', amount=5)" in shown.stdout


@pytest.mark.parametrize("attempts", ["0", "-2", "three"])
def test_recover_refuses_max_attempts_below_one(
    log_db: tuple[str, Path], capsys: pytest.CaptureFixture[str], attempts: str
) -> None:
    # Regression: --max-attempts 0 parked every orphan as a dead letter, untried. Then it
    # was refused by the library (exit 1), not as a usage error like --limit 0 (exit 2).
    db, _ = log_db
    with pytest.raises(SystemExit) as exit_info:
        main(["--db", db, "recover", "--max-attempts", attempts])
    assert exit_info.value.code == 2
    assert f"--max-attempts: must be a whole number >= 1, got {attempts!r}" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_list_refuses_a_limit_below_one(
    log_db: tuple[str, Path], capsys: pytest.CaptureFixture[str], limit: str
) -> None:
    # Regression: SQLite read --limit -1 as "no limit" (PostgreSQL failed with an SQL
    # error), and --limit 0 answered "no sagas".
    db, _ = log_db
    with pytest.raises(SystemExit) as exit_info:
        main(["--db", db, "list", "--limit", limit])
    assert exit_info.value.code == 2
    assert f"--limit: must be a whole number >= 1, got {limit!r}" in capsys.readouterr().err


def test_list_takes_a_limit_larger_than_the_database_can_count(
    log_db: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: SQLite ended with an OverflowError traceback (PostgreSQL: "bigint out
    # of range") for a limit past 2**63 - 1, which only means "all of them".
    db, _ = log_db
    code, out = cli("--db", db, "list", "--limit", str(10**20), "--json")
    assert code == 0, capsys.readouterr().err
    assert [saga["id"] for saga in json.loads(out)] == ["refused-1", "ok-1"]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("raise RuntimeError('no config')", "RuntimeError: no config"),
        ("def broken(:\n", "SyntaxError: "),
        # Regression: a module that exits when imported (a script's `sys.exit()`) ended
        # sagakit with its status and message, which did not say where they came from.
        (
            "import sys\nsys.exit('config missing')",
            "SystemExit: config missing (the module exits when imported, as a script does: "
            'sagakit imports it, so put what runs it under `if __name__ == "__main__":`)',
        ),
    ],
)
def test_recover_reports_a_module_that_fails_to_import_in_one_line(
    log_db: tuple[str, Path], tmp_path: Path, source: str, expected: str
) -> None:
    # Regression: a module raising anything but ImportError (or `--import ''`) ended the
    # CLI with a traceback.
    db, _ = log_db
    (tmp_path / "broken_app.py").write_text(source, encoding="utf-8")
    for module in ("broken_app", ""):
        result = subprocess.run(
            [sys.executable, "-m", "sagakit", "--db", db, "recover", "--import", module],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1
        assert "Traceback" not in result.stderr, result.stderr
        [line] = result.stderr.splitlines()
        assert line.startswith(f"sagakit: cannot import {module!r}: ")
        if module:
            assert expected in line


def test_recover_says_a_module_parsing_the_command_line_at_import_exits(
    log_db: tuple[str, Path], tmp_path: Path
) -> None:
    # Regression: `--import app`, a script parsing its command line when imported, printed
    # the script's usage error, "unrecognized arguments: --db ... recover --import app",
    # as if sagakit's, and sagakit exited with the script's status 2, a usage error.
    db, _ = log_db
    source = "import argparse\nparser = argparse.ArgumentParser()\nparser.parse_args()\n"
    (tmp_path / "script_app.py").write_text(source, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "sagakit", "--db", db, "recover", "--import", "script_app"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "sagakit: cannot import 'script_app': SystemExit: 2 (the module exits when imported, "
        "as a script does: sagakit imports it, so put what runs it under "
        '`if __name__ == "__main__":`)'
    )


@pytest.mark.parametrize(
    ("given", "fix"), [("colon_app:main", "colon_app"), ("colon_pkg.sagas:app", "colon_pkg.sagas")]
)
def test_recover_given_a_module_and_attribute_for_import_names_the_module_to_pass(
    log_db: tuple[str, Path], tmp_path: Path, given: str, fix: str
) -> None:
    # Regression: `--import app:main`, as uvicorn and gunicorn take an application, said
    # "No module named 'app:main'" and to run sagakit from the application's directory,
    # where it already ran.
    db, _ = log_db
    (tmp_path / "colon_app.py").write_text("", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "sagakit", "--db", db, "recover", "--import", given],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (
        1,
        f"sagakit: cannot import {given!r}: --import takes a module name, not a "
        f"module:attribute reference: --import {fix}\n",
    )


@pytest.mark.parametrize("given", [".sagas", "..pkg.sagas"])
def test_recover_given_a_relative_module_name_says_to_give_it_whole(
    log_db: tuple[str, Path], capsys: pytest.CaptureFixture[str], given: str
) -> None:
    # Regression: `--import .sagas` said "TypeError: the 'package' argument is required to
    # perform a relative import" and that `python -c 'import .sagas'` shows the traceback:
    # a SyntaxError, whatever the module.
    db, _ = log_db
    assert cli("--db", db, "recover", "--import", given) == (1, "")
    assert capsys.readouterr().err == (
        f"sagakit: cannot import {given!r}: --import takes a module's whole dotted name, as "
        "an import statement outside its package names it (myapp.sagas), not a relative one\n"
    )


def test_recover_given_a_file_path_for_import_names_the_module_to_pass(
    log_db: tuple[str, Path], tmp_path: Path
) -> None:
    # Regression: `--import myapp/sagas.py` said "No module named 'myapp/sagas'" and to run
    # sagakit from the application's directory, where it already ran.
    db, _ = log_db
    (tmp_path / "pathapp").mkdir()
    (tmp_path / "pathapp" / "__init__.py").write_text("", encoding="utf-8")
    (tmp_path / "pathapp" / "sagas.py").write_text("", encoding="utf-8")
    elsewhere = (
        "run sagakit from your application's directory and pass the module's dotted name, "
        "as an import statement names it"
    )
    for given, fix in [
        ("pathapp/sagas.py", "--import pathapp.sagas"),
        ("./pathapp/sagas.py", "--import pathapp.sagas"),
        ("pathapp.sagas.py", "--import pathapp.sagas"),
        (str(tmp_path / "pathapp" / "sagas.py"), "--import pathapp.sagas"),
        ("../elsewhere/sagas.py", elsewhere),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "sagakit", "--db", db, "recover", "--import", given],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1
        assert result.stderr == (
            f"sagakit: cannot import {given!r}: --import takes a module name, not a file "
            f"path: {fix}\n"
        )


def test_recover_names_the_orphans_it_left_alone_for_want_of_their_module(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "nothing to recover" alone hid that an orphan was skipped because the module
    # declaring its saga was not imported.
    crash = (
        "import asyncio, os\n"
        "from sagakit import SagaOrchestrator, SQLiteStore, saga, step\n"
        "@step\n"
        "async def cli_hang() -> None:\n"
        "    await asyncio.sleep(60)\n"
        "@saga\n"
        "def cli_unimported_saga():\n"
        "    yield cli_hang()\n"
        "async def main():\n"
        "    orchestrator = SagaOrchestrator(SQLiteStore('sagas.db'))\n"
        "    asyncio.create_task(orchestrator.execute(cli_unimported_saga(), saga_id='o-1'))\n"
        "    while not [m for m in await orchestrator.get_running_sagas()\n"
        "               if m.steps and m.steps[-1].name == 'cli_hang']:\n"
        "        await asyncio.sleep(0.01)  # until its start is in the log\n"
        "    os._exit(0)  # dies mid-step: an orphan\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", crash], cwd=tmp_path, check=True, timeout=60)
    code, out = cli("--db", str(tmp_path / "sagas.db"), "recover")
    assert code == 0
    assert out.splitlines() == [
        "nothing to recover",
        "1 unfinished saga named cli_unimported_saga was left alone: no @saga of that name "
        "is registered here; pass --import with the module that declares it",
    ]
    capsys.readouterr()
    # Regression: with --json the note was left out, and a script read "[]" (nothing to
    # do) for good. It goes to stderr, so stdout stays one JSON document.
    code, out = cli("--db", str(tmp_path / "sagas.db"), "recover", "--json")
    assert code == 0
    assert json.loads(out) == []
    assert capsys.readouterr().err == (
        "sagakit: 1 unfinished saga named cli_unimported_saga was left alone: no @saga of "
        "that name is registered here; pass --import with the module that declares it\n"
    )


def test_recover_says_a_saga_renamed_since_its_orphans_started_needs_its_old_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: with the application's module imported, and its saga renamed since the
    # orphan started, the note said only "pass --import with the module that declares
    # them", which the operator had just done.
    crash = (
        "import asyncio, os\n"
        "from sagakit import SagaOrchestrator, SQLiteStore, saga, step\n"
        "@step\n"
        "async def cli_hang_renamed() -> None:\n"
        "    await asyncio.sleep(60)\n"
        "@saga\n"
        "def cli_old_name():\n"
        "    yield cli_hang_renamed()\n"
        "async def main():\n"
        "    orchestrator = SagaOrchestrator(SQLiteStore('sagas.db'))\n"
        "    asyncio.create_task(orchestrator.execute(cli_old_name(), saga_id='o-1'))\n"
        "    while not [m for m in await orchestrator.get_running_sagas()\n"
        "               if m.steps and m.steps[-1].name == 'cli_hang_renamed']:\n"
        "        await asyncio.sleep(0.01)  # until its start is in the log\n"
        "    os._exit(0)  # dies mid-step: an orphan\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", crash], cwd=tmp_path, check=True, timeout=60)
    (tmp_path / "cli_renamed_app.py").write_text(  # the code deployed since
        "from sagakit import saga, step\n"
        "@step\n"
        "async def cli_hang_renamed() -> None: ...\n"
        "@saga\n"
        "def cli_new_name():  # was cli_old_name\n"
        "    yield cli_hang_renamed()\n"
    )
    monkeypatch.chdir(tmp_path)
    code, out = cli("--db", "sagas.db", "recover", "--import", "cli_renamed_app")
    assert code == 0
    assert out.splitlines() == [
        "nothing to recover",
        "1 unfinished saga named cli_old_name was left alone: no @saga of that name is "
        "registered here; pass --import with the module that declares it; if the saga was "
        "renamed since it started, give it its old name back: @saga(name='cli_old_name')",
    ]


def test_recover_names_the_orphans_it_left_alone_beside_those_it_recovered(
    tmp_path: Path,
) -> None:
    # Regression: the note was printed only when nothing was recovered; with one saga
    # recovered, an orphan of an unimported module was left alone without a word.
    db = str(tmp_path / "sagas.db")
    log = tmp_path / "effects.log"
    assert child(db, log, "run", db, "transfer", "t1", "B", crash="in_step:credit") == (
        -signal.SIGKILL
    )
    crash = (
        "import asyncio, os\n"
        "from sagakit import SagaOrchestrator, SQLiteStore, saga, step\n"
        "@step\n"
        "async def cli_hang_too() -> None:\n"
        "    await asyncio.sleep(60)\n"
        "@saga\n"
        "def cli_unimported_too():\n"
        "    yield cli_hang_too()\n"
        "async def main():\n"
        "    orchestrator = SagaOrchestrator(SQLiteStore('sagas.db'))\n"
        "    asyncio.create_task(orchestrator.execute(cli_unimported_too(), saga_id='o-2'))\n"
        "    while not [m for m in await orchestrator.get_running_sagas()\n"
        "               if m.steps and m.steps[-1].name == 'cli_hang_too']:\n"
        "        await asyncio.sleep(0.01)  # until its start is in the log\n"
        "    os._exit(0)  # dies mid-step: an orphan\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", crash], cwd=tmp_path, check=True, timeout=60)
    with bank_importable(log):
        code, out = cli("--db", db, "recover", "--import", "bank")
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[:4] for line in lines[:2]] == [
        ["ID", "NAME", "ACTION", "STATUS"],
        ["t1", "transfer", "resumed", "completed"],
    ]
    assert lines[2:] == [
        "1 unfinished saga named cli_unimported_too was left alone: no @saga of that name "
        "is registered here; pass --import with the module that declares it; if the saga "
        "was renamed since it started, give it its old name back: "
        "@saga(name='cli_unimported_too')",
    ]


def test_recover_names_the_orphans_it_left_alone_when_reading_them_imports_their_module(
    tmp_path: Path,
) -> None:
    # Regression: reading the orphans' events (a dataclass of the saga's own module)
    # imported that module, which registered the saga, so the note was dropped and
    # `sagakit recover` said "nothing to recover" alone, run after run.
    (tmp_path / "cli_events_app.py").write_text(
        "import asyncio\n"
        "from dataclasses import dataclass\n"
        "from sagakit import saga, step\n"
        "@dataclass(frozen=True)\n"
        "class Reserved:\n"
        "    item: str\n"
        "@step\n"
        "async def cli_reserve(item: str) -> Reserved:\n"
        "    return Reserved(item)\n"
        "@step\n"
        "async def cli_wait() -> None:\n"
        "    await asyncio.sleep(60)\n"
        "@saga\n"
        "def cli_event_saga(item: str):\n"
        "    yield cli_reserve(item)\n"
        "    yield cli_wait()\n",
        encoding="utf-8",
    )
    crash = (
        "import asyncio, os\n"
        "from sagakit import SagaOrchestrator, SQLiteStore\n"
        "from cli_events_app import cli_event_saga\n"
        "async def main():\n"
        "    orchestrator = SagaOrchestrator(SQLiteStore('sagas.db'))\n"
        "    asyncio.create_task(orchestrator.execute(cli_event_saga('book'), saga_id='e-1'))\n"
        "    while not [m for m in await orchestrator.get_running_sagas()\n"
        "               if m.steps and m.steps[-1].name == 'cli_wait']:\n"
        "        await asyncio.sleep(0.01)  # until its start is in the log\n"
        "    os._exit(0)  # dies mid-step: an orphan\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", crash], cwd=tmp_path, check=True, timeout=60)
    result = subprocess.run(
        [sys.executable, "-m", "sagakit", "--db", "sagas.db", "recover"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        "nothing to recover",
        "1 unfinished saga named cli_event_saga was left alone: no @saga of that name "
        "is registered here; pass --import with the module that declares it "
        "(cli_events_app)",
    ]


def test_an_unknown_or_finished_saga_id_names_the_command_that_finds_it(
    log_db: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: `show`, `resolve` and `release` of an id not in the log (a typo) said
    # only that it was not there, and `release` of a finished one only "is not running".
    db, _ = log_db
    for argv, expected in [
        (["show", "nope"], f"no saga 'nope' in {db!r}; `sagakit list` lists its sagas"),
        (["resolve", "nope", "--note", "x"], "`sagakit list` lists its sagas"),
        (["release", "nope"], f"no owner to release; `sagakit --db {db} show nope` tells"),
        (["release", "ok-1"], "show ok-1` tells whether it is there, and how it ended"),
    ]:
        assert cli("--db", db, *argv) == (1, "")
        err = capsys.readouterr().err
        assert err.startswith("sagakit: ")
        assert expected in err


@pytest.mark.parametrize(
    "command", [["list"], ["list", "--json"], ["show", "ok-1"], ["dead-letters"]]
)
def test_output_cut_short_by_its_reader_is_no_traceback(
    log_db: tuple[str, Path], command: list[str]
) -> None:
    # `sagakit list | head -1` ended with a BrokenPipeError traceback; then with status
    # 1, which says the command failed (a `set -o pipefail` script stopped there). It
    # exits quietly with the status of a command SIGPIPE stops (cat, grep): 128 + 13.
    db, _ = log_db
    reader_gone = subprocess.Popen(
        [sys.executable, "-m", "sagakit", "--db", db, *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader_gone.stdout is not None
    assert reader_gone.stderr is not None
    reader_gone.stdout.close()  # like head, gone before the table is written
    with reader_gone.stderr:
        stderr = reader_gone.stderr.read().decode()
    assert reader_gone.wait(timeout=60) == 128 + signal.SIGPIPE
    assert stderr == ""  # no traceback, no "Exception ignored" at exit


def test_recover_with_a_module_not_found_says_where_it_looked(
    log_db: tuple[str, Path], tmp_path: Path
) -> None:
    # "No module named 'shop'" from another directory gave no hint of the cause.
    db, _ = log_db
    result = subprocess.run(
        [sys.executable, "-m", "sagakit", "--db", db, "recover", "--import", "shop.sagas"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "No module named 'shop'" in line
    assert f"the current directory is {str(tmp_path)!r}" in line
    assert "PYTHONPATH" in line


_INTERRUPTIBLE_APP = """
import asyncio, os
from sagakit import saga, step

@step
async def cli_first(x: str) -> str:
    return x

@cli_first.compensate
async def cli_undo_first(x: str) -> None:
    print("UNDO", x, flush=True)

@step(timeout=600)
async def cli_slow(x: str) -> str:
    print("slow", x, flush=True)
    if os.path.exists("hang"):
        await asyncio.sleep(600)
    return x

@saga
def cli_interruptible(x: str):
    yield cli_first(x)
    yield cli_slow(x)
"""

_CRASH_IT = """
import asyncio, sys
from sagakit import PostgresStore, SagaOrchestrator, SQLiteStore
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart
from interruptible_app import cli_interruptible, cli_slow

async def main():
    if len(sys.argv) > 1:
        store = PostgresStore(sys.argv[1], schema=sys.argv[2])
    else:
        store = SQLiteStore("sagas.db")
    try:
        with FaultInjector().crash(cli_slow):
            await SagaOrchestrator(store).execute(cli_interruptible("a"), saga_id="int-1")
    except SimulatedCrash:
        pass
    await simulate_restart(store)
    await store.close()

asyncio.run(main())
"""


def _crash_in_the_slow_step(tmp_path: Path, *where: str) -> None:
    """``interruptible_app.py`` in ``tmp_path``, its saga ``int-1`` crashed inside ``cli_slow``
    (on ``sagas.db``, or on PostgreSQL where ``where`` is ``dsn, schema``), and ``hang`` made:
    the next run of ``cli_slow`` prints ``slow a`` and waits."""
    (tmp_path / "interruptible_app.py").write_text(_INTERRUPTIBLE_APP, encoding="utf-8")
    (tmp_path / "crash_it.py").write_text(_CRASH_IT, encoding="utf-8")
    subprocess.run([sys.executable, "crash_it.py", *where], cwd=tmp_path, check=True, timeout=60)
    (tmp_path / "hang").touch()


def _sagakit_child(cwd: Path, command: list[str], hears: signal.Signals) -> subprocess.Popen[str]:
    """``command`` (``python -m sagakit ...``) in a child that hears ``hears`` as it would
    from a terminal: a test run started in the background of a shell without job control
    inherits SIGINT ignored, and Python then never hears it."""
    return subprocess.Popen(
        # -X faulthandler: should it hang, SIGABRT makes it print where each thread is.
        [sys.executable, "-X", "faulthandler", *command[1:]],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(hears, signal.SIG_DFL),
    )


def _stopped(child: subprocess.Popen[str], by: signal.Signals) -> tuple[str, str]:
    """Send ``by`` to ``child`` and wait for it: its stdout and stderr. Should it not stop
    (seen once, under heavy load) the test fails with where each of its threads was."""
    child.send_signal(by)
    try:
        return child.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGABRT)
        _, err = child.communicate(timeout=30)
        pytest.fail(f"`sagakit recover` did not stop on {by.name}; its threads:\n{err}")


def test_ctrl_c_on_recover_leaves_the_saga_for_the_next_recover(tmp_path: Path) -> None:
    # Ctrl-C on `sagakit recover` compensated the saga it was resuming (and printed a
    # KeyboardInterrupt traceback); the saga is now left for the next recover.
    _crash_in_the_slow_step(tmp_path)
    command = [sys.executable, "-m", "sagakit", "--db", "sagas.db", "recover"]
    command += ["--import", "interruptible_app"]
    recovering = _sagakit_child(tmp_path, command, hears=signal.SIGINT)
    assert recovering.stdout is not None
    assert recovering.stdout.readline() == "slow a\n"  # inside the step it resumes
    out, err = _stopped(recovering, by=signal.SIGINT)
    assert recovering.returncode == 130
    assert "Traceback" not in err, err
    assert err == (
        "sagakit: interrupted; a saga being recovered is left for the next `recover` (if it had "
        "started, this attempt counts toward --max-attempts)\n"
    )
    assert "UNDO" not in out  # not compensated

    (tmp_path / "hang").unlink()
    again = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True
    )
    assert "UNDO" not in again.stdout
    assert "int-1" in again.stdout
    assert "resumed" in again.stdout
    assert "completed" in again.stdout


def _strict_json(text: str) -> object:
    def refuse(constant: str) -> object:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_json_output_is_strict_json_for_values_that_are_not_finite(tmp_path: Path) -> None:
    # Regression: an event holding NaN or infinity was printed as `NaN`/`Infinity`, which
    # is not JSON: jq and JavaScript refuse the whole output.
    from sagakit import SagaOrchestrator, SQLiteStore, saga, step

    @step
    async def cli_ratio(x: float) -> dict[str, float]:
        return {"ratio": x}

    @saga
    def cli_ratios():  # type: ignore[no-untyped-def]
        yield cli_ratio(float("nan"))
        yield cli_ratio(float("inf"))
        yield cli_ratio(0.5)

    db = str(tmp_path / "sagas.db")

    async def run() -> None:
        async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
            await orchestrator.execute(cli_ratios(), saga_id="r-1")

    asyncio.run(run())
    code, out = cli("--db", db, "show", "r-1", "--json")
    assert code == 0
    data = _strict_json(out)
    assert isinstance(data, dict)
    assert data["events"] == ["{'ratio': nan}", "{'ratio': inf}", {"ratio": 0.5}]
    assert data["steps"][0]["events"] == ["{'ratio': nan}"]


def test_json_output_gives_a_dict_with_keys_that_are_not_strings_as_its_repr(
    tmp_path: Path,
) -> None:
    # Regression: json turned the keys into strings, so {1: "a", "1": "b"} came out as
    # {"1": "a", "1": "b"}, one key twice (jq keeps the last: "a" was lost), and {1: "a"}
    # as {"1": "a"}; the docs say a value JSON cannot hold as it is is given as its repr().
    from sagakit import SagaOrchestrator, SQLiteStore, saga, step

    @step
    async def cli_keyed() -> list[object]:
        return [{1: "a", "1": "b"}, {"nested": [{2: "c"}]}, {"plain": [1, "x"]}]

    @saga
    def cli_keyed_saga():  # type: ignore[no-untyped-def]
        yield cli_keyed()

    db = str(tmp_path / "sagas.db")

    async def run() -> None:
        async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
            await orchestrator.execute(cli_keyed_saga(), saga_id="k-1")

    asyncio.run(run())
    code, out = cli("--db", db, "show", "k-1", "--json")
    assert code == 0
    data = json.loads(out, object_pairs_hook=_no_key_twice)
    assert isinstance(data, dict)
    expected = ["{1: 'a', '1': 'b'}", "{'nested': [{2: 'c'}]}", {"plain": [1, "x"]}]
    assert data["events"] == expected
    assert data["steps"][0]["events"] == expected


def _no_key_twice(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), f"a key twice in one JSON object: {keys}"
    return dict(pairs)


def test_help_gives_the_defaults_and_offers_json_only_where_it_is_printed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: --limit and --max-attempts had no help (nor their defaults).
    monkeypatch.setenv("COLUMNS", "200")  # no line breaks inside the phrases below

    def help_of(*command: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        return " ".join(capsys.readouterr().out.split())

    assert "at most N sagas (default 50)" in help_of("list")
    assert "(default 3)" in help_of("recover")
    for command in ("list", "show", "recover", "dead-letters", "resume", "release", "resolve"):
        assert "--json print JSON for scripts" in help_of(command)
    assert "--json print JSON for scripts" in help_of()


def test_resume_release_and_resolve_print_json_with_json(
    log_db: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: they took --json (also before the command) and printed a line of text,
    # which a script reading every command's output as JSON could not parse.
    parked = "UPDATE sagakit_sagas SET dead_letter = 'stuck', owner = NULL"
    (tmp_path / "far").mkdir()
    far, _ = crashed_in_credit(tmp_path / "far", "far", ELSEWHERE)
    for saga_id in ("p1", "p2"):
        db, _ = crashed_in_credit(tmp_path, saga_id, parked)
    assert json.loads(cli("--db", far, "release", "far", "--json")[1]) == {
        "id": "far",
        "name": "transfer",
        "action": "released",
        "status": "executing",
    }
    assert json.loads(cli("--db", db, "--json", "resume", "p1")[1]) == {
        "id": "p1",
        "name": "transfer",
        "action": "resumed",
        "status": "executing",
    }
    code, out = cli("--db", db, "resolve", "p2", "--note", "refunded", "--json")
    assert (code, json.loads(out)) == (
        0,
        {"id": "p2", "name": "transfer", "action": "resolved", "status": "failed"},
    )
    # Without --json: the line, as before; an error: its message on stderr, stdout empty.
    assert cli("--db", db, "resolve", "p1", "--note", "x") == (0, "saga p1 marked resolved\n")
    log, _ = log_db
    assert cli("--db", log, "--json", "resume", "ok-1") == (1, "")
    assert "is not dead-lettered" in capsys.readouterr().err


def test_ctrl_c_on_a_command_that_recovers_nothing_says_only_that(
    log_db: tuple[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Regression: Ctrl-C on `list` (or `show`, ...) spoke of "a saga being recovered".
    from sagakit import SQLiteStore

    async def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(SQLiteStore, "_list_page", interrupted)  # what `list` reads
    db, _ = log_db
    assert cli("--db", db, "list") == (130, "")
    assert capsys.readouterr().err == "sagakit: interrupted\n"


def test_json_keys_are_the_documented_ones(tmp_path: Path) -> None:
    # The keys docs/durability.md lists for --json, which scripts rely on.
    db = str(tmp_path / "sagas.db")
    log = tmp_path / "effects.log"
    assert child(db, log, "run", db, "transfer", "t1", "B", crash="in_step:credit") == (
        -signal.SIGKILL
    )
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE sagakit_sagas SET dead_letter = 'stuck', parked_at = 0")
    conn.close()
    saga_keys = [
        "id",
        "name",
        "status",
        "steps_executed",
        "total_steps",
        "started_at",
        "finished_at",
        "error",
        "dead_letter",
        "dead_letter_reason",
    ]
    step_keys = ["index", "name", "status", "attempts", "duration", "error", "events"]
    [listed] = json.loads(cli("--db", db, "list", "--json")[1])
    assert list(listed) == saga_keys
    shown = json.loads(cli("--db", db, "show", "t1", "--json")[1])
    shown_keys = [*saga_keys[:6], "updated_at", *saga_keys[6:], "steps", "compensations"]
    shown_keys += ["events", "compensation_events", "arguments", "parked"]
    assert list(shown) == shown_keys
    arguments = {"args": ["A", "B", 10], "kwargs": {}, "raw": None, "error": None}
    assert shown["arguments"] == arguments
    assert [list(record) for record in shown["steps"]] == [step_keys] * 3
    assert (shown["finished_at"], shown["steps"][2]["duration"]) == (None, None)
    [letter] = json.loads(cli("--db", db, "dead-letters", "--json")[1])
    assert letter == {
        "id": "t1",
        "name": "transfer",
        "status": "executing",
        "recovery_attempts": 0,
        "reason": "stuck",
        "parked_at": "1970-01-01T00:00:00+00:00",
    }
    # ... and the page names each of them, so the two cannot drift apart.
    page = (Path(__file__).parent.parent / "docs" / "durability.md").read_text("utf-8")
    section = page.split("## Command line", 1)[1].split("\n## ", 1)[0]
    recover_keys = ["id", "name", "action", "status", "error"]
    undocumented = sorted(
        {
            key
            for key in [*shown_keys, *step_keys, *letter, *recover_keys, *arguments]
            if f"`{key}`" not in section
        }
    )
    assert not undocumented, f"docs/durability.md's Command line does not name {undocumented}"


def test_a_postgres_role_that_may_only_read_the_log_can_inspect_it(
    dsn: str, schema: str, role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: opening the store ran CREATE SCHEMA/TABLE IF NOT EXISTS under a lock
    # even for a log at the current version, so a read-only role (what an operator
    # should inspect production with) got "permission denied for database".
    from sagakit import PostgresStore, SagaOrchestrator, saga, step

    @step
    async def cli_pg_note(x: str) -> str:
        return x

    @saga
    def cli_pg_noted(x: str):  # type: ignore[no-untyped-def]
        yield cli_pg_note(x)

    async def write_log() -> None:
        async with SagaOrchestrator(PostgresStore(dsn, schema=schema)) as orchestrator:
            await orchestrator.execute(cli_pg_noted("n"), saga_id="noted-1")

    asyncio.run(write_log())
    grant_reading(dsn, schema, role)
    reader = as_role(dsn, role)
    code, out = cli("--db", reader, "--schema", schema, "list", "--json")
    assert (code, capsys.readouterr().err) == (0, "")
    assert [saga["id"] for saga in json.loads(out)] == ["noted-1"]
    code, out = cli("--db", reader, "--schema", schema, "show", "noted-1")
    assert (code, capsys.readouterr().err) == (0, "")
    assert out.startswith("saga noted-1 (cli_pg_noted): completed\n")
    assert cli("--db", reader, "--schema", schema, "dead-letters") == (0, "no dead letters\n")


def test_control_characters_in_names_and_errors_are_escaped_in_tables(tmp_path: Path) -> None:
    # Regression: a saga, step or id holding a newline broke its table row in two, and an
    # escape sequence in a name or error (a user's input in an exception message, say)
    # reached the operator's terminal as is.
    from sagakit import SagaOrchestrator, SQLiteStore, StepFailed, saga, step

    @step(name="cli\nstep\x1b[31m")
    async def cli_odd_step() -> None:
        pass

    @step
    async def cli_odd_failure() -> None:
        raise ValueError("bad input \x1b]0;owned\x07 \u202etxt.exe")

    @cli_odd_step.compensate
    async def cli_odd_undo() -> None:
        pass

    @saga(name="cli\todd\nsaga")
    def cli_odd_saga():  # type: ignore[no-untyped-def]
        return [cli_odd_step(), cli_odd_failure()]

    db = str(tmp_path / "sagas.db")

    async def run() -> None:
        async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
            with pytest.raises(StepFailed):
                await orchestrator.execute(cli_odd_saga(), saga_id="odd\n1")

    asyncio.run(run())
    code, listed = cli("--db", db, "list")
    assert code == 0
    assert len(listed.splitlines()) == 2
    assert listed.splitlines()[1].split()[:3] == ["odd\\n1", "cli\\todd\\nsaga", "compensated"]
    code, shown = cli("--db", db, "show", "odd\n1")
    assert code == 0
    lines = shown.splitlines()
    assert lines[0] == "saga odd\\n1 (cli\\todd\\nsaga): compensated"
    assert lines[3].endswith("bad input \\x1b]0;owned\\x07 \\u202etxt.exe")
    assert [line.split()[:3] for line in lines[5:]] == [
        ["step", "0", "cli\\nstep\\x1b[31m"],
        ["step", "1", "cli_odd_failure"],
        ["undo", "0", "cli\\nstep\\x1b[31m"],
    ]
    for text in (listed, shown):
        assert not any(char in text for char in "\t\x1b\x07\u202e")
    code, out = cli("--db", db, "show", "odd\n1", "--json")
    assert json.loads(out)["name"] == "cli\todd\nsaga"  # JSON keeps the name as it is


def test_control_characters_of_ids_are_escaped_in_notes_and_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: the tables escaped them, but not recover's note on the sagas of another
    # host (its `sagakit release ID` command quoted the id for a shell, escape sequence and
    # all) nor an error's message (one that names a command for an id).
    odd = "far\x1b]0;owned\x07"
    db, log = crashed_in_credit(tmp_path, odd, ELSEWHERE.replace("'far'", f"'{odd}'"))
    with bank_importable(log):
        code, out = cli("--db", db, "recover", "--import", "bank")
    assert code == 0
    assert "release 'far\\x1b]0;owned\\x07'` hands it to the next recover" in out
    code, out = cli("--db", db, "release", "gone\x1b[2J")
    assert code == 1
    err = capsys.readouterr().err
    assert "show 'gone\\x1b[2J'` tells whether it is there" in err
    for text in (out, err):
        assert not any(char in text for char in "\x1b\x07")


def test_table_columns_line_up_after_wide_and_combining_characters(tmp_path: Path) -> None:
    # Regression: columns were padded by len(), so a name in Chinese or Japanese (two
    # terminal columns a character) or with combining accents pushed the rest of its row
    # out of line with the others.
    import unicodedata

    from sagakit import SagaOrchestrator, SQLiteStore, saga, step

    @step
    async def cli_wide_step() -> None:
        pass

    @saga(name="转账")
    def cli_wide():  # type: ignore[no-untyped-def]
        return [cli_wide_step()]

    @saga(name="cafe\u0301s")
    def cli_combining():  # type: ignore[no-untyped-def]
        return [cli_wide_step()]

    @saga(name="transfer-n")
    def cli_narrow():  # type: ignore[no-untyped-def]
        return [cli_wide_step()]

    db = str(tmp_path / "sagas.db")

    async def run() -> None:
        async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
            await orchestrator.execute(cli_wide(), saga_id="w-1")
            await orchestrator.execute(cli_combining(), saga_id="w-2")
            await orchestrator.execute(cli_narrow(), saga_id="w-3")

    asyncio.run(run())
    code, out = cli("--db", db, "list")
    assert code == 0

    def column(line: str, text: str) -> int:  # where ``text`` starts on the terminal
        before = line[: line.index(text)]
        return sum(
            0
            if unicodedata.combining(c)
            else 2
            if unicodedata.east_asian_width(c) in ("W", "F")
            else 1
            for c in before
        )

    header, *rows = out.splitlines()
    assert len(rows) == 3
    assert {column(row, "completed") for row in rows} == {column(header, "STATUS")}


def test_list_takes_a_status_in_any_case(
    log_db: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: `--status COMPLETED`, as the docs write statuses, was refused (exit 2).
    db, _ = log_db
    for status in ("COMPLETED", "Completed", "completed"):
        code, out = cli("--db", db, "list", "--status", status, "--json")
        assert code == 0
        assert [saga["id"] for saga in json.loads(out)] == ["ok-1"]
    with pytest.raises(SystemExit) as exited:
        cli("--db", db, "list", "--status", "DONE")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err
    assert "completed" in err
    assert "COMPLETED" not in err  # the choices stay lowercase


@pytest.mark.parametrize(
    ("db", "expected"),
    [
        (
            "postgresql+psycopg://app:s3cret@db.internal/payments",
            "--db takes a PostgreSQL URL as libpq reads it, not a SQLAlchemy dialect URL "
            "(postgresql+psycopg://...): write it postgresql://...",
        ),
        (
            "POSTGRES://app:s3cret@db.internal/payments",
            "--db takes a PostgreSQL URL in lowercase: write POSTGRES:// as postgresql://",
        ),
        (
            "sqlite:////var/lib/app/my sagas.db",
            "--db takes the SQLite log's file path, not a sqlite:// URL: "
            "--db '/var/lib/app/my sagas.db'",
        ),
        (
            "mysql://app:s3cret@db.internal/payments",
            "--db takes a SQLite file path or a postgresql:// URL; a mysql:// URL names no saga "
            "log sagakit can read",
        ),
    ],
)
def test_a_database_url_sagakit_does_not_read_is_refused_without_repeating_it(
    db: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: any URL but postgresql:// and postgres:// was taken for a file path:
    # "no saga log at '<the URL>'; pass the path your application uses", which wrote the
    # URL's password to the terminal and did not say what --db takes (with --schema, the
    # usage error quoted it too).
    for argv in (["list"], ["--schema", "billing", "recover"]):
        with pytest.raises(SystemExit) as exited:
            cli("--db", db, *argv)
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1] == f"sagakit: error: {expected}"
        assert "s3cret" not in err


def test_schema_with_a_sqlite_log_is_refused(
    log_db: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: --schema was silently ignored for a SQLite path.
    db, _ = log_db
    for argv in (["--schema", "billing", "list"], ["list", "--schema", "billing"]):
        with pytest.raises(SystemExit) as exited:
            cli("--db", db, *argv)
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert "--schema applies to PostgreSQL URLs only" in err
        assert "drop --schema" in err


def test_list_and_show_mark_a_dead_letter(tmp_path: Path) -> None:
    # Regression: a parked saga listed as `executing`, like one running, with no mark in
    # the table or the JSON (nor in `show`).
    db, _ = crashed_in_credit(
        tmp_path, "parked", "UPDATE sagakit_sagas SET dead_letter = 'stuck', owner = NULL"
    )
    assert child(db, tmp_path / "effects.log", "run", db, "transfer", "ok", "B") == 0
    code, out = cli("--db", db, "list")
    assert code == 0
    rows = [line.split("  ") for line in out.splitlines()[1:]]
    assert [[cell.strip() for cell in row if cell][:3] for row in rows] == [
        ["ok", "transfer", "completed"],
        ["parked", "transfer", "executing (dead letter)"],
    ]
    listed = json.loads(cli("--db", db, "list", "--json")[1])
    assert [(s["id"], s["status"], s["dead_letter"]) for s in listed] == [
        ("ok", "completed", False),
        ("parked", "executing", True),
    ]
    code, out = cli("--db", db, "show", "parked")
    assert out.splitlines()[0] == "saga parked (transfer): executing (dead letter)"
    assert "after 0 recovery attempts: stuck; `sagakit resume` or `sagakit resolve` it" in out
    assert json.loads(cli("--db", db, "show", "parked", "--json")[1])["dead_letter"] is True
    assert json.loads(cli("--db", db, "show", "ok", "--json")[1])["dead_letter"] is False


def test_recover_on_postgres_names_the_sagas_waiting_for_their_lease(
    dsn: str, schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: `recover` said only "nothing to recover" while orphans waited for their
    # owner's lease to expire; the operator could not tell it from a log with no orphan.
    from sagakit import PostgresStore, SagaOrchestrator, saga, step
    from sagakit.testing import FaultInjector, SimulatedCrash

    @step
    async def cli_pg_leased_step(x: str) -> str:
        return x

    @saga
    def cli_pg_leased(x: str):  # type: ignore[no-untyped-def]
        yield cli_pg_leased_step(x)

    async def crash() -> None:
        async with SagaOrchestrator(PostgresStore(dsn, schema=schema)) as orchestrator:
            faults = FaultInjector()
            faults.crash(cli_pg_leased_step)
            with faults, pytest.raises(SimulatedCrash):
                await orchestrator.execute(cli_pg_leased("x"), saga_id="held-1")

    asyncio.run(crash())
    # Another worker holds it, its lease an hour away from expiring.
    query(
        dsn,
        f"UPDATE \"{schema}\".sagas SET owner = 'elsewhere', "
        "lease_until = now() + interval '1 hour' WHERE saga_id = 'held-1'",
    )
    assert cli("--db", dsn, "--schema", schema, "recover") == (
        0,
        "nothing to recover\n"
        "1 saga is running under a lease, which runs out in 60 minutes (by the database's "
        "clock); it is recovered once the lease expires (a later recover, or any worker, "
        "claims it), or finished by the worker holding it\n",
    )
    assert cli("--db", dsn, "--schema", schema, "recover", "--json") == (0, "[]\n")
    assert "sagakit: 1 saga is running under a lease, which" in capsys.readouterr().err
    query(dsn, f"UPDATE \"{schema}\".sagas SET lease_until = now() WHERE saga_id = 'held-1'")
    code, out = cli("--db", dsn, "--schema", schema, "recover")
    assert code == 0
    assert out.splitlines()[1].split()[:4] == [
        "held-1",
        "cli_pg_leased",
        "resumed",
        "completed",
    ]
    assert "under a lease" not in out


@pytest.mark.asyncio
async def test_upgrade_brings_an_older_log_to_this_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The read-only commands refuse a log of an older schema (they must not change it),
    # and an operator with only the command line had no way to upgrade it.
    from sagakit import SagaOrchestrator, StepFailed
    from sagakit.stores import _sqlite_schema
    from test_sqlite_order import old_store, refused_after_three, version_of

    path = tmp_path / "old.db"
    store = old_store(path, monkeypatch)
    with pytest.raises(StepFailed):
        await SagaOrchestrator(store).execute(refused_after_three(), saga_id="old-1")
    await store.close()
    monkeypatch.undo()
    assert version_of(path) == 1

    code, _ = await asyncio.to_thread(cli, "--db", str(path), "list")
    assert code == 1
    told = capsys.readouterr().err
    assert "older than this sagakit's" in told
    assert f"sagakit --db {path} upgrade" in told
    assert version_of(path) == 1  # a read-only command leaves it as it was

    code, printed = await asyncio.to_thread(cli, "--db", str(path), "upgrade")
    assert code == 0
    version = _sqlite_schema.SCHEMA_VERSION
    # Regression: it said "is at schema version N" whether it upgraded the log or found
    # it there already, so an operator could not tell whether anything was done.
    assert printed == f"upgraded saga log {str(path)!r} from schema version 1 to {version}\n"
    assert version_of(path) == version
    code, printed = await asyncio.to_thread(cli, "--db", str(path), "upgrade")
    assert (code, printed) == (
        0,
        f"saga log {str(path)!r} is at schema version {version} already, this sagakit's\n",
    )
    code, printed = await asyncio.to_thread(cli, "--db", str(path), "upgrade", "--json")
    assert (code, json.loads(printed)) == (
        0,
        {"schema_version": version, "previous_schema_version": version},
    )

    code, printed = await asyncio.to_thread(cli, "--db", str(path), "list")
    assert code == 0
    assert "old-1" in printed


def test_a_hint_naming_a_saga_id_is_a_command_line_that_works_when_pasted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: `release` of a finished saga said "`sagakit show fail me` tells whether
    # it is there": pasted, that shows saga 'fail' (or breaks on a quote), and it named
    # no log. The hint quotes every word, and puts `--` before an id starting with "-".
    (tmp_path / "my logs").mkdir()
    db = str(tmp_path / "my logs" / "sagas.db")
    log = tmp_path / "effects.log"
    for saga_id in ("fail me", 'it\'s "done"', "-x"):
        assert child(db, log, "run", db, "transfer", saga_id, "B") == 0
        assert cli("--db", db, "release", "--", saga_id) == (1, "")
        err = capsys.readouterr().err
        hint = err.split("`")[1]
        argv = shlex.split(hint)
        assert argv[0] == "sagakit"
        code, out = cli(*argv[1:])
        assert code == 0
        assert out.startswith(f"saga {saga_id} (transfer): completed\n")


def test_the_resolve_hint_of_saga_already_failed_parses_as_that_command() -> None:
    from sagakit.cli import _parser

    for saga_id in ("fail me", 'it\'s "done"', "-x"):
        hint = str(SagaAlreadyFailed(saga_id)).split("`")[1]
        argv = shlex.split(hint)
        assert argv[0] == "sagakit"
        args = _parser().parse_args(argv[1:])
        assert (args.db, args.command, args.saga_id, args.note) == (
            "LOG",
            "resolve",
            saga_id,
            "...",
        )


SCRIPT = """\
import asyncio, os, signal, sys
from dataclasses import dataclass
from sagakit import SagaOrchestrator, SQLiteStore, saga, step

@dataclass(frozen=True)
class Charged:
    amount: int

@step
async def script_charge(amount: int) -> Charged:
    return Charged(amount)

@step
async def script_ship(amount: int) -> str:
    if os.environ.get("CRASH"):
        os.kill(os.getpid(), signal.SIGKILL)
    return f"shipped {amount}"

@saga
def script_order(amount: int):
    charged = yield script_charge(amount)
    yield script_ship(charged.amount)

async def main() -> None:
    async with SagaOrchestrator(SQLiteStore(sys.argv[1])) as orchestrator:
        events = await orchestrator.execute(script_order(5), saga_id="order-1")
    print(events, isinstance(events[0], Charged))

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_a_script_s_own_classes_are_read_back_by_another_process(tmp_path: Path) -> None:
    # Regression: a dataclass defined in the script being run (`python shop.py`) was
    # stored as `__main__:Charged`, which no other process can import (its __main__ is
    # another module): `sagakit recover --import shop` parked the saga as a dead letter
    # ("its log cannot be read back"), and `show` printed the value as tagged JSON.
    app = tmp_path / "app"
    app.mkdir()
    (app / "shop.py").write_text(SCRIPT, encoding="utf-8")
    db = str(tmp_path / "sagas.db")
    crashed = subprocess.run(
        [sys.executable, "shop.py", db], cwd=app, env={**os.environ, "CRASH": "1"}, check=False
    )
    assert crashed.returncode == -signal.SIGKILL

    def sagakit(*argv: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "sagakit", "--db", db, *argv],
            cwd=app,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout

    assert "step  0  script_charge  completed  1         Charged(amount=5)" in sagakit(
        "show", "order-1"
    )
    assert sagakit("recover", "--import", "shop").splitlines()[1].split() == [
        "order-1",
        "script_order",
        "resumed",
        "completed",
    ]
    # The script itself, run again (from elsewhere), reads them back as its own class.
    again = subprocess.run(
        [sys.executable, str(app / "shop.py"), db],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert again.stdout == "[Charged(amount=5), 'shipped 5'] True\n"


def test_show_of_an_unfinished_saga_says_only_when_it_started(tmp_path: Path) -> None:
    # Regression: the line ended "finished " with nothing after it, as if cut short.
    db, _ = crashed_in_credit(tmp_path, "mid-1", "SELECT 1")
    code, out = cli("--db", db, "show", "mid-1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "saga mid-1 (transfer): executing"
    assert lines[1].startswith("started ")
    assert "finished" not in lines[1]
    assert len(lines[1]) == len("started 2026-11-27 08:00:00Z")


@step
async def cli_paged_hop(n: int) -> int:
    return n


@saga
def cli_paged(n: int):  # type: ignore[no-untyped-def]
    yield cli_paged_hop(n)


@contextmanager
def paged_log(tmp_path: Path, kind: str) -> Iterator[list[str]]:
    """A log (SQLite or PostgreSQL) of 23 sagas, ``paged-00`` to ``paged-22``, every
    odd one compensated (by SQL), started in groups of five at one instant (ties that
    fall across the pages of a listing); yields the ``--db`` (and ``--schema``) args."""
    if kind == "postgres":
        from sagakit import PostgresStore

        dsn = dsn_or_skip()
        schema = "sk_cli_paged_" + uuid.uuid4().hex[:8]
        store: SQLiteStore | PostgresStore = PostgresStore(dsn, schema=schema)
        where = [
            f'UPDATE "{schema}".sagas SET status = %s WHERE saga_id LIKE %s',
            f'UPDATE "{schema}".sagas SET started_at = to_timestamp(1e9 + %s) '
            "WHERE substr(saga_id, 7)::int / 5 = %s",
        ]
        args = ["--db", dsn, "--schema", schema]
    else:
        path = str(tmp_path / "paged.db")
        store = SQLiteStore(path)
        where = [
            "UPDATE sagakit_sagas SET status = ? WHERE id LIKE ?",
            "UPDATE sagakit_sagas SET started_at = 1e9 + ? "
            "WHERE CAST(substr(id, 7) AS INTEGER) / 5 = ?",
        ]
        args = ["--db", path]

    async def write() -> None:
        async with SagaOrchestrator(store) as orchestrator:
            for n in range(23):
                await orchestrator.execute(cli_paged(n), saga_id=f"paged-{n:02}")

    def run(sql: str, params: tuple[object, ...]) -> None:
        if kind == "postgres":
            query(dsn, sql, params)
        else:
            with closing(sqlite3.connect(path)) as conn, conn:
                conn.execute(sql, params)

    try:
        asyncio.run(write())
        for odd in range(1, 23, 2):
            run(where[0], ("compensated", f"paged-{odd:02}"))
        for group in range(5):
            run(where[1], (group, group))
        yield args
    finally:
        if kind == "postgres":
            query(dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_list_reads_a_long_listing_page_by_page_with_every_saga_once(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Newest first; ties of a start broken by the order they were written (SQLite) or
    # by id (PostgreSQL), across the boundaries of pages of 4.
    monkeypatch.setattr(read_module, "_PAGE", 4)
    written = [f"paged-{n:02}" for n in range(23)]
    groups = [written[g * 5 : g * 5 + 5] for g in range(5)]
    newest = [saga_id for group in reversed(groups) for saga_id in reversed(group)]
    with paged_log(tmp_path, kind) as db:
        code, out = cli(*db, "list", "--limit", "100", "--json")
        assert code == 0
        listed = json.loads(out)
        assert [saga["id"] for saga in listed] == newest
        assert out == json.dumps(listed, indent=2) + "\n"  # as one json.dump() writes it
        code, out = cli(*db, "list", "--limit", "9", "--status", "compensated", "--json")
        assert [saga["id"] for saga in json.loads(out)] == [
            saga_id for saga_id in newest if int(saga_id[6:]) % 2
        ][:9]
        code, out = cli(*db, "list", "--limit", "100")
        assert [line.split()[0] for line in out.splitlines()] == ["ID", *newest]
        assert cli(*db, "list", "--status", "failed", "--json") == (0, "[]\n")


def sagas_read(kind: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the sagas the store reads (with their records) from now on."""
    import sagakit.stores._pg_rows as pg_rows
    import sagakit.stores._sqlite_reads as sqlite_reads

    read: list[str] = []
    module: Any = pg_rows if kind == "postgres" else sqlite_reads
    name = "metadata" if kind == "postgres" else "load_metadata"
    load = getattr(module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        found = load(*args, **kwargs)
        if found is not None:
            read.append(found.id)
        return found

    monkeypatch.setattr(module, name, counted)
    return read


def sagas_listed(kind: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the sagas ``list`` reads from now on (the rows of its pages)."""
    import sagakit.stores._pg_rows as pg_rows
    import sagakit.stores._sqlite_reads as sqlite_reads

    read: list[str] = []
    module: Any = pg_rows if kind == "postgres" else sqlite_reads
    load = module.listed

    def counted(*args: Any, **kwargs: Any) -> Any:
        found = load(*args, **kwargs)
        read.append(found.id)
        return found

    monkeypatch.setattr(module, "listed", counted)
    return read


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_list_json_stops_reading_the_log_when_its_reader_is_gone(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: `list` read every saga it lists, with all its step records and
    # events, before writing the first (3 GB for `list --limit 100000` on PostgreSQL);
    # Ctrl-C and `| head` waited for the whole read. It reads them a page at a time.
    monkeypatch.setattr(read_module, "_PAGE", 4, raising=False)
    read = sagas_listed(kind, monkeypatch)

    class ReaderGone(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError

    with paged_log(tmp_path, kind) as db:
        read.clear()
        assert main([*db, "list", "--limit", "100", "--json"], ReaderGone()) == 141
    assert len(read) == 4, read  # the first page, not all 23


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_recover_counts_the_orphans_it_leaves_alone_without_reading_each(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: to name the unfinished sagas no @saga of their name is registered for,
    # `recover` read every running saga with its records (9 s and every saga's events in
    # memory for 100,000 orphans, live sagas of other processes included). It counts
    # them by name, and reads one of each (whose events may import the saga's module).
    with paged_log(tmp_path, kind) as db:
        if kind == "postgres":
            query(
                db[1],
                f'UPDATE "{db[3]}".sagas SET name = %s, status = %s, finished_at = NULL, '
                "finish_order = NULL WHERE saga_id < %s",
                ("cli_gone_saga", "executing", "paged-20"),
            )
        else:
            with closing(sqlite3.connect(db[1])) as conn, conn:
                conn.execute(
                    "UPDATE sagakit_sagas SET name = ?, status = ?, finished_at = NULL, "
                    "finish_order = NULL WHERE id < ?",
                    ("cli_gone_saga", "executing", "paged-20"),
                )
        read = sagas_read(kind, monkeypatch)
        code, out = cli(*db, "recover")
    assert code == 0
    assert out.splitlines() == [
        "nothing to recover",
        "20 unfinished sagas named cli_gone_saga were left alone: no @saga of that name is "
        "registered here; pass --import with the module that declares them",
    ]
    assert len(read) == 1, read


CTRL_C_WHILE_LOCKED = """
import os, signal, sqlite3, sys, threading
from sagakit.cli import main
from sagakit.stores._sqlite_writer import GroupWriter

db = sys.argv[1]
holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
holder.execute("BEGIN IMMEDIATE")  # another process's long write holds the lock
waiting, cancelled = threading.Event(), threading.Event()
commit, settle = GroupWriter._commit, GroupWriter._settle_cancelled

loops = []

def spied_commit(self, jobs, wait):
    if wait:  # on the writer thread: waiting for the lock
        loops.append(self._loop)
        waiting.set()
    return commit(self, jobs, wait)

async def spied_settle(self, future):
    cancelled.set()
    return await settle(self, future)

GroupWriter._commit, GroupWriter._settle_cancelled = spied_commit, spied_settle

def operator():
    waiting.wait(30)
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the command waits
    # (Its handler runs once the loop wakes: one that had not yet gone to sleep when
    # the signal came sleeps until the write is done, busy_timeout later.)
    loops[0].call_soon_threadsafe(lambda: None)
    cancelled.wait(30)
    holder.execute("ROLLBACK")  # then the other write ends: the command's goes through

threading.Thread(target=operator, daemon=True).start()
sys.exit(main(["--db", db, *sys.argv[2:]]))
"""


def _hearing_ctrl_c() -> None:
    """In a child: hear SIGINT, which a test run started in the background of a shell
    without job control inherits ignored (Python then never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("command", "made"),
    [(["resolve", "parked", "--note", "refunded"], "resolved"), (["resume", "parked"], "resumed")],
)
def test_ctrl_c_on_a_write_that_is_made_all_the_same_says_it_was_made(
    tmp_path: Path, command: list[str], made: str
) -> None:
    # Regression: Ctrl-C while `resolve` (or `resume`) waited for a lock another
    # process held printed "sagakit: interrupted", but the write, on its way already,
    # was made once the lock was free: the operator took the saga for one still to be
    # resolved. The command says what it did; a write it refused is "interrupted".
    db, _ = crashed_in_credit(
        tmp_path, "parked", "UPDATE sagakit_sagas SET dead_letter = 'stuck', owner = NULL"
    )
    result = subprocess.run(
        [sys.executable, "-c", CTRL_C_WHILE_LOCKED, db, *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=_hearing_ctrl_c,
    )
    assert (result.returncode, result.stdout) == (130, "")
    assert result.stderr == (
        f"sagakit: interrupted, but only once saga parked was {made}: the write it waited "
        f"for was made; `sagakit --db {shlex.quote(db)} show parked` shows it\n"
    )
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT dead_letter FROM sagakit_sagas").fetchall() == [(None,)]
    result = subprocess.run(
        [sys.executable, "-c", CTRL_C_WHILE_LOCKED, db, "resume", "parked"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=_hearing_ctrl_c,
    )
    assert (result.returncode, result.stderr) == (130, "sagakit: interrupted\n")


def test_a_log_path_with_a_tilde_the_shell_left_says_to_expand_it(
    log_db: tuple[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: `sagakit --db=~/sagas.db list` (no shell expands a ~ after "=") said
    # "no saga log at '~/sagas.db'; pass the path your application uses": it was.
    db, _ = log_db
    monkeypatch.setenv("HOME", str(Path(db).parent))
    assert cli("--db=~/sagas.db", "list") == (1, "")
    assert capsys.readouterr().err == (
        "sagakit: no saga log at '~/sagas.db': a ~ is not expanded in --db=~/...; "
        f"pass --db {shlex.quote(db)}\n"
    )


def test_a_long_error_is_cut_to_its_column_in_terminal_columns_and_says_so(
    log_db: tuple[str, Path],
) -> None:
    # Regression: errors and reasons were cut at 60 (70) characters, silently, so a cut
    # one read as whole, and one of wide characters (CJK, emoji) took twice the columns.
    from sagakit._cli_text import _width

    db, _ = log_db
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE sagakit_sagas SET error = ? WHERE id = 'refused-1'", ("失败" * 50,))
        conn.execute(
            "UPDATE sagakit_sagas SET error = ?, status = 'executing', finished_at = NULL, "
            "dead_letter = ? WHERE id = 'ok-1'",
            ("x" * 60, "🔥" * 50),
        )
    code, out = cli("--db", db, "list")
    assert code == 0
    header, *rows = out.splitlines()
    cells = {row.split()[0]: row[header.index("ERROR") :] for row in rows}
    assert cells["refused-1"] == "失败" * 14 + "失…"  # another 失 would take column 60
    assert _width(cells["refused-1"]) == 59
    assert cells["ok-1"] == "dead-lettered: " + "🔥" * 22 + "…"
    code, out = cli("--db", db, "dead-letters")
    header, row = out.splitlines()
    assert row[header.index("REASON") :] == "🔥" * 34 + "…"  # 69 columns are 34 of them


def test_output_in_an_encoding_without_a_name_s_characters_is_escaped_not_a_traceback(
    log_db: tuple[str, Path],
) -> None:
    # Regression: `sagakit list > file` where stdout's encoding lacks a character of a
    # saga's name or error (cp1252 on Windows, PYTHONIOENCODING=ascii) ended half-way
    # with a UnicodeEncodeError traceback.
    db, _ = log_db
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE sagakit_sagas SET name = 'überweisung-🔥' WHERE id = 'ok-1'")
    result = subprocess.run(
        [sys.executable, "-m", "sagakit", "--db", db, "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines()[2].split()[:2] == ["ok-1", "\\xfcberweisung-\\U0001f525"]


def test_ctrl_c_on_recover_names_the_sagas_it_finished_before(tmp_path: Path) -> None:
    # Regression: Ctrl-C on a long `sagakit recover` said only that the saga being
    # recovered was left for the next one, and printed nothing of those it had finished
    # (the table comes at the end): the operator learnt of them only from `list`.
    app = _INTERRUPTIBLE_APP.replace('os.path.exists("hang")', 'os.path.exists("hang-" + x)')
    (tmp_path / "interruptible_app.py").write_text(app, encoding="utf-8")
    crash = (
        "import asyncio\n"
        "from sagakit import SagaOrchestrator, SQLiteStore\n"
        "from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart\n"
        "from interruptible_app import cli_interruptible, cli_slow\n"
        "async def main():\n"
        "    store = SQLiteStore('sagas.db')\n"
        "    for x in 'ab':  # int-a, then int-b, die in cli_slow\n"
        "        try:\n"
        "            with FaultInjector().crash(cli_slow):\n"
        "                run = cli_interruptible(x)\n"
        "                await SagaOrchestrator(store).execute(run, saga_id='int-' + x)\n"
        "        except SimulatedCrash:\n"
        "            pass\n"
        "    await simulate_restart(store)\n"
        "    await store.close()\n"
        "asyncio.run(main())\n"
    )
    (tmp_path / "crash_it.py").write_text(crash, encoding="utf-8")
    subprocess.run([sys.executable, "crash_it.py"], cwd=tmp_path, check=True, timeout=60)
    (tmp_path / "hang-b").touch()
    command = [sys.executable, "-m", "sagakit", "--db", "sagas.db", "recover"]
    command += ["--import", "interruptible_app"]
    recovering = _sagakit_child(tmp_path, command, hears=signal.SIGINT)
    assert recovering.stdout is not None
    assert recovering.stdout.readline() == "slow a\n"
    assert recovering.stdout.readline() == "slow b\n"  # int-a finished, int-b hangs
    _, err = _stopped(recovering, by=signal.SIGINT)
    assert recovering.returncode == 130
    assert err == (
        "sagakit: interrupted after finishing 1 saga (int-a completed); a saga being "
        "recovered is left for the next `recover` (if it had started, this attempt counts "
        "toward --max-attempts)\n"
    )


def test_a_saga_parked_after_interrupted_recoveries_is_not_said_to_have_crashed_them(
    tmp_path: Path,
) -> None:
    # Regression: each Ctrl-C on `sagakit recover` counts as a recovery attempt (as
    # documented), but the CLI said only that the saga was left for the next recover,
    # and the one that parked it past --max-attempts gave as the reason "its process
    # died during each of 1 recovery attempts": the operator looked for a crash.
    _crash_in_the_slow_step(tmp_path)
    command = [sys.executable, "-m", "sagakit", "--db", "sagas.db", "recover"]
    command += ["--import", "interruptible_app", "--max-attempts", "1"]
    recovering = _sagakit_child(tmp_path, command, hears=signal.SIGINT)
    assert recovering.stdout is not None
    assert recovering.stdout.readline() == "slow a\n"
    _, err = _stopped(recovering, by=signal.SIGINT)
    assert recovering.returncode == 130
    assert "counts toward --max-attempts" in err
    again = subprocess.run(
        [*command, "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    [parked] = json.loads(again.stdout)
    assert (parked["id"], parked["action"]) == ("int-1", "dead_lettered")
    assert parked["error"] == (
        "none of its 1 recovery attempt finished it: each time its process died or was "
        "stopped (max_attempts=1)"
    )


def test_recover_notes_name_five_sagas_then_an_ellipsis() -> None:
    # The helper behind the notes of `recover` that name sagas (dead letters left alone,
    # sagas run on another host, those finished before an interruption).
    from sagakit._cli_text import _first_few

    assert _first_few(["a"]) == "a"
    assert _first_few(["a", "b", "c", "d", "e"]) == "a, b, c, d, e"
    assert _first_few(["a", "b", "c", "d", "e", "f"]) == "a, b, c, d, e, ..."


def test_recover_notes_count_in_words() -> None:
    # Regression: the notes said "1 saga(s)" and "0 recovery attempt(s)".
    from sagakit._counted import counted

    assert counted(1, "saga") == "1 saga"
    assert counted(2, "saga") == "2 sagas"
    assert counted(0, "recovery attempt") == "0 recovery attempts"


def test_recover_names_the_dead_letters_it_leaves_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: with sagas parked as dead letters (by an earlier recover), `recover`
    # said "nothing to recover" alone, and the operator moved on while they waited.
    db, _ = crashed_in_credit(
        tmp_path, "parked", "UPDATE sagakit_sagas SET dead_letter = 'stuck', owner = NULL"
    )
    note = (
        "1 dead-lettered saga (parked) was left alone, as recovery leaves every dead "
        "letter: `sagakit dead-letters` says why each was parked; "
        f"`sagakit --db {shlex.quote(db)} resume parked` hands one back to recovery, "
        "`sagakit resolve` settles it"
    )
    # Status 3: the dead letter still waits for an operator.
    assert cli("--db", db, "recover") == (3, f"nothing to recover\n{note}\n")
    code, out = cli("--db", db, "recover", "--json")
    assert (code, json.loads(out)) == (3, [])
    assert capsys.readouterr().err == f"sagakit: {note}\n"


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_sigterm_on_recover_gives_the_saga_back_and_says_so(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    # Regression: SIGTERM (what `timeout`, systemd and Kubernetes send) killed `sagakit
    # recover` with no word, and on PostgreSQL the saga it was resuming stayed leased
    # until its lease ran out: the next recover left it alone ("running under a lease").
    # It now stops as on Ctrl-C: the saga given back, a message, status 143.
    log = ["--db", "sagas.db"]
    where: list[str] = []
    if kind == "postgres":
        dsn, schema = request.getfixturevalue("dsn"), request.getfixturevalue("schema")
        log = ["--db", dsn, "--schema", schema]
        where = [dsn, schema]
    _crash_in_the_slow_step(tmp_path, *where)
    command = [sys.executable, "-m", "sagakit", *log, "recover", "--import", "interruptible_app"]
    recovering = _sagakit_child(tmp_path, command, hears=signal.SIGTERM)
    assert recovering.stdout is not None
    assert recovering.stdout.readline() == "slow a\n"  # inside the step it resumes
    out, err = _stopped(recovering, by=signal.SIGTERM)
    assert recovering.returncode == 143, err
    assert err == (
        "sagakit: terminated (SIGTERM); a saga being recovered is left for the next "
        "`recover` (if it had started, this attempt counts toward --max-attempts)\n"
    )
    assert "UNDO" not in out  # not compensated

    (tmp_path / "hang").unlink()
    again = subprocess.run(
        [*command, "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr
    # At once, not once a lease runs out: nothing is left "running under a lease".
    assert again.stderr == ""
    [outcome] = json.loads(again.stdout.removeprefix("slow a\n"))  # the step, run again
    assert (outcome["id"], outcome["action"], outcome["status"]) == (
        "int-1",
        "resumed",
        "completed",
    )


SIGTERM_WHILE_LISTING = """
import asyncio, os, signal, sys
from sagakit import SQLiteStore
from sagakit.cli import main

async def terminated(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # while `list` reads the log
    await asyncio.sleep(60)

SQLiteStore._list_page = terminated
code = main(["--db", sys.argv[1], "list"])
print("SIGTERM handler restored:", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
sys.exit(code)
"""


def test_sigterm_on_a_command_that_recovers_nothing_says_only_that(
    log_db: tuple[str, Path],
) -> None:
    # SIGTERM on `list` (or `show`, a `resolve` waiting for a lock, ...) cancels it as
    # Ctrl-C does: "terminated", status 143, where it was killed without a word.
    db, _ = log_db
    result = subprocess.run(
        [sys.executable, "-c", SIGTERM_WHILE_LISTING, db],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL),
    )
    assert (result.returncode, result.stderr) == (143, "sagakit: terminated (SIGTERM)\n")
    assert result.stdout == "SIGTERM handler restored: True\n"


LOCK_HOLDER = """
import sqlite3, sys
holder = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[2] == "exclusive":  # a backup, or a process in locking_mode=EXCLUSIVE
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
else:  # an application's long write
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("UPDATE sagakit_meta SET value = value WHERE key = 'schema_version'")
print("held", flush=True)
sys.stdin.read()  # until the test closes it
holder.execute("ROLLBACK")
"""


@contextmanager
def lock_held(db: str, how: str) -> Iterator[int]:
    """Another process holding the SQLite log ``db`` locked (``how``); yields its pid."""
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, db, how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
        holder.stdout.close()


@pytest.mark.parametrize(
    ("how", "command"),
    [
        ("exclusive", ["list"]),
        ("exclusive", ["show", "parked"]),
        ("exclusive", ["recover"]),
        ("write", ["resolve", "parked", "--note", "refunded"]),
        ("write", ["resume", "parked"]),
    ],
)
def test_a_log_another_process_holds_locked_names_it_and_the_busy_timeout_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str, command: list[str]
) -> None:
    # Regression: with another process holding the SQLite log locked, `sagakit list`
    # waited 10 s (twice the busy timeout) and said only "database is locked", and a
    # write's message said to "raise SQLiteStore(busy_timeout=...)", which a CLI user
    # cannot. It names the process holding the lock, and --busy-timeout.
    db, _ = crashed_in_credit(
        tmp_path, "parked", "UPDATE sagakit_sagas SET dead_letter = 'stuck', owner = NULL"
    )
    with lock_held(db, how) as pid:
        assert cli("--db", db, "--busy-timeout", "0.2", *command) == (1, "")
    [line] = capsys.readouterr().err.splitlines()
    holder = f"process {pid} (python" if os.path.exists("/proc/locks") else "another process"
    assert line.startswith(f"sagakit: saga log {db!r} is locked: {holder}"), line
    assert "holds its write lock, and sagakit waited 0.2 s for it (--busy-timeout 0.2)" in line
    assert line.endswith("or wait longer with --busy-timeout SECONDS"), line
    assert "SQLiteStore(" not in line
    with lock_held(db, how):
        assert cli("--db", db, "--busy-timeout", "0", *command) == (1, "")
    assert "did not wait for it (--busy-timeout 0)" in capsys.readouterr().err


def test_busy_timeout_lets_a_command_wait_out_a_lock(tmp_path: Path) -> None:
    # --busy-timeout: a command given long enough waits for the lock to go.
    db, _ = crashed_in_credit(
        tmp_path, "parked", "UPDATE sagakit_sagas SET dead_letter = 'stuck', owner = NULL"
    )
    with lock_held(db, "exclusive"):
        waiting = subprocess.Popen(
            [sys.executable, "-m", "sagakit", "--db", db, "--busy-timeout", "120", "list"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(timeout=1)  # (waiting for the lock)
    out, err = waiting.communicate(timeout=120)
    assert (waiting.returncode, err) == (0, "")
    assert "parked" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--busy-timeout", "-1"], "argument --busy-timeout: must be a number of seconds >= 0"),
        (["--busy-timeout", "inf"], "argument --busy-timeout: must be a number of seconds >= 0"),
        (["--busy-timeout", "soon"], "argument --busy-timeout: must be a number of seconds >= 0"),
        (
            ["--db", "postgresql://app@db/x", "--busy-timeout", "3"],
            "--busy-timeout applies to SQLite logs only",
        ),
    ],
)
def test_busy_timeout_refuses_what_it_cannot_use(
    log_db: tuple[str, Path], capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    db, _ = log_db
    with pytest.raises(SystemExit) as exited:
        main(["--db", db, *argv, "list"])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def _shows_a_dead_letter_s_error_and_reason(db: str, *options: str) -> None:
    """``list`` and ``show`` (table and JSON) of saga ``parked``, parked with reason
    ``stuck`` while its error is ``ValueError: the bank is down``."""
    code, out = cli("--db", db, *options, "list")
    assert code == 0
    header, *rows = out.splitlines()
    [row] = [row for row in rows if row.startswith("parked ")]
    assert (
        row[header.index("ERROR") :] == "dead-lettered: stuck; error: ValueError: the bank is down"
    )
    code, out = cli("--db", db, *options, "show", "parked")
    assert code == 0
    assert "recovery attempts: stuck; `sagakit resume`" in out
    assert "error: ValueError: the bank is down\n" in out
    assert out.count("stuck") == 1, out
    [listed] = [s for s in json.loads(cli("--db", db, *options, "list", "--json")[1])
                if s["id"] == "parked"]  # fmt: skip
    shown = json.loads(cli("--db", db, *options, "show", "parked", "--json")[1])
    for saga_json in (listed, shown):
        assert saga_json["error"] == "ValueError: the bank is down"
        assert (saga_json["dead_letter"], saga_json["dead_letter_reason"]) == (True, "stuck")
    assert shown["parked"]["reason"] == "stuck"


def test_a_dead_letter_shows_its_own_error_beside_why_it_is_parked(tmp_path: Path) -> None:
    # Regression: a parked saga's error was replaced by "dead-lettered: <reason>", so
    # `show` printed the reason twice and the error the saga had never.
    db, _ = crashed_in_credit(
        tmp_path,
        "parked",
        "UPDATE sagakit_sagas SET dead_letter = 'stuck', owner = NULL, "
        "error = 'ValueError: the bank is down'",
    )
    _shows_a_dead_letter_s_error_and_reason(db)
    assert json.loads(cli("--db", db, "show", "parked", "--json")[1])["status"] == "executing"


def test_a_dead_letter_on_postgres_shows_its_own_error_beside_why_it_is_parked(
    dsn: str, schema: str
) -> None:
    from sagakit import PostgresStore

    @step
    async def refuse() -> None:
        raise ValueError("the bank is down")

    @saga(name="cliview_refused")
    def refused():  # type: ignore[no-untyped-def]
        yield refuse()

    async def run() -> None:
        async with SagaOrchestrator(PostgresStore(dsn, schema=schema)) as orchestrator:
            with pytest.raises(SagaError, match="the bank is down"):
                await orchestrator.execute(refused().with_id("parked"))

    asyncio.run(run())
    query(
        dsn,
        f"UPDATE \"{schema}\".sagas SET status = 'compensating', finished_at = NULL, "
        "error = 'ValueError: the bank is down', dead_reason = 'stuck', parked_at = now()",
    )
    _shows_a_dead_letter_s_error_and_reason(dsn, "--schema", schema)


@pytest.mark.parametrize("as_json", [False, True])
def test_resolving_a_saga_resolved_already_exits_1_saying_when_and_with_what_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    # Regression: `sagakit resolve` of a resolved saga succeeded again, and nested the
    # first note in the second's error: "resolved by an operator: b (was: resolved by an
    # operator: a (was: dead-lettered ...))".
    db, _ = crashed_in_credit(
        tmp_path, "parked", "UPDATE sagakit_sagas SET dead_letter = 'stuck', owner = NULL"
    )
    assert cli("--db", db, "resolve", "parked", "--note", "refunded by hand")[0] == 0
    capsys.readouterr()
    shown = cli("--db", db, "show", "parked", "--json")[1]
    json_option = ["--json"] if as_json else []
    assert cli("--db", db, "resolve", "parked", "--note", "again", *json_option) == (1, "")
    err = capsys.readouterr().err
    assert err.startswith("sagakit: saga 'parked' was resolved already at ")
    assert (
        " UTC (resolved by an operator: refunded by hand (was: stuck)); nothing is changed" in err
    )
    # It said "nothing is changed, as resolving it again would not: its id may be executed
    # again", which reads as if resolving it again were what frees the id.
    assert err.endswith(
        "; nothing is changed: the first note stands, and the saga's id may already be "
        "executed again\n"
    ), err
    assert cli("--db", db, "show", "parked", "--json")[1] == shown


def test_resolved_already_shows_the_start_of_a_long_note_and_where_to_read_it_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: "was resolved already (...)" repeated the saga's whole error, the first
    # note and all: a 100 KB note made a 100 KB line on stderr.
    db, _ = crashed_in_credit(
        tmp_path, "parked", "UPDATE sagakit_sagas SET dead_letter = 'stuck', owner = NULL"
    )
    note = "refunded by hand: " + "x" * 100_000
    assert cli("--db", db, "resolve", "parked", "--note", note)[0] == 0
    capsys.readouterr()
    assert cli("--db", db, "resolve", "parked", "--note", "again") == (1, "")
    [line] = capsys.readouterr().err.splitlines()
    assert len(line) < 600
    assert " UTC (resolved by an operator: refunded by hand: xxx" in line
    assert "x...); nothing is changed" in line
    assert line.endswith(
        f"; `sagakit --db {shlex.quote(db)} show parked` shows its whole error (the note)"
    )
    # The saga's error is all there, as `show` prints it.
    assert note in json.loads(cli("--db", db, "show", "parked", "--json")[1])["error"]


def test_resolved_already_says_the_first_line_of_the_error_and_keeps_it_whole() -> None:
    error = "resolved by an operator: refunded\nby hand (was: ValueError: boom)"
    refused = SagaAlreadyResolved("parked", None, error)
    assert str(refused).startswith(
        "saga 'parked' was resolved already (resolved by an operator: refunded...); "
    )
    assert refused.error == error
    short = SagaAlreadyResolved("parked", None, "resolved by an operator: done (was: stuck)")
    assert "(resolved by an operator: done (was: stuck)); nothing" in str(short)


def test_tables_fit_the_terminal_cutting_names_and_errors_never_ids(
    log_db: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: tables ignored the terminal's width: one saga of a 180-character name
    # widened every row of `list` past any terminal.
    from sagakit._cli_text import _width

    db, _ = log_db
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE sagakit_sagas SET name = ? WHERE id = 'ok-1'", ("n" * 180,))
    wide = cli("--db", db, "list")[1]  # to a file, without COLUMNS: as it was
    assert "n" * 180 + "  completed" in wide
    monkeypatch.setenv("COLUMNS", "80")
    code, out = cli("--db", db, "list")
    assert code == 0
    header, *rows = out.splitlines()
    assert max(_width(line) for line in out.splitlines()) <= 80
    cells = {  # by id: the ids whole
        row.split()[0]: [cell.strip() for cell in row.split("  ") if cell.strip()] for row in rows
    }
    assert set(cells) == {"ok-1", "refused-1"}
    name = cells["ok-1"][1]
    assert name.startswith("nnn")
    assert name.endswith("…")
    assert "completed" in cells["ok-1"]
    error = cells["refused-1"][-1]
    assert error.startswith("StepFailed:")
    assert error.endswith("…")
    # Too narrow for all: NAME and ERROR are cut to 8 columns, the id and status kept.
    monkeypatch.setenv("COLUMNS", "40")
    header, *rows = cli("--db", db, "list")[1].splitlines()
    assert header.split() == ["ID", "NAME", "STATUS", "STEPS", "STARTED", "ERROR"]
    [ok] = [row for row in rows if row.startswith("ok-1 ")]
    assert ok[header.index("NAME") :].startswith("nnnnnnn…  completed")
    [refused] = [row for row in rows if row.startswith("refused-1 ")]
    assert refused[header.index("ERROR") :] == "StepFai…"
    # show's table too: the events and errors column cut, the step names short already.
    monkeypatch.setenv("COLUMNS", "60")
    out = cli("--db", db, "show", "refused-1")[1]
    table = out.splitlines()[4:]
    assert max(_width(line) for line in table) <= 60
    assert table[3].endswith("…")


def test_a_table_written_to_a_terminal_fits_its_width_without_columns(
    log_db: tuple[str, Path],
) -> None:
    # The width of the terminal stdout is, where COLUMNS is not set (a shell does not
    # export it).
    import fcntl
    import struct
    import termios

    db, _ = log_db
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE sagakit_sagas SET name = ? WHERE id = 'ok-1'", ("n" * 180,))
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 72, 0, 0))
    with open(follower, "w", encoding="utf-8", closefd=True) as terminal:
        assert main(["--db", db, "list"], terminal) == 0
    with open(leader, "rb", closefd=True) as screen:
        written = b""
        while not written.endswith(b"\n") or written.count(b"\n") < 3:
            written += os.read(screen.fileno(), 4096)
    lines = written.decode("utf-8").replace("\r\n", "\n").splitlines()
    assert len(lines) == 3
    assert max(len(line) for line in lines) <= 72
    assert any("…  completed" in line for line in lines)


def test_times_in_tables_say_they_are_utc(tmp_path: Path) -> None:
    # Regression: `list`, `show` and `dead-letters` printed "2026-11-27 08:00:00", which
    # read as local time to an operator whose terminal is not on UTC.
    import re
    from datetime import datetime

    db, _ = crashed_in_credit(
        tmp_path,
        "parked",
        "UPDATE sagakit_sagas SET dead_letter = 'stuck', owner = NULL, parked_at = 0",
    )
    assert child(db, tmp_path / "effects.log", "run", db, "transfer", "ok", "B") == 0
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ"
    [_, saga_json] = json.loads(cli("--db", db, "list", "--json")[1])
    started = datetime.fromisoformat(saga_json["started_at"])
    expected = f"{started:%Y-%m-%d %H:%M:%S}Z"
    header, *rows = cli("--db", db, "list")[1].splitlines()
    assert rows[1].startswith("parked ")
    assert rows[1][header.index("STARTED") :].startswith(expected + "  ")
    shown = cli("--db", db, "show", "parked")[1].splitlines()
    assert shown[1] == f"started {expected}"
    assert shown[3].startswith("parked 1970-01-01 00:00:00Z after 0 recovery attempts")
    assert re.fullmatch(
        f"started {stamp}  finished {stamp}", cli("--db", db, "show", "ok")[1].splitlines()[1]
    )
    header, row = cli("--db", db, "dead-letters")[1].splitlines()
    assert row[header.index("PARKED") :].startswith("1970-01-01 00:00:00Z  ")


def test_list_marks_a_saga_parked_while_it_lists_by_its_own_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: `list` read every dead letter before its pages and marked a saga parked
    # by that set, so one parked in between listed as `executing`, `"dead_letter": false`,
    # beside its reason (`dead_letter_reason`, the ERROR column) read with the page.
    db, _ = crashed_in_credit(tmp_path, "late", "SELECT 1")
    read = SQLiteStore._list_page

    async def parked_first(self: SQLiteStore, *args: Any) -> Any:
        with closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("UPDATE sagakit_sagas SET dead_letter = 'parked meanwhile', owner = NULL")
        return await read(self, *args)

    monkeypatch.setattr(SQLiteStore, "_list_page", parked_first)
    code, out = cli("--db", db, "list", "--json")
    assert code == 0
    [listed] = json.loads(out)
    assert (listed["dead_letter"], listed["dead_letter_reason"]) == (True, "parked meanwhile")
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE sagakit_sagas SET dead_letter = NULL")  # listed: parked again
    code, out = cli("--db", db, "list")
    assert code == 0
    header, row = out.splitlines()
    assert row.split()[2:4] == ["executing", "(dead"], out
    assert row[header.index("ERROR") :] == "dead-lettered: parked meanwhile"


def test_main_in_a_running_event_loop_says_to_run_the_command(tmp_path: Path) -> None:
    # Regression: called from a notebook cell (or any coroutine), main() raised asyncio's
    # "asyncio.run() cannot be called from a running event loop", and the coroutine it had
    # made was reported as never awaited.
    db = str(tmp_path / "sagas.db")
    url = "postgresql://sagas:s3cret@db.internal/sagas"

    async def in_a_cell() -> None:
        await SQLiteStore(db).close()
        for argv in (["--db", db, "list"], ["--db", url, "list"]):
            with pytest.raises(RuntimeError) as raised:
                main(argv)
            assert str(raised.value) == (
                "sagakit.cli.main() runs its own event loop, so it cannot be called where one "
                "is running (a notebook cell, a coroutine); run the sagakit command instead "
                "(in a notebook cell: !sagakit --db ... COMMAND), or call main() from "
                "synchronous code"
            )

    asyncio.run(in_a_cell())
