"""Seeded soak of the failure modes ``test_soak.py`` leaves out, each against its own model.

- a saga log write that fails (``StoreError`` before or after its commit, or a
  ``sqlite3``/server error rolling the transaction back) at a random transition, with
  recovery finishing the sagas whose end was not recorded;
- ``KeyboardInterrupt`` / ``SystemExit`` raised by a step (FAILED, not compensated),
  among ordinary sagas told to listeners that raise and to a slow async one.

(Listeners told the transitions of sagas whose tasks are cancelled, mid-listener too, are
``test_soak_listeners.py``'s; ``LeaseLost`` among several PostgreSQL stores and workers of
one process is ``test_soak_leases.py``'s.)

The steps record what they really did in :data:`EFFECTS`; each test compares that,
what ``execute()`` gave, what the log holds (re-read by a new store object) and what
the listeners heard with what the documentation promises. A failure names the seed and
the saga and prints its plan: copy it into a regression test to reproduce it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pg_helpers.db import dsn_or_skip, fresh_schema
from sagakit import (
    CompensationFailed,
    SagaMetadata,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StepFailed,
    StepStatus,
    StoreError,
    Transition,
    TransitionKind,
    current_step,
    saga,
    step,
)
from sagakit.testing import InstantSleep
from sagakit.testing import simulate_restart as restart

pytestmark = pytest.mark.asyncio

# SAGAKIT_SOAK_SEEDS=1,2,3 runs other seeds (a sweep when hunting a rare interleaving).
_SWEEP = os.environ.get("SAGAKIT_SOAK_SEEDS", "")
SEEDS = [int(seed) for seed in _SWEEP.split(",") if seed] or [3, 11, 64, 500, 2027]

# saga id -> what the steps and compensations really did, in order
EFFECTS: dict[str, list[tuple[str, int]]] = {}


def _effects() -> list[tuple[str, int]]:
    context = current_step()
    assert context is not None
    return EFFECTS.setdefault(context.saga_id, [])


async def _do(index: int, behaviour: str, compensation: str) -> str:
    _effects().append(("do", index))
    await asyncio.sleep(0)
    if behaviour == "raise":
        raise ValueError(f"step {index} refuses")
    if behaviour == "interrupt":
        raise KeyboardInterrupt
    if behaviour == "exit":
        raise SystemExit(3)
    return f"r{index}"


@step(name="fault_soak_undoable", timeout=5.0)
async def undoable(index: int, behaviour: str, compensation: str) -> str:
    return await _do(index, behaviour, compensation)


@undoable.compensate
async def undo(index: int, behaviour: str, compensation: str) -> str:
    _effects().append(("undo", index))
    await asyncio.sleep(0)
    if compensation == "fail":
        raise OSError(f"compensation {index} refuses")
    return f"u{index}"


@step(name="fault_soak_final", timeout=5.0)
async def final(index: int, behaviour: str, compensation: str) -> str:
    return await _do(index, behaviour, compensation)


STEPS = {"u": undoable, "f": final}


@saga(name="fault_soak_generator")
def fault_generator(plan: list[list[str]]):  # type: ignore[no-untyped-def]
    for index, (kind, behaviour, compensation) in enumerate(plan):
        yield STEPS[kind](index, behaviour, compensation)


@saga(name="fault_soak_list")
def fault_list(plan: list[list[str]]):  # type: ignore[no-untyped-def]
    return [STEPS[k](index, b, c) for index, (k, b, c) in enumerate(plan)]


FORMS = {"generator": fault_generator, "list": fault_list}


def random_steps(rng: random.Random, *, fatal: bool = False) -> list[list[str]]:
    """1-6 steps; each with a compensation or not, raising now and then."""
    steps = []
    count = rng.randint(1, 6)
    for _ in range(count):
        behaviour = rng.choice(["ok"] * 7 + ["raise"])
        steps.append([rng.choice("uuuf"), behaviour, rng.choice(["ok"] * 5 + ["fail"])])
        if behaviour != "ok":
            break
    if fatal:
        steps[rng.randrange(len(steps))][1] = rng.choice(["interrupt", "exit"])
        for later, planned in enumerate(steps):
            if planned[1] in ("interrupt", "exit"):
                del steps[later + 1 :]
                break
    return steps


# ------------------------------------------------------------------ the listeners' view


def check_trail(
    label: str,
    transitions: list[Transition],
    metadata: SagaMetadata | None,
    *,
    ended: bool = True,
    recovered: bool = False,
) -> None:
    """What a listener heard of one run is a consistent story, all of it durable.

    It starts with ``SAGA_STARTED``; it ends with exactly one ``SAGA_FINISHED`` or
    ``SAGA_STOPPED`` (when ``ended``); a compensation completes only after its step
    did; every completion heard is in the log (``metadata``, read afterwards).
    """
    kinds = [t.kind for t in transitions]
    trail = "\n    ".join(f"{t.kind} {t.step_index} {t.status}" for t in transitions)
    what = f"{label}: listeners heard\n    {trail}\n  log: {metadata!r}"
    assert kinds, what
    # (recovery that compensates tells no SAGA_STARTED, only the one that resumes)
    assert recovered or kinds[0] is TransitionKind.SAGA_STARTED, what
    assert kinds.count(TransitionKind.SAGA_STARTED) == (0 if recovered else 1), what
    ends = [k for k in kinds if k in (TransitionKind.SAGA_FINISHED, TransitionKind.SAGA_STOPPED)]
    if ended:
        assert len(ends) == 1, what
        assert kinds[-1] in ends, what
    else:
        assert not ends, what
    completed = {t.step_index for t in transitions if t.kind is TransitionKind.STEP_COMPLETED}
    for position, t in enumerate(transitions):
        if t.kind is TransitionKind.COMPENSATION_COMPLETED:
            heard_before = {
                u.step_index
                for u in transitions[:position]
                if u.kind
                in (
                    TransitionKind.STEP_COMPLETED,
                    TransitionKind.STEP_FAILED,
                    TransitionKind.STEP_TIMED_OUT,
                )
            }
            if t.step_index in completed:
                assert t.step_index in heard_before, what
    if metadata is not None:
        logged = {r.index for r in metadata.steps if r.status is StepStatus.COMPLETED}
        assert completed <= logged, f"a completion heard is not in the log: {what}"
        undone = {r.index for r in metadata.compensations if r.status is StepStatus.COMPLETED}
        heard_undone = {
            t.step_index for t in transitions if t.kind is TransitionKind.COMPENSATION_COMPLETED
        }
        assert heard_undone <= undone, f"a compensation heard is not in the log: {what}"
        if ends and ends[0] is TransitionKind.SAGA_FINISHED:
            assert transitions[-1].status is metadata.status, what


class Trails:
    """A listener keeping every transition per saga id, in order."""

    def __init__(self) -> None:
        self.by_id: dict[str, list[Transition]] = {}

    def __call__(self, transition: Transition) -> None:
        self.by_id.setdefault(transition.saga_id, []).append(transition)


# ------------------------------------------------------------------ failing log writes


class _Fault(Exception):
    pass


LEFT = "left"  # the run's end was not recorded: the log still shows it running


@dataclass
class WriteFault:
    """Make the ``n``-th ``record()`` of a saga fail: ``before`` (nothing sent),
    ``commit`` (sent, and the database rolls the transaction back: a ``sqlite3`` disk
    error, or a statement the PostgreSQL server refuses) or ``after`` (it committed, but
    the answer was lost with the connection)."""

    n: int
    mode: str


@dataclass
class StoreModel:
    """One saga's run with one failing log write, by the documented rules."""

    steps: list[list[str]]
    fault: WriteFault
    store: str = "sqlite"  # or "postgres"
    records: int = 0
    fired: str | None = None
    effects: list[tuple[str, int]] = field(default_factory=list)
    outcome: str = "completed"  # StepFailed, CompensationFailed, StoreError
    status: SagaStatus | str = SagaStatus.COMPLETED  # or LEFT, for recovery to finish
    recovered: SagaStatus | None = None  # the status recovery ends a LEFT saga with
    step_status: dict[int, StepStatus] = field(default_factory=dict)
    compensated: dict[int, StepStatus] = field(default_factory=dict)
    # (compensation?, index) of a record whose first start was never committed: a log
    # may have no row for it (SQLite) or the failed one the run's end wrote (PostgreSQL)
    unlogged: set[tuple[bool, int]] = field(default_factory=set)

    def unstarted(self, compensation: bool, index: int) -> None:
        if self.fault.mode != "after":
            self.unlogged.add((compensation, index))

    def record(self, what: str) -> None:
        self.records += 1
        if (
            self.store == "postgres"
            and self.fault.mode == "commit"
            and what.startswith("compensation_retrying")
        ):
            # PostgreSQL does not write a retry (the next start's attempt implies it),
            # and nothing is staged since the compensation's start: nothing is sent, so
            # there is no transaction to roll back.
            return
        if self.records == self.fault.n:
            self.fired = what
            raise _Fault

    def run(self) -> StoreModel:
        done: list[int] = []
        failure = None
        for index, (_, behaviour, _) in enumerate(self.steps):
            try:
                self.record(f"step_started {index}")
            except _Fault:  # never started: failed, not compensated
                self.step_status[index] = StepStatus.FAILED
                self.unstarted(False, index)
                failure = "StoreError"
                break
            self.effects.append(("do", index))
            if behaviour == "raise":
                self.step_status[index] = StepStatus.FAILED
                # Recorded or not, the saga fails with the step's StepFailed: a failure the
                # log could not record is logged, noted on it and written with the end.
                with contextlib.suppress(_Fault):
                    self.record(f"step_failed {index}")
                failure = "StepFailed"
                break
            self.step_status[index] = StepStatus.COMPLETED  # staged, with the next record
            done.append(index)
        if failure is None:
            self._finish(SagaStatus.COMPLETED, "completed")
            return self
        status: SagaStatus = SagaStatus.COMPENSATED
        for index in reversed(done):
            if self.steps[index][0] != "u":
                continue
            ended = self._undo(index)
            if ended == "store":  # the saga ends FAILED at once, with the StoreError
                self._finish(SagaStatus.FAILED, "StoreError")
                return self
            if ended == "failed":
                status = SagaStatus.FAILED
                failure = "CompensationFailed"
                break
        self._finish(status, failure)
        return self

    def _undo(self, index: int, *, recovering: bool = False) -> str:
        for attempt in (1, 2, 3):
            try:
                self.record(f"compensation_started {index}")
            except _Fault:
                self.compensated[index] = StepStatus.FAILED
                if attempt == 1:
                    self.unstarted(True, index)
                return "store"
            self.effects.append(("undo", index))
            if self.steps[index][2] == "ok":
                self.compensated[index] = StepStatus.COMPLETED
                return "ok"
            try:
                self.record(f"compensation_{'retrying' if attempt < 3 else 'failed'} {index}")
            except _Fault:
                self.compensated[index] = StepStatus.FAILED
                return "store"
        self.compensated[index] = StepStatus.FAILED
        return "failed"

    def _finish(self, status: SagaStatus, outcome: str) -> None:
        self.outcome = outcome
        try:
            self.record("saga_finished")
        except _Fault:
            self.outcome = "StoreError"
            if self.fault.mode != "after":
                self.status = LEFT
                self._recover(status)
                return
        self.status = status

    def _recover(self, status: SagaStatus) -> None:
        """Recovery of the saga left running: nothing runs again for a completed one;
        a compensation that failed for good is not run again and ends it FAILED there (as
        the run did), the others are done."""
        if status is SagaStatus.COMPLETED:
            self.recovered = SagaStatus.COMPLETED
            return
        failed = False
        self.fault = WriteFault(0, "none")
        undo = [
            i
            for i in sorted(self.step_status, reverse=True)
            if self.step_status[i] is StepStatus.COMPLETED and self.steps[i][0] == "u"
        ]
        for index in undo:
            if self.compensated.get(index) is StepStatus.COMPLETED:
                continue
            if self.compensated.get(index) is StepStatus.FAILED:  # in the log: for good
                failed = True
                break
            if self._undo(index) == "failed":
                failed = True
                break
        self.recovered = SagaStatus.FAILED if failed else SagaStatus.COMPENSATED


