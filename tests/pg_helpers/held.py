"""Test helpers for PostgreSQL: a store whose lease release or writes are held back,
so a test can cut a run's ``finish()`` (or ``record()``) while they are on their way."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import pytest

from pg_helpers.db import query
from sagakit import SagaOrchestrator
from sagakit._runs import SagaRun

if TYPE_CHECKING:
    from sagakit import PostgresStore
    from sagakit.stores._pg_writer import Write


async def begun(store: PostgresStore, saga_id: str, saga_call: Any, given: bool = True) -> SagaRun:
    """A run of ``saga_call`` (a called @saga) begun in ``store`` under ``saga_id``
    (``given=False``: a generated id, whose row goes with its first write)."""
    run = SagaRun(saga_id, saga_call, given, 0.0, SagaOrchestrator()._ref)
    assert await store.begin(run) is None
    return run


def hold_release(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold the store's release of one saga's lease: ``releasing`` is set once it is on
    its way, and it goes on (to the database) once ``gate`` is set."""
    releasing, gate = asyncio.Event(), asyncio.Event()
    original = store._run

    async def gated(sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        if sql == store._sql.release_one:
            releasing.set()
            await gate.wait()
        return await original(sql, params)

    monkeypatch.setattr(store, "_run", gated)
    return releasing, gate


def hold_sends(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> tuple[asyncio.Event, asyncio.Event, list[dict[str, str]]]:
    """Hold the store's writes: ``sending`` is set once one is on its way, and it is sent
    once ``gate`` is set, its answer appended to ``late``."""
    send = store._writer._send
    sending, gate = asyncio.Event(), asyncio.Event()
    late: list[dict[str, str]] = []

    async def held(writes: list[Write]) -> dict[str, str]:
        sending.set()
        await gate.wait()
        late.append(await send(writes))
        return late[-1]

    monkeypatch.setattr(store._writer, "_send", held)
    return sending, gate, late


def given_up(dsn: str, schema: str, saga_id: str) -> list[tuple[Any, ...]]:
    """The saga's row as ``[(owner, lease over)]``: ``[(None, True)]`` once given up."""
    return query(
        dsn,
        f'SELECT owner, lease_until <= now() FROM "{schema}".sagas WHERE saga_id = %s',
        (saga_id,),
    )


def still_leased(
    dsn: str, schema: str, store: PostgresStore, saga_id: str
) -> list[tuple[Any, ...]]:
    """``[(True, True)]`` while ``store`` holds the saga's lease and it has not run out."""
    return query(
        dsn,
        f'SELECT owner = %s, lease_until > now() FROM "{schema}".sagas WHERE saga_id = %s',
        (store.owner, saga_id),
    )


async def cut(call: Awaitable[Any], when: asyncio.Event) -> None:
    """Run ``call`` as a task until ``when`` is set, then cancel it: it raises the
    cancellation."""
    task = asyncio.ensure_future(call)
    await when.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def sent_late(
    store: PostgresStore, gate: asyncio.Event, late: list[dict[str, str]]
) -> list[dict[str, str]]:
    """Let the writes :func:`hold_sends` held go (late), and their answers once the
    store's writer is closed."""
    gate.set()
    await store._writer.close()
    return late
