"""A saga id given as a ``str`` subclass (a ``(str, Enum)`` member, a ``StrEnum``) is the
plain text it holds, everywhere: in the step's idempotency key, the metadata and the log.

Python 3.11 formats a ``(str, Enum)`` member as ``"Key.ORDER"``, not as its value: the
step's idempotency key was ``"Key.ORDER:0"`` in the run, while the log stored the value, so
recovery after a crash sent the service ``"order-1:0"`` for the same step (which then acted
twice), and the in-memory store kept the member itself as the saga's id."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

import pytest

from sagakit import MemoryStore, SagaDefinition, SagaOrchestrator, SQLiteStore, current_step, step

KEYS: list[str] = []


class Key(str, enum.Enum):  # noqa: UP042 (its format() is "Key.ORDER", a StrEnum's is not)
    ORDER = "order-1"


class Text(str):
    def __str__(self) -> str:
        return "not the id"


@step
async def remember() -> str:
    ctx = current_step()
    assert ctx is not None
    KEYS.append(ctx.idempotency_key)
    return ctx.saga_id


@pytest.fixture(autouse=True)
def _reset() -> None:
    KEYS.clear()


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("given", ["execute", "with_id", "builder"])
@pytest.mark.parametrize("saga_id", [Key.ORDER, Text("order-1")], ids=["enum", "subclass"])
async def test_a_str_subclass_id_is_its_text(
    kind: str, given: str, saga_id: str, tmp_path: Path
) -> None:
    store: Any = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "ids.db")
    async with SagaOrchestrator(store) as orchestrator:
        if given == "execute":
            events = await orchestrator.execute(
                SagaDefinition("ids").add_step(remember()), saga_id=saga_id
            )
        elif given == "with_id":
            events = await orchestrator.execute(
                SagaDefinition("ids").add_step(remember()).with_id(saga_id)
            )
        else:
            events = await orchestrator.execute(
                SagaDefinition(saga_id, name="ids").add_step(remember())
            )
        # The key recovery would send, from the id the log holds, is the one the run sent.
        assert KEYS == ["order-1:0"]
        assert events == ["order-1"]
        assert type(events[0]) is str
        meta = await orchestrator.get_saga("order-1")
        assert meta is not None
        assert type(meta.id) is str
        assert meta.id == "order-1"
        # Executed again (by the member or the text), it is the same id: nothing runs.
        assert await orchestrator.execute(
            SagaDefinition("ids").add_step(remember()), saga_id="order-1"
        ) in (events, ["order-1"])
        assert KEYS == ["order-1:0"]
    if kind == "sqlite":
        await store.close()
