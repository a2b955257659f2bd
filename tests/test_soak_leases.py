"""Seeded soak of leases and fencing: several PostgreSQL workers of one process, one schema.

Each round starts 2-4 workers (a :class:`~sagakit.PostgresStore` with a short lease, an
orchestrator and ``run_worker()`` each), runs a dozen sagas with ``execute()`` on them,
and disturbs them at seeded points, from inside the steps and compensations:

- ``stall``: the step's worker stops renewing that saga's lease and waits in the step
  until another worker has claimed it (``stall_long``: until that one finished it);
- ``outage``: the worker's whole heartbeat stops until another worker took the saga
  (its other sagas go on meanwhile, and are taken over too, or not; with two outages
  on one worker at once, it beats again once both are over);
- ``crash``: the worker dies there: its store sends nothing more, its tasks are
  cancelled, and its leases run out;
- ``stop``: the worker loop is stopped (the leases of the sagas it recovers are released
  first; its ``execute()`` calls go on);
- ``cancel``: the task running the saga is cancelled there (an ``execute()`` then
  compensates; a recovery hands the saga back).

Half the rounds end abruptly (workers crashed or stopped, ``execute()`` calls cancelled)
and a last ``recover()`` finishes what is left. The steps note every entry with the
fencing token their worker held; each store notes what it committed and what the fence
refused. The checks are what docs/postgres.md (leases, fencing, the worker loop) and
docs/durability.md (at-least-once steps and compensations) and docs/concepts/monitoring.md
(one ``SAGA_FINISHED`` or ``SAGA_STOPPED`` per run) promise. A failure names the seed and
the saga, with its plan, its fault and its story (entries, writes, transitions heard).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import pytest

from pg_helpers.db import GIVE_UP
from sagakit import (
    LeaseLost,
    PostgresStore,
    SagaMetadata,
    SagaOrchestrator,
    SagaStatus,
    StepStatus,
    StoreError,
    Transition,
    TransitionKind,
    current_step,
    saga,
    step,
)
from sagakit.stores._pg_writer import Write
from sagakit.testing import InstantSleep, SimulatedCrash

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(
        not os.environ.get("SAGAKIT_TEST_POSTGRES_DSN"),
        reason="PostgreSQL tests need SAGAKIT_TEST_POSTGRES_DSN "
        "(e.g. postgresql://postgres@127.0.0.1:5432/test)",
    ),
]

# SAGAKIT_SOAK_SEEDS=1,2,3 runs other seeds (a sweep when hunting a rare interleaving).
_SWEEP = os.environ.get("SAGAKIT_SOAK_SEEDS", "")
SEEDS = [int(seed) for seed in _SWEEP.split(",") if seed] or [5, 17, 36, 52, 88, 1234]
SAGAS = 12
LEASE = 0.6
HEARTBEAT = 0.15
POLL = 0.02
HANG = 10.0  # seconds a stalled step waits for a takeover before giving up (a guard)
MAX_ATTEMPTS = 50  # a saga taken over many times is never parked here
FAULTS = ["none", "none", "stall", "stall_long", "outage", "crash", "stop", "cancel"]

WORKER: ContextVar[Worker] = ContextVar("lease_soak_worker")
ROLE: ContextVar[str] = ContextVar("lease_soak_role")


# ------------------------------------------------------------------ what happened


@dataclass(frozen=True)
class Entry:
    """A step (``do``) or compensation (``undo``) function was entered."""

    seq: int
    saga_id: str
    kind: str
    index: int
    worker: str
    fence: int | None


@dataclass(frozen=True)
class Commit:
    """A write of a saga that a store saw committed (``refused``: the fence refused it)."""

    seq: int
    worker: str
    saga_id: str
    fence: int
    compensation: bool
    index: int | None
    step_status: str | None
    final: bool
    refused: str | None


@dataclass(frozen=True)
class Fault:
    """What disturbs a saga (see the module docstring), at which entry."""

    kind: str
    on: str  # "do" or "undo"
    index: int


@dataclass
class Plan:
    """One saga: its form, its steps (kind ``u``/``f``, behaviour, compensation), its fault."""

    saga_id: str
    form: str  # "ls_resume" or "ls_compensate"
    steps: list[list[str]]
    fault: Fault

    def __str__(self) -> str:
        return f"{self.saga_id}: {self.form} steps={self.steps} fault={self.fault}"


class Soak:
    """The shared record of one round."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.schema = schema
        self._seq = itertools.count(1)
        self.entries: list[Entry] = []
        self.commits: list[Commit] = []
        self.heard: list[tuple[int, str, Transition]] = []
        self.faults: dict[str, Fault] = {}
        self.fired: dict[str, tuple[str, int, str]] = {}  # worker, entry seq, role
        self.quiet = False  # no more faults (the last recovery runs)
        self.taken: set[str] = set()  # sagas taken over while a step of theirs stalled
        self.requests: asyncio.Queue[tuple[str, Worker, asyncio.Task[Any]]] = asyncio.Queue()
        self.problems: list[str] = []
        self.workers: list[Worker] = []
        self.events: list[tuple[int, str, str]] = []  # worker-level: crash, halt, claims
        self.claims: list[tuple[int, str, str, int]] = []  # seq, worker, saga id, fence
        self.given_up: set[str] = set()  # execute() calls the round cancelled
        self.db: Any = None

    def tick(self) -> int:
        return next(self._seq)

    async def sql(self, text: str, params: Any = None) -> list[tuple[Any, ...]]:
        cursor = await self.db.execute(text.replace("{s}", f'"{self.schema}"'), params)
        return await cursor.fetchall() if cursor.description is not None else []

    async def expire(self, where: str, params: Any) -> None:
        """Let the leases picked by ``where`` run out now (as if time passed)."""
        await self.sql(
            # Rows locked in saga id order, as the store does: no deadlock with it.
            "WITH l AS (SELECT saga_id FROM {s}.sagas "
            f"WHERE finished_at IS NULL AND {where} ORDER BY saga_id FOR UPDATE) "
            "UPDATE {s}.sagas s SET lease_until = now() - interval '1 second' "
            "FROM l WHERE s.saga_id = l.saga_id",
            params,
        )

    async def fence(self, saga_id: str) -> tuple[int, bool]:
        [(fence, finished)] = await self.sql(
            "SELECT fence, finished_at IS NOT NULL FROM {s}.sagas WHERE saga_id = %s", (saga_id,)
        )
        return int(fence), bool(finished)

    async def until(
        self, worker: Worker, check: Callable[[], Awaitable[bool]], saga_id: str, what: str
    ) -> bool:
        """Wait until ``check()`` (whether it came true), or the worker is stopping; note a
        hang as a problem, with what holds ``saga_id`` up."""
        deadline = time.monotonic() + HANG
        while not worker.stopping:
            if await check():
                return True
            if time.monotonic() > deadline:
                states = ", ".join(
                    f"{w.name}: {'crashed' if w.crashed else 'stopped' if w.stopping else 'live'}"
                    f" (loop {'done' if w.loop is None or w.loop.done() else 'running'})"
                    for w in self.workers
                )
                held = await self.held(saga_id)
                self.problems.append(f"gave up waiting for {what} [{worker.name}; {states}] {held}")
                break
            await asyncio.sleep(POLL)
        return False

    async def held(self, saga_id: str) -> str:
        """What may keep other workers from claiming ``saga_id``: its row (owner, fencing
        token, lease left, end, parking) and each worker's leases and suspended heartbeat."""
        names = {w.store.owner: w.name for w in self.workers}
        [(owner, fence, left, finished, dead)] = await self.sql(
            "SELECT owner, fence, extract(epoch FROM lease_until - now()), "
            "finished_at IS NOT NULL, dead_reason FROM {s}.sagas WHERE saga_id = %s",
            (saga_id,),
        )
        row = (
            f"row: owner {names.get(owner, owner)}, fence {fence}, lease left "
            f"{'none' if left is None else f'{float(left):.3f} s'}, finished {finished}, "
            f"parked {dead!r}"
        )
        stores = "; ".join(
            f"{w.name}: owns {w.store._held}, frozen {sorted(w.store.frozen)}, "
            f"outages {sorted(w.store.outages)}"
            for w in self.workers
        )
        return f"({row}; {stores})"

    def hear(self, worker: str) -> Callable[[Transition], None]:
        def listener(transition: Transition) -> None:
            self.heard.append((self.tick(), worker, transition))

        return listener

    async def enter(self, kind: str, index: int, behaviour: str, compensation: str) -> list[str]:
        context = current_step()
        assert context is not None
        saga_id = context.saga_id
        worker = WORKER.get()
        held = worker.store._held.get(saga_id)
        fence = None if held is None else held.fence
        seq = self.tick()
        self.entries.append(Entry(seq, saga_id, kind, index, worker.name, fence))
        fault = self.faults.get(saga_id)
        if (
            fault is not None
            and (fault.on, fault.index) == (kind, index)
            and saga_id not in self.fired
            and not self.quiet
        ):
            self.fired[saga_id] = (worker.name, seq, ROLE.get())
            await self._act(fault.kind, worker, saga_id, fence)
        if kind == "do" and behaviour == "raise":
            raise ValueError(f"step {index} refuses")
        if kind == "undo" and compensation == "fail":
            raise OSError(f"compensation {index} refuses")
        return [f"{saga_id}/{kind}/{index}"]

    async def _act(self, kind: str, worker: Worker, saga_id: str, fence: int | None) -> None:
        async def taken() -> bool:
            now, finished = await self.fence(saga_id)
            return now != fence and (finished or kind != "stall_long")

        if kind in ("stall", "stall_long"):
            worker.store.frozen.add(saga_id)
            try:
                await self.expire("saga_id = %s AND fence = %s", (saga_id, fence))
                if await self.until(
                    worker, taken, saga_id, f"another worker to take {saga_id} over"
                ):
                    self.taken.add(saga_id)
            finally:
                worker.store.frozen.discard(saga_id)
        elif kind == "outage":
            # A set, not a flag: another saga's outage on this worker ending first must
            # not restart the heartbeat, which would renew this saga's lease for good.
            worker.store.outages.add(saga_id)
            try:
                await self.expire("owner = %s", (worker.store.owner,))
                if await self.until(
                    worker, taken, saga_id, f"another worker to take {saga_id} over"
                ):
                    self.taken.add(saga_id)
            finally:
                worker.store.outages.discard(saga_id)
        elif kind == "crash":
            task = asyncio.current_task()
            assert task is not None
            self.requests.put_nowait(("crash", worker, task))
            await worker.died.wait()  # the crash cancels this task; if it runs on (a
            # compensation finishing in a shielded task, which no cancel reaches), the
            # process is gone all the same: nothing more runs or is recorded.
            raise SimulatedCrash(f"worker {worker.name} crashed")
        elif kind == "stop":
            task = asyncio.current_task()
            assert task is not None
            self.requests.put_nowait(("stop", worker, task))
            await worker.store.released.wait()
        elif kind == "cancel":
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(0)


