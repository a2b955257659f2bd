"""A value a generator saga returns is not what ``execute()`` returns (its events are):
sagakit says so with a :class:`~sagakit.ReturnValueIgnored` warning, once per saga."""

from __future__ import annotations

import warnings
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import pytest

from sagakit import ReturnValueIgnored, SagaOrchestrator, StepCall, saga, step


@step
async def returned_reserve(key: str) -> str:
    return f"reserved {key}"


@saga(name="returned_value_saga")
def returned_value_saga(key: str) -> Generator[StepCall[Any], Any, str]:
    yield returned_reserve(key)
    return f"{key}"


@saga(name="returned_nothing_saga")
def returned_nothing_saga(key: str) -> Generator[StepCall[Any], Any, None]:
    yield returned_reserve(key)


@contextmanager
def _recorded(action: Literal["default", "always"]) -> Iterator[list[warnings.WarningMessage]]:
    """The warnings given in the block, filtered by ``action`` ("default": once a place)."""
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter(action)
        yield said


@pytest.mark.asyncio
async def test_a_value_returned_from_a_generator_saga_is_said_to_be_ignored() -> None:
    # Regression: `return key` at the end of a generator saga was dropped without a word;
    # execute() returns the events.
    orchestrator = SagaOrchestrator()
    with pytest.warns(ReturnValueIgnored) as said:
        events = await orchestrator.execute(returned_value_saga("k"))
    assert events == ["reserved k"]
    (warning,) = said
    assert isinstance(warning.message, UserWarning)
    text = str(warning.message)
    assert "saga 'returned_value_saga' returned a str from its generator" in text
    assert "return the result from a step" in text
    # Pointed at the saga's own code, not at sagakit's.
    assert warning.filename == __file__
    assert warning.lineno == returned_value_saga.__wrapped__.__code__.co_firstlineno
    await orchestrator.close()


@pytest.mark.asyncio
async def test_the_warning_is_given_once_per_saga() -> None:
    orchestrator = SagaOrchestrator()
    with _recorded("default") as said:
        for key in ("a", "b", "c"):  # another value each run: still one warning
            await orchestrator.execute(returned_value_saga(key))
    assert [type(w.message) for w in said] == [ReturnValueIgnored]
    await orchestrator.close()


@pytest.mark.asyncio
async def test_a_saga_returning_nothing_is_not_warned_about() -> None:
    orchestrator = SagaOrchestrator()
    with _recorded("always") as said:
        await orchestrator.execute(returned_nothing_saga("k"))
    assert said == []
    await orchestrator.close()


@pytest.mark.asyncio
async def test_as_an_error_it_is_raised_after_the_saga_completed_undoing_nothing() -> None:
    undone: list[str] = []

    @step
    async def returned_hold(key: str) -> str:
        return key

    @returned_hold.compensate
    async def returned_release(key: str) -> None:
        undone.append(key)

    @saga(name="returned_error_saga")
    def returned_error_saga(key: str) -> Generator[StepCall[Any], Any, str]:
        yield returned_hold(key)
        return key

    orchestrator = SagaOrchestrator()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReturnValueIgnored)
        with pytest.raises(ReturnValueIgnored):
            await orchestrator.execute(returned_error_saga("k"), saga_id="r-1")
    assert undone == []  # a warning never undoes the steps the saga completed
    record = await orchestrator.get_saga("r-1")
    assert record is not None
    assert record.status == "completed"
    await orchestrator.close()
