"""Test helpers for PostgreSQL: the DSN, throwaway schemas, worker processes, polling."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from sagakit import PostgresStore

ENV = "SAGAKIT_TEST_POSTGRES_DSN"
WORKER = Path(__file__).with_name("worker.py")
GIVE_UP = 60.0  # seconds before a wait is declared hung (a guard, not a measurement)


def dsn_or_skip() -> str:
    dsn = os.environ.get(ENV)
    if not dsn:
        pytest.skip(f"PostgreSQL tests need {ENV} (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    return dsn


def fresh_schema(dsn: str) -> Iterator[str]:
    """A new random schema holding an ``effects`` table; dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    schema = "sk_test_" + uuid.uuid4().hex[:12]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(
            f'CREATE TABLE "{schema}".effects (saga_id text NOT NULL, step_index int NOT NULL, '
            "kind text NOT NULL, worker text NOT NULL, at timestamptz NOT NULL DEFAULT now())"
        )
    try:
        yield schema
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def query(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description is not None else []


def wait_until(check: Callable[[], Any], what: str, timeout: float = GIVE_UP) -> Any:
    """Poll ``check`` until it returns something truthy; fail the test if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


class Worker:
    """A ``worker.py`` child process with its stdout read line by line."""

    def __init__(self, dsn: str, schema: str, name: str, **config: Any) -> None:
        self.name = name
        config = {"dsn": dsn, "schema": schema, "name": name, **config}
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._drain_err, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _pump(stream: Any, into: queue.Queue[str]) -> None:
        for line in stream:
            into.put(line.rstrip("\n"))

    def _drain_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def wait_for(self, prefix: str, timeout: float = GIVE_UP) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(
                    f"worker {self.name} never printed {prefix!r}; stderr:\n{''.join(self.stderr)}"
                )
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def outcomes(self) -> list[dict[str, Any]]:
        """Every JSON outcome line, once the process printed STOPPED."""
        self.wait_for("STOPPED")
        return [json.loads(line) for line in self.seen if line.startswith("{")]

    def exit_code(self, timeout: float = GIVE_UP) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """Kill the process if still running and close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for thread in self._threads:
            thread.join(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@asynccontextmanager
async def opened(dsn: str, schema: str, **options: Any) -> AsyncIterator[PostgresStore]:
    """An open PostgresStore on ``schema``, closed afterwards."""
    from sagakit import PostgresStore

    store = PostgresStore(dsn, schema=schema, **options)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def expire(dsn: str, schema: str, saga_id: str) -> None:
    """Make a lease run out now (as if its worker stopped heartbeating long ago)."""
    query(
        dsn,
        f"UPDATE \"{schema}\".sagas SET lease_until = now() - interval '1 second' "
        "WHERE saga_id = %s RETURNING 1",
        (saga_id,),
    )
