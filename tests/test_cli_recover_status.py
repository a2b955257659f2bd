"""`sagakit recover`'s exit status: 3 while a saga needs an operator, 0 otherwise.

Regression: `recover` exited 0 whatever it found, so a cron job or a Kubernetes CronJob
running it never noticed a saga it parked as a dead letter, or recovered to FAILED.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nested_helpers.inner import inner_id, inner_saga_tried
from pg_helpers.db import dsn_or_skip, fresh_schema
from sagakit import (
    PostgresStore,
    Retry,
    SagaOrchestrator,
    SQLiteStore,
    saga,
    step,
)
from sagakit.cli import main
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

NEEDS_OPERATOR = 3

CODE = {"changed": False}
"""Whether ``cli_status_changing``'s code changed since its sagas started."""


@step(compensation_retry=Retry(attempts=1))
async def cli_status_book(item: str) -> str:
    return f"booking-{item}"


@cli_status_book.compensate
async def cli_status_unbook(item: str) -> None:
    if item == "stuck":
        raise RuntimeError("the refund service is down")


@step
async def cli_status_pay(item: str) -> str:
    if item in ("declined", "stuck"):
        raise ValueError("card declined")
    return f"paid-{item}"


@saga
def cli_status_order(item: str):  # type: ignore[no-untyped-def]
    yield cli_status_book(item)
    yield cli_status_pay(item)


@saga
def cli_status_changing(item: str):  # type: ignore[no-untyped-def]
    if CODE["changed"]:
        yield cli_status_pay(item)  # was cli_status_book(item)
    yield cli_status_book(item)
    yield cli_status_pay(item)


@dataclass(frozen=True)
class Log:
    """A saga log: the ``--db`` (and ``--schema``) arguments naming it, and its store."""

    args: tuple[str, ...]
    store: Callable[[], SQLiteStore | PostgresStore]

    def recover(self, *options: str) -> tuple[int, str]:
        """``sagakit recover`` on this log: its exit status and its output."""
        out = io.StringIO()
        return main([*self.args, "recover", *options], out), out.getvalue()

    def run(self, *sagas: tuple[Any, str], crash: Any = None, **faults: bool) -> None:
        """Run ``sagas`` (definition, id); with ``crash``, each dies at that step (with
        ``compensation=True``: at its compensation), left for recovery."""

        async def run() -> None:
            store = self.store()
            orchestrator = SagaOrchestrator(store)
            for definition, saga_id in sagas:
                if crash is None:
                    await orchestrator.execute(definition, saga_id=saga_id)
                    continue
                with FaultInjector().crash(crash, **faults), pytest.raises(SimulatedCrash):
                    await orchestrator.execute(definition, saga_id=saga_id)
            await simulate_restart(store)
            await store.close()

        asyncio.run(run())


