"""The watchdog's firings cost what changed since the last one, not every running saga.

Each firing of the watchdog looked at the deadline of every saga it watched: with many
sagas waiting in long steps, steps with short timeouts (which make it fire often) cost a
firing in proportion to all of them. These tests count the deadlines a firing reads,
never the time it takes.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from sagakit import SagaDefinition, SagaOrchestrator, StepTimeout, step
from sagakit._runs import SagaRun

WAITING = 400


class _CountedDeadline:
    """Stands for ``SagaRun.deadline`` (a slot) and counts its reads."""

    def __init__(self, slot: Any) -> None:
        self.slot = slot
        self.reads = 0

    def __get__(self, run: SagaRun | None, owner: type | None = None) -> Any:
        if run is None:
            return self
        self.reads += 1
        return self.slot.__get__(run, owner)

    def __set__(self, run: SagaRun, value: float) -> None:
        self.slot.__set__(run, value)


@pytest.fixture
def deadline_reads(monkeypatch: pytest.MonkeyPatch) -> _CountedDeadline:
    counted = _CountedDeadline(SagaRun.__dict__["deadline"])
    monkeypatch.setattr(SagaRun, "deadline", counted)
    return counted


@step(timeout=60)
async def wait_for(gate: asyncio.Event) -> str:
    await gate.wait()
    return "done"


@step(timeout=30)
async def wait_less(gate: asyncio.Event) -> str:
    await gate.wait()
    return "done"


@step(timeout=0.001)
async def too_slow() -> None:
    await asyncio.sleep(10)


async def _time_out(orchestrator: SagaOrchestrator) -> None:
    with pytest.raises(StepTimeout):
        await orchestrator.execute(SagaDefinition(steps=[too_slow()]))


@pytest.mark.asyncio
async def test_firings_do_not_read_every_waiting_sagas_deadline(
    deadline_reads: _CountedDeadline,
) -> None:
    orchestrator = SagaOrchestrator()
    gate = asyncio.Event()
    waiting = [
        asyncio.create_task(orchestrator.execute(SagaDefinition(steps=[wait_for(gate)])))
        for _ in range(WAITING)
    ]
    await asyncio.sleep(0)  # every waiting saga is in its step
    await _time_out(orchestrator)  # a firing: it sees the waiting sagas' deadlines once
    deadline_reads.reads = 0
    for _ in range(10):  # ten more firings, each for a step that times out
        await _time_out(orchestrator)
    # Each read all 400 deadlines (4,000 reads); now each reads its own saga's.
    assert deadline_reads.reads < WAITING
    gate.set()
    assert await asyncio.gather(*waiting) == [["done"]] * WAITING  # none timed out


@pytest.mark.asyncio
async def test_a_waiting_saga_still_times_out_at_its_own_deadline() -> None:
    # A saga seen by a firing (waiting in a long step), whose next step has a short
    # timeout: the watchdog still cancels that step at its deadline.
    orchestrator = SagaOrchestrator()
    gate = asyncio.Event()
    blocked = asyncio.create_task(
        orchestrator.execute(SagaDefinition(steps=[wait_for(gate), too_slow()]))
    )
    await asyncio.sleep(0)
    await _time_out(orchestrator)  # a firing that puts the waiting saga in the heap
    gate.set()
    with pytest.raises(StepTimeout) as raised:
        await asyncio.wait_for(blocked, 5)
    assert raised.value.step_name == "too_slow"


@pytest.mark.asyncio
async def test_the_watchdog_lets_go_of_ended_sagas() -> None:
    # Sagas seen by a firing while in a step with a long timeout, then ended: the
    # watchdog keeps no entry that holds them until that timeout would have passed
    # (with history_limit=0, nothing else does either), even behind a saga still
    # waiting for a sooner deadline.
    orchestrator = SagaOrchestrator(history_limit=0)
    gate, later = asyncio.Event(), asyncio.Event()
    keeper = asyncio.create_task(orchestrator.execute(SagaDefinition(steps=[wait_less(later)])))
    definitions = [SagaDefinition(steps=[wait_for(gate)]) for _ in range(WAITING)]
    tasks = [asyncio.create_task(orchestrator.execute(d)) for d in definitions]
    await asyncio.sleep(0)
    await _time_out(orchestrator)
    watchdog = orchestrator._watchdog
    assert watchdog is not None
    ended = {run.id for run in watchdog.runs if run.task is not keeper}
    assert len(ended) == WAITING
    gate.set()
    await asyncio.gather(*tasks)
    del tasks, definitions
    await _time_out(orchestrator)  # the next firing drops the ended steps' entries
    gc.collect()
    assert [obj for obj in gc.get_objects() if type(obj) is SagaRun and obj.id in ended] == []
    later.set()
    assert await keeper == ["done"]


def test_a_short_step_on_uvloop_does_not_spin_the_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: uvloop's clock counts whole milliseconds and runs a timer once its
    # millisecond is reached, so the watchdog could fire in the last millisecond before
    # a deadline, find it not yet passed, reschedule itself for it, run at once again,
    # and so on until the clock ticked: hundreds of firings for one step of 1 ms.
    uvloop = pytest.importorskip("uvloop")
    from sagakit._deadlines import Watchdog

    firings = 0
    fire = Watchdog._fire

    def counted(self: Watchdog) -> None:
        nonlocal firings
        firings += 1
        fire(self)

    monkeypatch.setattr(Watchdog, "_fire", counted)

    async def main() -> None:
        orchestrator = SagaOrchestrator()
        for _ in range(20):
            await _time_out(orchestrator)

    uvloop.run(main())
    assert firings <= 3 * 20  # one per step, and a few more at most