class FailingWrites:
    """Injects :class:`WriteFault`\\ s into a durable store's ``record()``, per saga id."""

    def __init__(self, store: Any, faults: dict[str, WriteFault]) -> None:
        self.store = store
        self.faults = faults
        self.counts: Counter[str] = Counter()
        self.poisoned: set[str] = set()
        inner = store.record

        async def record(run: Any, transition: Transition) -> None:
            self.counts[run.id] += 1
            fault = self.faults.get(run.id)
            if fault is None or fault.n != self.counts[run.id]:
                await inner(run, transition)
                return
            if fault.mode == "before":
                raise StoreError("injected: the saga log cannot be reached")
            if fault.mode == "after":
                await inner(run, transition)
                raise StoreError("injected: the connection was lost after the commit")
            self.poisoned.add(run.id)
            try:
                await inner(run, transition)
            finally:
                self.poisoned.discard(run.id)

        store.record = record
        writer = store._writer
        if isinstance(store, SQLiteStore):
            commit = writer._commit

            def poison(conn: sqlite3.Connection) -> None:
                raise sqlite3.OperationalError("disk I/O error (injected)")

            def failing_commit(jobs: list[Any], wait: bool) -> list[Any]:
                if self.poisoned:  # run alone: this commit is the poisoned saga's
                    return commit([*jobs, poison], wait)  # type: ignore[no-any-return]
                return commit(jobs, wait)  # type: ignore[no-any-return]

            writer._commit = failing_commit
        else:
            from sagakit.stores._pg_writer import Rejected

            send = writer._send

            async def failing_send(writes: list[Any]) -> dict[str, str]:
                if any(w.saga_id in self.poisoned for w in writes):
                    raise Rejected("injected: the server refused the statement")
                return await send(writes)  # type: ignore[no-any-return]

            writer._send = failing_send


