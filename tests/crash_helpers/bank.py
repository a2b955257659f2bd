"""A child process for the crash tests: runs or recovers a saga on a SQLite log.

Every side effect is appended to the file named by ``SAGAKIT_CRASH_LOG`` (outside
the database). ``SAGAKIT_CRASH`` names where the process SIGKILLs itself:
``after:<transition>[:<step>]`` (listeners hear of a transition once it is durable),
``in_step:<step>``, ``staged:reserve`` (in the saga's code right after ``reserve``
returned: its completion is staged, committed only with the next step's start), or
``wait:<step>`` (block in the step until the file ``<log>.go`` exists).
``SAGAKIT_CODE=release-removed`` deploys changed code: ``reserve`` has no compensation.

    python bank.py run DB SAGA SAGA_ID TO_ACCOUNT
    python bank.py swarm DB COUNT      # COUNT transfers at once, each completion acknowledged
    python bank.py recover DB [MAX_ATTEMPTS]
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

from sagakit import (
    SagaAlreadyExecuting,
    SagaOrchestrator,
    SagaRunError,
    SQLiteStore,
    Transition,
    current_step,
    saga,
    step,
)

LOG = os.environ["SAGAKIT_CRASH_LOG"]
CRASH = os.environ.get("SAGAKIT_CRASH", "")
SWARM = os.environ.get("SAGAKIT_SWARM") == "1"


def effect(text: str) -> None:
    context = current_step()
    key = context.idempotency_key if context is not None else "-"
    with open(LOG, "a") as log:
        log.write(f"{text} {key}\n")
        log.flush()
        if not SWARM:
            os.fsync(log.fileno())


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


async def pause() -> None:
    if SWARM:
        await asyncio.sleep(0)


def at(name: str) -> None:
    if f"in_step:{name}" == CRASH:
        die()
    if f"wait:{name}" == CRASH:
        while not os.path.exists(LOG + ".go"):
            time.sleep(0.01)


@step
async def debit(account: str, amount: int) -> dict[str, Any]:
    effect("step debit")
    await pause()
    at("debit")
    return {"account": account, "amount": -amount}


@debit.compensate
async def refund(account: str, amount: int) -> None:
    effect("comp debit")
    at("comp:debit")


@step
async def reserve(account: str, amount: int) -> str:
    effect("step reserve")
    await pause()
    at("reserve")
    return f"hold-{account}"


async def release(hold: str, account: str, amount: int) -> None:
    effect(f"comp reserve {hold}")
    at("comp:reserve")


if os.environ.get("SAGAKIT_CODE") != "release-removed":
    reserve.compensate(release)


@step
async def credit(account: str, amount: int) -> dict[str, Any]:
    effect("step credit")
    await pause()
    at("credit")
    if account == "REFUSE":
        raise ValueError("the bank refused the credit")
    return {"account": account, "amount": amount}


@saga
def transfer(source: str, target: str, amount: int):  # type: ignore[no-untyped-def]
    yield debit(source, amount)
    hold = yield reserve(target, amount)
    if CRASH == "staged:reserve":  # reserve's completion is staged, not yet committed
        die()
    assert hold.startswith("hold-")
    yield credit(target, amount)


@saga(recovery="compensate")
def cautious_transfer(source: str, target: str, amount: int):  # type: ignore[no-untyped-def]
    yield debit(source, amount)
    yield reserve(target, amount)
    yield credit(target, amount)


def crash_listener(transition: Transition) -> None:
    parts = CRASH.split(":")
    if parts[0] != "after" or parts[1] != str(transition.kind):
        return
    if len(parts) == 2 or parts[2] == transition.step_name:
        die()


async def run(db: str, name: str, saga_id: str, target: str) -> int:
    factory = {"transfer": transfer, "cautious_transfer": cautious_transfer}[name]
    async with SagaOrchestrator(SQLiteStore(db), listeners=[crash_listener]) as orchestrator:
        try:
            events = await orchestrator.execute(factory("A", target, 10), saga_id=saga_id)
        except SagaAlreadyExecuting:
            print("already-executing")
            return 3
        except SagaRunError as error:
            print(f"failed: {error}")
            return 2
    print(json.dumps({"events": events}))
    return 0


def acknowledge(transition: Transition) -> None:
    """Runs after the store committed the completion: the log must keep it."""
    if transition.kind == "step_completed":
        with open(LOG, "a") as log:
            log.write(f"acked {transition.idempotency_key}\n")


async def swarm(db: str, count: int) -> int:
    async with SagaOrchestrator(SQLiteStore(db), listeners=[acknowledge]) as orchestrator:
        await asyncio.gather(
            *(orchestrator.execute(transfer("A", "B", n), saga_id=f"s{n}") for n in range(count))
        )
    return 0


async def recover(db: str, max_attempts: int) -> int:
    store = SQLiteStore(db)
    async with SagaOrchestrator(store, max_recovery_attempts=max_attempts) as orchestrator:
        outcomes = await orchestrator.recover()
    for outcome in outcomes:
        print(json.dumps([outcome.saga_id, outcome.action, str(outcome.status)]))
    return 0


def main() -> int:
    command, db, *rest = sys.argv[1:]
    if command == "run":
        return asyncio.run(run(db, *rest))
    if command == "swarm":
        return asyncio.run(swarm(db, int(rest[0])))
    return asyncio.run(recover(db, int(rest[0]) if rest else 3))


if __name__ == "__main__":
    sys.exit(main())
