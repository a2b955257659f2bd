"""Bank transfer: the main sagakit example.

Moves money between accounts with a saga of two steps, ``debit`` then ``credit``.
Shows a transfer that completes, one that fails and is compensated, one that times
out, an idempotent re-execution, and the monitoring calls. Events are frozen
dataclasses, in the style of eventsourcing.

Run it with ``python examples/bank_transfer.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from sagakit import (
    SagaDefinition,
    SagaOrchestrator,
    StepCall,
    StepFailed,
    StepTimeout,
    current_step,
    saga,
    step,
)

# ---------------------------------------------------------------- domain events


@dataclass(frozen=True)
class Debited:
    account: str
    amount: float


@dataclass(frozen=True)
class Credited:
    account: str
    amount: float


@dataclass(frozen=True)
class DebitReversed:
    account: str
    amount: float


class InsufficientFundsError(Exception):
    """The account does not hold enough money."""


class AccountClosedError(Exception):
    """The account no longer accepts money."""


# ---------------------------------------------------------------- a tiny bank


balances: dict[str, float] = {}
closed: set[str] = set()
slow: set[str] = set()  # accounts whose bank answers too slowly


def open_accounts() -> None:
    balances.clear()
    balances.update({"alice": 500.0, "bob": 100.0, "carol": 0.0, "dave": 0.0})
    closed.clear()
    closed.add("carol")
    slow.clear()
    slow.add("dave")


# ---------------------------------------------------------------- steps


@step(timeout=5)
async def debit(account: str, amount: float) -> list[Debited]:
    """Take ``amount`` from ``account``."""
    await asyncio.sleep(0)  # a real bank call would await here
    if balances[account] < amount:
        raise InsufficientFundsError(f"{account} has {balances[account]:.2f}, needs {amount:.2f}")
    balances[account] -= amount
    return [Debited(account, amount)]


@debit.compensate
async def reverse_debit(account: str, amount: float) -> list[DebitReversed]:
    """Give the money back (the compensation receives the step's arguments)."""
    balances[account] += amount
    return [DebitReversed(account, amount)]


@step(timeout=0.2)  # a small timeout so the timeout case runs fast
async def credit(account: str, amount: float) -> list[Credited]:
    """Put ``amount`` into ``account``."""
    if account in slow:
        await asyncio.sleep(60)  # the remote bank hangs
    if account in closed:
        raise AccountClosedError(f"account {account} is closed")
    balances[account] += amount
    return [Credited(account, amount)]


@saga
def transfer(src: str, dst: str, amount: float) -> Generator[StepCall[Any], Any, None]:
    """Generator form: each ``yield`` runs a step and gets back its result
    (``yield from`` gets it typed as the step returns it: here ``list[Debited]``)."""
    debited = yield from debit(src, amount)
    yield credit(dst, debited[0].amount)


@saga
def transfer_list(src: str, dst: str, amount: float) -> list[StepCall[Any]]:
    """List form: the same saga as an ordered list of step calls."""
    return [debit(src, amount), credit(dst, amount)]


def show_balances() -> None:
    print("  balances: " + ", ".join(f"{k}={v:.2f}" for k, v in sorted(balances.items())))


async def main() -> None:
    open_accounts()
    orchestrator = SagaOrchestrator()
    print("sagakit bank transfer example")
    show_balances()

    print("\n1. alice sends 100 to bob (completes)")
    events = await orchestrator.execute(transfer("alice", "bob", 100.0), saga_id="transfer-1")
    for event in events:
        print(f"  event: {event}")
    show_balances()

    print("\n2. the same transfer again, with the same saga id (idempotent, nothing runs)")
    again = await orchestrator.execute(transfer("alice", "bob", 100.0), saga_id="transfer-1")
    print(f"  returned the recorded events: {again == events}")
    show_balances()

    print("\n3. bob sends 50 to carol, whose account is closed (compensated)")
    try:
        await orchestrator.execute(transfer_list("bob", "carol", 50.0), saga_id="transfer-2")
    except StepFailed as error:
        print(f"  failed at step {error.step_index} ({error.step_name}): {error.error}")
        print(f"  compensation events: {error.compensation_events}")
    show_balances()

    print("\n4. alice sends 25 to dave, whose bank hangs (timed out, compensated)")
    try:
        await orchestrator.execute(transfer("alice", "dave", 25.0), saga_id="transfer-3")
    except StepTimeout as error:
        print(f"  step {error.step_name!r} timed out after {error.timeout:g} s")
        print(f"  compensation events: {error.compensation_events}")
    show_balances()

    print("\n5. bob tries to send 1000 (insufficient funds: nothing to undo)")
    builder = (
        SagaDefinition("transfer-4")
        .add_step(debit("bob", 1000.0))
        .add_step(credit("alice", 1000.0))
    )
    try:
        await orchestrator.execute(builder)
    except StepFailed as error:
        print(f"  failed: {type(error.error).__name__}: {error.error}")
        print(f"  compensation events: {error.compensation_events}")
    show_balances()

    print("\n6. monitoring")

    @step
    async def audit(note: str) -> None:
        ctx = current_step()
        assert ctx is not None
        running = await orchestrator.get_running_sagas()
        sagas = "1 saga" if len(running) == 1 else f"{len(running)} sagas"
        print(f"  inside {ctx.saga_id!r} step {ctx.step_name!r}: {sagas} running")
        for meta in running:
            print(f"    {meta.id}: {meta.status}, {meta.steps_executed}/{meta.total_steps} steps")

    await orchestrator.execute(
        SagaDefinition("transfer-5")
        .add_step(debit("alice", 10.0))
        .add_step(audit("check"))
        .add_step(credit("bob", 10.0))
    )
    print(f"  running now: {await orchestrator.running_count()}")
    print(f"  finished sagas in history: {await orchestrator.history_count()}")
    for meta in await orchestrator.get_history():
        steps = ", ".join(f"{r.name}={r.status}" for r in meta.steps)
        print(f"    {meta.id}: {meta.status} ({steps})")
    latest = await orchestrator.get_saga("transfer-3")
    assert latest is not None
    print(f"  transfer-3 error: {latest.error}")
    show_balances()
    total = sum(balances.values())
    print(f"\nmoney in the bank: {total:.2f} (no money lost or created)")


if __name__ == "__main__":
    asyncio.run(main())
