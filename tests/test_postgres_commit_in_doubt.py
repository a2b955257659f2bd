"""PostgreSQL: a write whose connection died mid-commit is settled, not guessed.

The batch carrying step 1's start also carries step 0's completion (staged, and held
back from listeners until durable). Its connection is lost before the server got it,
after the server committed it, or before it arrived but delivered late (after the
store settled it). Whatever happened, the log holds every completed step once, no
event twice, listeners hear each completion exactly once, and recovery does not run
a step again that completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from pg_helpers.db import GIVE_UP, expire, opened, query
from sagakit import (
    PostgresStore,
    SagaOrchestrator,
    SagaStatus,
    StepStatus,
    StoreError,
    current_step,
    saga,
    step,
)
from sagakit.stores import _pg_settle
from sagakit.stores._pg_patience import Patience
from sagakit.stores._pg_writer import Write
from sagakit.transitions import Transition, TransitionKind

RAN: Counter[tuple[str, int]] = Counter()
UNDONE: Counter[tuple[str, int]] = Counter()
GATES: dict[str, asyncio.Event] = {}
ENTERED: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    RAN.clear()
    UNDONE.clear()
    GATES.clear()
    ENTERED.clear()
    yield
    for gate in GATES.values():
        gate.set()


@step
async def emit(n: int) -> list[str]:
    """Returns one event; its first entry waits on a gate, if the test set one."""
    ctx = current_step()
    assert ctx is not None
    RAN[(ctx.saga_id, ctx.step_index)] += 1
    key = f"{ctx.saga_id}:{ctx.step_index}"
    if key in GATES and RAN[(ctx.saga_id, ctx.step_index)] == 1:
        ENTERED[key].set()
        await GATES[key].wait()
    return [f"{ctx.saga_id}:{n}"]


@emit.compensate
async def unemit(result: list[str], n: int) -> None:
    ctx = current_step()
    assert ctx is not None
    UNDONE[(ctx.saga_id, ctx.step_index)] += 1


@saga
def three():  # type: ignore[no-untyped-def]
    for n in range(3):
        yield emit(n)


def _starts(index: int, writes: list[Write]) -> bool:
    return any(
        w.index == index and w.step_status == StepStatus.RUNNING and not w.compensation
        for w in writes
    )


class LostCommit:
    """Loses the connection of the batch that starts step ``index`` (``when``: ``before``
    the server gets it, ``after`` it committed, or ``late``: delivered only once the
    store settled it, as a statement still on its way when the client gave up)."""

    def __init__(
        self, store: PostgresStore, when: str, monkeypatch: pytest.MonkeyPatch, index: int = 1
    ) -> None:
        self.when = when
        self.index = index
        self.send = store._writer._send
        self.lost = False
        self.late: list[list[Write]] = []
        self.late_answer: dict[str, str] | None = None
        self.settled = 0
        store._writer._send = self._lossy
        real = _pg_settle.settle

        async def settle(*args: Any) -> _pg_settle.Settled:
            self.settled += 1
            found = await real(*args)
            while self.late:  # arrives now: after the store looked, before it sends again
                self.late_answer = await self.send(self.late.pop())
            return found

        monkeypatch.setattr("sagakit.stores.postgres.settle", settle)

    async def _lossy(self, writes: list[Write]) -> dict[str, str]:
        if self.lost or not _starts(self.index, writes):
            return await self.send(writes)
        self.lost = True
        if self.when == "after":
            await self.send(writes)
        elif self.when == "late":  # its parameters as they went out
            self.late.append([dataclasses.replace(w) for w in writes])
        raise ConnectionError("server closed the connection unexpectedly")


def _told(heard: list[Transition], kind: TransitionKind) -> Counter[int | None]:
    return Counter(t.step_index for t in heard if t.kind is kind)


@contextlib.asynccontextmanager
async def _blocked_write(dsn: str, schema: str, app: str, saga_id: str) -> AsyncIterator[int]:
    """Hold ``saga_id``'s row lock from step 0 on, until the write starting step 1 waits
    for it; yields the waiting backend's pid, and lets the lock go on leaving."""
    psycopg = pytest.importorskip("psycopg")
    key = f"{saga_id}:0"
    GATES[key] = asyncio.Event()
    ENTERED[key] = asyncio.Event()
    await ENTERED[key].wait()
    async with await psycopg.AsyncConnection.connect(dsn) as blocker:
        await blocker.execute(
            f'SELECT 1 FROM "{schema}".sagas WHERE saga_id = %s FOR UPDATE', (saga_id,)
        )
        GATES[key].set()
        waiting = (
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
            "AND wait_event_type = 'Lock'"
        )
        deadline = asyncio.get_running_loop().time() + GIVE_UP
        while not (blocked := query(dsn, waiting, (app,))):
            assert asyncio.get_running_loop().time() < deadline, "the write never waited"
            await asyncio.sleep(0.01)
        try:
            yield int(blocked[0][0])
        finally:
            await blocker.rollback()  # (the store's look-up waits for this lock too)


