"""``sagakit recover`` on PostgreSQL says when the leases it waits for run out.

Its note said only how many sagas were running under a lease, so an operator could not
tell whether to run it again in 5 seconds or in 5 hours. The times are the database's
(``lease_until - now()``), as a claim compares them, rounded up: by then the lease has
run out.
"""

from __future__ import annotations

import asyncio

import pytest

from cli_helpers.run import cli
from pg_helpers.db import query
from sagakit import PostgresStore, SagaOrchestrator, saga, step
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart


@step
async def leased_note_step(x: str) -> str:
    return x


@saga(name="leased_note_order")
def leased_note_order(x: str):  # type: ignore[no-untyped-def]
    yield leased_note_step(x)


async def _orphans(store: PostgresStore, *saga_ids: str) -> None:
    try:
        orchestrator = SagaOrchestrator(store)
        for saga_id in saga_ids:
            with FaultInjector().crash(leased_note_step), pytest.raises(SimulatedCrash):
                await orchestrator.execute(leased_note_order(saga_id), saga_id=saga_id)
        await simulate_restart(store)
    finally:
        await store.close()


def _held(dsn: str, schema: str, saga_id: str, lease: str) -> None:
    """``saga_id`` held by another worker, its lease running out in ``lease``."""
    query(
        dsn,
        f"UPDATE \"{schema}\".sagas SET owner = 'elsewhere', "
        f"lease_until = now() + interval '{lease}' WHERE saga_id = '{saga_id}'",
    )


def test_recover_says_when_the_first_and_the_last_lease_run_out(
    dsn: str, schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(_orphans(PostgresStore(dsn, schema=schema), "soon", "late", "free"))
    _held(dsn, schema, "soon", "90 minutes")
    _held(dsn, schema, "late", "10 hours")
    query(dsn, f"UPDATE \"{schema}\".sagas SET lease_until = now() WHERE saga_id = 'free'")
    code, out = cli("--db", dsn, "--schema", schema, "recover")
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split()[:3] == ["free", "leased_note_order", "resumed"]
    assert lines[2:] == [
        "2 sagas are running under leases, the first of which runs out in 90 minutes, "
        "the last in 10 hours (by the database's clock); they are recovered once their "
        "lease expires (a later recover, or any worker, claims them), or finished by the "
        "workers holding them"
    ]
    # With --json the note goes to stderr, times and all; stdout stays one JSON document.
    capsys.readouterr()
    assert cli("--db", dsn, "--schema", schema, "recover", "--json") == (0, "[]\n")
    assert "the first of which runs out in 90 minutes, the last in 10 hours" in (
        capsys.readouterr().err
    )


def test_recover_says_when_the_one_lease_runs_out(dsn: str, schema: str) -> None:
    asyncio.run(_orphans(PostgresStore(dsn, schema=schema), "held"))
    _held(dsn, schema, "held", "3 hours")
    assert cli("--db", dsn, "--schema", schema, "recover") == (
        0,
        "nothing to recover\n"
        "1 saga is running under a lease, which runs out in 3 hours (by the database's "
        "clock); it is recovered once the lease expires (a later recover, or any worker, "
        "claims it), or finished by the worker holding it\n",
    )


def test_leases_running_out_together_are_named_once(dsn: str, schema: str) -> None:
    asyncio.run(_orphans(PostgresStore(dsn, schema=schema), "one", "two"))
    query(
        dsn,
        f"UPDATE \"{schema}\".sagas SET owner = 'elsewhere', "
        "lease_until = now() + interval '20 hours'",
    )
    code, out = cli("--db", dsn, "--schema", schema, "recover")
    assert code == 0
    assert out.splitlines()[1].startswith(
        "2 sagas are running under leases, which all run out in 20 hours (by the "
        "database's clock); they are recovered"
    )


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (0.01, "1 second"),  # a lease about to run out: never "0 seconds"
        (1.0, "1 second"),
        (12.3, "13 seconds"),  # rounded up: by then it has run out
        (119.0, "119 seconds"),
        (119.2, "2 minutes"),
        (3599.9, "60 minutes"),
        (7140.0, "119 minutes"),
        (7141.0, "2 hours"),
        (47 * 3600.0, "47 hours"),
        (47 * 3600.0 + 1, "2 days"),
        (30 * 86400.0, "30 days"),
    ],
)
def test_times_are_rounded_up_in_a_unit_that_reads(seconds: float, said: str) -> None:
    from sagakit._cli_recover import _runs_out_in

    assert _runs_out_in(seconds) == said
