"""Operating a saga log: dead letters, the ``sagakit`` command, a stopped recovery.

A transfer saga runs against a SQLite saga log. The bank's client library kills
the process whenever it credits account ``mallory`` (a simulated crash, from
``sagakit.testing``: the log is left exactly as a SIGKILL would leave it).

1. Two such transfers crash their process, then every recovery of them crashes
   too: after ``max_recovery_attempts`` recovery parks them as dead letters
   instead of crashing forever. ``sagakit dead-letters`` lists them.
2. ``sagakit release`` is not the tool for them (it is for a saga whose owner ran
   on another host or container); once the bug is fixed, ``sagakit resume`` hands
   one back to recovery, which finishes it.
3. The other one was settled by hand (alice refunded): ``sagakit resolve --note``
   ends it ``failed`` with the note, and its id may be executed again.
4. A recovery cancelled half-way (Ctrl-C on ``sagakit recover``, a shutdown) hands
   its saga back: listeners hear ``SAGA_STOPPED``, and the next recovery — in this
   process too, at once — finishes it.
5. Inspection without writing: ``SQLiteStore(path, read_only=True)``, which
   ``sagakit list``, ``show`` and ``dead-letters`` use.

Run it with ``python examples/operating_a_log.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shlex
import tempfile
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from sagakit import (
    SagaOrchestrator,
    SQLiteStore,
    StepCall,
    StoreError,
    Transition,
    TransitionKind,
    saga,
    step,
)
from sagakit.cli import main as sagakit_cli
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart


@dataclass(frozen=True)
class Debited:
    account: str
    amount: int


@dataclass(frozen=True)
class Credited:
    account: str
    amount: int


LOG = "sagas.db"

# The bank's client: "fixed" once an operator has deployed the fix; a gate that
# holds a credit until opened (a slow bank), for the cancelled recovery.
bank = {"fixed": False}
slow_bank: asyncio.Event | None = None
credit_started: asyncio.Event | None = None


def crashes() -> FaultInjector:
    """The bug: crediting mallory kills the process, until it is fixed."""
    injector = FaultInjector()
    if not bank["fixed"]:
        injector.crash(credit, after=True)
    return injector


@step
async def debit(account: str, amount: int) -> Debited:
    return Debited(account, amount)


@debit.compensate
async def refund(account: str, amount: int) -> None:
    pass


@step
async def credit(account: str, amount: int) -> Credited:
    if slow_bank is not None and credit_started is not None:
        credit_started.set()
        await slow_bank.wait()
    return Credited(account, amount)


@saga
def transfer(source: str, target: str, amount: int) -> Generator[StepCall[Any], Any, None]:
    yield debit(source, amount)
    yield credit(target, amount)


def cli(*args: str) -> None:
    """Run ``sagakit --db sagas.db ARGS`` in this process, as an operator would in a shell."""
    print(f"  $ {shlex.join(['sagakit', '--db', LOG, *args])}")
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        status = sagakit_cli(["--db", LOG, *args])
    for line in output.getvalue().splitlines():
        print(f"    {line}")
    if status:
        print(f"    (exit status {status})")


async def start_crashing_transfers() -> None:
    store = SQLiteStore(LOG)
    orchestrator = SagaOrchestrator(store)
    for saga_id in ("transfer-7", "transfer-8"):
        with crashes(), contextlib.suppress(SimulatedCrash):
            await orchestrator.execute(transfer("alice", "mallory", 20), saga_id=saga_id)
            raise AssertionError("expected a crash")
    await simulate_restart(store)  # the process is gone
    await store.close()


async def recover_once() -> bool:
    """One restarted process recovering; whether it died too."""
    store = SQLiteStore(LOG)
    orchestrator = SagaOrchestrator(store, max_recovery_attempts=2)
    try:
        with crashes():
            outcomes = await orchestrator.recover()
    except SimulatedCrash as crash:
        print(f"  a recovering process died too ({crash})")
        await simulate_restart(store)
        return True
    finally:
        await store.close()
    for outcome in outcomes:
        print(f"  recovered {outcome.saga_id}: {outcome.action}, now {outcome.status}")
    if not outcomes:
        print("  recover(): nothing it could run")
    return False


async def show_dead_letters() -> None:
    store = SQLiteStore(LOG, read_only=True)
    for letter in await store.dead_letters():
        print(
            f"  parked: {letter.saga_id} ({letter.status}, "
            f"{letter.recovery_attempts} attempts): {letter.reason}"
        )
    await store.close()


async def stop_a_recovery() -> None:
    global slow_bank, credit_started
    store = SQLiteStore(LOG)
    orchestrator = SagaOrchestrator(store)
    with crashes(), contextlib.suppress(SimulatedCrash):
        await orchestrator.execute(transfer("alice", "bob", 5), saga_id="transfer-9")
    await simulate_restart(store)
    await store.close()

    def tell(transition: Transition) -> None:
        if transition.kind in (TransitionKind.SAGA_STOPPED, TransitionKind.SAGA_FINISHED):
            print(f"  listener: {transition.kind} {transition.saga_id} ({transition.status})")
            if transition.error is not None:
                print(f"    error: {type(transition.error).__name__}: {transition.error}")

    slow_bank, credit_started = asyncio.Event(), asyncio.Event()
    store = SQLiteStore(LOG)
    orchestrator = SagaOrchestrator(store, listeners=[tell])
    recovering = asyncio.create_task(orchestrator.recover())
    await credit_started.wait()  # recovery is inside credit, waiting for the bank
    recovering.cancel()  # Ctrl-C
    with contextlib.suppress(asyncio.CancelledError):
        await recovering
    meta = await orchestrator.get_saga("transfer-9")
    assert meta is not None
    print(f"  after the cancellation transfer-9 is still {meta.status} in the log")
    # Handed back at once (no owner): the next recovery, here or in another process, takes it.
    slow_bank.set()
    async with orchestrator:
        for outcome in await orchestrator.recover():
            print(f"  recovered {outcome.saga_id}: {outcome.action}, now {outcome.status}")
    slow_bank = credit_started = None


async def inspect_read_only() -> None:
    store = SQLiteStore(LOG, read_only=True)
    for meta in await store.list_sagas():
        print(f"  {meta.id}: {meta.status}, {meta.steps_executed}/{meta.total_steps} steps")
    try:
        await store.resolve("transfer-9", "by mistake")
    except StoreError as error:
        print(f"  resolve on a read-only store: StoreError: {error}")
    await store.close()


async def run_again(saga_id: str) -> None:
    async with SagaOrchestrator(SQLiteStore(LOG)) as orchestrator:
        events = await orchestrator.execute(transfer("alice", "mallory", 20), saga_id=saga_id)
        print(f"  {saga_id} ran again: {events}")


def main() -> None:
    print("1. two transfers to mallory crash their process, and every recovery of them")
    asyncio.run(start_crashing_transfers())
    # Each recovering process dies in the first saga it runs; a saga claimed
    # max_recovery_attempts (2) times is parked when it would be claimed again.
    while asyncio.run(recover_once()):
        pass
    asyncio.run(show_dead_letters())
    cli("dead-letters")

    print("2. the bug is fixed; transfer-7 goes back to recovery")
    bank["fixed"] = True
    print("  (release is for a saga whose owner is gone, not a dead letter: it refuses)")
    cli("release", "transfer-7")
    cli("resume", "transfer-7")
    asyncio.run(recover_once())

    print("3. transfer-8 was settled by hand; alice retries it")
    cli("resolve", "transfer-8", "--note", "refunded alice by hand")
    cli("show", "transfer-8")
    asyncio.run(run_again("transfer-8"))

    print("4. a recovery cancelled half-way hands its saga back")
    bank["fixed"] = False
    asyncio.run(stop_a_recovery())

    print("5. reading the log without writing to it")
    asyncio.run(inspect_read_only())
    cli("list")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        os.chdir(directory)  # the log is ./sagas.db, as in the commands printed
        main()