@asynccontextmanager
async def durable(
    kind: str, tmp_path: Path, schema: str | None
) -> AsyncIterator[Callable[[], Any]]:
    """A factory of store objects on one saga log (a new object per "process")."""
    if kind == "sqlite":
        yield lambda: SQLiteStore(tmp_path / "faults.db")
        return
    from sagakit import PostgresStore

    dsn = dsn_or_skip()
    yield lambda: PostgresStore(dsn, schema=schema or "sagakit")


async def _open(store: Any) -> Any:
    opener = getattr(store, "open", None)
    if opener is not None:
        await opener()
    return store


def _outcome_name(outcome: Any) -> str:
    if isinstance(outcome, list):
        return "completed"
    for kind in (CompensationFailed, StepFailed, StoreError):
        if isinstance(outcome, kind):
            return kind.__name__
    return repr(outcome)


async def store_fault_round(seed: int, kind: str, tmp_path: Path, schema: str | None) -> None:
    rng = random.Random(seed)
    async with durable(kind, tmp_path, schema) as new_store:
        plans = []
        for number in range(30):
            steps = random_steps(rng)
            probe = StoreModel(steps, WriteFault(0, "none")).run()
            fault = WriteFault(
                rng.randint(1, probe.records), rng.choice(["before", "commit", "after"])
            )
            saga_id = f"wf-{seed}-{kind}-{number}"
            plans.append((saga_id, rng.choice(list(FORMS)), steps, fault))
        store = await _open(new_store())
        FailingWrites(store, {saga_id: fault for saga_id, _, _, fault in plans})
        trails = Trails()
        orchestrator = SagaOrchestrator(store, sleep=InstantSleep(), listeners=[trails])
        left = []
        for saga_id, form, steps, fault in plans:  # one at a time: a commit is one saga's
            model = StoreModel(steps, fault, kind).run()
            label = (
                f"seed {seed}, {kind}, saga {saga_id}: steps={steps!r}, {fault}, "
                f"fault at {model.fired}"
            )
            EFFECTS.pop(saga_id, None)
            try:
                outcome: Any = await orchestrator.execute(FORMS[form](steps).with_id(saga_id))
            except (StepFailed, CompensationFailed, StoreError) as error:
                outcome = error
            assert _outcome_name(outcome) == model.outcome, f"{label}: {outcome!r}"
            assert EFFECTS.get(saga_id, []) == model.effects, f"{label}: {EFFECTS.get(saga_id)}"
            assert not orchestrator._held, f"{label}: transitions held for a run that ended"
            metadata = await store.get(saga_id)
            assert metadata is not None, label
            if model.status == LEFT:
                assert metadata.status in (SagaStatus.EXECUTING, SagaStatus.COMPENSATING), (
                    f"{label}: {metadata!r}"
                )
                left.append((saga_id, model, label))
                check_trail(label, trails.by_id[saga_id], metadata)
                continue
            assert metadata.status is model.status, f"{label}: {metadata!r}"
            check_log(label, metadata, model)
            check_trail(label, trails.by_id[saga_id], metadata)
        assert {m.id for m in await store.running()} == {saga_id for saga_id, _, _ in left}

        # The runs whose end was not recorded are finished by recovery, once this
        # "process" is gone (on PostgreSQL: once their leases ran out).
        await restart(store)
        await store.close()
        store = await _open(new_store())
        trails = Trails()
        recovering = SagaOrchestrator(store, sleep=InstantSleep(), listeners=[trails])
        outcomes = {o.saga_id: o.status for o in await recovering.recover()}
        assert outcomes == {saga_id: model.recovered for saga_id, model, _ in left}, outcomes
        for saga_id, model, label in left:
            metadata = await store.get(saga_id)
            assert metadata is not None
            assert metadata.status is model.recovered, f"{label}: {metadata!r}"
            assert EFFECTS.get(saga_id, []) == model.effects, f"{label}: {EFFECTS.get(saga_id)}"
            check_log(label, metadata, model)
            check_trail(
                label,
                trails.by_id[saga_id],
                metadata,
                recovered=model.recovered is not SagaStatus.COMPLETED,
            )
        assert await store.running_count() == 0
        await store.close()
        for saga_id, *_ in plans:
            EFFECTS.pop(saga_id, None)


