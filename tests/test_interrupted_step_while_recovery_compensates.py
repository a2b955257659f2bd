"""What a durable log shows of the step a crash interrupted while recovery compensates.

Regression: the process died inside a step; recovery compensated the saga and wrote that
step's end (``failed``, "interrupted by a crash of its process") only with the saga's end.
Until then ``get_saga()``, another process's, and ``sagakit show`` showed the step
``running``, while the saga was ``compensating`` and nothing ran it. The record must not be
written earlier (a recovery by an older sagakit would read a ``failed`` step as one that
only raised, and leave its compensation out): the log's rows stay as they were, and the
record built from them shows the step as it will end.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

from cli_helpers.run import cli
from sagakit import SagaOrchestrator, SagaStatus, SQLiteStore, StepStatus, saga, step
from sagakit._runs import CRASHED
from sagakit.records import SagaMetadata
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

pytestmark = pytest.mark.asyncio

effects: list[str] = []
gates: dict[str, asyncio.Event] = {}
"""``"crediting"`` (``"unholding"``): set by credit (unhold, when ``"pause unhold"`` is there);
``"go on"``: what they wait for then."""


@step
async def hold(order: str) -> str:
    effects.append(f"hold {order}")
    return f"h-{order}"


@hold.compensate
async def unhold(order: str) -> None:
    if "pause unhold" in gates:  # (the second test): it waits there
        gates["unholding"].set()
        await gates["go on"].wait()
    effects.append(f"unhold {order}")


@step
async def debit(order: str) -> str:
    effects.append(f"debit {order}")
    return f"d-{order}"


@debit.compensate
async def credit(order: str) -> None:
    gates["crediting"].set()
    await gates["go on"].wait()
    effects.append(f"credit {order}")


@saga(name="interrupted_step_shown_order", recovery="compensate")
def order(name: str):  # type: ignore[no-untyped-def]
    yield hold(name)
    yield debit(name)


@pytest.fixture(autouse=True)
def _clean() -> None:
    effects.clear()
    gates.clear()
    gates.update({name: asyncio.Event() for name in ("crediting", "unholding", "go on")})


def _db(store: Any) -> list[str]:
    """The CLI's arguments naming ``store``'s log."""
    if isinstance(store, SQLiteStore):
        return ["--db", str(store.path)]
    return ["--db", store.dsn, "--schema", store.schema]


def _logged_status(store: Any, saga_id: str, index: int) -> str:
    """The status the log's row of forward step ``index`` holds, read with the database's
    own client: what any sagakit's recovery reads."""
    if isinstance(store, SQLiteStore):
        with contextlib.closing(sqlite3.connect(store.path)) as conn:
            [(status,)] = conn.execute(
                "SELECT status FROM sagakit_steps WHERE saga_id = ? AND compensation = 0 "
                "AND idx = ?",
                (saga_id, index),
            )
        return str(status)
    import psycopg
    from psycopg import sql

    with psycopg.connect(store.dsn, autocommit=True) as conn:
        query = sql.SQL(
            "SELECT status FROM {}.steps WHERE saga_id = %s AND NOT compensation "
            "AND step_index = %s"
        ).format(sql.Identifier(store.schema))
        row = conn.execute(query, (saga_id, index)).fetchone()
    assert row is not None
    return str(row[0])


def _debit(meta: SagaMetadata | None) -> tuple[Any, ...]:
    assert meta is not None
    record = meta.steps[1]
    return (record.name, record.status, record.error)


