"""A 5-step saga on PostgreSQL with 1, 2 and 4 worker processes, against hand-written code.

Each worker process opens its own :class:`~sagakit.PostgresStore` (lease 30 s) and
executes its share of the sagas with ``--inflight`` of them in flight (default 50),
plus a sequential run (one saga at a time, one process) for latency. The
hand-written baseline does what a minimal durable saga must: one autocommit
``INSERT`` of the saga, one ``INSERT`` per completed step and one ``UPDATE`` at the
end (7 statements, 7 round trips), with the same processes, pool size and
concurrency, but no step-start records, leases, fencing or event stream.

Prints sagas/s for both, the ratio sagakit / hand-written (higher is better), and
sagakit's statements and round trips per saga (client-side counters of every
statement sent, batched log writes counted once per batch).

    python benchmarks/bench_postgres.py [--sagas 2000] [--inflight 50] [--quick]

The DSN comes from SAGAKIT_BENCH_POSTGRES_DSN or SAGAKIT_TEST_POSTGRES_DSN
(default postgresql://postgres@127.0.0.1:5432/test); a throwaway schema is used
and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

STEPS = 5
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


# ---------------------------------------------------------------- child processes


async def _sagakit_child(config: dict[str, Any]) -> dict[str, Any]:
    from sagakit import PostgresStore, SagaOrchestrator, saga, step

    @step
    async def reserve(n: int) -> list[dict[str, int]]:
        return [{"step": n}]

    @saga
    def five_steps() -> Any:
        for n in range(STEPS):
            yield reserve(n)

    store = PostgresStore(config["dsn"], schema=config["schema"], max_size=4)
    await store.open()
    orchestrator = SagaOrchestrator(store)
    limit = asyncio.Semaphore(config["inflight"])

    async def one(saga_id: str) -> None:
        async with limit:
            await orchestrator.execute(five_steps(), saga_id=saga_id)

    print("READY", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    before = store.stats
    started = time.perf_counter()
    await asyncio.gather(*(one(f"{config['prefix']}-{n}") for n in range(config["sagas"])))
    elapsed = time.perf_counter() - started
    after = store.stats
    await store.close()
    return {
        "elapsed": elapsed,
        "statements": after.statements - before.statements,
        "round_trips": after.round_trips - before.round_trips,
        "batches": after.batches - before.batches,
        "writes": after.writes - before.writes,
    }


async def _baseline_child(config: dict[str, Any]) -> dict[str, Any]:
    from psycopg_pool import AsyncConnectionPool

    s = f'"{config["schema"]}"'
    pool = AsyncConnectionPool(
        config["dsn"], min_size=4, max_size=4, kwargs={"autocommit": True}, open=False
    )
    await pool.open(wait=True)
    limit = asyncio.Semaphore(config["inflight"])

    async def reserve(n: int) -> list[dict[str, int]]:
        return [{"step": n}]

    async def one(saga_id: str) -> None:
        async with limit:
            async with pool.connection() as conn:
                await conn.execute(
                    f"INSERT INTO {s}.base_sagas (id, status) VALUES (%s, 'executing')",
                    (saga_id,),
                )
            for n in range(STEPS):
                result = await reserve(n)
                async with pool.connection() as conn:
                    await conn.execute(
                        f"INSERT INTO {s}.base_steps (saga_id, idx, result) VALUES (%s, %s, %s)",
                        (saga_id, n, json.dumps(result)),
                    )
            async with pool.connection() as conn:
                await conn.execute(
                    f"UPDATE {s}.base_sagas SET status = 'completed' WHERE id = %s", (saga_id,)
                )

    print("READY", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    started = time.perf_counter()
    await asyncio.gather(*(one(f"{config['prefix']}-{n}") for n in range(config["sagas"])))
    elapsed = time.perf_counter() - started
    await pool.close()
    statements = config["sagas"] * (STEPS + 2)
    return {"elapsed": elapsed, "statements": statements, "round_trips": statements}


def child(config: dict[str, Any]) -> None:
    runner = _sagakit_child if config["kind"] == "sagakit" else _baseline_child
    print(json.dumps(asyncio.run(runner(config))), flush=True)


# ---------------------------------------------------------------- the parent


def run_round(
    kind: str, dsn: str, schema: str, workers: int, sagas: int, inflight: int
) -> dict[str, float]:
    """Start ``workers`` processes, release them together, time until all are done."""
    tag = uuid.uuid4().hex[:6]
    procs = []
    for w in range(workers):
        config = {
            "kind": kind,
            "dsn": dsn,
            "schema": schema,
            "sagas": sagas // workers,
            "inflight": inflight,
            "prefix": f"{kind}-{tag}-{w}",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "--child", json.dumps(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "READY":
            raise SystemExit(f"worker failed to start: {line!r}")
    started = time.perf_counter()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    reports = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"worker failed with exit code {proc.returncode}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.perf_counter() - started
    done = (sagas // workers) * workers
    return {
        "sagas_per_s": done / wall,
        "statements": sum(r["statements"] for r in reports) / done,
        "round_trips": sum(r["round_trips"] for r in reports) / done,
    }


def prepare(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(
            f'CREATE TABLE "{schema}".base_sagas (id text PRIMARY KEY, status text NOT NULL, '
            "started_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(
            f'CREATE TABLE "{schema}".base_steps (saga_id text NOT NULL, idx int NOT NULL, '
            "result text NOT NULL, PRIMARY KEY (saga_id, idx))"
        )


def drop(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sagas", type=int, default=2000, help="sagas per round")
    parser.add_argument("--inflight", type=int, default=50, help="sagas in flight per worker")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    dsn = (
        os.environ.get("SAGAKIT_BENCH_POSTGRES_DSN")
        or os.environ.get("SAGAKIT_TEST_POSTGRES_DSN")
        or DEFAULT_DSN
    )
    sagas = 200 if args.quick else args.sagas
    schema = "sagakit_bench_" + uuid.uuid4().hex[:8]
    prepare(dsn, schema)
    try:
        # Creates the sagakit tables before anything is timed.
        asyncio.run(_migrate(dsn, schema))
        print(f"5-step saga on PostgreSQL, {sagas} sagas per round, {args.inflight} in flight")
        print(
            f"{'workers':>7} {'in flight':>9} {'sagakit/s':>10} {'hand/s':>8} {'ratio':>6} "
            f"{'stmts/saga':>10} {'rtt/saga':>8}"
        )
        rounds = [(1, 1, max(50, sagas // 10))] + [(w, args.inflight, sagas) for w in (1, 2, 4)]
        for workers, inflight, count in rounds:
            ours = run_round("sagakit", dsn, schema, workers, count, inflight)
            base = run_round("baseline", dsn, schema, workers, count, inflight)
            ratio = ours["sagas_per_s"] / base["sagas_per_s"]
            print(
                f"{workers:>7} {inflight:>9} {ours['sagas_per_s']:>10.0f} "
                f"{base['sagas_per_s']:>8.0f} {ratio:>6.2f} {ours['statements']:>10.2f} "
                f"{ours['round_trips']:>8.2f}",
                flush=True,
            )
        print(f"hand-written baseline: {STEPS + 2} statements and round trips per saga")
    finally:
        drop(dsn, schema)


async def _migrate(dsn: str, schema: str) -> None:
    from sagakit import PostgresStore

    store = PostgresStore(dsn, schema=schema)
    await store.open()
    await store.close()


if __name__ == "__main__":
    main()
