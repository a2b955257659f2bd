"""A compensation that fails for good: its own line is shown where users look.

Regression: ``CompensationFailed.__cause__`` is the failure that started compensating (the
step's ``StepFailed``), so a traceback (pytest's, ``logger.exception``'s, Python's) showed the
step's line and then ``CompensationFailed: ... failed: KeyError: 'x'``, never the line of the
compensation that raised. A note (PEP 678) now carries the compensation error's traceback.
"""

from __future__ import annotations

import gc
import logging
import pickle
import traceback

import pytest

from sagakit import CompensationFailed, Retry, SagaOrchestrator, saga, step
from sagakit._tracebacks import MAX_NOTE_TRACEBACK, MAX_NOTED_ERRORS
from sagakit.testing import FaultInjector

pytest_plugins = ["pytester"]


@step(name="ct_reserve")
async def ct_reserve(sku: str) -> str:
    return sku


@ct_reserve.compensate
async def ct_release(reserved: str, sku: str) -> None:
    stock: dict[str, int] = {}
    stock[reserved] += 1  # the compensation's raising line


@step(name="ct_hold", compensation_retry=Retry(attempts=1))
async def ct_hold(sku: str) -> str:
    return sku


@ct_hold.compensate
async def ct_unhold(held: str, sku: str) -> None:
    try:
        int(held)
    except ValueError as bad:
        raise RuntimeError("cannot unhold") from bad  # the second compensation's line


@step(name="ct_pay")
async def ct_pay(amount: float) -> None:
    raise ValueError("card declined")


@saga
def ct_order(sku: str, amount: float):  # type: ignore[no-untyped-def]
    yield ct_hold(sku)
    yield ct_reserve(sku)
    yield ct_pay(amount)


async def _failure(orchestrator: SagaOrchestrator | None = None) -> CompensationFailed:
    with pytest.raises(CompensationFailed) as caught:
        await (orchestrator or SagaOrchestrator()).execute(ct_order("book", 1.0))
    return caught.value


@pytest.mark.asyncio
async def test_a_traceback_of_compensation_failed_shows_the_compensation_line() -> None:
    failure = await _failure()
    shown = "".join(traceback.format_exception(failure))
    assert "in ct_release" in shown
    assert "stock[reserved] += 1  # the compensation's raising line" in shown
    # The documented API is unchanged: the cause is the step's failure, the message one line.
    assert failure.__cause__ is failure.trigger
    assert str(failure) == (
        "compensation of step 1 ('ct_reserve') failed: KeyError: 'book'; "
        "left uncompensated: ct_reserve, ct_hold"
    )
    [note] = failure.__notes__
    assert note.startswith("sagakit: compensation of step 1 ('ct_reserve') failed:\nTraceback")
    assert note.endswith("KeyError: 'book'")
    assert "_orchestrator.py" not in note  # sagakit's frames that called it are left out
    assert "card declined" not in note  # the trigger, shown as the cause, is not repeated


@pytest.mark.asyncio
async def test_each_compensation_that_failed_is_noted_with_its_chain() -> None:
    failure = await _failure(SagaOrchestrator(continue_on_compensation_failure=True))
    assert len(failure.errors) == 2
    first, second = failure.__notes__
    assert "in ct_release" in first
    assert second.startswith("sagakit: compensation of step 0 ('ct_hold') failed:\n")
    assert "int(held)" in second  # its own cause, then what it raised
    assert "The above exception was the direct cause of the following exception:" in second
    assert 'raise RuntimeError("cannot unhold") from bad' in second
    assert second.endswith("RuntimeError: cannot unhold")


@pytest.mark.asyncio
async def test_the_note_is_not_stored_and_survives_pickling() -> None:
    orchestrator = SagaOrchestrator()
    failure = await _failure(orchestrator)
    assert failure.saga_id is not None
    metadata = await orchestrator.get_saga(failure.saga_id)
    assert metadata is not None
    assert metadata.error == str(failure)  # the log's text does not grow
    copy = pickle.loads(pickle.dumps(failure))
    assert copy.__notes__ == failure.__notes__  # its traceback, which pickling drops


@pytest.mark.asyncio
async def test_logging_the_failure_shows_the_compensation_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failure = await _failure()
    with caplog.at_level(logging.ERROR):
        try:
            raise failure
        except CompensationFailed:
            logging.getLogger("ct").exception("order failed")
    assert "stock[reserved] += 1" in caplog.text


@pytest.mark.asyncio
async def test_a_failure_without_a_line_of_the_compensation_gets_no_note() -> None:
    # An injected fault or a timeout raised nothing in the compensation's code: the
    # message says it all.
    with (
        pytest.raises(CompensationFailed) as caught,
        FaultInjector().fail_compensation(ct_reserve),
    ):
        await SagaOrchestrator().execute(ct_order("1", 1.0))
    assert not hasattr(caught.value, "__notes__")


@step(name="ct_deep")
async def ct_deep(n: int) -> int:
    return n


@ct_deep.compensate
async def ct_undeep(result: int, n: int) -> None:
    def down(k: int) -> None:
        if k == 0:
            raise LookupError("x" * 10_000)
        down(k - 1)

    down(n)


@saga
def ct_many(count: int):  # type: ignore[no-untyped-def]
    for index in range(count):
        yield ct_deep(index + 50)
    yield ct_pay(1.0)


@pytest.mark.asyncio
async def test_notes_are_bounded() -> None:
    orchestrator = SagaOrchestrator(continue_on_compensation_failure=True)
    with pytest.raises(CompensationFailed) as caught:
        await orchestrator.execute(ct_many(MAX_NOTED_ERRORS + 2))
    notes = caught.value.__notes__
    assert len(caught.value.errors) == MAX_NOTED_ERRORS + 2
    assert len(notes) == MAX_NOTED_ERRORS + 1
    for note in notes[:-1]:
        assert len(note) < MAX_NOTE_TRACEBACK + 200
        assert "characters cut)" in note
        assert note.endswith("x" * 100)  # the end, where the error is, is kept
    assert notes[-1] == ("sagakit: 2 more compensations failed; their errors are in .errors")


FAILING = """
import pytest
from sagakit import SagaOrchestrator, saga, step

@step
async def reserve(item):
    return item

@reserve.compensate
async def release(item):
    return {}["no shelf for " + item]

@step
async def ship(item):
    raise ValueError("no carrier")

@saga
def order(item):
    yield reserve(item)
    yield ship(item)

@pytest.mark.asyncio
async def test_compensation_failed():
    await SagaOrchestrator().execute(order("book"))
"""


def test_pytest_shows_the_compensation_line(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = strict
        asyncio_default_fixture_loop_scope = function
        """
    )
    pytester.makepyfile(test_failing=FAILING)
    gc.collect()  # not during the run: a task an earlier test left pending names _orchestrator.py
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E       sagakit.exceptions.CompensationFailed: compensation of step 0 *",
            "E       sagakit: compensation of step 0 ('reserve') failed:",
            "E       Traceback (most recent call last):",
            "E         File *test_failing.py*, line 10, in release",
            '*return {}?"no shelf for " + item?',  # fnmatch: [ is a pattern
            "E       KeyError: 'no shelf for book'",
        ]
    )
    result.stdout.no_fnmatch_line("*_orchestrator.py*")
