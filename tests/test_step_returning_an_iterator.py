"""A step or compensation returning an iterator (a generator, ``map(...)``) instead of a
list of its events fails clearly, in every store, as a forgotten ``await`` does."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from misuse_helpers.wrong_results import (
    STORES,
    run_a_wrong_compensation,
    run_a_wrong_step,
    store_of,
)
from sagakit import step

undone: list[str] = []


@step
async def it_reserve(item: str) -> list[str]:
    return [f"reserved {item}"]


@it_reserve.compensate
async def it_release(item: str) -> list[str]:
    undone.append(item)
    return [f"released {item}"]


@step
async def it_generator(item: str) -> Iterator[str]:
    return (f"charged {part}" for part in item)  # the mistake: not list(...)


@step
async def it_map(item: str) -> Iterator[str]:
    return map(str.upper, [item])


async def _parts(item: str) -> AsyncIterator[str]:
    yield item


@step
async def it_async_generator(item: str) -> AsyncIterator[str]:
    return _parts(item)


@step
async def it_ship(item: str) -> list[str]:
    return [f"shipped {item}"]


@it_ship.compensate
async def it_unship(item: str) -> Iterator[str]:
    return iter([f"unshipped {item}"])


@step
async def it_fail(item: str) -> None:
    raise LookupError(item)


# Each step above that returns an iterator, and what the error calls it.
ITERATORS = [
    (it_generator, "a generator"),
    (it_map, "a map"),
    (it_async_generator, "an async_generator"),
]


@pytest.fixture(autouse=True)
def _clear() -> None:
    undone.clear()


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return store_of(request.param, tmp_path)


@pytest.mark.asyncio
@pytest.mark.parametrize(("bad", "what"), ITERATORS)
async def test_a_step_returning_an_iterator_fails_and_earlier_steps_are_undone(
    store: Any, bad: Any, what: str
) -> None:
    # Regression: the in-memory store kept the iterator itself as the step's one event
    # (read once, by whoever iterated the events first), while a durable store failed
    # the step as an unstorable result: a saga that passed its tests failed in production.
    message, metadata = await run_a_wrong_step(
        store,
        it_reserve("x"),
        bad("x"),
        "iter",
        events=("reserved x",),  # the iterator is none
    )
    assert f"step 1 ({bad.name!r}) returned {what} instead of its events" in message
    assert "list(...)" in message
    assert undone == ["x"]
    assert metadata.steps[1].events == ()


@pytest.mark.asyncio
async def test_a_compensation_returning_an_iterator_fails_that_compensation(store: Any) -> None:
    steps = [it_reserve("x"), it_ship("x"), it_fail("x")]
    failure, metadata = await run_a_wrong_compensation(store, steps, "undo", ["released x"])
    assert "the compensation of step 1 ('it_ship') returned a list_iterator" in str(failure)
    assert undone == ["x"]  # the compensation after it still ran
    assert metadata.compensations[0].events == ()
