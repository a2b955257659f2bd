"""sagakit on uvloop, the event loop many production services run on.

The whole suite also runs on uvloop with ``SAGAKIT_TEST_LOOP=uvloop`` (see
``tests/conftest.py``); these tests run on it every time uvloop is installed, and
cover what differs there: a loop clock read to the millisecond once per iteration,
and signal handlers that the loop does not let anyone read back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sagakit import (
    SagaDefinition,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StepFailed,
    StepTimeout,
    saga,
    step,
)
from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed (pip install uvloop)")

T = TypeVar("T")
GIVE_UP = 10.0  # only a hung run waits this long

done: list[str] = []


def on_uvloop(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


@step(timeout=5)
async def reserve(item: str) -> list[str]:
    await asyncio.sleep(0)
    done.append(f"reserve {item}")
    return [f"reserved {item}"]


@reserve.compensate
async def release(item: str) -> list[str]:
    done.append(f"release {item}")
    return [f"released {item}"]


@step(timeout=5)
async def charge(amount: int) -> list[str]:
    await asyncio.sleep(0)
    if amount < 0:
        raise ValueError("declined")
    done.append(f"charge {amount}")
    return [f"charged {amount}"]


@charge.compensate
async def refund(amount: int) -> None:
    done.append(f"refund {amount}")


@step(timeout=0.02)
async def stalls(item: str) -> None:
    await asyncio.sleep(GIVE_UP)


@saga
def uvloop_order(item: str, amount: int):  # type: ignore[no-untyped-def]
    yield reserve(item)
    yield charge(amount)


def test_a_saga_completes_compensates_and_times_out_on_uvloop() -> None:
    done.clear()

    async def main() -> tuple[list[Any], StepFailed, StepTimeout, Any]:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        orchestrator = SagaOrchestrator()
        events = await orchestrator.execute(uvloop_order("book", 10))
        with pytest.raises(StepFailed) as failed:
            await orchestrator.execute(uvloop_order("pen", -1))
        definition = SagaDefinition("late").add_step(reserve("cup")).add_step(stalls("cup"))
        with pytest.raises(StepTimeout) as timed_out:
            await orchestrator.execute(definition)
        return events, failed.value, timed_out.value, await orchestrator.get_saga("late")

    events, failed, timed_out, late = on_uvloop(main)
    assert events == ["reserved book", "charged 10"]
    assert failed.compensation_events == ["released pen"]
    # The millisecond clock must not report a timeout shorter than itself.
    assert timed_out.duration >= timed_out.timeout == 0.02
    assert late.status is SagaStatus.COMPENSATED
    assert late.steps[1].duration >= 0.02
    assert done == [
        "reserve book",
        "charge 10",
        "reserve pen",
        "release pen",
        "reserve cup",
        "release cup",
    ]


def test_a_crashed_saga_is_recovered_on_uvloop(tmp_path: Path) -> None:
    done.clear()
    path = tmp_path / "log.db"

    async def crash() -> None:
        store = SQLiteStore(path)
        orchestrator = SagaOrchestrator(store)
        with FaultInjector().crash(charge, after=True), pytest.raises(SimulatedCrash):
            await orchestrator.execute(uvloop_order("lamp", 5), saga_id="o-1")
        await simulate_restart(store)
        await store.close()

    async def recover() -> Any:
        async with SagaOrchestrator(SQLiteStore(path)) as orchestrator:
            outcomes = await orchestrator.recover()
            return outcomes, await orchestrator.get_saga("o-1")

    on_uvloop(crash)
    outcomes, saga_now = on_uvloop(recover)
    assert [outcome.saga_id for outcome in outcomes] == ["o-1"]
    assert saga_now.status is SagaStatus.COMPLETED
    # The completed step is not run again; the one that acted but was never recorded
    # as completed runs again, as documented (steps are written to be idempotent).
    assert done == ["reserve lamp", "charge 5", "charge 5"]


def test_a_worker_stops_on_sigterm_on_uvloop_and_puts_the_default_back(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    assert before is signal.SIG_DFL, "another test left a SIGTERM handler behind"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with SagaOrchestrator(SQLiteStore(tmp_path / "log.db")) as orchestrator:
            worker = asyncio.create_task(orchestrator.run_worker(poll_interval=0.01))
            # Until the worker's handler is in place: nothing tells, the signal table shows it.
            while getattr(signal.getsignal(signal.SIGTERM), "__self__", None) is not loop:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(worker, GIVE_UP)

    on_uvloop(main)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_worker_leaves_the_sigterm_handler_of_a_uvloop_loop_in_place(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: uvloop does not let the handler set on it be read back, so a worker
    # that took SIGTERM over put back the process's handler, the loop's dispatcher,
    # with nothing left to dispatch to: SIGTERM was then ignored for good.
    async def main() -> None:
        loop = asyncio.get_running_loop()
        told = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, told.set)
        try:
            stop = asyncio.Event()
            stop.set()
            async with SagaOrchestrator(SQLiteStore(tmp_path / "log.db")) as orchestrator:
                await orchestrator.run_worker(stop=stop)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(told.wait(), GIVE_UP)
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    with caplog.at_level(logging.WARNING, logger="sagakit"):
        on_uvloop(main)
    assert "SIGTERM already has a handler on this event loop" in caplog.text
    assert "stop the worker from it" in caplog.text
