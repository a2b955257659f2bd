"""Issue 2, point 10: thousands of sagas on one event loop, each with its own state."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import pytest

import sagakit._orchestrator
from sagakit import (
    CompensationFailed,
    Retry,
    SagaDefinition,
    SagaOrchestrator,
    SagaStatus,
    StepCall,
    StepFailed,
    StepTimeout,
    current_step,
    saga,
    step,
)
from sagakit._ids import new_saga_id

SAGAS = 2_000

undone: defaultdict[int, list[str]] = defaultdict(list)


@dataclass(frozen=True)
class Reserved:
    order: int


@dataclass(frozen=True)
class Charged:
    order: int
    payment: str


@dataclass(frozen=True)
class Released:
    order: int


@dataclass(frozen=True)
class Refunded:
    payment: str


@step(timeout=10)
async def reserve(order: int) -> Reserved:
    await asyncio.sleep(0)
    return Reserved(order)


@reserve.compensate
async def release(order: int) -> Released:
    await asyncio.sleep(0)
    undone[order].append("release")
    return Released(order)


@step(timeout=10)
async def charge(order: int) -> list[Charged]:
    await asyncio.sleep(0)
    ctx = current_step()
    assert ctx is not None
    return [Charged(order, f"pay-{ctx.saga_id}")]


@charge.compensate
async def refund(charged: list[Charged], order: int) -> Refunded:
    await asyncio.sleep(0)
    undone[order].append("refund")
    return Refunded(charged[0].payment)


@step(timeout=10)
async def ship(order: int) -> str:
    await asyncio.sleep(0)
    if order % 5 == 0:
        raise RuntimeError(f"no courier for {order}")
    return f"shipped {order}"


@step(timeout=0.05, compensate_on_timeout=False)
async def ship_stuck(order: int) -> str:
    await asyncio.sleep(10)  # always times out
    return f"shipped {order}"


@saga
def order_flow(order: int) -> Generator[StepCall[Any], Any, None]:
    yield reserve(order)
    charged = yield charge(order)
    assert charged[0].order == order  # results never cross sagas
    yield ship_stuck(order) if order % 7 == 0 else ship(order)


@pytest.mark.asyncio
async def test_thousands_of_sagas_on_one_loop_keep_their_own_state() -> None:
    undone.clear()
    orchestrator = SagaOrchestrator()

    results = await asyncio.gather(
        *(orchestrator.execute(order_flow(n), saga_id=f"o-{n}") for n in range(SAGAS)),
        return_exceptions=True,
    )

    outcomes: defaultdict[str, int] = defaultdict(int)
    for n, result in enumerate(results):
        payment = f"pay-o-{n}"
        if n % 7 == 0:
            assert isinstance(result, StepTimeout), (n, result)
            assert result.step_name == "ship_stuck"
        elif n % 5 == 0:
            assert isinstance(result, StepFailed), (n, result)
            assert not isinstance(result, StepTimeout)
            assert str(result.error) == f"no courier for {n}"
        else:
            assert result == [Reserved(n), Charged(n, payment), f"shipped {n}"], n
            assert n not in undone
            outcomes["completed"] += 1
            continue
        assert result.saga_id == f"o-{n}"
        assert result.events == [Reserved(n), Charged(n, payment)]
        assert result.compensation_events == [Refunded(payment), Released(n)]
        assert undone[n] == ["refund", "release"]
        outcomes["compensated"] += 1

    expected_failures = sum(1 for n in range(SAGAS) if n % 7 == 0 or n % 5 == 0)
    assert outcomes == {"completed": SAGAS - expected_failures, "compensated": expected_failures}
    assert await orchestrator.running_count() == 0
    assert await orchestrator.history_count() == SAGAS

    history = await orchestrator.get_history()
    by_id = {m.id: m for m in history}
    for n in (1, 5, 7, 35, SAGAS - 1):
        meta = by_id[f"o-{n}"]
        failed = n % 7 == 0 or n % 5 == 0
        assert meta.status is (SagaStatus.COMPENSATED if failed else SagaStatus.COMPLETED)
        assert meta.events[0] == Reserved(n)
        assert meta.steps_executed == (2 if failed else 3)


@pytest.mark.asyncio
async def test_id_less_definitions_run_concurrently_under_distinct_ids() -> None:
    @step
    async def who() -> str:
        await asyncio.sleep(0)
        ctx = current_step()
        assert ctx is not None
        return ctx.saga_id

    @saga
    def flow() -> list[StepCall[Any]]:
        return [who(), who()]

    definition = flow()
    orchestrator = SagaOrchestrator()
    results = await asyncio.gather(*(orchestrator.execute(definition) for _ in range(SAGAS)))

    assert all(first == second for first, second in results)
    assert len({first for first, _ in results}) == SAGAS
    assert await orchestrator.history_count() == SAGAS


@step(timeout=0.05)
async def stuck() -> None:
    await asyncio.sleep(10)


@step
async def quick() -> str:
    return "quick"


def test_two_threads_switching_one_orchestrator_keep_their_own_loops_watchdog(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    orchestrator = SagaOrchestrator()
    loop_b = asyncio.new_event_loop()
    thread_b = threading.Thread(target=loop_b.run_forever, daemon=True)
    thread_b.start()

    def in_thread_b(definition: SagaDefinition) -> list[Any]:
        run = asyncio.wait_for(orchestrator.execute(definition), 5)  # guards against a hang
        return asyncio.run_coroutine_threadsafe(run, loop_b).result(10)

    watchdog = sagakit._orchestrator.Watchdog
    interleaved: list[str] = []

    def switching(loop: asyncio.AbstractEventLoop) -> Any:
        # The main thread is switching the orchestrator over to its loop: make thread B
        # run a saga right then (as the interpreter may switch threads there).
        if loop is not loop_b:
            saga_id = f"b-between-{len(interleaved)}"
            interleaved.append(saga_id)
            assert in_thread_b(SagaDefinition(saga_id).add_step(quick())) == ["quick"]
        return watchdog(loop)

    try:
        assert in_thread_b(SagaDefinition("b-1").add_step(quick())) == ["quick"]
        monkeypatch.setattr(sagakit._orchestrator, "Watchdog", switching)
        main = orchestrator.execute(SagaDefinition("a-1").add_step(quick()))
        assert asyncio.run(main) == ["quick"]  # the main thread's loop is closed now
        assert interleaved
        # Thread B's steps are still timed out, by a watchdog on its own loop.
        with pytest.raises(StepTimeout):
            in_thread_b(SagaDefinition("b-3").add_step(stuck()))
    finally:
        loop_b.call_soon_threadsafe(loop_b.stop)
        thread_b.join()
        loop_b.close()


@step(compensation_timeout=0.05)
async def booked() -> str:
    return "booked"


@booked.compensate
async def unbook_forever() -> None:
    await asyncio.Event().wait()  # until its timeout cancels it


def test_a_compensation_after_another_thread_used_the_orchestrator_keeps_its_timeout() -> None:
    # Regression: thread B running a saga switched the orchestrator to a watchdog of its
    # loop; the main thread's compensation then started a second watchdog for the main
    # loop, which did not know the run (noted by the first one already), so the
    # compensation's 0.05 s timeout went unenforced until the first watchdog woke for the
    # failed step's deadline (30 s later).
    orchestrator = SagaOrchestrator(compensation_retry=Retry(attempts=1))
    loop_b = asyncio.new_event_loop()
    thread_b = threading.Thread(target=loop_b.run_forever, daemon=True)
    thread_b.start()

    @step
    async def fails_after_thread_b_ran_a_saga() -> None:
        run = asyncio.wait_for(orchestrator.execute(SagaDefinition().add_step(quick())), 5)
        assert asyncio.run_coroutine_threadsafe(run, loop_b).result(10) == ["quick"]
        raise ValueError("declined")

    async def main() -> CompensationFailed:
        definition = SagaDefinition().add_step(booked()).add_step(fails_after_thread_b_ran_a_saga())
        with pytest.raises(CompensationFailed) as info:
            # A guard against the hang: far longer than the compensation's timeout, far
            # shorter than the step's.
            await asyncio.wait_for(orchestrator.execute(definition), 5)
        return info.value

    try:
        failure = asyncio.run(main())
    finally:
        loop_b.call_soon_threadsafe(loop_b.stop)
        thread_b.join()
        loop_b.close()
    assert isinstance(failure.error, StepTimeout)
    assert failure.error.compensation


def test_the_orchestrator_lets_go_of_loops_it_is_done_with() -> None:
    # Regression (of keeping each loop's watchdog, above): every loop's watchdog was kept
    # until that loop was closed, so a loop its user never closed (new_event_loop() per
    # call) stayed alive, with its sockets, as long as the orchestrator.
    orchestrator = SagaOrchestrator()
    loops = [asyncio.new_event_loop() for _ in range(3)]
    try:
        for loop in loops:
            done = loop.run_until_complete(orchestrator.execute(SagaDefinition().add_step(quick())))
            assert done == ["quick"]
        # None is closed, none is running: only the one used last is still known.
        assert list(orchestrator._watchdogs) == [loops[-1]]
    finally:
        for loop in loops:
            loop.close()


def test_generated_ids_have_an_80_bit_random_prefix_per_process() -> None:
    # Ids generated by different processes share one durable log: their random
    # prefixes must not collide, even over very many process runs.
    code = "from sagakit._ids import new_saga_id; print(new_saga_id())"
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    mine = new_saga_id()
    prefix, _, counter = mine.rpartition("-")
    assert len(prefix) == 20
    assert int(prefix, 16) >= 0  # hex digits
    assert counter.isdigit()
    assert other.rpartition("-")[0] != prefix
    assert new_saga_id() != mine
