"""Many workers on PostgreSQL: a process dies mid-saga, the others finish its sagas.

A bank keeps a ledger in PostgreSQL that applies each entry once per idempotency
key. Three processes share one saga log (``PostgresStore``, 1 s leases):

* a *submitter* starts 10 transfers and is killed with SIGKILL while they are
  all inside ``credit`` (after ``debit`` was recorded as completed);
* two *workers* run ``orchestrator.run_worker()``: when the submitter's leases
  expire (by the database clock) they claim its sagas, ``FOR UPDATE SKIP
  LOCKED``, each saga by exactly one of them, and resume them at ``credit``;
* the workers get SIGTERM, release their leases and exit cleanly.

``debit`` never runs twice; ``credit`` runs again with the same idempotency key and
the ledger ignores the duplicate, so no money is lost or created.

Run it with ``python examples/postgres_workers.py`` (DSN from SAGAKIT_POSTGRES_DSN or
SAGAKIT_TEST_POSTGRES_DSN, default ``postgresql://postgres@127.0.0.1:5432/test``;
without a reachable server, or without psycopg, it says so and stops). It uses a throwaway
schema and drops it at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, LiteralString

from sagakit import PostgresStore, SagaOrchestrator, StepCall, current_step, saga, step

if TYPE_CHECKING:  # psycopg is imported where it is used: without it, the example says so
    from psycopg.abc import Query
    from psycopg.sql import Composed

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
# The variable the DSN comes from, if any: messages name it, never the DSN (it may hold a password).
DSN_VARIABLES = ("SAGAKIT_POSTGRES_DSN", "SAGAKIT_TEST_POSTGRES_DSN")
DSN_FROM = next((name for name in DSN_VARIABLES if os.environ.get(name)), None)
DSN = os.environ[DSN_FROM] if DSN_FROM is not None else DEFAULT_DSN
ACCOUNTS = 10


def in_schema(schema: str, statement: LiteralString) -> Composed:
    """``statement`` with ``{schema}`` replaced by the schema's quoted name.

    psycopg takes a query as a literal string (values go in ``%s`` parameters) or composed
    with ``psycopg.sql``; a name, which no parameter can stand for, goes in as an
    ``Identifier`` (pyright refuses a query built with an f-string).
    """
    from psycopg import sql

    return sql.SQL(statement).format(schema=sql.Identifier(schema))


async def post(schema: str, account: str, amount: int) -> None:
    """Apply a ledger entry once per idempotency key (the bank's own guarantee)."""
    import psycopg

    ctx = current_step()
    assert ctx is not None
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
        await conn.execute(
            in_schema(
                schema,
                "INSERT INTO {schema}.ledger (key, account, amount) VALUES (%s, %s, %s) "
                "ON CONFLICT (key) DO NOTHING",
            ),
            (ctx.idempotency_key, account, amount),
        )
        await conn.execute(
            in_schema(schema, "INSERT INTO {schema}.calls (step, worker) VALUES (%s, %s)"),
            (ctx.step_name, os.environ.get("ROLE", "?")),
        )


@step
async def debit(schema: str, account: str, amount: int) -> dict[str, Any]:
    await post(schema, account, -amount)
    return {"debited": account, "amount": amount}


@debit.compensate
async def refund(schema: str, account: str, amount: int) -> None:
    await post(schema, account + ":refund", amount)


@step(timeout=120)
async def credit(schema: str, account: str, amount: int) -> dict[str, Any]:
    await post(schema, account, amount)
    if os.environ.get("ROLE") == "submitter":
        print("inside credit", flush=True)
        await asyncio.sleep(60)  # killed here, after the bank applied the credit
    return {"credited": account, "amount": amount}


@saga
def transfer(
    schema: str, source: str, target: str, amount: int
) -> Generator[StepCall[Any], Any, None]:
    yield debit(schema, source, amount)
    yield credit(schema, target, amount)


def store(schema: str) -> PostgresStore:
    return PostgresStore(DSN, schema=schema, lease=1.0, heartbeat=0.25)


async def submitter(schema: str) -> None:
    orchestrator = SagaOrchestrator(store(schema))
    await asyncio.gather(
        *(
            orchestrator.execute(
                transfer(schema, f"acct-{n}", f"acct-{(n + 1) % ACCOUNTS}", 10 + n),
                saga_id=f"transfer-{n}",
            )
            for n in range(ACCOUNTS)
        )
    )


async def worker(schema: str) -> None:
    async with SagaOrchestrator(store(schema)) as orchestrator:
        print("worker ready", flush=True)
        await orchestrator.run_worker(poll_interval=0.2)  # until SIGTERM
    print("worker released its leases and stopped", flush=True)


def spawn(role: str, schema: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, role, schema],
        env={**os.environ, "ROLE": role},
        stdout=subprocess.PIPE,
        text=True,
    )


