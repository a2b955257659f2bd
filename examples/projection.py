"""A projection kept up to date from the saga log's event stream, exactly once.

Sagas record their steps' events in the log (``SQLiteStore``), in the same
transaction as each step's completion. A projection (account balances in its own
SQLite file) consumes them with ``store.read_events(after=position, limit=...)``
and saves the last position it applied in the same transaction as the balances,
so a crash between two pages never applies an event twice or skips one.

Run it with ``python examples/projection.py``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from sagakit import (
    SagaOrchestrator,
    SQLiteStore,
    StepCall,
    StepFailed,
    StoredEvent,
    saga,
    step,
)


@dataclass(frozen=True)
class Debited:
    account: str
    amount: int


@dataclass(frozen=True)
class Credited:
    account: str
    amount: int


@dataclass(frozen=True)
class DebitReversed:
    account: str
    amount: int


@step
async def debit(account: str, amount: int) -> Debited:
    return Debited(account, amount)


@debit.compensate
async def reverse_debit(account: str, amount: int) -> DebitReversed:
    return DebitReversed(account, amount)


@step
async def credit(account: str, amount: int) -> Credited:
    if account == "closed":
        raise ValueError("account closed")
    return Credited(account, amount)


@saga
def transfer(source: str, target: str, amount: int) -> Generator[StepCall[Any], Any, None]:
    yield debit(source, amount)
    yield credit(target, amount)


class Balances:
    """The projection: each account's net movement plus the last applied position."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS balance (account TEXT PRIMARY KEY, cents INT)"
        )
        self.conn.execute("CREATE TABLE IF NOT EXISTS position (id INT PRIMARY KEY, value INT)")
        self.conn.execute("INSERT OR IGNORE INTO position VALUES (1, 0)")

    def position(self) -> int:
        return int(self.conn.execute("SELECT value FROM position").fetchone()[0])

    def apply(self, page: list[StoredEvent]) -> None:
        """Apply one page of events and its last position atomically."""
        self.conn.execute("BEGIN IMMEDIATE")
        for stored in page:
            event = stored.event
            delta = {Debited: -1, Credited: 1, DebitReversed: 1}.get(type(event))
            if delta is not None:
                self.conn.execute(
                    "INSERT INTO balance VALUES (?, ?) ON CONFLICT (account) "
                    "DO UPDATE SET cents = cents + excluded.cents",
                    (event.account, delta * event.amount),
                )
        self.conn.execute("UPDATE position SET value = ?", (page[-1].position,))
        self.conn.execute("COMMIT")

    def show(self) -> str:
        rows = self.conn.execute("SELECT account, cents FROM balance ORDER BY account")
        return ", ".join(f"{account}={cents}" for account, cents in rows)


async def catch_up(store: SQLiteStore, balances: Balances) -> int:
    """Apply every event after the projection's position, two at a time."""
    applied = 0
    while page := await store.read_events(after=balances.position(), limit=2):
        balances.apply(page)
        applied += len(page)
    return applied


async def main(directory: str) -> None:
    store = SQLiteStore(os.path.join(directory, "sagas.db"))
    balances = Balances(os.path.join(directory, "balances.db"))
    async with SagaOrchestrator(store) as orchestrator:
        print("1. two transfers, one refused (its debit is compensated)")
        await orchestrator.execute(transfer("alice", "bob", 30), saga_id="t1")
        try:
            await orchestrator.execute(transfer("alice", "closed", 5), saga_id="t2")
        except StepFailed as error:
            print(f"  t2 failed: {error.error}")
        for stored in await store.read_events():
            kind = "compensation" if stored.compensation else "step"
            where = f"{stored.saga_id} {kind} {stored.step_name}"
            print(f"  #{stored.position} {where}: {stored.event}")

        print("2. the projection catches up")
        print(f"  applied {await catch_up(store, balances)} events; position {balances.position()}")
        print(f"  net movements: {balances.show()}")

        print("3. more sagas; the projection applies only what is new")
        await orchestrator.execute(transfer("bob", "carol", 10), saga_id="t3")
        print(f"  applied {await catch_up(store, balances)} events; position {balances.position()}")
        print(f"  applied {await catch_up(store, balances)} events on a second call")
        print(f"  net movements: {balances.show()}")

        print("4. one saga's events, read on their own")
        for stored in await store.read_events(saga_id="t2"):
            print(f"  #{stored.position}: {stored.event}")
    balances.conn.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(main(directory))