@pytest.fixture(params=["sqlite", "postgres"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Log]:
    if request.param == "sqlite":
        db = str(tmp_path / "sagas.db")
        yield Log(("--db", db), lambda: SQLiteStore(db))
        return
    dsn = dsn_or_skip()
    schemas = fresh_schema(dsn)
    schema = next(schemas)
    yield Log(("--db", dsn, "--schema", schema), lambda: PostgresStore(dsn, schema=schema))
    for _ in schemas:  # drops the schema
        pass


@pytest.fixture
def sqlite_log(tmp_path: Path) -> Log:
    db = str(tmp_path / "sagas.db")
    return Log(("--db", db), lambda: SQLiteStore(db))


def _rows(out: str) -> list[list[str]]:
    """``recover``'s table: each row's id, name, action and status."""
    return [line.split()[:4] for line in out.splitlines()]


def test_recovering_every_saga_to_completed_or_compensated_exits_0(log: Log) -> None:
    log.run(
        (cli_status_order("lamp"), "done-1"),
        (cli_status_order("declined"), "undone-1"),
        crash=cli_status_pay,
    )
    code, out = log.recover()
    assert code == 0
    assert sorted(_rows(out)[1:]) == [
        ["done-1", "cli_status_order", "resumed", "completed"],
        ["undone-1", "cli_status_order", "resumed", "compensated"],
    ]


def test_nothing_to_recover_exits_0(sqlite_log: Log) -> None:
    sqlite_log.run((cli_status_order("lamp"), "done-1"))
    assert sqlite_log.recover() == (0, "nothing to recover\n")
    assert sqlite_log.recover("--json") == (0, "[]\n")


def test_a_saga_recovered_to_failed_exits_3(log: Log) -> None:
    # Its run died as it undid the booking; recovery's refund fails for good: FAILED.
    log.run((cli_status_order("lamp"), "done-1"), crash=cli_status_pay)
    log.run((cli_status_order("stuck"), "stuck-1"), crash=cli_status_book, compensation=True)
    code, out = log.recover("--json")
    assert code == NEEDS_OPERATOR
    assert sorted((o["id"], o["action"], o["status"]) for o in json.loads(out)) == [
        ("done-1", "resumed", "completed"),
        ("stuck-1", "compensated", "failed"),
    ]


def test_a_saga_parked_by_this_recover_for_changed_code_exits_3(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    log.run(
        (cli_status_changing("lamp"), "changed-1"),
        (cli_status_order("lamp"), "done-1"),
        crash=cli_status_pay,
    )
    monkeypatch.setitem(CODE, "changed", True)  # a deployment since: NonDeterminismError
    code, out = log.recover()
    assert code == NEEDS_OPERATOR
    assert sorted(_rows(out)[1:]) == [
        ["changed-1", "cli_status_changing", "dead_lettered", "executing"],
        ["done-1", "cli_status_order", "resumed", "completed"],
    ]


def test_a_saga_parked_while_claimed_past_max_attempts_exits_3(sqlite_log: Log) -> None:
    sqlite_log.run((cli_status_order("lamp"), "tried-1"), crash=cli_status_pay)

    async def a_recovery_that_dies() -> None:  # counts its attempt, then its process dies
        store = sqlite_log.store()
        assert len(await store.claim_orphans()) == 1
        await simulate_restart(store)
        await store.close()

    asyncio.run(a_recovery_that_dies())
    code, out = sqlite_log.recover("--max-attempts", "1", "--json")
    assert code == NEEDS_OPERATOR
    [parked] = json.loads(out)
    assert (parked["id"], parked["action"]) == ("tried-1", "dead_lettered")


def test_recover_exits_3_while_a_dead_letter_waits_and_0_once_it_is_settled(
    sqlite_log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A dead letter parked by an earlier run, which nothing else reports, keeps the job
    # failing until an operator resumes or resolves it; `python -m sagakit` says so too.
    sqlite_log.run((cli_status_changing("lamp"), "changed-1"), crash=cli_status_pay)
    monkeypatch.setitem(CODE, "changed", True)
    assert sqlite_log.recover()[0] == NEEDS_OPERATOR
    code, out = sqlite_log.recover()
    assert code == NEEDS_OPERATOR
    assert out.startswith("nothing to recover\n1 dead-lettered saga (changed-1) was left alone")
    command = [sys.executable, "-m", "sagakit", *sqlite_log.args, "recover"]
    ran = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    assert (ran.returncode, ran.stdout) == (NEEDS_OPERATOR, out), ran.stderr
    assert main([*sqlite_log.args, "resolve", "changed-1", "--note", "undone by hand"]) == 0
    assert sqlite_log.recover() == (0, "nothing to recover\n")


def test_recover_help_names_status_3(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["recover", "--help"])
    assert exited.value.code == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "exit status 3: a saga needs an operator" in said


NESTED = "nested-1"
INNER = inner_id(NESTED)


def test_max_attempts_applies_to_an_inner_saga_recovery_adopts(log: Log) -> None:
    # Regression: `recover --max-attempts N` applied N to the sagas it claimed, but an
    # inner saga that a resumed step executes again (adopted under its derived id) was
    # claimed with the default limit, 3: raised, the inner saga was parked all the same,
    # its reason saying "max_attempts=3"; lowered, it was not parked at all.
    asyncio.run(inner_saga_tried(log.store, NESTED, 3))
    code, out = log.recover("--max-attempts", "5", "--json")
    assert (code, json.loads(out)) == (
        0,
        [
            {
                "id": NESTED,
                "name": "nested_tried_order",
                "action": "resumed",
                "status": "completed",
                "error": None,
            }
        ],
    )


def test_an_inner_saga_parked_by_recover_names_its_max_attempts(log: Log) -> None:
    asyncio.run(inner_saga_tried(log.store, NESTED, 2))
    code, out = log.recover("--max-attempts", "2", "--json")
    assert code == NEEDS_OPERATOR
    parked = {o["id"]: o for o in json.loads(out)}
    assert parked[INNER]["action"] == "dead_lettered"
    assert "max_attempts=2" in parked[INNER]["error"]
