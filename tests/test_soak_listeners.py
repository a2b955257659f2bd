"""Seeded soak of listeners told the transitions of sagas whose tasks are cancelled.

Many concurrent sagas (generator and list forms; successes, failures compensated, step
timeouts, compensations that fail) on a :class:`MemoryStore`, a :class:`SQLiteStore` or
(given ``SAGAKIT_TEST_POSTGRES_DSN``) a ``PostgresStore``,
told to sync and async listeners — slow ones that await, raising ones — while the task
running ``execute()`` is cancelled at a seeded point: by an async listener while it awaits
on the saga's n-th transition, by a sync listener there (the cancellation lands at the
saga's next await), by an async one that swallows it, by a step of the saga, or twice
(again while it compensates).

:class:`Model` replays the documented semantics (docs/concepts/cancellation.md,
monitoring.md#listeners-and-transitions) on the plan and the transition the cancellation
came on: what ``execute()`` raises, what the steps and compensations did (in
:data:`EFFECTS`), the log's records (re-read by a new store object), and the transitions
every listener hears — the same, in order, for all of them, ending with exactly one
``SAGA_FINISHED``. A failure names the seed and the saga and prints its plan.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pg_helpers.db import dsn_or_skip, fresh_schema
from sagakit import (
    CompensationFailed,
    MemoryStore,
    SagaMetadata,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StepFailed,
    StepStatus,
    StepTimeout,
    Transition,
    TransitionKind,
    current_step,
    saga,
    step,
)
from sagakit.testing import InstantSleep
from sagakit.testing import simulate_restart as restart

pytestmark = pytest.mark.asyncio

K = TransitionKind

# SAGAKIT_SOAK_SEEDS=1,2,3 runs other seeds (a sweep when hunting a rare interleaving).
_SWEEP = os.environ.get("SAGAKIT_SOAK_SEEDS", "")
SEEDS = [int(seed) for seed in _SWEEP.split(",") if seed] or [5, 17, 256, 1999, 4242]

SHORT = 0.02  # the timeout of the "t" steps, which are "slow": they time out
SAGAS = 200  # per round, all at once

# saga id -> what the steps and compensations really did, in order
EFFECTS: dict[str, list[tuple[str, int]]] = {}
# saga id -> the task running its execute(), for a step or a listener to cancel
TASKS: dict[str, asyncio.Task[None]] = {}


def _effects() -> tuple[str, list[tuple[str, int]]]:
    context = current_step()
    assert context is not None
    return context.saga_id, EFFECTS.setdefault(context.saga_id, [])


async def _do(index: int, behaviour: str, compensation: str) -> str:
    saga_id, effects = _effects()
    effects.append(("do", index))
    if behaviour == "cancel":  # the saga's task cancelled while this step runs
        TASKS[saga_id].cancel()
    if behaviour == "slow":
        await asyncio.sleep(10)
    await asyncio.sleep(0)
    if behaviour == "raise":
        raise ValueError(f"step {index} refuses")
    return f"r{index}"


async def _undo(index: int, behaviour: str, compensation: str) -> str:
    _, effects = _effects()
    effects.append(("undo", index))
    await asyncio.sleep(0)
    if compensation == "fail":
        raise OSError(f"compensation {index} refuses")
    return f"u{index}"


@step(name="listener_soak_undoable", timeout=5.0)
async def undoable(index: int, behaviour: str, compensation: str) -> str:
    return await _do(index, behaviour, compensation)


@undoable.compensate
async def undo(index: int, behaviour: str, compensation: str) -> str:
    return await _undo(index, behaviour, compensation)


@step(name="listener_soak_timed", timeout=SHORT, compensation_timeout=5.0)
async def timed(index: int, behaviour: str, compensation: str) -> str:
    return await _do(index, behaviour, compensation)


@timed.compensate
async def undo_timed(index: int, behaviour: str, compensation: str) -> str:
    return await _undo(index, behaviour, compensation)


@step(name="listener_soak_final", timeout=5.0)
async def final(index: int, behaviour: str, compensation: str) -> str:
    return await _do(index, behaviour, compensation)


STEPS = {"u": undoable, "t": timed, "f": final}


@saga(name="listener_soak_generator")
def soak_generator(plan: list[list[str]]):  # type: ignore[no-untyped-def]
    for index, (kind, behaviour, compensation) in enumerate(plan):
        yield STEPS[kind](index, behaviour, compensation)


@saga(name="listener_soak_list")
def soak_list(plan: list[list[str]]):  # type: ignore[no-untyped-def]
    return [STEPS[k](index, b, c) for index, (k, b, c) in enumerate(plan)]


FORMS = {"generator": soak_generator, "list": soak_list}


# ------------------------------------------------------------------ plans and the model


@dataclass
class Plan:
    """One saga: its steps (kind, behaviour, compensation) and where it is cancelled:
    ``cancel_at`` (its n-th transition, 1-based) by the canceller listener in ``mode``
    ("async": while it awaits; "swallow": it awaits and swallows the cancellation;
    "sync": it returns, the cancellation pending), again at ``again_at`` if set, or by a
    step whose behaviour is "cancel"."""

    saga_id: str
    form: str
    steps: list[list[str]]
    cancel_at: int | None = None
    again_at: int | None = None
    mode: str = "async"

    def __str__(self) -> str:
        return (
            f"saga {self.saga_id}: {self.form} steps={self.steps!r} cancel_at={self.cancel_at} "
            f"again_at={self.again_at} mode={self.mode}"
        )


Heard = tuple[TransitionKind, int | None]

# A durable store stages these: they are told with the run's next record.
STAGED = {K.SAGA_STARTED, K.STEP_COMPLETED, K.COMPENSATION_COMPLETED}


@dataclass
class Model:
    """One run by the documented rules, cancelled where ``plan`` says.

    A cancellation from an async listener lands in it while it awaits: the others hear
    the transition too, then the saga is cancelled there ("async"). So does a sync
    listener's when an awaiting listener follows it (``lands``); else it is "pending"
    and lands at the saga's next await. One the listener swallows ("swallow") stops the
    saga where sagakit next checks its task, or raises at its end. On a ``durable`` store
    a staged transition is told with the next record, so a cancellation on it comes while
    that one is told.
    A saga that failed compensates in its own task, where the cancellation interrupts the
    compensation running (or being told), which runs again from its start, shielded; a
    cancelled saga compensates shielded from the start. A pending cancellation that
    lands while a durable store writes a compensation's start interrupts that write: the
    start is told only if the store reports it committed (``CommittedThenCancelled``,
    ``told_interrupted``), as the other sagas' concurrent writes decide. One that lands
    while the end is written is too late to undo anything: a SQLite log writes the end
    all the same, and it is told; a PostgreSQL store stops waiting for it
    (``end_interrupted``): unless it reports the end committed, listeners hear
    ``SAGA_STOPPED`` (``stopped``), and the log may still show the saga running, for
    recovery to finish.
    """

    plan: Plan
    durable: bool
    lands: bool
    told_interrupted: bool = True
    end_interrupted: bool = False
    transitions: list[Heard] = field(default_factory=list)
    effects: list[tuple[str, int]] = field(default_factory=list)
    steps: dict[int, StepStatus] = field(default_factory=dict)
    compensations: dict[int, StepStatus] = field(default_factory=dict)
    status: SagaStatus = SagaStatus.COMPLETED
    outcome: str = "completed"  # StepFailed, StepTimeout, CompensationFailed, CancelledError
    fired: list[int] = field(default_factory=list)  # the transitions the canceller fired on
    cancelled: bool = False  # execute() raises CancelledError
    own: bool = False  # compensating in the saga's own task, not cancelled yet
    landing: bool = False  # a pending cancellation lands while the next start is told
    deferred: bool = False
    stopped: bool = False

    def hear(self, kind: TransitionKind, index: int | None = None) -> str | None:
        """Tell ``kind``; how a cancellation came while it was told, if one did."""
        self.transitions.append((kind, index))
        count = len(self.transitions)
        fires = count in (self.plan.cancel_at, self.plan.again_at)
        if fires:
            self.fired.append(count)
        if self.durable and kind in STAGED:
            self.deferred = self.deferred or fires
            return None
        if self.deferred:  # the later listeners of the batch await: it lands there
            self.deferred = False
            return "swallow" if self.plan.mode == "swallow" else "async"
        if not fires:
            return None
        if self.plan.mode == "sync":
            return "async" if self.lands else "pending"
        return self.plan.mode

    def run(self) -> Model:
        done: list[int] = []
        failure: str | None = None
        stop = self.hear(K.SAGA_STARTED) is not None
        for index, (kind, behaviour, _) in enumerate(self.plan.steps):
            if stop:
                break
            if self.hear(K.STEP_STARTED, index):  # cancelled before the step started
                self.steps[index] = StepStatus.FAILED
                self.hear(K.STEP_FAILED, index)
                stop = True
                break
            self.effects.append(("do", index))
            if behaviour == "cancel":  # interrupted: undone as a timed-out step is
                stop = True
                self.steps[index] = StepStatus.FAILED
                if kind != "f":
                    done.append(index)
                self.hear(K.STEP_FAILED, index)
                break
            if behaviour in ("raise", "slow"):
                timed_out = behaviour == "slow"
                self.steps[index] = StepStatus.TIMED_OUT if timed_out else StepStatus.FAILED
                failure = "StepTimeout" if timed_out else "StepFailed"
                if timed_out:
                    done.append(index)
                how = self.hear(K.STEP_TIMED_OUT if timed_out else K.STEP_FAILED, index)
                stop = how == "async"
                self.landing = how == "pending"
                self.cancelled = how == "swallow"  # seen once the compensations ended
                break
            self.steps[index] = StepStatus.COMPLETED
            if kind != "f":
                done.append(index)
            stop = self.hear(K.STEP_COMPLETED, index) is not None
        if failure is None and not stop:
            self.cancelled = self.hear(K.SAGA_FINISHED) is not None
            self.outcome = "CancelledError" if self.cancelled else "completed"
            return self
        self.cancelled = self.cancelled or stop
        self.own = not stop
        self.status = SagaStatus.COMPENSATED
        for index in reversed(done):
            if self._undo(index) == "failed":
                self.status = SagaStatus.FAILED
                failure = "CompensationFailed"
                break
        if self.landing:  # no compensation's start left to tell: lands as the end is written
            self.cancelled = True
            self.stopped = self.durable and self.end_interrupted
        if self.stopped:
            self.hear(K.SAGA_STOPPED)
        elif self.hear(K.SAGA_FINISHED):  # seen once the end is recorded and told
            self.cancelled = True
        self.outcome = "CancelledError" if self.cancelled else failure or "?"
        return self

    def _interrupted(self) -> None:
        self.own = self.landing = False
        self.cancelled = True

    def _undo(self, index: int) -> str:
        attempt = 1
        while True:
            if self.own and self.landing and self.durable and not self.told_interrupted:
                self._interrupted()  # while its start was written: not recorded, not told
                continue
            how = self.hear(K.COMPENSATION_STARTED, index)
            if how == "swallow":  # the compensation goes on: seen once they all ended
                self.cancelled = True
            elif self.own and (how or self.landing):
                if how == "pending" and not self.landing:  # lands in the compensation
                    self.effects.append(("undo", index))
                self._interrupted()
                attempt = 1  # run again from its start
                continue
            self.effects.append(("undo", index))
            if self.plan.steps[index][2] == "ok":
                self.compensations[index] = StepStatus.COMPLETED
                how = self.hear(K.COMPENSATION_COMPLETED, index)
                if how == "swallow":
                    self.cancelled = True
                elif self.own and how == "pending":  # lands while the next start is told
                    self.landing = self.cancelled = True
                elif self.own and how:
                    self._interrupted()
                return "ok"
            if attempt < 3:
                how = self.hear(K.COMPENSATION_RETRYING, index)
                if how == "swallow":
                    self.cancelled = True
                elif self.own and how:
                    self._interrupted()  # in the listener, or in the pause that follows
                    attempt = 1
                    continue
                attempt += 1
                continue
            self.compensations[index] = StepStatus.FAILED
            how = self.hear(K.COMPENSATION_FAILED, index)
            if how == "swallow":
                self.cancelled = True
            elif self.own and how:
                self._interrupted()
                self.landing = how == "pending"  # nothing more is undone: at the end
            return "failed"


def random_plan(rng: random.Random, saga_id: str) -> Plan:
    steps: list[list[str]] = []
    for _ in range(rng.randint(1, 5)):
        kind = rng.choice("uuuuuftt")
        # (only a "t" step has a short timeout, and it always overruns it: one that should
        # not time out must not depend on how busy the machine is)
        behaviour = "slow" if kind == "t" else rng.choice(["ok"] * 6 + ["raise"])
        steps.append([kind, behaviour, rng.choice(["ok"] * 4 + ["fail"])])
        if behaviour != "ok":
            break
    plan = Plan(saga_id, rng.choice(list(FORMS)), steps)
    told = len(Model(plan, durable=False, lands=False).run().transitions)
    roll = rng.random()
    if roll < 0.15:
        return plan  # never cancelled
    if roll < 0.3:  # by a step of its own, while it runs
        steps[rng.randrange(len(steps))][1] = "cancel"
        for later, planned in enumerate(steps):
            if planned[1] == "cancel":
                del steps[later + 1 :]
                break
        return plan
    plan.cancel_at = rng.randint(1, told)
    plan.mode = rng.choice(["async", "async", "sync", "swallow"])
    if roll < 0.45:
        plan.again_at = plan.cancel_at + rng.randint(1, 6)
    return plan


# ------------------------------------------------------------------ the listeners


class Recorder:
    """A sync listener keeping what it heard of each saga, in order."""

    def __init__(self) -> None:
        self.by_id: dict[str, list[Transition]] = {}

    def __call__(self, transition: Transition) -> None:
        self.by_id.setdefault(transition.saga_id, []).append(transition)


class SlowRecorder:
    """An async listener that awaits (letting other sagas run) before it records; one
    cancelled while it awaits records that too."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.called: dict[str, list[Transition]] = {}
        self.ended: dict[str, list[str]] = {}

    async def __call__(self, transition: Transition) -> None:
        self.called.setdefault(transition.saga_id, []).append(transition)
        try:
            for _ in range(self.rng.randint(1, 3)):
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.ended.setdefault(transition.saga_id, []).append("cancelled")
            raise
        self.ended.setdefault(transition.saga_id, []).append("returned")


