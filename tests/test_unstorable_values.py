"""A result or event no durable log can store is named alike by every durable store.

Regression: SQLite named the step by index and name ("the result of step 1 ('gen')"),
PostgreSQL by name only ("the result of step 'gen'"), and an event's failure by name alone
on both, worded differently ("an event of step 'gen'", "an event of 'gen'"). Both now
name the record as the messages reading a log back do, from one place
(``stores._records.record_name``), and keep the serializer's fix after it. (A
``MemoryStore`` keeps the objects themselves: nothing is serialized, so nothing fails.)

A compensation's record was named "compensation 0 ('take')", which reads as the first
compensation rather than the one undoing step 0: it is "the compensation of step 0
('take')", as a compensation's other errors name it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sagakit import (
    Codec,
    JsonSerializer,
    SagaOrchestrator,
    SagaStatus,
    SerializationError,
    StepFailed,
    StepStatus,
    saga,
    step,
)

pytestmark = pytest.mark.asyncio

# The serializer's own text: what is wrong and how to fix it.
FIX = (
    "objects cannot be stored as JSON; make it a dataclass, register a codec with "
    "sagakit.register_codec(), or pass plain data"
)


class Opaque:
    """A class no serializer knows."""


class Once:
    """Encoded by its codec once only (a value its first encoding consumes): the second
    encoding, the event's after the result's, fails."""

    def __init__(self) -> None:
        self.encoded = False

    def encode(self) -> str:
        if self.encoded:
            raise ValueError("already encoded once")
        self.encoded = True
        return "once"


ONCE = Codec(Once, "unstorable_values.once", Once.encode, lambda _: Once())


@step
async def unstorable_take(n: int) -> int:
    return n


@unstorable_take.compensate
async def unstorable_untake(result: int, n: int) -> Opaque:
    return Opaque()  # the undo happened; its receipt cannot be stored


@step
async def unstorable_gen(n: int) -> Opaque:
    return Opaque()


@step
async def unstorable_pair(n: int) -> list[Any]:
    return [n, Once()]


@saga(name="unstorable_values.result")
def unstorable_result(n: int):  # type: ignore[no-untyped-def]
    yield unstorable_take(n)
    yield unstorable_gen(n)


@saga(name="unstorable_values.event")
def unstorable_event(n: int):  # type: ignore[no-untyped-def]
    yield unstorable_take(n)
    yield unstorable_pair(n)


async def test_an_unstorable_result_names_the_step_by_index_and_name(
    durable_store: Callable[..., Any],
) -> None:
    async with SagaOrchestrator(durable_store()) as orchestrator:
        with pytest.raises(StepFailed) as caught:
            await orchestrator.execute(unstorable_result(1), saga_id="result")
        meta = await orchestrator.get_saga("result")
    cause = caught.value.__cause__
    assert isinstance(cause, SerializationError)
    assert str(cause).startswith(
        f"cannot store the result of step 1 ('unstorable_gen'): {__name__}.Opaque {FIX}"
    ), cause
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    # The compensation ran, so it is recorded as done, its unstored result named alike.
    (undo,) = meta.compensations
    assert undo.status is StepStatus.COMPLETED
    assert undo.error is not None
    assert undo.error.startswith(
        "result not stored: cannot store the result of the compensation of step 0 "
        "('unstorable_take'): "
        f"{__name__}.Opaque {FIX}"
    ), undo.error


async def test_an_unstorable_event_names_the_step_by_index_and_name(
    durable_store: Callable[..., Any],
) -> None:
    store = durable_store(serializer=JsonSerializer(codecs=[ONCE]))
    async with SagaOrchestrator(store) as orchestrator:
        with pytest.raises(StepFailed) as caught:
            await orchestrator.execute(unstorable_event(1), saga_id="event")
    cause = caught.value.__cause__
    assert isinstance(cause, SerializationError)
    assert str(cause) == (
        "cannot store an event of step 1 ('unstorable_pair'): already encoded once"
    ), cause