SOAK: list[Soak] = []


def _soak() -> Soak:
    return SOAK[-1]


# ------------------------------------------------------------------ steps and sagas


@step(name="ls_undoable", timeout=3 * HANG)
async def undoable(index: int, behaviour: str, compensation: str) -> list[str]:
    return await _soak().enter("do", index, behaviour, compensation)


@undoable.compensate
async def undo(index: int, behaviour: str, compensation: str) -> list[str]:
    return await _soak().enter("undo", index, behaviour, compensation)


@step(name="ls_final", timeout=3 * HANG)
async def final(index: int, behaviour: str, compensation: str) -> list[str]:
    return await _soak().enter("do", index, behaviour, compensation)


STEPS = {"u": undoable, "f": final}


@saga(name="ls_resume")
def ls_resume(steps: list[list[str]]):  # type: ignore[no-untyped-def]
    for index, (kind, behaviour, compensation) in enumerate(steps):
        yield STEPS[kind](index, behaviour, compensation)


@saga(name="ls_compensate", recovery="compensate")
def ls_compensate(steps: list[list[str]]):  # type: ignore[no-untyped-def]
    for index, (kind, behaviour, compensation) in enumerate(steps):
        yield STEPS[kind](index, behaviour, compensation)


FORMS = {"ls_resume": ls_resume, "ls_compensate": ls_compensate}