async def test_the_interrupted_step_shows_failed_while_recovery_compensates(
    durable_store: Callable[[], Any],
) -> None:
    store = durable_store()
    dying = SagaOrchestrator(store)
    with FaultInjector().crash(debit, after=True), pytest.raises(SimulatedCrash):
        await dying.execute(order("x").with_id("is-1"))
    crashed = await store.get("is-1")
    assert crashed is not None
    # Before recovery nothing says the process died: the step is shown as it was left.
    assert crashed.status is SagaStatus.EXECUTING
    assert _debit(crashed) == ("debit", StepStatus.RUNNING, None)
    await simulate_restart(store)
    await store.close()

    restarted = SagaOrchestrator(durable_store())
    recovering = asyncio.create_task(restarted.recover())
    waiting = asyncio.create_task(gates["crediting"].wait())
    await asyncio.wait({recovering, waiting}, return_when=asyncio.FIRST_COMPLETED)
    assert not recovering.done(), recovering.result()
    # Recovery runs the interrupted step's compensation (credit) and waits in it: another
    # store object on the same log (another process's) reads the saga now.
    reader = durable_store()
    try:
        meanwhile = await reader.get("is-1")
        code, shown = await asyncio.to_thread(cli, *_db(reader), "show", "is-1")
        logged = await asyncio.to_thread(_logged_status, reader, "is-1", 1)
    finally:
        await reader.close()
    gates["go on"].set()
    [outcome] = await recovering
    final = await restarted.get_saga("is-1")
    await restarted.close()

    # The log is written as before: a recovery taking over now (an older sagakit's too)
    # reads the step as interrupted, and compensates it as one that may have acted.
    assert logged == "running"
    assert meanwhile is not None
    assert meanwhile.status is SagaStatus.COMPENSATING
    assert _debit(meanwhile) == ("debit", StepStatus.FAILED, CRASHED)
    assert [(c.name, c.status) for c in meanwhile.compensations] == [("debit", StepStatus.RUNNING)]
    assert code == 0
    [line] = [row for row in shown.splitlines() if row.startswith("step") and "debit" in row]
    assert line.split()[:4] == ["step", "1", "debit", "failed"]
    assert CRASHED in line
    # The record shown meanwhile is the one recovery writes with the saga's end.
    assert (outcome.action, outcome.status) == ("compensated", SagaStatus.COMPENSATED)
    assert _debit(final) == _debit(meanwhile)
    assert effects == ["hold x", "debit x", "credit x", "unhold x"]


@step(name="interrupted_shown_charge")
async def charge(order: str) -> str:
    effects.append(f"charge {order}")
    return f"c-{order}"


@charge.compensate
async def refund(order: str) -> None:
    effects.append(f"refund {order}")


@step
async def declined(order: str) -> None:
    raise ValueError("card declined")


@saga(name="interrupted_compensation_shown_order")
def charged_order(name: str):  # type: ignore[no-untyped-def]
    yield hold(name)
    yield charge(name)
    yield declined(name)


def _deploy_charged_order_without_refund() -> None:
    """The code deployed since the crash: ``charged_order`` again (recovery finds it by
    name), its ``charge`` step with no compensation any more."""

    @step(name="interrupted_shown_charge")
    async def charge_now(order: str) -> str:
        return f"c-{order}"

    @saga(name="interrupted_compensation_shown_order")
    def charged_order_now(name: str):  # type: ignore[no-untyped-def]
        yield hold(name)
        yield charge_now(name)
        yield declined(name)


async def test_a_compensation_left_interrupted_shows_failed_once_a_later_one_runs(
    durable_store: Callable[[], Any],
) -> None:
    # The process died in charge's compensation (refund); the code deployed since declares
    # none for charge, so recovery does not run it again, and runs unhold: refund's record
    # is written with the saga's end, and is shown so meanwhile.
    store = durable_store()
    dying = SagaOrchestrator(store)
    with FaultInjector().crash(charge, compensation=True), pytest.raises(SimulatedCrash):
        await dying.execute(charged_order("y").with_id("ic-1"))
    await simulate_restart(store)
    await store.close()

    _deploy_charged_order_without_refund()
    gates["pause unhold"] = asyncio.Event()
    restarted = SagaOrchestrator(durable_store())
    recovering = asyncio.create_task(restarted.recover())
    waiting = asyncio.create_task(gates["unholding"].wait())
    await asyncio.wait({recovering, waiting}, return_when=asyncio.FIRST_COMPLETED)
    assert not recovering.done(), recovering.result()
    reader = durable_store()
    try:
        meanwhile = await reader.get("ic-1")
    finally:
        await reader.close()
    gates["go on"].set()
    [outcome] = await recovering
    final = await restarted.get_saga("ic-1")
    await restarted.close()

    assert meanwhile is not None
    assert meanwhile.status is SagaStatus.COMPENSATING
    assert [(c.name, c.status, c.error) for c in meanwhile.compensations] == [
        ("interrupted_shown_charge", StepStatus.FAILED, CRASHED),
        ("hold", StepStatus.RUNNING, None),
    ]
    assert (outcome.action, outcome.status) == ("compensated", SagaStatus.COMPENSATED)
    assert final is not None
    assert [(c.name, c.status, c.error) for c in final.compensations] == [
        ("interrupted_shown_charge", StepStatus.FAILED, CRASHED),
        ("hold", StepStatus.COMPLETED, None),
    ]
    assert effects == ["hold y", "charge y", "unhold y"]
