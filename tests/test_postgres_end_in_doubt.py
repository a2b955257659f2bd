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

import pytest

from pg_helpers.db import opened, query
from sagakit import SagaOrchestrator, SagaStatus, saga, step
from sagakit.stores._pg_writer import Write
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

        async def settled_then_sent(saga_id: str, *, stage: bool = True) -> bool:
            settled.append(await settle(saga_id, stage=stage))
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