def check_log(label: str, metadata: SagaMetadata, model: StoreModel) -> None:
    """The log's step and compensation records match the model: a step recorded
    completed stays so, and nothing of a finished saga is left running."""
    steps = {r.index: r.status for r in metadata.steps}
    wanted = dict(model.step_status)
    for compensation, index in model.unlogged:
        if not compensation and index not in steps:
            del wanted[index]
    assert steps == wanted, f"{label}: steps {steps}\n  {metadata!r}"
    compensations = {r.index: r.status for r in metadata.compensations}
    wanted = dict(model.compensated)
    for compensation, index in model.unlogged:
        if compensation and index not in compensations:
            del wanted[index]
    assert compensations == wanted, f"{label}: compensations {compensations}"
    for record in (*metadata.steps, *metadata.compensations):
        assert record.status is not StepStatus.RUNNING, f"{label}: {metadata!r}"


@pytest.fixture
def pg_schema() -> Any:
    yield from fresh_schema(dsn_or_skip())


@pytest.mark.parametrize("seed", SEEDS)
async def test_soak_store_faults_sqlite(seed: int, tmp_path: Path) -> None:
    await store_fault_round(seed, "sqlite", tmp_path, None)


@pytest.mark.parametrize("seed", SEEDS)
async def test_soak_store_faults_postgres(seed: int, tmp_path: Path, pg_schema: str) -> None:
    await store_fault_round(seed, "postgres", tmp_path, pg_schema)