class Canceller:
    """Cancels a saga's task on its planned transitions: an async one then awaits, so
    the cancellation lands while it does (and goes on, or is swallowed: "swallow"); a
    sync one returns with it pending."""

    def __init__(self, plans: dict[str, Plan]) -> None:
        self.plans = plans
        self.counts: dict[str, int] = {}
        self.fired: dict[str, list[int]] = {}
        # saga id -> what it awaited in a task the cancellation was not for
        self.missed: dict[str, list[TransitionKind]] = {}

    def _fire(self, transition: Transition) -> bool:
        plan = self.plans[transition.saga_id]
        count = self.counts[plan.saga_id] = self.counts.get(plan.saga_id, 0) + 1
        if count not in (plan.cancel_at, plan.again_at):
            return False
        self.fired.setdefault(plan.saga_id, []).append(count)
        TASKS[plan.saga_id].cancel()
        return plan.mode != "sync"

    async def __call__(self, transition: Transition) -> None:
        if not self._fire(transition):
            return
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            if self.plans[transition.saga_id].mode != "swallow":
                raise
        else:  # compensations are shielded: they run in a task of their own
            self.missed.setdefault(transition.saga_id, []).append(transition.kind)


def raising(kind: TransitionKind) -> Callable[[Transition], None]:
    def listener(transition: Transition) -> None:
        if transition.kind is kind:
            raise RuntimeError(f"listener refuses {kind}")

    return listener


