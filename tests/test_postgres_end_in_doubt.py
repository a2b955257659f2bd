"""PostgreSQL: a write still queued in the group writer when its caller is cancelled.

The caller's submission is in doubt; the store settles it (moving the saga's fencing
token on) before the saga's next write, or in ``finish()``. The queued write goes out
afterwards, as it was: it must be refused, not commit at the new token beside what the
store sends again — no second end, no event twice, no end the store thinks is missing.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from pg_helpers.db import opened, query
from sagakit import SagaOrchestrator, SagaStatus, saga, step
from sagakit.stores._pg_writer import Write
from sagakit.testing import SagaRecorder
from sagakit.transitions import Transition, TransitionKind


@step
async def emit(n: int) -> list[str]:
    return [f"e{n}"]


@emit.compensate
async def unemit(result: list[str], n: int) -> None:
    return None


@saga
def two():  # type: ignore[no-untyped-def]
    for n in range(2):
        yield emit(n)


def _ends(writes: list[Write]) -> bool:
    return any(w.final for w in writes)


def _starts_step_1(writes: list[Write]) -> bool:
    return any(w.index == 1 and w.step_status == "running" for w in writes)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("held", "status"),
    [(_ends, SagaStatus.COMPLETED), (_starts_step_1, SagaStatus.COMPENSATED)],
    ids=["end", "step-start"],
)
async def test_a_write_queued_when_its_caller_was_cancelled_cannot_commit_once_settled(
    dsn: str,
    schema: str,
    monkeypatch: pytest.MonkeyPatch,
    held: Callable[[list[Write]], bool],
    status: SagaStatus,
) -> None:
    async with opened(dsn, schema) as a, opened(dsn, schema) as b:
        send = a._writer._send
        queued = asyncio.Event()
        go = asyncio.Event()
        late: list[dict[str, str]] = []

        async def queue(writes: list[Write]) -> dict[str, str]:
            # The batch waits here, its parameters not built yet: as if queued behind a
            # batch in flight. It goes out once the store settled it.
            if held(writes) and not queued.is_set():
                queued.set()
                await go.wait()
                late.append(await send(writes))
                return late[-1]
            return await send(writes)

        monkeypatch.setattr(a._writer, "_send", queue)
        settle = a._settle
        settled: list[bool] = []

        async def settled_then_sent(saga_id: str, **options: Any) -> bool:
            settled.append(await settle(saga_id, **options))
            go.set()
            return settled[-1]

        monkeypatch.setattr(a, "_settle", settled_then_sent)
        heard: list[Transition] = []
        running = asyncio.create_task(
            SagaOrchestrator(a, listeners=[heard.append]).execute(two(), saga_id="s")
        )
        await queued.wait()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await a._writer.close()
        assert settled == [False]  # not sent yet when settled
        assert late == [{"s": "fenced"}]  # so it can never commit
        ended = TransitionKind.SAGA_FINISHED in [t.kind for t in heard]
        finished = query(dsn, f'SELECT finished_at IS NOT NULL FROM "{schema}".sagas')
        assert finished == [(ended,)]  # the log has the end listeners heard, if any
        outcomes = await SagaOrchestrator(b).recover()
        assert [o.status for o in outcomes] == ([] if ended else [status])
        meta = await b.get("s")
        assert meta is not None
        assert meta.status is status
        events = Counter(e.event for e in await b.read_events())
        assert set(events.values()) == {1}  # none twice


HOLD: list[asyncio.Event] = []  # [entered, release] while a test holds emit_held


@step
async def emit_held(n: int) -> list[str]:
    if HOLD:
        HOLD[0].set()
        await HOLD[1].wait()
    return [f"h{n}"]


@saga
def held_two():  # type: ignore[no-untyped-def]
    yield emit(0)
    yield emit_held(1)


@saga
def blocking_one():  # type: ignore[no-untyped-def]
    yield emit(9)


async def _until(check: Callable[[], bool], what: str) -> None:
    for _ in range(5_000):
        if check():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never: {what}")


@pytest.mark.asyncio
async def test_a_write_queued_behind_another_batch_is_not_sent_beside_its_copy(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cancelled run's end waits in the writer's queue behind another saga's batch;
    # the store settles it and queues the copy of what it carried, so the queue holds
    # two submissions of one saga. Sent in one batch, the copy's fencing token let the
    # stale one's rows and events in too (its step's event stored twice).
    async with opened(dsn, schema) as a, opened(dsn, schema) as b:
        send = a._writer._send
        in_flight = asyncio.Event()
        go = asyncio.Event()
        sent: list[list[tuple[str, int]]] = []

        async def held(writes: list[Write]) -> dict[str, str]:
            if any(w.saga_id == "blocker" for w in writes) and not in_flight.is_set():
                in_flight.set()
                await go.wait()
            sent.append([(w.saga_id, w.fence) for w in writes])
            return await send(writes)

        monkeypatch.setattr(a._writer, "_send", held)

        def queued(saga_id: str) -> int:
            return sum(writes[0].saga_id == saga_id for writes, _ in a._writer._pending)

        HOLD[:] = [asyncio.Event(), asyncio.Event()]
        heard: list[Transition] = []
        running = asyncio.create_task(
            SagaOrchestrator(a, listeners=[heard.append]).execute(held_two(), saga_id="s")
        )
        try:
            await HOLD[0].wait()
            blocker = asyncio.create_task(
                SagaOrchestrator(a).execute(blocking_one(), saga_id="blocker")
            )
            await in_flight.wait()
            HOLD[1].set()
            await _until(lambda: queued("s") == 1, "the end of s queued")
            running.cancel()
            await _until(lambda: queued("s") == 2, "the copy of what it carried queued too")
            go.set()
            with pytest.raises(asyncio.CancelledError):
                await running
            await blocker
            await a._writer.close()
        finally:
            HOLD.clear()
            go.set()
        fences = [{fence for saga_id, fence in batch if saga_id == "s"} for batch in sent]
        assert all(len(of_s) <= 1 for of_s in fences), sent  # never beside its copy
        ended = TransitionKind.SAGA_FINISHED in [t.kind for t in heard]
        assert not ended  # cancelled while its end was written: SAGA_STOPPED
        finished = query(
            dsn, f"SELECT finished_at IS NOT NULL FROM \"{schema}\".sagas WHERE saga_id = 's'"
        )
        assert finished == [(False,)]  # the end listeners did not hear is not in the log
        outcomes = await SagaOrchestrator(b).recover()
        assert [o.status for o in outcomes] == [SagaStatus.COMPLETED]
        events = Counter(e.event for e in await b.read_events() if e.saga_id == "s")
        assert events == Counter({"e0": 1, "h1": 1}), events  # none twice


@pytest.mark.asyncio
async def test_a_committed_write_whose_caller_was_cancelled_is_settled_committed_while_others_write(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The write commits; its caller is cancelled before it hears so, and another saga
    # sends a write meanwhile. The doubt kept the store's latest write token, that other
    # saga's, not the token of the write in doubt: settling found "not committed", sent
    # it again, and the step's event was stored twice.
    async with opened(dsn, schema) as a:
        send = a._writer._send
        orchestrator = SagaOrchestrator(a)
        others: list[asyncio.Task[list[str]]] = []
        running: list[asyncio.Task[list[str]]] = []

        async def committed_then_cancelled(writes: list[Write]) -> dict[str, str]:
            refused = await send(writes)
            if not others and any(w.saga_id == "a" for w in writes) and _starts_step_1(writes):
                token = a._token
                others.append(
                    asyncio.create_task(orchestrator.execute(blocking_one(), saga_id="other"))
                )
                await _until(lambda: a._token > token, "the other saga sent a write")
                running[0].cancel()  # committed: the caller has not heard it yet
            return refused

        monkeypatch.setattr(a._writer, "_send", committed_then_cancelled)
        running.append(asyncio.create_task(orchestrator.execute(two(), saga_id="a")))
        with pytest.raises(asyncio.CancelledError):
            await running[0]
        await asyncio.gather(*others)
        meta = await a.get("a")
        assert meta is not None
        assert meta.status is SagaStatus.COMPENSATED
        events = Counter(e.event for e in await a.read_events() if e.saga_id == "a")
        assert events == Counter({"e0": 1}), events  # once: the write committed once


@pytest.mark.asyncio
async def test_listeners_hear_the_end_that_committed_while_its_caller_was_cancelled(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: the end committed, but its caller was cancelled before it heard so.
    # Listeners heard SAGA_STOPPED (and never the last step's completion staged with the
    # end), while the log, settled in finish(), said COMPLETED. The store now settles
    # the write at once and reports it committed (CommittedThenCancelled).
    async with opened(dsn, schema) as a:
        send = a._writer._send
        running: list[asyncio.Task[list[str]]] = []

        async def committed_then_cancelled(writes: list[Write]) -> dict[str, str]:
            refused = await send(writes)
            if _ends(writes):
                running[0].cancel()  # committed: the caller has not heard it yet
            return refused

        monkeypatch.setattr(a._writer, "_send", committed_then_cancelled)
        recorder = SagaRecorder()
        orchestrator = SagaOrchestrator(a, listeners=[recorder])
        running.append(asyncio.create_task(orchestrator.execute(two(), saga_id="s")))
        with pytest.raises(asyncio.CancelledError):
            await running[0]
        meta = await a.get("s")
    run = recorder.run("s")
    assert run.trail()[-3:] == [
        "step_started emit",
        "step_completed emit",
        "saga_finished completed",
    ]
    run.assert_status(SagaStatus.COMPLETED)
    assert meta is not None
    assert meta.status is SagaStatus.COMPLETED
    assert meta.steps_executed == 2
