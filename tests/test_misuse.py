"""Bad input found before anything runs: clear, typed errors."""

from __future__ import annotations

import asyncio

import pytest

from sagakit import MemoryStore, SagaDefinitionError, SagaOrchestrator, StepTimeout, step


async def _noop(x: int) -> int:
    return x


def test_function_and_options_together_is_refused_even_with_default_values() -> None:
    with pytest.raises(SagaDefinitionError, match="either a function or options"):
        step(_noop, timeout=30)  # type: ignore[call-overload]


def test_unknown_step_option_names_the_known_ones() -> None:
    with pytest.raises(SagaDefinitionError, match=r"unknown option.*timout.*timeout"):
        step(timout=5)  # type: ignore[call-overload]


@pytest.mark.parametrize("listeners", [print, None, 5])
def test_one_listener_instead_of_a_list_is_refused(listeners: object) -> None:
    # Regression: listeners=recorder (one listener) failed with "TypeError: 'SagaRecorder'
    # object is not iterable", naming neither the argument nor the fix.
    with pytest.raises(SagaDefinitionError, match=r"listeners must be a list .*listeners=\["):
        SagaOrchestrator(listeners=listeners)  # type: ignore[arg-type]


def test_history_limit_with_an_explicit_store_is_refused() -> None:
    with pytest.raises(SagaDefinitionError, match=r"MemoryStore\(history_limit=100\)"):
        SagaOrchestrator(MemoryStore(), history_limit=5)


@pytest.mark.parametrize("option", ["continue_on_compensation_failure", "recover_on_start"])
@pytest.mark.parametrize("value", ["no", "false", 0, 1, None])
def test_a_yes_or_no_orchestrator_option_must_be_a_bool(option: str, value: object) -> None:
    # bool("false") is True: such a value silently turned the option on.
    with pytest.raises(SagaDefinitionError, match=f"{option} must be True or False"):
        SagaOrchestrator(**{option: value})  # type: ignore[arg-type]


@pytest.mark.asyncio
@pytest.mark.parametrize("limit", [-1, 1.5, True])
async def test_get_history_with_a_bad_limit_is_refused(limit: object) -> None:
    with pytest.raises(SagaDefinitionError, match="limit"):
        await SagaOrchestrator().get_history(limit)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_step_awaited_alone_reports_its_name_without_an_index() -> None:
    @step(timeout=0.01)
    async def slow() -> None:
        await asyncio.sleep(1)

    with pytest.raises(StepTimeout) as caught:
        await slow()
    assert caught.value.step_index == -1
    assert str(caught.value).startswith("step 'slow' timed out after")


@pytest.mark.asyncio
@pytest.mark.parametrize("retried", ["step", "compensation"])
async def test_a_sleep_returning_no_awaitable_is_named_when_a_retry_waits(retried: str) -> None:
    # Regression: sleep=lambda seconds: None ("do not wait" in a test) failed at the first
    # retry with a bare "TypeError: object NoneType can't be used in 'await' expression"
    # from execute(), naming neither the option nor the fix.
    from sagakit import Retry, SagaDefinition

    @step(retry=Retry(attempts=2), compensation_retry=Retry(attempts=2))
    async def flaky() -> None:
        if retried == "step":
            raise ConnectionError("try again")

    @flaky.compensate
    async def undo() -> None:
        raise ConnectionError("try again")

    @step
    async def fail() -> None:
        raise ValueError("no")

    orchestrator = SagaOrchestrator(sleep=lambda seconds: None)
    with pytest.raises(SagaDefinitionError, match=r"sleep=\.\.\.\) must return an awaitable"):
        await orchestrator.execute(SagaDefinition(steps=[flaky(), fail()]))


class _AsyncCallable:
    async def __call__(self, item: str) -> str:
        return item


def test_an_object_with_an_async_call_is_told_to_wrap_it_in_a_function() -> None:
    # It said only "is not a coroutine function; declare it with 'async def'", which its
    # async __call__ already is.
    fix = "object with an async __call__: declare a function that awaits it"
    with pytest.raises(SagaDefinitionError, match=fix):
        step(_AsyncCallable())

    @step
    async def ship(item: str) -> str:
        return item

    with pytest.raises(SagaDefinitionError, match=fix):
        ship.compensate(_AsyncCallable())
    with pytest.raises(SagaDefinitionError, match="declare it with 'async def'"):
        step(lambda item: item)