def raising_async(kind: TransitionKind) -> Callable[[Transition], Any]:
    async def listener(transition: Transition) -> None:
        await asyncio.sleep(0)
        if transition.kind is kind:
            raise RuntimeError(f"async listener refuses {kind}")

    return listener


# ------------------------------------------------------------------ the round


def _outcome_name(outcome: Any) -> str:
    if isinstance(outcome, list):
        return "completed"
    for kind in (asyncio.CancelledError, CompensationFailed, StepTimeout, StepFailed):
        if isinstance(outcome, kind):
            return kind.__name__
    return repr(outcome)


async def _opened(store: Any) -> Any:
    opener = getattr(store, "open", None)
    if opener is not None:
        await opener()
    return store


async def listener_round(seed: int, kind: str, new_store: Callable[[], Any]) -> None:
    """Run :data:`SAGAS` random plans at once on a store ``new_store()`` makes (a new
    object on the same log each call), then check each against its :class:`Model`."""
    rng = random.Random(seed)
    plans = {
        saga_id: random_plan(rng, saga_id)
        for saga_id in (f"ls-{seed}-{kind}-{number}" for number in range(SAGAS))
    }
    recorder = Recorder()
    slow = SlowRecorder(random.Random(seed))
    canceller = Canceller(plans)
    kinds = list(TransitionKind)
    awaiting = raising_async(rng.choice(kinds))
    listeners: list[Any] = [recorder, slow, canceller, raising(rng.choice(kinds)), awaiting]
    rng.shuffle(listeners)
    # A sync canceller's cancellation lands in an async listener told after it.
    lands = any(
        listener is slow or listener is awaiting
        for listener in listeners[listeners.index(canceller) + 1 :]
    )
    store = await _opened(new_store())
    orchestrator = SagaOrchestrator(store, sleep=InstantSleep(), listeners=listeners)
    outcomes: dict[str, Any] = {}
    pending: dict[str, int] = {}

    async def execute(plan: Plan) -> None:
        try:
            outcomes[plan.saga_id] = await orchestrator.execute(
                FORMS[plan.form](plan.steps).with_id(plan.saga_id)
            )
        except (asyncio.CancelledError, StepFailed, CompensationFailed) as error:
            outcomes[plan.saga_id] = error
            raise
        finally:
            task = asyncio.current_task()
            assert task is not None
            pending[plan.saga_id] = task.cancelling()

    loop = asyncio.get_running_loop()
    troubles: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: troubles.append(context))
    try:
        for saga_id, plan in plans.items():
            EFFECTS.pop(saga_id, None)
            TASKS[saga_id] = asyncio.create_task(execute(plan))
        await asyncio.gather(*TASKS.values(), return_exceptions=True)
        reread: Any = store
        if kind != "memory":
            await store.close()
            reread = await _opened(new_store())
        left: dict[str, Model] = {}
        for saga_id, plan in plans.items():
            model = await check_saga(
                seed,
                plan,
                outcomes,
                recorder,
                slow,
                canceller,
                reread,
                durable=kind != "memory",
                lands=lands,
                cancels=pending[saga_id],
                postgres=kind == "postgres",
            )
            if model.stopped and (await reread.get(saga_id)).status is not model.status:
                left[saga_id] = model
        assert not orchestrator._held, "transitions held for runs that ended"
        assert {m.id for m in await reread.running()} == set(left)
        if left:  # recovery finishes them as they had ended, running nothing again
            await restart(reread)
            await reread.close()
            reread = await _opened(new_store())
            recovered = await SagaOrchestrator(reread, sleep=InstantSleep()).recover()
            assert {o.saga_id: o.status for o in recovered} == {
                saga_id: model.status for saga_id, model in left.items()
            }
            for saga_id, model in left.items():
                assert EFFECTS.get(saga_id, []) == model.effects, f"seed {seed}, {saga_id}"
        assert await reread.running_count() == 0
        if kind != "memory":
            await reread.close()
        gc.collect()
        assert not troubles, troubles
    finally:
        loop.set_exception_handler(None)
        for saga_id in plans:
            EFFECTS.pop(saga_id, None)
            TASKS.pop(saga_id, None)


