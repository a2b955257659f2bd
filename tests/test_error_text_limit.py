"""An error's text is stored up to a limit, as results are: a huge one is cut, saying so.

A step whose exception carried a large payload in its message (a response body, a
validation report of a large input) had all of it written to the log, twice (its step
record and the saga's error), past the store's size limit that bounds every result,
event and argument; and every ``list_sagas()`` read it back. The text kept is
:data:`sagakit._runs.MAX_ERROR_TEXT` characters, then how many more there were.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sagakit import (
    CompensationFailed,
    MemoryStore,
    Retry,
    SagaDefinition,
    SagaOrchestrator,
    StepFailed,
    saga,
    step,
)
from sagakit._runs import MAX_ERROR_TEXT

pytestmark = pytest.mark.asyncio

HUGE = 5 * MAX_ERROR_TEXT


@step
async def et_fetch() -> None:
    raise ValueError("payload " + "x" * HUGE)


@saga(name="error_text_limit.fetch")
def fetch() -> Any:
    yield et_fetch()


def _check(text: str | None) -> None:
    assert text is not None
    assert len(text) < MAX_ERROR_TEXT + 100
    assert "ValueError: payload xxx" in text
    assert text.endswith(" more characters)")


async def _run(store: Any) -> None:
    orchestrator = SagaOrchestrator(store)
    try:
        with pytest.raises(StepFailed) as failed:
            await orchestrator.execute(fetch(), saga_id="huge-1")
        assert len(str(failed.value.error)) > HUGE  # the exception raised is left whole
        meta = await orchestrator.get_saga("huge-1")
        assert meta is not None
        _check(meta.error)
        _check(meta.steps[0].error)
        if not isinstance(store, MemoryStore):
            _check((await store.list_sagas())[0].error)
    finally:
        await orchestrator.close()


async def test_a_huge_error_is_stored_cut(durable_store: Callable[..., Any]) -> None:
    await _run(durable_store())


async def test_a_huge_error_is_kept_cut_in_memory_too() -> None:
    await _run(MemoryStore())


async def test_an_error_within_the_limit_is_kept_whole(durable_store: Callable[..., Any]) -> None:
    @step
    async def et_fail() -> None:
        raise ValueError("y" * (MAX_ERROR_TEXT - 1000))

    orchestrator = SagaOrchestrator(durable_store())
    try:
        with pytest.raises(StepFailed):
            await orchestrator.execute(
                SagaDefinition(name="error_text_limit.whole").add_step(et_fail()), saga_id="whole-1"
            )
        meta = await orchestrator.get_saga("whole-1")
        assert meta is not None
        assert meta.steps[0].error == "ValueError: " + "y" * (MAX_ERROR_TEXT - 1000)
    finally:
        await orchestrator.close()


@step
async def et_reserve() -> None:
    pass


@et_reserve.compensate
async def et_release() -> None:
    raise RuntimeError("release " + "z" * HUGE)


@saga(name="error_text_limit.reserve_then_fetch")
def reserve_then_fetch() -> Any:
    yield et_reserve()
    yield et_fetch()


async def test_a_huge_compensation_failure_is_stored_cut(
    durable_store: Callable[..., Any],
) -> None:
    orchestrator = SagaOrchestrator(durable_store(), compensation_retry=Retry(attempts=1))
    try:
        with pytest.raises(CompensationFailed):
            await orchestrator.execute(reserve_then_fetch(), saga_id="huge-2")
        meta = await orchestrator.get_saga("huge-2")
        assert meta is not None
        assert meta.error is not None
        assert meta.error.startswith("compensation of step 0 ('et_reserve') failed: RuntimeError")
        assert meta.error.endswith(" more characters)")
        assert len(meta.error) < MAX_ERROR_TEXT + 100
        assert meta.compensations[0].error is not None
        assert meta.compensations[0].error.endswith(" more characters)")
    finally:
        await orchestrator.close()


async def test_an_error_without_a_message_is_named_without_a_dangling_colon(
    durable_store: Callable[..., Any],
) -> None:
    @step
    async def et_bare() -> None:
        raise LookupError

    orchestrator = SagaOrchestrator(durable_store())
    try:
        with pytest.raises(StepFailed) as raised:
            await orchestrator.execute(
                SagaDefinition(name="error_text_limit.bare").add_step(et_bare()), saga_id="bare-1"
            )
        meta = await orchestrator.get_saga("bare-1")
        assert meta is not None
        assert meta.steps[0].error == "LookupError"
        assert meta.error is not None
        assert meta.error.endswith("LookupError")
        assert "LookupError:" not in str(raised.value)
    finally:
        await orchestrator.close()


async def test_an_error_text_of_exactly_the_limit_is_kept_whole() -> None:
    message = "x" * (MAX_ERROR_TEXT - len("ValueError: "))

    @step
    async def at_limit() -> None:
        raise ValueError(message)

    orchestrator = SagaOrchestrator()
    with pytest.raises(StepFailed):
        await orchestrator.execute(SagaDefinition("exact-1", steps=[at_limit()]))
    meta = await orchestrator.get_saga("exact-1")
    assert meta is not None
    assert meta.steps[0].error == f"ValueError: {message}"