# Terminates the backends of an application (waiting until each is gone).
_KILL = "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE application_name = %s"


def _unreachable() -> StoreError:
    """What a statement raises while the server cannot be reached."""
    psycopg = pytest.importorskip("psycopg")
    error = StoreError("PostgreSQL saga log: OperationalError: connection refused")
    error.__cause__ = psycopg.OperationalError("connection refused")
    return error


def _refused() -> StoreError:
    """What a statement the server refuses raises (no lost connection)."""
    psycopg = pytest.importorskip("psycopg")
    error = StoreError("PostgreSQL saga log: InsufficientPrivilege: permission denied")
    error.__cause__ = psycopg.errors.InsufficientPrivilege("permission denied")
    return error


def _giving_up(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Records (the loop's time) whenever the store stops trying again: its patience,
    ``connect_timeout`` after the loss, ran out."""
    gave_up: list[float] = []
    real = Patience.wait

    async def wait(self: Patience) -> bool:
        if await real(self):
            return True
        gave_up.append(asyncio.get_running_loop().time())
        return False

    monkeypatch.setattr(Patience, "wait", wait)
    return gave_up


async def _events(store: PostgresStore) -> list[Any]:
    return [e.event for e in await store.read_events()]


@pytest.mark.asyncio
@pytest.mark.parametrize("when", ["before", "after", "late"])
async def test_a_lost_commit_is_settled_and_sent_again_only_if_it_did_not_commit(
    dsn: str, schema: str, when: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with opened(dsn, schema) as store:
        lost = LostCommit(store, when, monkeypatch)
        heard: list[Transition] = []
        orchestrator = SagaOrchestrator(store, listeners=[heard.append])
        assert await orchestrator.execute(three(), saga_id="s") == ["s:0", "s:1", "s:2"]
        assert lost.lost
        assert lost.settled == 1
        if when == "late":
            assert lost.late_answer == {"s": "fenced"}  # it can no longer commit
        assert dict(RAN) == {("s", 0): 1, ("s", 1): 1, ("s", 2): 1}
        assert await _events(store) == ["s:0", "s:1", "s:2"]  # none lost, none twice
        assert _told(heard, TransitionKind.STEP_COMPLETED) == {0: 1, 1: 1, 2: 1}
        meta = await store.get("s")
        assert meta is not None
        assert meta.status is SagaStatus.COMPLETED
        assert [(s.status, s.attempts) for s in meta.steps] == [(StepStatus.COMPLETED, 1)] * 3


@pytest.mark.asyncio
@pytest.mark.parametrize("when", ["before", "after", "late"])
async def test_a_generated_id_whose_first_write_was_lost_is_logged_once(
    dsn: str, schema: str, when: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lost write carried the saga's row: a late one must not insert it and apply
    # its writes beside the ones sent again.
    async with opened(dsn, schema) as store:
        lost = LostCommit(store, when, monkeypatch, index=0)
        events = await SagaOrchestrator(store).execute(three())
        saga_id = events[0].split(":")[0]
        assert lost.lost
        if when == "late":
            assert lost.late_answer == {saga_id: "fenced"}
        assert sorted(RAN.values()) == [1, 1, 1]
        assert await _events(store) == events
        rows = query(dsn, f'SELECT saga_id, status FROM "{schema}".sagas')
        assert rows == [(saga_id, "completed")]


@pytest.mark.asyncio
@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_settling_whose_connection_is_lost_too_is_settled_again(
    dsn: str, schema: str, when: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: with a server killing the store's connections again and again, the
    # settling of a lost commit met a killed connection too. It was tried once: the
    # write raised StoreError and the saga was compensated, though the log could be
    # reached again a moment later. Now it is settled again on a new connection.
    app = f"sk_settle_{schema}"
    async with opened(f"{dsn}?application_name={app}", schema) as store:
        lost = LostCommit(store, when, monkeypatch)
        real = _pg_settle.settle
        calls = 0

        async def killed_once(*args: Any) -> _pg_settle.Settled:
            nonlocal calls
            calls += 1
            if calls == 1:  # the server kills every connection of the store meanwhile
                killed = query(dsn, _KILL, (app,))
                assert killed
                assert all(done for (done,) in killed)
                # The settling's first statement meets a killed connection: one killed as
                # the statement went out (an idle one the pool hands out is replaced
                # before anything is sent on it).
                raise _unreachable()
            return await real(*args)

        monkeypatch.setattr("sagakit.stores.postgres.settle", killed_once)
        heard: list[Transition] = []
        orchestrator = SagaOrchestrator(store, listeners=[heard.append])
        assert await orchestrator.execute(three(), saga_id="s") == ["s:0", "s:1", "s:2"]
        assert lost.lost
        assert calls == 2
        assert dict(RAN) == {("s", 0): 1, ("s", 1): 1, ("s", 2): 1}
        assert not UNDONE
        assert await _events(store) == ["s:0", "s:1", "s:2"]  # none lost, none twice
        assert _told(heard, TransitionKind.STEP_COMPLETED) == {0: 1, 1: 1, 2: 1}
        meta = await store.get("s")
        assert meta is not None
        assert meta.status is SagaStatus.COMPLETED
        assert [(s.status, s.attempts) for s in meta.steps] == [(StepStatus.COMPLETED, 1)] * 3


@pytest.mark.asyncio
async def test_a_run_cancelled_while_its_write_is_settled_again_leaves_it_in_doubt(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cancelled while waiting to settle again: the cancellation goes through at once, and
    # the write stays in doubt, settled by the compensation's start as before.
    async with opened(dsn, schema) as store:
        lost = LostCommit(store, "after", monkeypatch)
        real = _pg_settle.settle
        failed = asyncio.Event()
        calls = 0

        async def unreachable_once(*args: Any) -> _pg_settle.Settled:
            nonlocal calls
            calls += 1
            if calls == 1:
                failed.set()
                raise _unreachable()  # the store waits, to settle it again
            return await real(*args)

        monkeypatch.setattr("sagakit.stores.postgres.settle", unreachable_once)
        heard: list[Transition] = []
        orchestrator = SagaOrchestrator(store, listeners=[heard.append])
        running = asyncio.create_task(orchestrator.execute(three(), saga_id="s"))
        await failed.wait()
        assert "s" in store._doubts
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert lost.lost
        assert calls == 2  # not again after the cancellation: by the compensation's start
        assert dict(RAN) == {("s", 0): 1}
        assert dict(UNDONE) == {("s", 0): 1}
        assert await _events(store) == ["s:0"]
        assert _told(heard, TransitionKind.STEP_COMPLETED) == {0: 1}
        meta = await store.get("s")
        assert meta is not None
        assert meta.status is SagaStatus.COMPENSATED
        assert meta.steps[0].status is StepStatus.COMPLETED


@pytest.mark.asyncio
@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("why", ["unreachable", "refused"])
async def test_a_lost_commit_that_cannot_be_settled_yet_is_settled_by_the_next_write(
    dsn: str, schema: str, when: str, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store cannot settle the write: the log stays unreachable for longer than
    # connect_timeout while it tries again, or refuses the statement (not tried again).
    # Step 1's start is not known to be durable, so step 1 never runs and step 0 is
    # undone. The compensation's start settles the write first: step 0's completion is
    # in the log once, and listeners hear it once, before its compensation.
    async with opened(dsn, schema) as store:
        lost = LostCommit(store, when, monkeypatch)
        real = _pg_settle.settle
        gave_up = _giving_up(monkeypatch)
        store.connect_timeout = 0.2
        calls = 0

        async def unsettled(*args: Any) -> _pg_settle.Settled:
            nonlocal calls
            calls += 1
            if why == "refused" and calls == 1:
                raise _refused()
            if why == "unreachable" and not gave_up:
                raise _unreachable()
            return await real(*args)

        monkeypatch.setattr("sagakit.stores.postgres.settle", unsettled)
        heard: list[Transition] = []
        orchestrator = SagaOrchestrator(store, listeners=[heard.append])
        with pytest.raises(StoreError, match="server closed the connection") as raised:
            await orchestrator.execute(three(), saga_id="s")
        assert lost.lost
        if why == "unreachable":
            assert "within 0.2 s (connect_timeout)" in str(raised.value)
            assert calls > 2  # tried again until connect_timeout, then by the next write
        else:
            assert calls == 2
            assert not gave_up
        assert dict(RAN) == {("s", 0): 1}
        assert dict(UNDONE) == {("s", 0): 1}
        assert await _events(store) == ["s:0"]
        assert _told(heard, TransitionKind.STEP_COMPLETED) == {0: 1}
        kinds = [t.kind for t in heard if t.step_index == 0]
        assert kinds.index(TransitionKind.STEP_COMPLETED) < kinds.index(
            TransitionKind.COMPENSATION_STARTED
        )
        meta = await store.get("s")
        assert meta is not None
        assert meta.status is SagaStatus.COMPENSATED
        assert meta.steps[0].status is StepStatus.COMPLETED
        assert [c.status for c in meta.compensations] == [StepStatus.COMPLETED]


@pytest.mark.asyncio
@pytest.mark.parametrize("when", ["before", "after"])
async def test_recovery_does_not_run_again_a_step_whose_commit_was_lost(
    dsn: str, schema: str, when: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with opened(dsn, schema) as a, opened(dsn, schema) as b:
        LostCommit(a, when, monkeypatch)
        GATES["s:2"] = asyncio.Event()
        ENTERED["s:2"] = asyncio.Event()
        running = asyncio.create_task(SagaOrchestrator(a).execute(three(), saga_id="s"))
        await ENTERED["s:2"].wait()
        expire(dsn, schema, "s")  # a's worker "died" inside step 2
        outcomes = await SagaOrchestrator(b).recover()
        assert [o.status for o in outcomes] == [SagaStatus.COMPLETED]
        assert dict(RAN) == {("s", 0): 1, ("s", 1): 1, ("s", 2): 2}
        GATES["s:2"].set()
        await asyncio.gather(running, return_exceptions=True)  # fenced out
        assert await _events(b) == ["s:0", "s:1", "s:2"]


@pytest.mark.asyncio
async def test_a_backend_killed_mid_commit_loses_nothing_and_doubles_nothing(
    dsn: str, schema: str
) -> None:
    # A real connection death: the batch starting step 1 (carrying step 0's completion)
    # waits on a lock another session holds, and its backend is terminated there.
    app = f"sk_doubt_{schema}"
    async with opened(f"{dsn}?application_name={app}", schema) as store:
        heard: list[Transition] = []
        orchestrator = SagaOrchestrator(store, listeners=[heard.append])
        running = asyncio.create_task(orchestrator.execute(three(), saga_id="s"))
        async with _blocked_write(dsn, schema, app, "s") as waiting:
            query(dsn, "SELECT pg_terminate_backend(%s)", (waiting,))
        assert await running == ["s:0", "s:1", "s:2"]
        assert dict(RAN) == {("s", 0): 1, ("s", 1): 1, ("s", 2): 1}
        assert await _events(store) == ["s:0", "s:1", "s:2"]
        assert _told(heard, TransitionKind.STEP_COMPLETED) == {0: 1, 1: 1, 2: 1}


@pytest.mark.asyncio
@pytest.mark.parametrize("then", ["commits", "dies"])
async def test_a_write_whose_caller_was_cancelled_in_flight_is_settled_by_the_next(
    dsn: str, schema: str, then: str
) -> None:
    # Cancelled while the batch starting step 1 waits on a lock; then the batch commits,
    # or its backend dies. The compensation's write finds out which instead of guessing.
    app = f"sk_doubt_{schema}"
    async with opened(f"{dsn}?application_name={app}", schema) as store:
        heard: list[Transition] = []
        orchestrator = SagaOrchestrator(store, listeners=[heard.append])
        running = asyncio.create_task(orchestrator.execute(three(), saga_id="s"))
        async with _blocked_write(dsn, schema, app, "s") as waiting:
            running.cancel()
            if then == "dies":
                query(dsn, "SELECT pg_terminate_backend(%s)", (waiting,))
        with pytest.raises(asyncio.CancelledError):
            await running
        assert dict(RAN) == {("s", 0): 1}
        assert dict(UNDONE) == {("s", 0): 1}
        assert await _events(store) == ["s:0"]
        assert _told(heard, TransitionKind.STEP_COMPLETED) == {0: 1}
        meta = await store.get("s")
        assert meta is not None
        assert meta.status is SagaStatus.COMPENSATED
        assert meta.steps[0].status is StepStatus.COMPLETED


@pytest.mark.asyncio
@pytest.mark.parametrize("when", ["before", "after"])
async def test_leases_released_while_a_first_write_is_in_doubt_are_released_at_once(
    dsn: str, schema: str, when: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: a generated id's first write (its row with step 0's start) in doubt, and
    # the leases released before it is settled (the process stops). The release found no row when
    # the write had not committed; the run's next write then inserted the row to settle
    # it, owned by this store with a fresh lease nobody renewed: no worker could take the
    # saga over before that lease ran out, and its claim counted a recovery attempt.
    async with opened(dsn, schema, lease=60.0, heartbeat=20.0) as store:
        LostCommit(store, when, monkeypatch, index=0)
        real = _pg_settle.settle
        gave_up = _giving_up(monkeypatch)
        store.connect_timeout = 0.2
        calls = 0

        async def unreachable_then_released(*args: Any) -> _pg_settle.Settled:
            nonlocal calls
            calls += 1
            if not gave_up:
                raise _unreachable()
            await store.release_leases()  # the process stops, as the next write settles
            return await real(*args)

        monkeypatch.setattr("sagakit.stores.postgres.settle", unreachable_then_released)
        heard: list[Transition] = []
        orchestrator = SagaOrchestrator(store, listeners=[heard.append])
        with pytest.raises(StoreError):
            await orchestrator.execute(three())
        saga_id = heard[0].saga_id
        assert gave_up
        assert calls > 2  # tried again until connect_timeout, then by finish()
        assert not RAN  # step 0's start was never known to be durable
    async with opened(dsn, schema, lease=60.0, heartbeat=20.0) as other:
        (orphan,) = await other.claim_orphans()  # at once: released, not leased
        assert orphan.saga_id == saga_id
        assert orphan.recovery_attempts == 0  # released, not a crash
        await other.dead_letter(saga_id, "test over")
