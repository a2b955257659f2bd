"""PostgreSQL: a monitoring read shows each saga as it was at one instant.

``get()``, ``running()``, ``history()`` and ``list_sagas()`` read a saga's row and its
step rows. Read in two statements (each its own snapshot under READ COMMITTED), a write
committing between them (another worker's, or this store's own group writer's) made the
two disagree: a saga EXECUTING whose steps had all completed, a finished saga with a
step still RUNNING. Here that write is committed deterministically, right after the
statement reading the saga rows returns and before anything else is sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pg_helpers.db import opened
from sagakit import SagaOrchestrator, SagaStatus, StepStatus, current_step, saga, step
from sagakit.records import SagaMetadata

psycopg = pytest.importorskip("psycopg")

GATES: dict[str, asyncio.Event] = {}
ENTERED: dict[str, asyncio.Event] = {}


@step
async def snap_act(n: int) -> list[int]:
    ctx = current_step()
    assert ctx is not None
    key = f"{ctx.saga_id}:{n}"
    if key in GATES:
        ENTERED[key].set()
        await GATES[key].wait()
    return [n]


@snap_act.compensate
async def snap_unact(result: list[int], n: int) -> None:
    pass


@step
async def snap_explode(n: int) -> None:
    raise ValueError(f"boom {n}")


@saga
def pg_snap_two():  # type: ignore[no-untyped-def]
    yield snap_act(0)
    yield snap_act(1)


@saga
def pg_snap_fails():  # type: ignore[no-untyped-def]
    yield snap_act(0)
    yield snap_explode(1)


async def hang_at(orchestrator: SagaOrchestrator, saga_id: str, index: int) -> asyncio.Task[Any]:
    """Start ``pg_snap_two`` as ``saga_id``; return once it is inside step ``index``."""
    key = f"{saga_id}:{index}"
    GATES[key] = asyncio.Event()
    ENTERED[key] = asyncio.Event()
    task = asyncio.create_task(orchestrator.execute(pg_snap_two(), saga_id=saga_id))
    await asyncio.wait_for(ENTERED[key].wait(), 30)
    return task


@pytest.fixture(autouse=True)
def _reset() -> Any:
    GATES.clear()
    ENTERED.clear()
    yield
    for gate in GATES.values():
        gate.set()


def after_the_saga_rows_are_read(
    monkeypatch: pytest.MonkeyPatch, schema: str, write: Callable[[], Awaitable[None]]
) -> list[bool]:
    """Run ``write`` (to its commit) once, right after the next statement reading
    ``sagas`` rows returns its rows; the list holds ``True`` once it ran."""
    original = psycopg.AsyncCursor.execute
    ran: list[bool] = []

    async def execute(self: Any, query: Any, params: Any = None, **options: Any) -> Any:
        result = await original(self, query, params, **options)
        if (
            not ran
            and isinstance(query, str)
            and query.lstrip().upper().startswith("SELECT")
            and f'"{schema}".sagas' in query
        ):
            ran.append(True)
            await write()
        return result

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", execute)
    return ran


def statuses(records: tuple[Any, ...]) -> list[StepStatus]:
    return [record.status for record in records]


def assert_consistent(meta: SagaMetadata) -> None:
    """What holds of every state a saga's log is ever in."""
    assert meta.steps_executed == sum(
        1 for record in meta.steps if record.status is StepStatus.COMPLETED
    )
    if meta.status is SagaStatus.EXECUTING:
        assert meta.finished_at is None
    else:
        records = meta.steps + meta.compensations
        assert StepStatus.RUNNING not in statuses(records), meta


READS: dict[str, Callable[[Any], Awaitable[list[SagaMetadata]]]] = {
    "get": lambda store: _listed(store.get("snap")),
    "running": lambda store: store.running(),
    "list_sagas": lambda store: store.list_sagas(),
    "list_sagas(status=executing)": lambda store: store.list_sagas(status="executing"),
}


async def _listed(found: Awaitable[SagaMetadata | None]) -> list[SagaMetadata]:
    meta = await found
    return [] if meta is None else [meta]


@pytest.mark.asyncio
@pytest.mark.parametrize("read", sorted(READS))
async def test_a_saga_finishing_during_a_read_is_shown_as_it_was_when_the_read_began(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        task = await hang_at(orchestrator, "snap", 1)  # step 0 completed, step 1 running

        async def finish() -> None:
            GATES["snap:1"].set()
            assert await task == [0, 1]  # the saga's end is committed

        wrote = after_the_saga_rows_are_read(monkeypatch, schema, finish)
        (meta,) = await READS[read](store)
        assert wrote  # the write did commit during the read

        assert_consistent(meta)
        # The state the read began in, not half of it and half of the next one
        # (the saga EXECUTING with both its steps COMPLETED).
        assert meta.status is SagaStatus.EXECUTING
        assert statuses(meta.steps) == [StepStatus.COMPLETED, StepStatus.RUNNING]
        assert meta.steps_executed == 1

        monkeypatch.undo()
        now = await store.get("snap")
        assert now is not None
        assert now.status is SagaStatus.COMPLETED
        assert statuses(now.steps) == [StepStatus.COMPLETED] * 2


@pytest.mark.asyncio
@pytest.mark.parametrize("limit", [None, 100])
async def test_a_finished_saga_run_again_during_a_history_read_is_shown_as_it_ended(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch, limit: int | None
) -> None:
    async with opened(dsn, schema) as store:
        orchestrator = SagaOrchestrator(store)
        with pytest.raises(Exception, match="boom 1"):
            await orchestrator.execute(pg_snap_fails(), saga_id="snap")
        tasks: list[asyncio.Task[Any]] = []

        async def run_again() -> None:
            # A compensated id may run again: its records are replaced, its first
            # step's start is committed before the step runs.
            tasks.append(await hang_at(orchestrator, "snap", 0))

        wrote = after_the_saga_rows_are_read(monkeypatch, schema, run_again)
        (meta,) = await store.history(limit)
        assert wrote

        assert_consistent(meta)
        assert meta.status is SagaStatus.COMPENSATED
        assert [r.name for r in meta.steps] == ["snap_act", "snap_explode"]
        assert statuses(meta.steps) == [StepStatus.COMPLETED, StepStatus.FAILED]
        assert statuses(meta.compensations) == [StepStatus.COMPLETED]

        monkeypatch.undo()
        GATES["snap:0"].set()
        assert await tasks[0] == [0, 1]
