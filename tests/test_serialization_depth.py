"""A value nested deeper than the log can read back is refused when written.

Regression: tuples, sets, dataclasses and dicts with non-string keys nested about 400
deep were written (each level took two Python frames to encode) but could not be read
back (three frames to decode), so ``get_saga()``, recovery and the CLI failed on a saga
whose log had been accepted. Every kind of container now stops at ``MAX_DEPTH`` levels
on writing, and whatever is written reads back with frames to spare.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
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
from sagakit._serialization import MAX_DEPTH


@dataclass(frozen=True)
class Link:
    next: Any


class Boxed:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Boxed) and other.inner == self.inner

    def __hash__(self) -> int:
        return hash(self.inner)


SERIALIZER = JsonSerializer(codecs=[Codec(Boxed, "depth.boxed", lambda b: b.inner, Boxed)])

WRAP: dict[str, Callable[[Any], Any]] = {
    "list": lambda v: [v],
    "dict": lambda v: {"k": v},
    "tuple": lambda v: (v,),
    "set": set,  # see nested()
    "frozenset": lambda v: frozenset([v]),
    "dict with int keys": lambda v: {1: v},
    "dict with tuple keys": dict,
    "dataclass": Link,
    "codec": Boxed,
}


def nested(kind: str, levels: int) -> Any:
    """``levels`` levels of ``kind`` around 1; a set or a tuple key only at the top (they
    hold hashable items: frozensets or tuples below)."""
    if kind == "set":
        return {nested("frozenset", levels - 1)}
    if kind == "dict with tuple keys":
        return {nested("tuple", levels - 1): 1}
    value: Any = 1
    for _ in range(levels):
        value = WRAP[kind](value)
    return value


def on_a_deep_stack(frames: int, call: Callable[[], Any]) -> Any:
    return call() if frames <= 0 else on_a_deep_stack(frames - 1, call)


@pytest.mark.parametrize("kind", list(WRAP))
def test_a_value_at_the_depth_limit_reads_back_even_from_a_deep_stack(kind: str) -> None:
    value = nested(kind, MAX_DEPTH)
    text = SERIALIZER.dumps(value)
    # Recovery, the CLI and get_saga() read from under an event loop, a store and maybe a
    # test runner: the limit leaves room for a few hundred frames of them.
    assert on_a_deep_stack(300, lambda: SERIALIZER.loads(text)) == value


@pytest.mark.parametrize("kind", list(WRAP))
def test_a_value_past_the_depth_limit_is_refused_naming_where(kind: str) -> None:
    value = nested(kind, MAX_DEPTH + 2)
    with pytest.raises(SerializationError) as caught:
        SERIALIZER.dumps(value, what="the result of step 1 (deep)")
    message = str(caught.value)
    assert message.startswith("cannot store the result of step 1 (deep): ")
    assert f"nests more than {MAX_DEPTH} levels deep, at " in message
    assert "flatten it, or store an id" in message


def test_the_path_names_the_keys_indexes_and_fields_on_the_way_down() -> None:
    value: Any = 1
    for _ in range(MAX_DEPTH):
        value = [value]
    value = {"orders": Link(value)}
    with pytest.raises(SerializationError) as caught:
        SERIALIZER.dumps(value)
    assert "at ['orders'].next[0][0]...[0][0][0]," in str(caught.value)


def test_a_value_that_contains_itself_names_the_back_reference() -> None:
    looped: dict[str, Any] = {"items": []}
    looped["items"].append((1, looped))
    with pytest.raises(SerializationError, match=re.escape("contains itself")) as caught:
        SERIALIZER.dumps(looped)
    assert "at ['items'][0][1]," in str(caught.value)


# ------------------------------------------------------------------ in a saga


calls: list[str] = []


@step
async def depth_take(n: int) -> int:
    calls.append(f"take {n}")
    return n


@depth_take.compensate
async def depth_give_back(result: int, n: int) -> None:
    calls.append(f"give back {n}")


@step
async def depth_deep(levels: int) -> Any:
    calls.append("deep")
    return nested("tuple", levels)


@saga(name="serialization_depth.deep")
def deep_result(levels: int) -> Any:
    yield depth_take(1)
    yield depth_deep(levels)


@pytest.mark.asyncio
async def test_a_result_too_deep_to_read_back_fails_the_step_and_the_log_stays_readable(
    durable_store: Callable[[], Any],
) -> None:
    calls.clear()
    async with SagaOrchestrator(durable_store()) as orchestrator:
        await orchestrator.execute(deep_result(MAX_DEPTH), saga_id="fits")
        with pytest.raises(StepFailed) as caught:
            await orchestrator.execute(deep_result(400), saga_id="too-deep")
        assert isinstance(caught.value.__cause__, SerializationError)
        assert f"nests more than {MAX_DEPTH} levels deep" in str(caught.value)
        # As for any value that cannot be stored: the step is logged failed, and undone.
        meta = await orchestrator.get_saga("too-deep")
        assert meta is not None
        assert meta.status is SagaStatus.COMPENSATED
        assert [s.status for s in meta.steps] == [StepStatus.COMPLETED, StepStatus.FAILED]
        fits = await orchestrator.get_saga("fits")
        assert fits is not None
        assert fits.status is SagaStatus.COMPLETED
        assert fits.events[-1] == nested("tuple", MAX_DEPTH - 1)  # a tuple's items are events
    assert calls == ["take 1", "deep", "take 1", "deep", "give back 1"]


# A log sagakit did not write (another program, a corruption) may hold a value nested past
# what the reading process can recurse into: loads() let Python's RecursionError out, and
# get_saga() and the CLI failed on it with a traceback rather than showing it raw.
TOO_DEEP_TO_READ = [
    pytest.param("[" * 100_000 + "]" * 100_000, id="json"),
    pytest.param('{"__sk__":"tuple","v":[' * 2_000 + "]}" * 2_000, id="tagged"),
]


@pytest.mark.parametrize("text", TOO_DEEP_TO_READ)
def test_a_stored_value_too_deep_to_read_is_a_serialization_error(text: str) -> None:
    with pytest.raises(SerializationError, match="stored value is nested too deeply to read"):
        JsonSerializer().loads(text)


def test_monitoring_shows_a_value_too_deep_to_read_as_its_text(tmp_path: Any) -> None:
    # (Too deep even for json.loads(), which shows the tagged one as its raw JSON.)
    text = TOO_DEEP_TO_READ[0].values[0]
    import asyncio
    import sqlite3
    from contextlib import closing

    from sagakit import SQLiteStore

    path = str(tmp_path / "sagas.db")

    async def run() -> None:
        async with SagaOrchestrator(SQLiteStore(path)) as orchestrator:
            await orchestrator.execute(deep_result(1), saga_id="corrupt")

    asyncio.run(run())
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "UPDATE sagakit_steps SET result = ? WHERE idx = 1 AND compensation = 0", (text,)
        )

    async def read() -> Any:
        store = SQLiteStore(path)
        try:
            return await store.get("corrupt")
        finally:
            await store.close()

    meta = asyncio.run(read())
    assert meta is not None
    assert meta.steps[1].events == (text,)