async def check_saga(
    seed: int,
    plan: Plan,
    outcomes: dict[str, Any],
    recorder: Recorder,
    slow: SlowRecorder,
    canceller: Canceller,
    store: Any,
    *,
    durable: bool,
    lands: bool,
    cancels: int,
    postgres: bool,
) -> Model:
    """Check one saga against its model; returns the model."""
    saga_id = plan.saga_id
    heard = [(t.kind, t.step_index) for t in recorder.by_id.get(saga_id, [])]
    # (what the store reports of a write the cancellation interrupted decides what is told)
    models = [
        Model(plan, durable, lands, told, interrupted)
        for interrupted in dict.fromkeys((postgres, False))
        for told in (True, False)
    ]
    model = next((m for m in models if m.run().transitions == heard), models[0])
    metadata: SagaMetadata | None = await store.get(saga_id)
    label = (
        f"seed {seed}, {plan}\n  execute(): {outcomes.get(saga_id)!r}\n  log: {metadata!r}\n"
        f"  heard: {heard}\n  model: {model.transitions}"
    )
    assert metadata is not None, label
    told = model.status
    if model.stopped:  # the end may not be in the log: told as the log shows the saga
        told = SagaStatus.COMPENSATING if model.compensations else SagaStatus.EXECUTING
        assert metadata.status in (told, model.status), label
    else:
        assert metadata.status is model.status, label
    assert _outcome_name(outcomes.get(saga_id)) == model.outcome, label
    assert heard == model.transitions, label
    assert EFFECTS.get(saga_id, []) == model.effects, label
    assert {r.index: r.status for r in metadata.steps} == model.steps, label
    assert {r.index: r.status for r in metadata.compensations} == model.compensations, label
    # Every listener is told every transition, in order, whatever is cancelled meanwhile.
    assert [(t.kind, t.step_index) for t in slow.called.get(saga_id, [])] == heard, label
    ends = [k for k, _ in heard if k in (K.SAGA_FINISHED, K.SAGA_STOPPED)]
    assert ends == [K.SAGA_STOPPED if model.stopped else K.SAGA_FINISHED], label
    assert recorder.by_id[saga_id][-1].status is told, label
    assert canceller.fired.get(saga_id, []) == model.fired, label
    # A cancelled saga tells its interrupted step's end and compensates in a shielded
    # task: only there may a cancellation of its task not land in an awaiting listener.
    missed = canceller.missed.get(saga_id, [])
    assert all(k.startswith("compensation_") or k is K.STEP_FAILED for k in missed), (
        f"{label}: {missed}"
    )
    # Every call of the slow listener ended: it returned, or its await was cancelled.
    assert len(slow.ended.get(saga_id, [])) == len(heard), label
    return model
    # Every cancellation request is still there: none was taken back (uncancel()).
    stepped = any(behaviour == "cancel" for _, behaviour, _ in plan.steps)
    assert cancels == len(model.fired) + stepped, label


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("seed", SEEDS)
async def test_soak_listeners_of_cancelled_sagas(seed: int, kind: str, tmp_path: Path) -> None:
    path = tmp_path / "listeners.db"
    await listener_round(seed, kind, MemoryStore if kind == "memory" else lambda: SQLiteStore(path))


@pytest.fixture
def pg_schema() -> Any:
    yield from fresh_schema(dsn_or_skip())


@pytest.mark.parametrize("seed", SEEDS)
async def test_soak_listeners_of_cancelled_sagas_postgres(seed: int, pg_schema: str) -> None:
    from sagakit import PostgresStore

    dsn = dsn_or_skip()
    await listener_round(seed, "postgres", lambda: PostgresStore(dsn, schema=pg_schema))
