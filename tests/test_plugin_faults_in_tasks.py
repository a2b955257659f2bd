"""``saga_faults`` and the sagas run by tasks that fixtures set up before it started."""

from __future__ import annotations

import pytest

from pytester_helpers.ini import write_ini
from sagakit._hooks import test_faults

pytest_plugins = ["pytester"]

RUNNER = """
import asyncio

import pytest
import pytest_asyncio
from sagakit import SagaOrchestrator, StepFailed, saga, step

@step
async def early_task_hold_seat(seat):
    return seat

@early_task_hold_seat.compensate
async def early_task_free_seat(seat):
    return None

@step
async def early_task_print_ticket(seat):
    return f"ticket {seat}"

@saga
def early_task_booking(seat):
    yield early_task_hold_seat(seat)
    yield early_task_print_ticket(seat)

@pytest_asyncio.fixture
async def runner():
    # A task running the sagas put on a queue, as a worker runs those it claims: it was
    # created before the test's saga_faults, and copied its context then.
    queue = asyncio.Queue()
    orchestrator = SagaOrchestrator()

    async def run():
        while True:
            definition, done = await queue.get()
            try:
                done.set_result(await orchestrator.execute(definition))
            except Exception as error:
                done.set_exception(error)

    task = asyncio.create_task(run())

    async def execute(definition):
        done = asyncio.get_running_loop().create_future()
        await queue.put((definition, done))
        return await done

    yield execute
    task.cancel()
"""


@pytest.mark.parametrize("order", ["runner, saga_faults", "saga_faults, runner"])
def test_faults_of_the_test_hit_sagas_of_a_task_a_fixture_started_before_them(
    pytester: pytest.Pytester, order: str
) -> None:
    # Regression: with `runner` set up before `saga_faults`, the fault never fired: its
    # task had copied its context, where no injector was active, when it was created.
    write_ini(pytester)
    pytester.makepyfile(
        RUNNER
        + f"""
@pytest.mark.asyncio
async def test_the_fault_fires({order}):
    saga_faults.fail(early_task_print_ticket)
    with pytest.raises(StepFailed):
        await runner(early_task_booking("12A"))
    assert [fired.step_name for fired in saga_faults.fired] == ["early_task_print_ticket"]

@pytest.mark.asyncio
async def test_the_next_test_runs_without_it(runner):
    assert await runner(early_task_booking("12B")) is not None
"""
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
    assert test_faults.plan is None  # the fixture's faults end with its test


def test_faults_of_the_fixture_reach_an_isolated_asyncio_test_case(
    pytester: pytest.Pytester,
) -> None:
    # Its tests run in a copy of the context taken as the tests were loaded, before any
    # fixture ran: the fixture's faults never fired there.
    write_ini(pytester)
    pytester.makepyfile(
        RUNNER
        + """
import unittest

class BookingTests(unittest.IsolatedAsyncioTestCase):
    @pytest.fixture(autouse=True)
    def _faults(self, saga_faults):
        self.faults = saga_faults

    async def test_the_fault_fires(self):
        self.faults.fail(early_task_print_ticket)
        with self.assertRaises(StepFailed):
            await SagaOrchestrator().execute(early_task_booking("14C"))
"""
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