def make_plan(rng: random.Random, saga_id: str) -> Plan:
    steps: list[list[str]] = []
    for _ in range(rng.randint(2, 4)):
        behaviour = rng.choice(["ok"] * 5 + ["raise"])
        steps.append([rng.choice("uuuf"), behaviour, rng.choice(["ok"] * 4 + ["fail"])])
        if behaviour == "raise":
            break
    kind = rng.choice(FAULTS)
    undoable_done = [i for i, s in enumerate(steps[:-1]) if s[0] == "u"]
    if steps[-1][1] == "raise" and undoable_done and rng.random() < 0.4:
        fault = Fault(kind, "undo", rng.choice(undoable_done))  # while compensating
    else:
        fault = Fault(kind, "do", rng.randrange(len(steps)))
    return Plan(saga_id, rng.choice(list(FORMS)), steps, fault)


# ------------------------------------------------------------------ workers


class SoakStore(PostgresStore):
    """A store whose heartbeat can be suspended (per saga or whole), that can "die",
    and that notes every write it saw committed or refused."""

    def __init__(self, soak: Soak, name: str) -> None:
        super().__init__(soak.dsn, schema=soak.schema, lease=LEASE, heartbeat=HEARTBEAT, max_size=4)
        self.soak = soak
        self.name = name
        self.dead = False
        self.outages: set[str] = set()  # the sagas whose outage stops the whole heartbeat
        self.frozen: set[str] = set()
        self.released = asyncio.Event()

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[Any]:
        if self.dead:
            raise StoreError(f"worker {self.name} crashed")
        async with super()._conn() as conn:
            yield conn

    async def renew(self) -> int:
        ids = [saga_id for saga_id in self._held if saga_id not in self.frozen]
        if self.dead or self.outages or not ids:
            return 0
        found = await self._run(
            self._sql.heartbeat, {"owner": self.owner, "ids": ids, "lease": self.lease}
        )
        return len(found)

    async def release_leases(self, **options: Any) -> int:
        try:
            return await super().release_leases(**options)
        finally:
            self.released.set()

    async def claim_orphans(self, **options: Any) -> Any:
        found = await super().claim_orphans(**options)
        for orphan in found:
            held = self._held.get(orphan.saga_id)
            assert held is not None
            fence = held.fence
            seq = self.soak.tick()
            self.soak.claims.append((seq, self.name, orphan.saga_id, fence))
            self.soak.events.append((seq, self.name, f"claims {orphan.saga_id} (fence {fence})"))
        return found

    async def _apply(self, writes: list[Write]) -> dict[str, str]:
        refused = await super()._apply(writes)
        seq = self.soak.tick()
        for w in writes:
            self.soak.commits.append(
                Commit(
                    seq,
                    self.name,
                    w.saga_id,
                    w.fence,
                    w.compensation,
                    w.index,
                    w.step_status,
                    w.final,
                    refused.get(w.saga_id),
                )
            )
        return refused