async def test_soak_store_faults_after_a_compensation_failed_for_good(tmp_path: Path) -> None:
    """A seed with a saga whose end is not written after a compensation failed for good:
    recovery ran that compensation again, and must end the saga FAILED as the run did."""
    await store_fault_round(100, "sqlite", tmp_path, None)


# ------------------------------------------------------------------ fatal steps, bad listeners


class Raising:
    """A listener that raises on one kind of transition."""

    def __init__(self, kind: TransitionKind) -> None:
        self.kind = kind

    def __call__(self, transition: Transition) -> None:
        if transition.kind is self.kind:
            raise RuntimeError(f"listener refuses {transition.kind}")


async def slow(transition: Transition) -> None:
    """An async listener that lets other tasks run before it returns."""
    for _ in range(3):
        await asyncio.sleep(0)


async def fatal_round(seed: int, tmp_path: Path) -> None:
    """``KeyboardInterrupt``/``SystemExit`` from steps (not compensated, FAILED), among
    ordinary sagas, with a raising and a slow listener around the recording one."""
    rng = random.Random(seed)
    store = SQLiteStore(tmp_path / "fatal.db")
    trails = Trails()
    kinds = list(TransitionKind)
    listeners = [Raising(rng.choice(kinds)), slow, trails, Raising(rng.choice(kinds))]
    orchestrator = SagaOrchestrator(store, sleep=InstantSleep(), listeners=listeners)
    for number in range(24):
        steps = random_steps(rng, fatal=rng.random() < 0.4)
        saga_id = f"fatal-{seed}-{number}"
        form = rng.choice(list(FORMS))
        label = f"seed {seed}, saga {saga_id}: {form} steps={steps!r}"
        fatal = next((i for i, s in enumerate(steps) if s[1] in ("interrupt", "exit")), None)
        EFFECTS.pop(saga_id, None)
        try:
            outcome: Any = await orchestrator.execute(FORMS[form](steps).with_id(saga_id))
        except (StepFailed, CompensationFailed, KeyboardInterrupt, SystemExit) as error:
            outcome = error
        metadata = await store.get(saga_id)
        assert metadata is not None, label
        if fatal is None:
            model = StoreModel(steps, WriteFault(0, "none")).run()
            assert _outcome_name(outcome) == model.outcome, f"{label}: {outcome!r}"
            assert EFFECTS.get(saga_id, []) == model.effects, label
            assert metadata.status is model.status, f"{label}: {metadata!r}"
            check_log(label, metadata, model)
        else:
            wanted = KeyboardInterrupt if steps[fatal][1] == "interrupt" else SystemExit
            assert type(outcome) is wanted, f"{label}: {outcome!r}"
            assert EFFECTS.get(saga_id, []) == [("do", i) for i in range(fatal + 1)], label
            assert metadata.status is SagaStatus.FAILED, f"{label}: {metadata!r}"
            assert metadata.error is not None
            assert metadata.error.endswith("(not compensated)"), f"{label}: {metadata!r}"
            assert metadata.compensations == (), label
            statuses = [r.status for r in metadata.steps]
            assert statuses[:fatal] == [StepStatus.COMPLETED] * fatal, f"{label}: {metadata!r}"
            assert statuses[fatal] is StepStatus.FAILED, f"{label}: {metadata!r}"
        check_trail(label, trails.by_id[saga_id], metadata)
        assert trails.by_id[saga_id][-1].kind is TransitionKind.SAGA_FINISHED, label
        EFFECTS.pop(saga_id, None)
    assert await store.running_count() == 0
    await store.close()


@pytest.mark.parametrize("seed", SEEDS)
async def test_soak_fatal_steps_and_listeners(seed: int, tmp_path: Path) -> None:
    await fatal_round(seed, tmp_path)
