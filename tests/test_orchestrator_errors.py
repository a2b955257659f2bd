"""Issue 2, point 5: the error hierarchy, what run errors carry, and that they survive pickling."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
from typing import Any

import pytest

import sagakit
from sagakit import (
    CompensationAlreadySetError,
    CompensationFailed,
    Retry,
    SagaAlreadyExecuting,
    SagaAlreadyFailed,
    SagaDefinition,
    SagaDefinitionError,
    SagaError,
    SagaOrchestrator,
    SagaRunError,
    StepFailed,
    StepTimeout,
    step,
)
from sagakit._runs import describe_error
from sagakit.testing import FaultInjector


def test_every_error_is_exported_and_derives_from_saga_error() -> None:
    errors = [
        getattr(sagakit, name)
        for name in sagakit.__all__
        if isinstance(getattr(sagakit, name), type)
        and issubclass(getattr(sagakit, name), BaseException)
        and not issubclass(getattr(sagakit, name), Warning)
    ]
    assert {e.__name__ for e in errors} >= {
        "SagaError",
        "SagaDefinitionError",
        "CompensationAlreadySetError",
        "StepFailed",
        "StepTimeout",
        "CompensationFailed",
        "SagaAlreadyExecuting",
        "SagaAlreadyFailed",
    }
    assert all(issubclass(e, SagaError) for e in errors)
    # Its warnings are warnings, not errors: filtered as UserWarnings.
    warned = [
        getattr(sagakit, name)
        for name in sagakit.__all__
        if isinstance(getattr(sagakit, name), type) and issubclass(getattr(sagakit, name), Warning)
    ]
    assert [w.__name__ for w in warned] == ["ReturnValueIgnored"]
    assert all(issubclass(w, UserWarning) for w in warned)
    assert sagakit.__all__ == sorted(sagakit.__all__, key=lambda n: (not n.isupper(), n))


def test_definition_errors_are_type_errors_and_run_errors_are_not() -> None:
    assert issubclass(SagaDefinitionError, TypeError)
    assert issubclass(CompensationAlreadySetError, SagaDefinitionError)
    for run_error in (StepFailed, StepTimeout, CompensationFailed):
        assert issubclass(run_error, SagaRunError)
        assert not issubclass(run_error, SagaDefinitionError)
    assert issubclass(StepTimeout, StepFailed)
    assert issubclass(StepTimeout, TimeoutError)


@step
async def charge(order: str) -> str:
    return f"pay-{order}"


@charge.compensate
async def refund(payment: str, order: str) -> str:
    raise ConnectionError(f"cannot refund {payment}")


@step
async def decline(order: str) -> None:
    raise ValueError(f"{order} declined")


async def real_errors() -> list[BaseException]:
    """A StepFailed and a CompensationFailed raised by real runs."""
    orchestrator = SagaOrchestrator(compensation_retry=Retry(attempts=1))
    raised: list[BaseException] = []
    with pytest.raises(StepFailed) as failed:
        await orchestrator.execute(SagaDefinition("e-1").add_step(decline("o-1")))
    raised.append(failed.value)
    definition = SagaDefinition("e-2").add_step(charge("o-2")).add_step(decline("o-2"))
    with pytest.raises(CompensationFailed) as compensation:
        await orchestrator.execute(definition)
    raised.append(compensation.value)
    with pytest.raises(SagaAlreadyFailed) as already:
        await orchestrator.execute(definition)
    raised.append(already.value)
    return raised


def same(a: Any, b: Any) -> bool:
    """Exceptions compare by identity: compare type and message instead."""
    if isinstance(a, BaseException):
        return type(a) is type(b) and str(a) == str(b)
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.asyncio
async def test_errors_raised_by_runs_survive_pickling_with_their_fields() -> None:
    # Regression: CompensationFailed could not be unpickled, SagaAlreadyFailed and
    # SagaAlreadyExecuting came back with a garbled message, and run errors lost
    # their saga id and events.
    raised = await real_errors()
    made = [
        StepTimeout(3, "ship", 1.25, 1.0),
        SagaAlreadyExecuting("busy-1"),
    ]
    for error in [*raised, *made]:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        for field in (
            "saga_id",
            "step_index",
            "step_name",
            "duration",
            "timeout",
            "events",
            "compensation_events",
            "uncompensated",
            "error",
            "trigger",
            "errors",
        ):
            if hasattr(error, field):
                assert same(getattr(copy, field), getattr(error, field)), (error, field)

    failed, compensation, already = raised
    assert isinstance(compensation, CompensationFailed)
    assert compensation.saga_id == "e-2"
    assert compensation.events == ["pay-o-2"]
    assert compensation.uncompensated == ("charge",)
    assert isinstance(already, SagaAlreadyFailed)
    assert already.saga_id == "e-2"
    assert isinstance(failed, StepFailed)
    assert failed.saga_id == "e-1"


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("cannot print myself")


@step
async def raises_unprintable() -> None:
    raise Unprintable()


@step
async def raises_multiline() -> None:
    raise ValueError("first line\nforged: saga x completed\r\nthird")


@step
async def undoable_for_errors() -> str:
    return "done"


@undoable_for_errors.compensate
async def undo_unprintably() -> None:
    raise Unprintable()


@pytest.mark.asyncio
async def test_an_exception_whose_str_raises_still_fails_its_step_cleanly() -> None:
    # describe_error() called str() on it: execute() raised that RuntimeError instead of
    # StepFailed, after the step's failure had been half recorded.
    orchestrator = SagaOrchestrator()
    with pytest.raises(StepFailed) as raised:
        await orchestrator.execute(SagaDefinition("u-1").add_step(raises_unprintable()))
    assert isinstance(raised.value.error, Unprintable)
    assert "Unprintable: <str() raised RuntimeError>" in str(raised.value)
    meta = await orchestrator.get_saga("u-1")
    assert meta is not None
    assert meta.steps[0].error == "Unprintable: <str() raised RuntimeError>"

    definition = SagaDefinition("u-2").add_step(undoable_for_errors()).add_step(raises_multiline())
    with pytest.raises(CompensationFailed) as failed:
        await SagaOrchestrator(compensation_retry=Retry(attempts=1)).execute(definition)
    assert "Unprintable: <str() raised RuntimeError>" in str(failed.value)


@pytest.mark.asyncio
async def test_an_error_text_is_one_line() -> None:
    # A message with line breaks was stored and logged as several lines (the docs say
    # one line; a log reader could be fooled by a forged line).
    orchestrator = SagaOrchestrator()
    with pytest.raises(StepFailed):
        await orchestrator.execute(SagaDefinition("m-1").add_step(raises_multiline()))
    meta = await orchestrator.get_saga("m-1")
    assert meta is not None
    assert meta.steps[0].error == "ValueError: first line forged: saga x completed third"
    assert meta.error is not None
    assert "\n" not in meta.error


def test_the_orchestrators_step_failed_is_the_one_its_class_makes() -> None:
    # The orchestrator makes its StepFailed without the classes' __init__ frames: it must
    # be the same object, field for field, as StepFailed(...) makes.
    from sagakit.exceptions import _step_failed

    cause = ValueError("boom")
    made, fast = StepFailed(4, "ship", cause), _step_failed(4, "ship", cause)
    assert type(fast) is StepFailed
    assert fast.args == made.args == ()
    assert vars(fast) == vars(made)
    assert list(vars(fast)) == list(vars(made))  # same order: pickled as the same state
    assert str(fast) == str(made) == "step 4 ('ship') failed: ValueError: boom"
    assert repr(fast) == repr(made)
    copy = pickle.loads(pickle.dumps(fast))
    assert (copy.step_index, copy.step_name, str(copy.error)) == (4, "ship", "boom")
    assert str(copy) == str(made)
    fast.events.append("e")
    assert made.events == []  # lists of its own


async def _run_error(name: str, message: str) -> tuple[str | None, str]:
    async def fails() -> None:
        raise ValueError(message)

    fails.__name__ = "fails"
    failing = step(name=name)(fails)
    orchestrator = SagaOrchestrator()
    with pytest.raises(StepFailed) as raised:
        await orchestrator.execute(SagaDefinition(steps=[failing()]))
    meta = await orchestrator.get_history()
    return meta[-1].error, describe_error(raised.value)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("ship", "boom"),
        ("liefern-ä", "nicht möglich"),
        # (A name with a lone surrogate or a NUL is refused when declared.)
        ("surrogate", "bad byte \udcff in a file name"),
        ("nul", "a NUL \x00 here"),
        ("line\nbreak", "first\nsecond\r\nthird"),
        ("form\x0cfeed", "page\x0cbreak\u2028sep"),
    ],
)
async def test_a_failed_runs_error_is_its_failures_description(name: str, message: str) -> None:
    # The run's error is built from the step error's text instead of describing the
    # StepFailed again: it must be the very text describe_error(failure) gives.
    error, described = await _run_error(name, message)
    assert error == described
    assert error is not None
    assert error.startswith(f"StepFailed: step 0 ({name!r}) failed: ValueError: ")


@step(compensation_timeout=0.01)
async def _reserve(item: str) -> list[str]:
    return [f"reserved {item}"]


@_reserve.compensate
async def _release_slowly(item: str) -> None:
    await asyncio.sleep(10)  # cancelled by its 0.01 s timeout


@step
async def _refuse(item: str) -> None:
    raise LookupError(item)


@pytest.mark.asyncio
@pytest.mark.parametrize("simulated", [False, True])
async def test_a_compensation_timeout_says_it_was_the_compensation(
    simulated: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: its StepTimeout read "step 0 ('_reserve') timed out after ...", in the
    # CompensationFailed message, the compensation's record and the log alike.
    caplog.set_level(logging.WARNING, logger="sagakit")
    orchestrator = SagaOrchestrator(compensation_retry=Retry(attempts=1))
    definition = SagaDefinition(steps=[_reserve("x"), _refuse("x")], saga_id=f"ct-{simulated}")
    with contextlib.ExitStack() as stack:
        if simulated:
            stack.enter_context(FaultInjector().activate()).timeout_compensation(_reserve)
        with pytest.raises(CompensationFailed) as raised:
            await orchestrator.execute(definition)
    timeout = raised.value.error
    assert isinstance(timeout, StepTimeout)
    assert timeout.compensation
    assert (timeout.step_index, timeout.step_name, timeout.timeout) == (0, "_reserve", 0.01)
    said = "compensation of step 0 ('_reserve') timed out after"
    assert str(timeout).startswith(said)
    assert str(timeout.error) == "compensation exceeded its 0.01 s timeout"
    assert f"failed: StepTimeout: {said}" in str(raised.value)
    metadata = await orchestrator.get_saga(definition.saga_id or "")
    assert metadata is not None
    assert metadata.compensations[0].error is not None
    assert metadata.compensations[0].error.startswith(f"StepTimeout: {said}")
    assert any(said in record.getMessage() for record in caplog.records)
    copied = pickle.loads(pickle.dumps(timeout))
    assert copied.compensation
    assert str(copied) == str(timeout)
    assert (copied.duration, copied.timeout) == (timeout.duration, timeout.timeout)


def test_a_step_timeout_is_not_a_compensation_one() -> None:
    timeout = StepTimeout(1, "ship", 2.0, 2.0)
    assert not timeout.compensation
    assert str(timeout) == "step 1 ('ship') timed out after 2.000 s (timeout 2 s)"
    assert str(timeout.error) == "step exceeded its 2 s timeout"
    assert not pickle.loads(pickle.dumps(timeout)).compensation
