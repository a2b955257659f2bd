"""``SQLiteStore.closed`` and ``PostgresStore.closed``: whether a store holds its
connections, read-only (the pytest plugin asks it of a ``saga_store`` left open)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sagakit import PostgresStore, SagaOrchestrator, SQLiteStore, saga, step


@step
async def cp_step(n: int) -> int:
    return n


@saga
def cp_saga(n: int):  # type: ignore[no-untyped-def]
    yield cp_step(n)


@pytest.mark.asyncio
async def test_a_sqlite_store_is_open_until_closed(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "sagas.db")
    try:
        assert store.closed is False  # its file is open from the start
        assert await SagaOrchestrator(store).execute(cp_saga(1)) == [1]
        assert store.closed is False
    finally:
        await store.close()
    assert store.closed is True
    await store.close()  # again: still closed
    assert store.closed is True
    with pytest.raises(AttributeError):
        store.closed = False  # type: ignore[misc]


@pytest.mark.asyncio
async def test_a_postgres_store_is_closed_until_opened_and_after_close(
    dsn: str, schema: str
) -> None:
    store = PostgresStore(dsn, schema=schema)
    try:
        assert store.closed is True  # no connection until its first use (or open())
        assert await SagaOrchestrator(store).execute(cp_saga(2)) == [2]  # opened on first use
        assert store.closed is False
    finally:
        await store.close()
    assert store.closed is True
    await store.open()  # a PostgresStore opens again when asked
    try:
        assert store.closed is False
    finally:
        await store.close()
    assert store.closed is True
    with pytest.raises(AttributeError):
        store.closed = False  # type: ignore[misc]
