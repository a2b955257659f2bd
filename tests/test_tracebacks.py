"""A saga failing in a test: pytest shows the test's line, the application's code and the
error, not the source of the orchestrator's frames between them (hundreds of lines)."""

from __future__ import annotations

import gc
import os

import pytest

import sagakit
from sagakit import SagaDefinitionError, SagaOrchestrator, StepFailed, saga, step
from sagakit._tracebacks import hide_from_pytest
from sagakit.testing import SimulatedCrash

pytest_plugins = ["pytester"]

FAILING = """
import pytest
from sagakit import SagaOrchestrator, saga, step
from sagakit.testing import FaultInjector

@step
async def reserve(item):
    return item

@reserve.compensate
async def release(item):
    return None

@step
async def ship(item):
    return {}["no carrier for " + item]

@saga
def order(item):
    yield reserve(item)
    yield ship(item)

@pytest.mark.asyncio
async def test_step_error():
    await SagaOrchestrator().execute(order("book"))

@pytest.mark.asyncio
async def test_compensation_failed():
    with FaultInjector().fail_compensation(reserve):
        await SagaOrchestrator().execute(order("book"))
"""


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = strict
        asyncio_default_fixture_loop_scope = function
        """
    )
    pytester.makepyfile(test_failing=FAILING)
    # Collected now, not during the run below: a task an earlier test left pending would
    # be destroyed there, its "Task was destroyed" record (naming _orchestrator.py) in
    # the run's captured log.
    gc.collect()
    result = pytester.runpytest("-p", "no:cacheprovider", *args)
    result.assert_outcomes(failed=2)
    return result


def test_a_failing_saga_shows_the_test_the_step_and_the_error(pytester: pytest.Pytester) -> None:
    result = _run(pytester)
    result.stdout.fnmatch_lines(
        [
            "*_ test_step_error _*",
            '>       return {}["no carrier for " + item]',
            "E       KeyError: 'no carrier for book'",
            "The above exception was the direct cause of the following exception:",
            '>       await SagaOrchestrator().execute(order("book"))',
            "E       sagakit.exceptions.StepFailed: step 1 ('ship') failed: KeyError: *",
            "*_ test_compensation_failed _*",
            '>           await SagaOrchestrator().execute(order("book"))',
            "E           sagakit.exceptions.CompensationFailed: compensation of step 0 *",
        ]
    )
    result.stdout.no_fnmatch_line("*_orchestrator.py*")
    result.stdout.no_fnmatch_line("*def _drive(*")
    assert len(result.outlines) < 150  # was over 800: the orchestrator's source, per frame


def test_full_trace_still_shows_sagakit_frames(pytester: pytest.Pytester) -> None:
    _run(pytester, "--full-trace").stdout.fnmatch_lines(["*sagakit/_orchestrator.py:*"])


def _raised(code: str, filename: str) -> pytest.ExceptionInfo[BaseException]:
    try:
        names = {"SagaDefinitionError": SagaDefinitionError, "SimulatedCrash": SimulatedCrash}
        exec(compile(code, filename, "exec"), names)
    except BaseException as error:  # any error, as pytest would report it
        return pytest.ExceptionInfo.from_exception(error)
    raise AssertionError("the code raised nothing")


def test_only_frames_leading_to_an_error_from_elsewhere_are_hidden() -> None:
    inside = os.path.join(os.path.dirname(sagakit.__file__), "_orchestrator.py")
    outside = os.path.join(os.path.dirname(__file__), "app.py")
    # A bug in sagakit (an error it does not raise on purpose) keeps its frames...
    assert not hide_from_pytest(_raised("{}['x']", inside))
    # ...sagakit's own errors, a simulated crash and an application's error do not.
    assert hide_from_pytest(_raised("{}['x']", outside))
    assert hide_from_pytest(_raised("raise SagaDefinitionError('misused')", inside))
    assert hide_from_pytest(_raised("raise SimulatedCrash('crash')", inside))
    assert not hide_from_pytest(None)  # pytest may ask without an exception


@step
async def _fails() -> None:
    raise LookupError("gone")


@saga
def _one() -> list[object]:
    return [_fails()]


@pytest.mark.asyncio
async def test_the_orchestrator_modules_ask_pytest_to_hide_their_frames() -> None:
    with pytest.raises(StepFailed) as info:
        await SagaOrchestrator().execute(_one())
    package = os.path.dirname(sagakit.__file__)
    frames = [entry for entry in info.traceback if str(entry.path).startswith(package)]
    assert frames, "the error came through sagakit's frames"
    assert all(entry.ishidden(info) for entry in frames)


def test_a_misused_decorator_shows_the_test_s_line_not_sagakit_s_checks() -> None:
    async def later() -> None:
        pass

    with pytest.raises(SagaDefinitionError, match="must be a number of seconds") as info:
        step(timeout="soon")(later)  # type: ignore[call-overload]
    package = os.path.dirname(sagakit.__file__)
    frames = [entry for entry in info.traceback if str(entry.path).startswith(package)]
    assert frames, "the error came through sagakit's frames"
    assert all(entry.ishidden(info) for entry in frames)