class Worker:
    """One worker of the round: a store, an orchestrator, its worker loop, and the
    ``execute()`` calls started on it."""

    def __init__(self, soak: Soak, name: str) -> None:
        self.soak = soak
        self.name = name
        self.store = SoakStore(soak, name)
        self.orchestrator = SagaOrchestrator(
            self.store, sleep=InstantSleep(), listeners=[soak.hear(name)]
        )
        self.stop = asyncio.Event()
        self.loop: asyncio.Task[None] | None = None
        self.runs: list[asyncio.Task[Any]] = []
        self.ids: list[str] = []  # the saga id of each of runs
        self.stopping = False
        self.crashed = False
        self.died = asyncio.Event()  # set as it crashes

    async def _as(self, role: str, work: Awaitable[Any]) -> Any:
        WORKER.set(self)
        ROLE.set(role)
        return await work

    async def start(self) -> Worker:
        await self.store.open()
        work = self.orchestrator.run_worker(
            poll_interval=POLL, max_attempts=MAX_ATTEMPTS, handle_signals=False, stop=self.stop
        )
        self.loop = asyncio.create_task(self._as("recover", work))
        return self

    def execute(self, plan: Plan, outcomes: dict[str, Any]) -> None:
        async def run() -> None:
            definition = FORMS[plan.form](plan.steps)
            try:
                outcomes[plan.saga_id] = await self.orchestrator.execute(
                    definition, saga_id=plan.saga_id
                )
            except BaseException as error:
                outcomes[plan.saga_id] = error
                if not isinstance(error, Exception | asyncio.CancelledError):
                    raise

        self.runs.append(asyncio.create_task(self._as("execute", run())))
        self.ids.append(plan.saga_id)

    async def halt(self) -> None:
        """Stop the worker loop (it releases its own sagas' leases); its execute() calls go
        on."""
        self.stopping = True
        self.soak.events.append((self.soak.tick(), self.name, "halted"))
        self.stop.set()
        assert self.loop is not None
        await asyncio.gather(self.loop, return_exceptions=True)
        # Stopped: what it held is released (a worker holding none releases nothing, so
        # release_leases() alone would never tell a step waiting for the stop).
        self.store.released.set()

    async def crash(self) -> None:
        """Die: send nothing more, cancel every task; the leases run out."""
        self.stopping = self.crashed = self.store.dead = True
        self.died.set()
        self.soak.events.append((self.soak.tick(), self.name, "crashed"))
        tasks = [task for task in (self.loop, *self.runs) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.soak.expire("owner = %s", (self.store.owner,))  # time passes

    async def close(self) -> None:
        with contextlib.suppress(StoreError):  # a crashed store cannot release anything
            await self.store.close()


# ------------------------------------------------------------------ one round


async def soak_round(seed: int, dsn: str, schema: str) -> None:
    import psycopg

    rng = random.Random(seed)
    soak = Soak(dsn, schema)
    SOAK[:] = [soak]
    soak.db = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    workers = soak.workers
    names = (f"w{n}" for n in itertools.count())
    try:
        for _ in range(rng.randint(2, 4)):
            workers.append(await Worker(soak, next(names)).start())
        plans = {p.saga_id: p for p in (make_plan(rng, f"ls-{seed}-{n}") for n in range(SAGAS))}
        soak.faults = {saga_id: plan.fault for saga_id, plan in plans.items()}
        outcomes: dict[str, Any] = {}
        for plan in plans.values():
            rng.choice(workers).execute(plan, outcomes)
        abrupt = rng.random() < 0.5

        ending = False  # the round is ending: no more replacements

        async def handle(kind: str, worker: Worker, task: asyncio.Task[Any]) -> None:
            if worker.crashed:  # too late: its process is dead already
                task.cancel()
                return
            if kind == "crash":
                await worker.crash()  # a stopped worker's process may die too
            elif not worker.stopping:
                await worker.halt()
            else:
                return  # stopped already: its execute() calls go on
            if not ending:
                workers.append(await Worker(soak, next(names)).start())  # a replacement

        async def serve(until: Callable[[], Awaitable[bool]]) -> None:
            deadline = time.monotonic() + GIVE_UP
            while not await until():
                assert time.monotonic() < deadline, f"seed {seed}: the round hangs"
                try:
                    request = await asyncio.wait_for(soak.requests.get(), POLL)
                except TimeoutError:
                    continue
                await handle(*request)

        async def enough() -> bool:
            [(finished,)] = await soak.sql(
                "SELECT count(*) FROM {s}.sagas WHERE finished_at IS NOT NULL"
            )
            return bool(finished >= (SAGAS // 2 if abrupt else SAGAS))

        await serve(enough)
        ending = True
        runs = [run for worker in workers for run in zip(worker.runs, worker.ids, strict=True)]
        if abrupt:
            for task, saga_id in runs:
                if not task.done() and rng.random() < 0.3:
                    soak.given_up.add(saga_id)
                    soak.events.append((soak.tick(), "caller", f"cancels {saga_id}"))
                    task.cancel()  # the caller gives the saga up
        for worker in list(workers):
            if not worker.stopping:
                if abrupt and rng.random() < 0.5:
                    await worker.crash()
                else:
                    await worker.halt()

        async def settled() -> bool:
            return all(task.done() for worker in workers for task in worker.runs)

        await serve(settled)
        while not soak.requests.empty():
            await handle(*soak.requests.get_nowait())
        for worker in workers:
            await worker.close()

        # A stopped (or closed) worker released its sagas; only the dead hold leases, and
        # a cancelled recovery's worker, which hands its saga back as a crash would.
        owners = {w.store.owner: w for w in workers}
        handed_back = {
            (w, t.saga_id)
            for _, w, t in soak.heard
            if t.kind is TransitionKind.SAGA_STOPPED and isinstance(t.error, asyncio.CancelledError)
        }
        for saga_id, owner in await soak.sql(
            "SELECT saga_id, owner FROM {s}.sagas WHERE finished_at IS NULL AND owner IS NOT NULL"
        ):
            holder = owners.get(owner)
            assert holder is not None, f"seed {seed}: {saga_id} owned by {owner}"
            assert holder.crashed or (holder.name, saga_id) in handed_back, (
                f"seed {seed}: {saga_id} still owned by stopped {holder.name}"
            )
        # Every worker is gone: their leases run out, and one last recovery runs.
        await soak.expire("true", ())
        soak.quiet = True
        last = Worker(soak, "last")
        await last.store.open()
        await last._as("recover", last.orchestrator.recover(max_attempts=MAX_ATTEMPTS))
        workers.append(last)
        await check(seed, soak, plans, outcomes, last.store)
    finally:
        for worker in workers:
            if not worker.crashed:
                for left in (worker.loop, *worker.runs):
                    if left is not None:
                        left.cancel()
            await worker.close()
        await soak.db.close()


# ------------------------------------------------------------------ the checks


async def check(
    seed: int, soak: Soak, plans: dict[str, Plan], outcomes: dict[str, Any], store: PostgresStore
) -> None:
    assert not soak.problems, f"seed {seed}: {soak.problems}"
    assert await store.running_count() == 0, f"seed {seed}: {await store.running()!r}"
    assert await store.dead_letters() == [], f"seed {seed}"
    crashed = {w.name for w in soak.workers if w.crashed}
    for saga_id, plan in plans.items():
        label = f"seed {seed}, saga {plan}"
        metadata = await store.get(saga_id)
        assert metadata is not None, label
        label += f"\n  log: {metadata!r}\n  story:\n    " + "\n    ".join(story(soak, saga_id))
        entries = [e for e in soak.entries if e.saga_id == saga_id]
        commits = [c for c in soak.commits if c.saga_id == saga_id]
        claims = [c for c in soak.claims if c[2] == saga_id]
        heard = [(seq, w, t) for seq, w, t in soak.heard if t.saga_id == saga_id]
        given_up = saga_id in soak.given_up
        check_end(label, plan, metadata, outcomes.get(saga_id), given_up)
        check_ended_once(label, metadata, commits, heard, crashed)
        fences = check_fences(label, entries, commits)
        check_once(label, entries, commits, fences)
        check_stopped(label, commits, claims, heard, crashed)
        await check_events(label, store, metadata, outcomes.get(saga_id))
        fired = soak.fired.get(saga_id)
        if fired is not None and plan.fault.kind in ("stall", "stall_long", "outage"):
            check_stall(label, soak, plan, fired, fences, outcomes.get(saga_id), crashed)


def story(soak: Soak, saga_id: str) -> list[str]:
    """What happened to one saga, in order: entries, writes, transitions heard."""
    lines: list[tuple[int, str]] = []
    for e in soak.entries:
        if e.saga_id == saga_id:
            lines.append((e.seq, f"{e.worker} enters {e.kind} {e.index} (fence {e.fence})"))
    for c in soak.commits:
        if c.saga_id == saga_id:
            what = "refused" if c.refused else "committed"
            if c.index is None:
                write = "the end" if c.final else "the saga's status"
            else:
                write = f"{'undo' if c.compensation else 'do'} {c.index} {c.step_status}"
            lines.append((c.seq, f"{c.worker} {what} fence {c.fence}: {write}"))
    for seq, worker, t in soak.heard:
        if t.saga_id == saga_id:
            error = f" ({type(t.error).__name__})" if t.error is not None else ""
            lines.append((seq, f"{worker} heard {t.kind} {t.step_index} {t.status}{error}"))
    for seq, worker, what in soak.events:
        if saga_id in what.split() or " " not in what:
            lines.append((seq, f"{worker}: {what}"))
    return [f"{seq}: {text}" for seq, text in sorted(lines)]


def check_end(label: str, plan: Plan, metadata: SagaMetadata, outcome: Any, given_up: bool) -> None:
    """It ended COMPLETED, COMPENSATED, or FAILED where a compensation failed for good;
    each by what could have led there."""
    status = metadata.status
    assert status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED), label
    steps = {r.index: r.status for r in metadata.steps}
    undone = {r.index: r.status for r in metadata.compensations}
    assert StepStatus.RUNNING not in (*steps.values(), *undone.values()), label
    raises = any(behaviour == "raise" for _, behaviour, _ in plan.steps)
    if status is SagaStatus.COMPLETED:
        assert not raises, label
        assert steps == dict.fromkeys(range(len(plan.steps)), StepStatus.COMPLETED), label
        assert not undone, label
        return
    # Compensated: a step failed, the caller cancelled, or a recovery compensated.
    cancelled = given_up or plan.fault.kind == "cancel"
    assert raises or cancelled or plan.form == "ls_compensate", label
    if status is SagaStatus.COMPENSATED:
        for index, record in steps.items():
            if record is StepStatus.COMPLETED and plan.steps[index][0] == "u":
                assert undone.get(index) is StepStatus.COMPLETED, label
    else:
        failed = [i for i, s in undone.items() if s is not StepStatus.COMPLETED]
        assert failed, label
        errors = {r.index: r.error or "" for r in metadata.compensations}
        for i in failed:
            if plan.steps[i][2] == "fail":
                continue
            # The caller cancelled the saga while it compensated, and the ``cancel`` fault
            # cancelled this compensation's shielded restart: nothing more is undone, it
            # ends FAILED (docs/concepts/cancellation.md).
            assert given_up, label
            assert plan.fault == Fault("cancel", "undo", i), label
            assert errors[i].startswith("CancelledError: interrupted"), label
    if isinstance(outcome, list):
        raise AssertionError(f"{label}: execute() returned {outcome}")


def check_ended_once(
    label: str,
    metadata: SagaMetadata,
    commits: list[Commit],
    heard: list[tuple[int, str, Transition]],
    crashed: set[str],
) -> None:
    """One end was written (the fence refuses a second); its worker told it, unless it
    crashed with the write in flight; no other SAGA_FINISHED was told."""
    ends = [c for c in commits if c.final and c.refused is None]
    assert len(ends) == 1, f"{label}: ends written {ends}"
    [end] = ends
    told = [(w, t) for _, w, t in heard if t.kind is TransitionKind.SAGA_FINISHED]
    assert len(told) <= 1, f"{label}: ends told {told}"
    for worker, transition in told:
        assert worker == end.worker, label
        assert transition.status is metadata.status, label
    if end.worker not in crashed and not told:
        # Cancelled (its worker loop stopped) while the end was written: the run could
        # not know it committed, and told SAGA_STOPPED with the cancellation instead.
        told_there = [t for _, w, t in heard if w == end.worker]
        assert told_there, f"{label}: the end was never told"
        last = told_there[-1]
        assert last.kind is TransitionKind.SAGA_STOPPED, f"{label}: the end was never told"
        assert isinstance(last.error, asyncio.CancelledError), label


def started(entry: Entry, commits: list[Commit]) -> Commit | None:
    """The committed start an entry ran under: its worker's latest before it."""
    found = [
        c
        for c in commits
        if c.worker == entry.worker
        and c.compensation == (entry.kind == "undo")
        and c.index == entry.index
        and c.step_status == StepStatus.RUNNING
        and c.refused is None
        and c.seq < entry.seq
    ]
    return found[-1] if found else None


def check_fences(label: str, entries: list[Entry], commits: list[Commit]) -> dict[int, int]:
    """Nothing runs but under a start its worker committed under its fencing token, and
    nothing once the fence refused that token; the token of each entry, by ``seq``."""
    fences = {}
    for entry in entries:
        start = started(entry, commits)
        assert start is not None, f"{label}: {entry} ran without a committed start"
        # The store may have let go of the token since (released, fenced out), never
        # taken another one before the run holding it stopped.
        assert entry.fence in (start.fence, None), f"{label}: {entry} under {start}"
        refused = [
            c.seq
            for c in commits
            if c.worker == entry.worker and c.fence == start.fence and c.refused == "fenced"
        ]
        assert not refused or entry.seq < min(refused), f"{label}: {entry} ran once fenced out"
        fences[entry.seq] = start.fence
    return fences


def check_once(
    label: str, entries: list[Entry], commits: list[Commit], fences: dict[int, int]
) -> None:
    """A step or compensation recorded completed never runs again; no step starts once
    a compensation began, except one a stale owner had started before it lost its
    lease (docs/postgres.md: fencing cannot take back a step in flight), once."""
    for entry in entries:
        done = [
            c.seq
            for c in commits
            if c.refused is None
            and c.compensation == (entry.kind == "undo")
            and c.index == entry.index
            and c.step_status == StepStatus.COMPLETED
        ]
        assert not done or entry.seq < min(done), f"{label}: {entry} ran again once done"
    undos = [e for e in entries if e.kind == "undo"]
    if undos:
        first = undos[0]
        late = [e for e in entries if e.kind == "do" and e.seq > first.seq]
        for entry in late:
            assert fences[entry.seq] < fences[first.seq], f"{label}: {entry} ran after {first}"
        per_owner = Counter((e.worker, fences[e.seq]) for e in late)
        assert all(n == 1 for n in per_owner.values()), f"{label}: {late}"


def settled_by_its_store(
    refusal: Commit, commits: list[Commit], claims: list[tuple[int, str, str, int]]
) -> bool:
    """Whether the refused write was a stale one the store itself settled: its caller was
    cancelled with it queued, and the store moved the fence on and sent a copy, so the
    run went on under the new token (no other worker's claim moved it)."""
    return any(
        c.worker == refusal.worker
        and c.refused is None
        and c.fence > refusal.fence
        and not any(w == c.worker and f == c.fence for _, w, _, f in claims)
        for c in commits
    )


def check_stopped(
    label: str,
    commits: list[Commit],
    claims: list[tuple[int, str, str, int]],
    heard: list[tuple[int, str, Transition]],
    crashed: set[str],
) -> None:
    """A run whose write the fence refused stopped: its worker (unless it crashed) told
    SAGA_STOPPED (LeaseLost; or the CancelledError of a worker loop stopped meanwhile)
    and no SAGA_FINISHED for it."""
    for refusal in (c for c in commits if c.refused == "fenced" and c.worker not in crashed):
        if settled_by_its_store(refusal, commits, claims):
            continue
        # The run holding that token: from its claim (or execute()) to the worker's next claim.
        begin = max(
            [seq for seq, w, _, f in claims if w == refusal.worker and f == refusal.fence],
            default=0,
        )
        end = min(
            [seq for seq, w, _, _ in claims if w == refusal.worker and seq > begin],
            default=2**62,
        )
        told = [t for seq, w, t in heard if w == refusal.worker and begin < seq < end]
        ends = [
            t for t in told if t.kind in (TransitionKind.SAGA_STOPPED, TransitionKind.SAGA_FINISHED)
        ]
        assert len(ends) == 1, f"{label}: {refusal}: the run told {ends}"
        [stopped] = ends
        assert stopped.kind is TransitionKind.SAGA_STOPPED, f"{label}: {refusal}"
        assert isinstance(stopped.error, LeaseLost | asyncio.CancelledError), label
        assert stopped.status in (SagaStatus.EXECUTING, SagaStatus.COMPENSATING), label


async def check_events(
    label: str, store: PostgresStore, metadata: SagaMetadata, outcome: Any
) -> None:
    """The event stream holds one event per completed step and compensation, in order."""
    events = await store.read_events(saga_id=metadata.id)
    read = [(e.compensation, e.step_index, e.event) for e in events]
    steps = [
        (False, r.index, f"{metadata.id}/do/{r.index}")
        for r in metadata.steps
        if r.status is StepStatus.COMPLETED
    ]
    undos = [
        (True, r.index, f"{metadata.id}/undo/{r.index}")
        for r in metadata.compensations
        if r.status is StepStatus.COMPLETED
    ]
    assert [e for e in read if not e[0]] == steps, f"{label}: events {read}"
    assert Counter(e for e in read if e[0]) == Counter(undos), f"{label}: events {read}"
    assert list(metadata.events) == [data for _, _, data in steps], label
    if isinstance(outcome, list):  # execute() returned: it completed, with these events
        assert metadata.status is SagaStatus.COMPLETED, label
        assert outcome == [data for _, _, data in steps], f"{label}: returned {outcome}"


def check_stall(
    label: str,
    soak: Soak,
    plan: Plan,
    fired: tuple[str, int, str],
    fences: dict[int, int],
    outcome: Any,
    crashed: set[str],
) -> None:
    """The run stalled past its lease, once taken over, ran nothing more, and stopped
    with LeaseLost (or, if its worker was stopped meanwhile, the cancellation that
    stopped it)."""
    worker, seq, role = fired
    fence = fences[seq]
    if plan.saga_id not in soak.taken:
        return  # the round ended (or the caller cancelled) before a takeover
    ran = [
        e
        for e in soak.entries
        if (e.saga_id, e.worker) == (plan.saga_id, worker) and fences.get(e.seq) == fence
    ]
    assert ran[-1].seq == seq, f"{label}: {worker} ran {ran} after the stall"
    if worker in crashed:
        return
    stopped = [
        t
        for _, w, t in soak.heard
        if (w, t.saga_id, t.kind) == (worker, plan.saga_id, TransitionKind.SAGA_STOPPED)
    ]
    halted = any(w.name == worker and w.stopping for w in soak.workers)
    wanted = LeaseLost | asyncio.CancelledError if halted else LeaseLost
    assert any(isinstance(t.error, wanted) for t in stopped), f"{label}: {worker}: {stopped}"
    if role == "execute" and plan.saga_id not in soak.given_up:
        assert isinstance(outcome, LeaseLost), f"{label}: execute() gave {outcome!r}"


@pytest.mark.parametrize("seed", SEEDS)
async def test_soak_leases(seed: int, dsn: str, schema: str) -> None:
    await soak_round(seed, dsn, schema)
