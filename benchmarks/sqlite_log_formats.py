"""How fast could a durable 5-step saga be on SQLite? The SQL alone, three log formats.

``bench_sqlite.py`` compares sagakit with hand-written logging end to end. This script
leaves Python orchestration out and replays, in a bare ``sqlite3`` loop, only the
writes each design commits for one 5-step saga run sequentially (WAL,
``synchronous=NORMAL``, as the store uses):

- **hand-written**: one ``INSERT`` + ``COMMIT`` per completed step (5 commits, one
  row each, one table; a crash inside a step leaves no trace of it);
- **sagakit log**: the statements ``SQLiteStore`` writes (imported from it): 6
  commits, as every step's start is durable before the step acts;
- **append-only log**: a prototype of the alternative format — the same 6 commits,
  but each step transition and event is one appended row of one table (one page per
  commit), the saga row written at start and end only, and the per-saga index built
  in batches (every 256 commits) instead of row by row.

It prints µs per saga and the rate ratio against the hand-written loop (higher is
better). The ratio of a format here bounds what sagakit on that format could reach in
``bench_sqlite.py``'s sequential case, where sagakit's Python comes on top.

    python benchmarks/sqlite_log_formats.py [--sagas 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable

from sagakit.stores._sqlite_schema import _SCHEMA
from sagakit.stores._sqlite_sql import END_STEP, FINISHED, INSERT_EVENT, INSERT_SAGA, UPSERT_STEP

STEPS = 5

_APPEND_ONLY_SCHEMA = """
CREATE TABLE sagas (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, explicit INTEGER NOT NULL,
    factory INTEGER NOT NULL, policy TEXT NOT NULL, fingerprint TEXT, arguments TEXT NOT NULL,
    owner TEXT, total_steps INTEGER, steps_executed INTEGER NOT NULL DEFAULT 0, error TEXT,
    started_at REAL NOT NULL, updated_at REAL NOT NULL, finished_at REAL
) WITHOUT ROWID;
CREATE INDEX sagas_active ON sagas (started_at) WHERE finished_at IS NULL;
CREATE INDEX sagas_finished ON sagas (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE log (
    position INTEGER PRIMARY KEY, saga_id TEXT NOT NULL, kind INTEGER NOT NULL, idx INTEGER,
    name TEXT, attempts INTEGER, at REAL, duration REAL, error TEXT, data TEXT
);
CREATE TABLE log_by_saga (saga_id TEXT, position INTEGER, PRIMARY KEY (saga_id, position))
    WITHOUT ROWID;
CREATE TABLE indexed (upto INTEGER NOT NULL);
INSERT INTO indexed VALUES (0)
"""
_APPEND = (
    "INSERT INTO log (saga_id, kind, idx, name, attempts, at, duration, error, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SAGA_ROW = (
    "INSERT INTO sagas (id, name, status, explicit, factory, policy, fingerprint, arguments, "
    "owner, total_steps, started_at, updated_at) "
    "VALUES (?, ?, 'executing', 0, 1, 'compensate', 'abcd', '[[1],{}]', 'owner', NULL, ?, ?)"
)
_SAGA_END = (
    "UPDATE sagas SET status = 'completed', steps_executed = ?, finished_at = ?, updated_at = ? "
    "WHERE id = ?"
)
_INDEX_BATCH = (
    "INSERT INTO log_by_saga SELECT saga_id, position FROM log "
    "WHERE position > (SELECT upto FROM indexed)"
)
_INDEXED_UPTO = "UPDATE indexed SET upto = (SELECT max(position) FROM log)"
INDEX_EVERY = 256


def _open(path: str, schema: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    for statement in schema.split(";"):
        if statement.strip():
            conn.execute(statement)
    return conn


def _commit(conn: sqlite3.Connection, statements: list[tuple[str, tuple[object, ...]]]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    for sql, params in statements:
        conn.execute(sql, params)
    conn.execute("COMMIT")


def hand_written(conn: sqlite3.Connection, sagas: int) -> None:
    conn.execute("CREATE TABLE log (saga_id TEXT, step INTEGER, result TEXT, at REAL)")
    for order in range(sagas):
        for index in range(STEPS):
            result = json.dumps({"step": index, "order": order})
            _commit(
                conn,
                [
                    (
                        "INSERT INTO log VALUES (?, ?, ?, ?)",
                        (f"saga-{order}", index, result, time.time()),
                    )
                ],
            )


def sagakit_log(conn: sqlite3.Connection, sagas: int) -> None:
    prefix = os.urandom(10).hex()
    for order in range(sagas):
        saga_id, now = f"{prefix}-{order}", time.time()
        pending: list[tuple[str, tuple[object, ...]]] = [
            (
                INSERT_SAGA,
                (
                    saga_id,
                    "five_steps",
                    0,
                    1,
                    "compensate",
                    "abcd",
                    "[[1],{}]",
                    "owner",
                    None,
                    now,
                    now,
                ),
            )
        ]
        for index in range(STEPS):
            pending.append((UPSERT_STEP, (saga_id, 0, index, f"step_{index}", 1, now)))
            _commit(conn, pending)
            result = json.dumps({"step": index, "order": order})
            pending = [
                (END_STEP, ("completed", 1, 0.001, None, result, saga_id, 0, index)),
                (INSERT_EVENT, (saga_id, "five_steps", index, f"step_{index}", 0, result, now)),
            ]
        pending.append((FINISHED, ("completed", None, STEPS, STEPS, now, now, saga_id)))
        _commit(conn, pending)


def append_only_log(conn: sqlite3.Connection, sagas: int) -> None:
    prefix = os.urandom(10).hex()
    commits = 0
    for order in range(sagas):
        saga_id, now = f"{prefix}-{order}", time.time()
        first: list[tuple[str, tuple[object, ...]]] = [
            (_SAGA_ROW, (saga_id, "five_steps", now, now))
        ]
        rows: list[tuple[object, ...]] = []
        for index in range(STEPS):
            rows.append((saga_id, 1, index, f"step_{index}", 1, now, None, None, None))
            conn.execute("BEGIN IMMEDIATE")
            for sql, params in first:
                conn.execute(sql, params)
            first = []
            conn.executemany(_APPEND, rows)
            conn.execute("COMMIT")
            result = json.dumps({"step": index, "order": order})
            rows = [
                (saga_id, 2, index, f"step_{index}", 1, now, 0.001, None, result),
                (saga_id, 3, index, f"step_{index}", None, now, None, None, result),
            ]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_APPEND, rows)
        conn.execute(_SAGA_END, (STEPS, now, now, saga_id))
        conn.execute("COMMIT")
        commits += STEPS + 1
        if commits % INDEX_EVERY < STEPS + 1:
            _commit(conn, [(_INDEX_BATCH, ()), (_INDEXED_UPTO, ())])


FORMATS: dict[str, tuple[str, Callable[[sqlite3.Connection, int], None]]] = {
    "hand-written (5 commits)": ("", hand_written),
    "sagakit log (6 commits)": (_SCHEMA, sagakit_log),
    "append-only log (6 commits)": (_APPEND_ONLY_SCHEMA, append_only_log),
}


def main(sagas: int, rounds: int) -> None:
    best = {name: float("inf") for name in FORMATS}
    with tempfile.TemporaryDirectory() as directory:
        for round_no in range(rounds):  # round-robin: a burst of load hits all alike
            for position, (name, (schema, replay)) in enumerate(FORMATS.items()):
                conn = _open(os.path.join(directory, f"r{round_no}f{position}.db"), schema)
                started = time.perf_counter()
                replay(conn, sagas)
                elapsed = (time.perf_counter() - started) / sagas * 1e6
                conn.close()
                best[name] = min(best[name], elapsed)
    hand = best["hand-written (5 commits)"]
    print(f"SQL only, {STEPS}-step saga, {sagas} sagas sequentially, best of {rounds} rounds")
    for name, micros in best.items():
        print(f"{name:<30} {micros:7.1f} µs/saga   rate ratio {hand / micros:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sagas", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    main(options.sagas, options.rounds)
