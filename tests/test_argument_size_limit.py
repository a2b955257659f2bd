"""A saga's arguments are held to the serializer's size limit as one value, on every store.

SQLite stores the positional and keyword arguments as one value and refused them past
``max_size``; PostgreSQL stores them in two columns and held each to the limit alone, so
arguments refused by SQLite were accepted there, taking up to twice the limit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sagakit import JsonSerializer, SagaOrchestrator, SerializationError, saga, step

pytestmark = pytest.mark.asyncio

ran: list[str] = []


@step
async def asl_note(text: str, *, more: str = "") -> None:
    ran.append(text)


@saga(name="argument_size_limit.note")
def note(text: str, *, more: str = "") -> Any:
    yield asl_note(text, more=more)


async def test_arguments_over_the_limit_together_are_refused_on_every_store(
    durable_store: Callable[..., Any],
) -> None:
    ran.clear()
    orchestrator = SagaOrchestrator(durable_store(serializer=JsonSerializer(max_size=1000)))
    try:
        # Each half within the limit, both together past it.
        with pytest.raises(
            SerializationError,
            match=r"cannot store the arguments of saga 'argument_size_limit.note': "
            r"it takes 1[0-9]{3} bytes, more than the limit of 1000; store an id",
        ):
            await orchestrator.execute(note("x" * 600, more="y" * 600), saga_id="big-1")
        assert ran == []
        assert await orchestrator.get_saga("big-1") is None
        # Within the limit together: stored and run.
        await orchestrator.execute(note("x" * 300, more="y" * 300), saga_id="small-1")
        assert ran == ["x" * 300]
    finally:
        await orchestrator.close()
