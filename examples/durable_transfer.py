"""Durable transfer: a process dies in the middle of a saga, another one finishes it.

A bank (its own SQLite file) moves money only once per idempotency key. The saga
``transfer`` debits then credits; it runs in a child process against a saga log
(``SQLiteStore``), and that child is killed with SIGKILL inside ``credit``, right
after the bank applied the credit but before the step returned. A fresh
orchestrator then recovers the saga: ``debit`` (recorded as completed) never runs
again, ``credit`` runs again with the same idempotency key, and the bank ignores
the duplicate. No money is lost or created.

Run it with ``python examples/durable_transfer.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from sagakit import SagaOrchestrator, SQLiteStore, StepCall, current_step, saga, step
from sagakit.cli import main as sagakit_cli


@dataclass(frozen=True)
class Debited:
    account: str
    amount: int


@dataclass(frozen=True)
class Credited:
    account: str
    amount: int


class Bank:
    """Accounts in a SQLite file; each movement is applied once per idempotency key."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("CREATE TABLE IF NOT EXISTS accounts (name TEXT PRIMARY KEY, cents INT)")
        self.conn.execute("CREATE TABLE IF NOT EXISTS applied (key TEXT PRIMARY KEY)")

    def open(self, name: str, cents: int) -> None:
        self.conn.execute("INSERT INTO accounts VALUES (?, ?)", (name, cents))

    def move(self, key: str, account: str, cents: int) -> bool:
        """Apply ``cents`` to ``account`` unless ``key`` was applied already."""
        self.conn.execute("BEGIN IMMEDIATE")
        if self.conn.execute("SELECT 1 FROM applied WHERE key = ?", (key,)).fetchone():
            self.conn.execute("COMMIT")
            return False
        self.conn.execute("UPDATE accounts SET cents = cents + ? WHERE name = ?", (cents, account))
        self.conn.execute("INSERT INTO applied VALUES (?)", (key,))
        self.conn.execute("COMMIT")
        return True

    def balances(self) -> str:
        rows = self.conn.execute("SELECT name, cents FROM accounts ORDER BY name").fetchall()
        return ", ".join(f"{name}={cents}" for name, cents in rows)


bank: Bank | None = None


def the_bank() -> Bank:
    assert bank is not None
    return bank


def key() -> str:
    context = current_step()
    assert context is not None
    return context.idempotency_key


@step
async def debit(account: str, amount: int) -> Debited:
    the_bank().move(key(), account, -amount)
    return Debited(account, amount)


@debit.compensate
async def refund(account: str, amount: int) -> None:
    the_bank().move(key() + ":undo", account, amount)


@step
async def credit(account: str, amount: int) -> Credited:
    applied = the_bank().move(key(), account, amount)
    if os.environ.get("CRASH_IN_CREDIT"):
        os.kill(os.getpid(), signal.SIGKILL)  # the process dies after the bank acted
    if not applied:
        print(f"  credit {key()}: already applied by the bank, not applied twice")
    return Credited(account, amount)


@saga
def transfer(source: str, target: str, amount: int) -> Generator[StepCall[Any], Any, None]:
    yield debit(source, amount)
    yield credit(target, amount)


async def run_child(directory: str) -> None:
    """The doomed process: starts the transfer and dies inside ``credit``."""
    async with SagaOrchestrator(SQLiteStore(os.path.join(directory, "sagas.db"))) as orchestrator:
        await orchestrator.execute(transfer("alice", "bob", 30), saga_id="transfer-1")


def crash_a_child(directory: str) -> None:
    print("1. a child process starts transfer-1 (alice -> bob, 30) and is killed in 'credit'")
    child = subprocess.run(
        [sys.executable, __file__, "--child", directory],
        env={**os.environ, "CRASH_IN_CREDIT": "1"},
        check=False,
    )
    print(f"  child exit: {'SIGKILL' if child.returncode == -signal.SIGKILL else child.returncode}")
    print(f"  balances: {the_bank().balances()}")


async def recover(directory: str) -> None:
    log = os.path.join(directory, "sagas.db")
    print("2. a new process opens the log and recovers")
    store = SQLiteStore(log)
    async with SagaOrchestrator(store) as orchestrator:
        for outcome in await orchestrator.recover():
            print(f"  {outcome.saga_id}: {outcome.action}, now {outcome.status}")
        meta = await orchestrator.get_saga("transfer-1")
        assert meta is not None
        for record in meta.steps:
            print(f"  step {record.index} {record.name}: {record.status}")
        print(f"  balances: {the_bank().balances()}")

        print("3. executing transfer-1 again returns its recorded events, running nothing")
        events = await orchestrator.execute(transfer("alice", "bob", 30), saga_id="transfer-1")
        for event in events:
            print(f"  event: {event}")
        print(f"  balances: {the_bank().balances()}")


def main() -> None:
    global bank
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        bank = Bank(os.path.join(sys.argv[2], "bank.db"))
        asyncio.run(run_child(sys.argv[2]))
        return
    with tempfile.TemporaryDirectory() as directory:
        bank = Bank(os.path.join(directory, "bank.db"))
        bank.open("alice", 100)
        bank.open("bob", 0)
        crash_a_child(directory)
        asyncio.run(recover(directory))
        print("4. the same log through the CLI: sagakit --db sagas.db show transfer-1")
        sagakit_cli(["--db", os.path.join(directory, "sagas.db"), "show", "transfer-1"])
        bank.conn.close()


if __name__ == "__main__":
    main()