def run_sql(statement: Query) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(DSN, autocommit=True) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description is not None else []


async def report(schema: str) -> None:
    log = store(schema)
    async with SagaOrchestrator(log) as orchestrator:
        history = await orchestrator.get_history()
        print(f"finished sagas: {len(history)}, running: {await orchestrator.running_count()}")
        statuses = sorted({str(meta.status) for meta in history})
        print(f"statuses: {statuses}")
        events = await log.read_events()
        print(f"events in the ordered stream: {len(events)}")


def main() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        print("this example needs psycopg: pip install 'sagakit[postgres]' (in a checkout,")
        print("pip install -e '.[postgres]'; the dev extra has it too)")
        return
    try:
        run_sql("SELECT 1")
    except Exception as error:
        where = DEFAULT_DSN if DSN_FROM is None else f"the DSN in {DSN_FROM}"
        name = type(error).__name__
        print(f"PostgreSQL is not reachable at {where} ({name}); set SAGAKIT_POSTGRES_DSN")
        return
    schema = "sagakit_example_" + uuid.uuid4().hex[:8]
    run_sql(in_schema(schema, "CREATE SCHEMA {schema}"))
    run_sql(
        in_schema(
            schema,
            "CREATE TABLE {schema}.ledger (key text PRIMARY KEY, account text, amount int)",
        )
    )
    run_sql(in_schema(schema, "CREATE TABLE {schema}.calls (step text, worker text)"))
    try:
        print("1. the submitter starts 10 transfers and is killed inside credit")
        victim = spawn("submitter", schema)
        assert victim.stdout is not None
        for _ in range(ACCOUNTS):
            victim.stdout.readline()
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        victim.stdout.close()
        print("2. two workers claim the orphaned sagas once their leases expire")
        workers = [spawn("worker", schema) for _ in range(2)]
        for proc in workers:
            assert proc.stdout is not None
            proc.stdout.readline()
        deadline = time.monotonic() + 60
        unfinished = in_schema(
            schema, "SELECT count(*) FROM {schema}.sagas WHERE status <> 'completed'"
        )
        while run_sql(unfinished) != [(0,)]:
            if time.monotonic() > deadline:
                raise SystemExit("the workers did not finish the sagas")
            time.sleep(0.1)
        print("3. SIGTERM: the workers release their leases and stop")
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        for proc in workers:
            out, _ = proc.communicate(timeout=60)
            print(f"  {out.strip().splitlines()[-1]} (exit code {proc.returncode})")
        asyncio.run(report(schema))
        calls = dict(
            run_sql(in_schema(schema, "SELECT step, count(*) FROM {schema}.calls GROUP BY 1"))
        )
        print(f"step calls: debit={calls['debit']}, credit={calls['credit']}")
        ((total, entries),) = run_sql(
            in_schema(schema, "SELECT sum(amount), count(*) FROM {schema}.ledger")
        )
        print(f"ledger entries: {entries}, money created or lost: {total}")
        attempts = run_sql(
            in_schema(schema, "SELECT DISTINCT recovery_attempts FROM {schema}.sagas")
        )
        print(f"recovery attempts per saga: {json.dumps([a for (a,) in attempts])}")
    finally:
        run_sql(in_schema(schema, "DROP SCHEMA {schema} CASCADE"))


if __name__ == "__main__":
    if len(sys.argv) == 3:
        role, schema = sys.argv[1:]
        asyncio.run(submitter(schema) if role == "submitter" else worker(schema))
    else:
        main()
