"""Store options that name one of a few values take them in any case, as
``list_sagas(status=...)`` and the CLI do: ``SQLiteStore(synchronous="full")`` was refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from sagakit import SagaOrchestrator, SQLiteStore, StoreConfigError, saga, step


@step
async def oc_act(n: int) -> int:
    return n


@saga
def oc_saga(n: int):  # type: ignore[no-untyped-def]
    yield oc_act(n)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("given", "used"),
    [("full", "FULL"), ("Full", "FULL"), ("normal", "NORMAL"), ("NORMAL", "NORMAL")],
)
async def test_sqlite_synchronous_takes_any_case(tmp_path: Path, given: str, used: str) -> None:
    store = SQLiteStore(tmp_path / "s.db", synchronous=given)  # type: ignore[arg-type]
    assert store.synchronous == used
    assert repr(store).endswith(f"synchronous={used}>")
    async with SagaOrchestrator(store) as orchestrator:
        assert await orchestrator.execute(oc_saga(1), saga_id="a") == [1]
        conn = store._open_reader()  # opened with the store's pragmas
        try:
            (level,) = conn.execute("PRAGMA synchronous").fetchone()
        finally:
            conn.close()
        # NORMAL commits on the event loop; FULL's fsync waits on the writer thread.
        assert store._writer._inline is (used == "NORMAL")
    assert level == {"NORMAL": 1, "FULL": 2}[used]


@pytest.mark.parametrize("given", ["off", "EXTRA", " full", 2, None, b"FULL"])
def test_sqlite_synchronous_still_refuses_other_values(tmp_path: Path, given: object) -> None:
    with pytest.raises(StoreConfigError, match="synchronous must be 'NORMAL' or 'FULL'"):
        SQLiteStore(tmp_path / "s.db", synchronous=given)  # type: ignore[arg-type]
