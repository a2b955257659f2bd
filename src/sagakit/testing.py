"""Test helpers for sagas: fault injection, a transition recorder, the fault matrix, instant sleep.

Usable without pytest; :mod:`sagakit.pytest_plugin` is a thin layer of fixtures over it.

>>> faults = FaultInjector().fail("ship", RuntimeError("down"))
>>> recorder = SagaRecorder()
>>> orchestrator = SagaOrchestrator(listeners=[recorder], sleep=InstantSleep())
>>> with faults:
...     await orchestrator.execute(order("book"))        # raises StepFailed
>>> recorder.assert_compensated("reserve")
"""

from __future__ import annotations

import asyncio
import difflib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any, Literal

from ._hooks import (
    SIMULATED_TIMEOUT,
    CrashAfter,
    FaultPlan,
    SimulatedCrash,
    _SimulatedTimeout,
    active_faults,
)
from ._orchestrator import SagaOrchestrator
from ._runs import current_run
from ._sagas import SagaDefinition
from ._steps import Step
from .exceptions import CompensationFailed, SagaDefinitionError, StepFailed, StepTimeout
from .status import SagaStatus
from .stores import SagaStore
from .transitions import Transition, TransitionKind

StepTarget = str | Step[Any, Any]
"""A step named by its name (``"debit"``) or by the ``Step`` object itself."""

Fault = BaseException | type[BaseException]
"""An exception to raise, or an exception class instantiated for every attempt."""


class InjectedFault(Exception):
    """The exception a :class:`FaultInjector` raises when none is given."""


# ------------------------------------------------------------------ fault injection


@dataclass(frozen=True, slots=True)
class FiredFault:
    """A fault that was injected: which step (or compensation), attempt, and what."""

    step_name: str
    step_index: int | None
    attempt: int
    compensation: bool
    fault: BaseException | _SimulatedTimeout | CrashAfter


@dataclass(frozen=True, slots=True)
class _Rule:
    target: StepTarget
    fault: Fault | _SimulatedTimeout | CrashAfter
    compensation: bool
    times: int | None
    index: int | None

    def matches(self, step: Step[Any, Any], attempt: int, compensation: bool) -> bool:
        if compensation is not self.compensation:
            return False
        if self.times is not None and attempt > self.times:
            return False
        target = self.target
        if isinstance(target, str):
            if step._self_name != target:
                return False
        elif step is not target:
            return False
        return self.index is None or self.index == _running_index()


def _running_index() -> int | None:
    run = current_run.get()
    return None if run is None or run.step is None else run.step.index


def _check_target(target: object) -> StepTarget:
    if isinstance(target, str) and target:
        return target
    if isinstance(target, Step):
        return target
    parent = getattr(target, "_self_parent", None)  # a step looked up on a class or instance
    if isinstance(parent, Step):
        return parent
    raise SagaDefinitionError(
        f"faults target a step by name ('debit') or by the @step object (debit), got {target!r}"
    )


def _check_fault(fault: object) -> Fault:
    if isinstance(fault, BaseException) or (
        isinstance(fault, type) and issubclass(fault, BaseException)
    ):
        return fault
    raise SagaDefinitionError(
        f"a fault must be an exception instance or class (ValueError('boom')), got {fault!r}"
    )


def _check_count(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SagaDefinitionError(f"{what} must be a whole number >= 0 or None, got {value!r}")
    return value


class _Chain:
    """An inner fault plan consulted first, then the one that was active around it."""

    __slots__ = ("inner", "outer")

    def __init__(self, inner: FaultPlan, outer: FaultPlan) -> None:
        self.inner = inner
        self.outer = outer

    def fault_for(
        self, step: Step[Any, Any], attempt: int, *, compensation: bool
    ) -> BaseException | _SimulatedTimeout | CrashAfter | None:
        fault = self.inner.fault_for(step, attempt, compensation=compensation)
        if fault is None:
            fault = self.outer.fault_for(step, attempt, compensation=compensation)
        return fault


_scopes: ContextVar[tuple[Token[FaultPlan | None], ...]] = ContextVar(
    "sagakit_fault_scopes", default=()
)


class FaultInjector:
    """Faults to inject into steps and compensations, active only where entered.

    Add faults with :meth:`fail`, :meth:`timeout`, :meth:`fail_compensation` and
    :meth:`timeout_compensation` (each returns the injector, so calls chain), then run
    sagas inside ``with injector:``. The scope is a context variable: it covers the
    current task and tasks started from it, never concurrently running tests or tasks
    that did not enter it. Scopes nest; an inner injector is asked first. The first
    matching fault wins; a fault fires on every attempt, or only on the first ``times``.
    ``index`` restricts a fault to the step at that position in the saga (for a step
    used twice). :attr:`fired` lists every fault injected, in order.
    """

    def __init__(self) -> None:
        self._rules: list[_Rule] = []
        self.fired: list[FiredFault] = []

    def _add(
        self,
        target: object,
        fault: Fault | _SimulatedTimeout | CrashAfter,
        *,
        compensation: bool,
        times: int | None,
        index: int | None,
    ) -> FaultInjector:
        self._rules.append(
            _Rule(
                _check_target(target),
                fault,
                compensation,
                _check_count(times, "times"),
                _check_count(index, "index"),
            )
        )
        return self

    def fail(
        self,
        step: StepTarget,
        error: Fault = InjectedFault,
        *,
        times: int | None = None,
        index: int | None = None,
    ) -> FaultInjector:
        """Make ``step`` raise ``error`` instead of running (only its first ``times`` attempts)."""
        return self._add(step, _check_fault(error), compensation=False, times=times, index=index)

    def timeout(
        self, step: StepTarget, *, times: int | None = None, index: int | None = None
    ) -> FaultInjector:
        """Make ``step`` time out at once, without waiting for its timeout."""
        return self._add(step, SIMULATED_TIMEOUT, compensation=False, times=times, index=index)

    def fail_compensation(
        self,
        step: StepTarget,
        error: Fault = InjectedFault,
        *,
        times: int | None = None,
        index: int | None = None,
    ) -> FaultInjector:
        """Make the compensation of ``step`` raise ``error`` instead of running."""
        return self._add(step, _check_fault(error), compensation=True, times=times, index=index)

    def timeout_compensation(
        self, step: StepTarget, *, times: int | None = None, index: int | None = None
    ) -> FaultInjector:
        """Make the compensation of ``step`` time out at once."""
        return self._add(step, SIMULATED_TIMEOUT, compensation=True, times=times, index=index)

    def crash(
        self,
        step: StepTarget,
        *,
        after: bool = False,
        compensation: bool = False,
        index: int | None = None,
    ) -> FaultInjector:
        """Stop the saga at ``step`` once, as if its process were killed there.

        Before the step runs, or with ``after=True`` once it has acted but before its
        completion is recorded; with ``compensation=True`` at the step's compensation
        instead. :class:`SimulatedCrash` propagates out of ``execute()``; the orchestrator
        runs and records nothing more, so a durable store keeps the saga for recovery:
        call :func:`simulate_restart` on the store, then ``recover()`` with a new
        orchestrator and store, as a restarted process would.
        """
        where = "compensation of step" if compensation else "step"
        crash = SimulatedCrash(
            f"simulated crash at {where} {step!r}{' after it acted' if after else ''}"
        )
        fault: SimulatedCrash | CrashAfter = CrashAfter(crash) if after else crash
        return self._add(step, fault, compensation=compensation, times=None, index=index)

    def clear(self) -> None:
        """Forget every fault (and what fired)."""
        self._rules.clear()
        self.fired.clear()

    def fault_for(
        self, step: Step[Any, Any], attempt: int, *, compensation: bool
    ) -> BaseException | _SimulatedTimeout | CrashAfter | None:
        """The :class:`~sagakit._hooks.FaultPlan` hook the orchestrator calls per attempt."""
        for rule in self._rules:
            if rule.matches(step, attempt, compensation):
                fault = rule.fault
                if isinstance(fault, SimulatedCrash | CrashAfter):
                    self._rules.remove(rule)  # a process dies once
                    crash = fault if isinstance(fault, SimulatedCrash) else fault.crash
                    self.fired.append(
                        FiredFault(step._self_name, _running_index(), attempt, compensation, crash)
                    )
                    return fault
                if isinstance(fault, type):
                    what = "compensation of step" if compensation else "step"
                    fault = fault(f"injected into {what} {step._self_name!r}, attempt {attempt}")
                self.fired.append(
                    FiredFault(step._self_name, _running_index(), attempt, compensation, fault)
                )
                return fault
        return None

    @contextmanager
    def activate(self) -> Iterator[FaultInjector]:
        """Make these faults apply within the ``with`` block (same as ``with injector:``)."""
        outer = active_faults.get()
        token = active_faults.set(self if outer is None else _Chain(self, outer))
        try:
            yield self
        finally:
            active_faults.reset(token)

    def __enter__(self) -> FaultInjector:
        outer = active_faults.get()
        token = active_faults.set(self if outer is None else _Chain(self, outer))
        _scopes.set((*_scopes.get(), token))
        return self

    def __exit__(self, *exc_info: object) -> None:
        scopes = _scopes.get()
        if not scopes:
            raise RuntimeError("FaultInjector exited in a task (context) that did not enter it")
        active_faults.reset(scopes[-1])
        _scopes.set(scopes[:-1])

    def __repr__(self) -> str:
        return f"<FaultInjector {len(self._rules)} faults, {len(self.fired)} fired>"


# ------------------------------------------------------------------ recording

_COMPENSATION_KINDS = frozenset(
    {
        TransitionKind.COMPENSATION_STARTED,
        TransitionKind.COMPENSATION_COMPLETED,
        TransitionKind.COMPENSATION_RETRYING,
        TransitionKind.COMPENSATION_FAILED,
    }
)


def _line(transition: Transition, *, detail: bool = False) -> str:
    kind = transition.kind
    if kind is TransitionKind.SAGA_STARTED:
        return str(kind)
    if kind is TransitionKind.SAGA_FINISHED:
        return f"{kind} {transition.status}"
    text = f"{kind} {transition.step_name}"
    if detail:
        text += f" (step {transition.step_index}, attempt {transition.attempt})"
        if transition.error is not None:
            text += f": {type(transition.error).__name__}: {transition.error}"
    return text


def _mismatch(what: str, expected: list[str], actual: list[str], run: RecordedRun) -> str:
    diff = "\n".join(
        f"  {line}" for line in difflib.ndiff(expected, actual) if not line.startswith("?")
    )
    return (
        f"{run.label}: {what} differ (- expected, + actual):\n{diff}\n"
        f"trail:\n{run.describe(indent='  ')}"
    )


@dataclass(slots=True)
class RecordedRun:
    """The ordered transitions of one saga run, with assertion helpers."""

    saga_id: str
    saga_name: str
    transitions: list[Transition] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"saga {self.saga_name!r} (id {self.saga_id})"

    @property
    def status(self) -> SagaStatus:
        """The saga's status after its last transition."""
        return self.transitions[-1].status

    @property
    def finished(self) -> bool:
        """Whether the run's ``SAGA_FINISHED`` was recorded."""
        return self.transitions[-1].kind is TransitionKind.SAGA_FINISHED

    def names(self, kind: TransitionKind) -> list[str]:
        """Step names of the transitions of ``kind``, in order."""
        return [str(t.step_name) for t in self.transitions if t.kind is kind]

    @property
    def completed(self) -> list[str]:
        """Forward steps that completed, in order."""
        return self.names(TransitionKind.STEP_COMPLETED)

    @property
    def compensated(self) -> list[str]:
        """Steps whose compensation completed, in the order they ran."""
        return self.names(TransitionKind.COMPENSATION_COMPLETED)

    @property
    def compensation_failures(self) -> list[str]:
        """Steps whose compensation failed for good."""
        return self.names(TransitionKind.COMPENSATION_FAILED)

    def trail(self) -> list[str]:
        """One short line per transition: ``"step_failed ship"``, ``"saga_finished failed"``."""
        return [_line(t) for t in self.transitions]

    def describe(self, indent: str = "") -> str:
        """The trail with step indexes, attempts and errors, one line per transition."""
        return "\n".join(indent + _line(t, detail=True) for t in self.transitions)

    def assert_status(self, status: SagaStatus | str) -> None:
        """Assert the run ended (or stands) with ``status``."""
        if not self.finished:
            raise AssertionError(
                f"{self.label} has not finished (status {self.status}), expected {status}\n"
                f"trail:\n{self.describe('  ')}"
            )
        if self.status != status:
            raise AssertionError(
                f"{self.label} ended {self.status}, expected {status}\n"
                f"trail:\n{self.describe('  ')}"
            )

    def assert_compensated(self, *steps: str) -> None:
        """Assert exactly these steps were compensated, in this order (none if empty)."""
        if self.compensated != list(steps):
            raise AssertionError(_mismatch("compensations", list(steps), self.compensated, self))

    def assert_completed(self, *steps: str) -> None:
        """Assert exactly these forward steps completed, in this order."""
        if self.completed != list(steps):
            raise AssertionError(_mismatch("completed steps", list(steps), self.completed, self))

    def assert_trail(self, *lines: str) -> None:
        """Assert the whole trail, as :meth:`trail` lines, is exactly ``lines``."""
        if self.trail() != list(lines):
            raise AssertionError(_mismatch("trails", list(lines), self.trail(), self))

    def __repr__(self) -> str:
        count = len(self.transitions)
        return f"<RecordedRun {self.saga_name} id={self.saga_id!r} {count} transitions>"


class SagaRecorder:
    """A listener that records every transition, grouped per saga run.

    Pass it to ``SagaOrchestrator(listeners=[recorder])`` (or ``add_listener``). The
    ``assert_*`` helpers check the most recently started run unless given a ``saga_id``.
    """

    def __init__(self) -> None:
        self._runs: dict[str, RecordedRun] = {}
        self.transitions: list[Transition] = []

    def __call__(self, transition: Transition) -> None:
        self.transitions.append(transition)
        run = self._runs.get(transition.saga_id)
        if run is None or (transition.kind is TransitionKind.SAGA_STARTED and run.finished):
            # A new run; an id reused after its earlier run finished starts afresh, last.
            self._runs.pop(transition.saga_id, None)
            run = RecordedRun(transition.saga_id, transition.saga_name)
            self._runs[transition.saga_id] = run
        run.transitions.append(transition)

    @property
    def runs(self) -> list[RecordedRun]:
        """Every recorded run, in the order they started."""
        return list(self._runs.values())

    @property
    def last(self) -> RecordedRun:
        """The most recently started run."""
        if not self._runs:
            raise AssertionError("no saga run was recorded; is the recorder a listener?")
        return next(reversed(self._runs.values()))

    def run(self, saga_id: str | None = None) -> RecordedRun:
        """The run of ``saga_id`` (the last one if ``None``)."""
        if saga_id is None:
            return self.last
        try:
            return self._runs[saga_id]
        except KeyError:
            known = ", ".join(self._runs) or "none"
            raise AssertionError(
                f"no run of saga id {saga_id!r} was recorded (recorded: {known})"
            ) from None

    def clear(self) -> None:
        """Forget everything recorded."""
        self._runs.clear()
        self.transitions.clear()

    def assert_status(self, status: SagaStatus | str, *, saga_id: str | None = None) -> None:
        """Assert a run ended with ``status``."""
        self.run(saga_id).assert_status(status)

    def assert_compensated(self, *steps: str, saga_id: str | None = None) -> None:
        """Assert exactly these steps of a run were compensated, in this order."""
        self.run(saga_id).assert_compensated(*steps)

    def assert_completed(self, *steps: str, saga_id: str | None = None) -> None:
        """Assert exactly these forward steps of a run completed, in this order."""
        self.run(saga_id).assert_completed(*steps)

    def assert_trail(self, *lines: str, saga_id: str | None = None) -> None:
        """Assert the whole trail of a run."""
        self.run(saga_id).assert_trail(*lines)

    def __repr__(self) -> str:
        return f"<SagaRecorder {len(self._runs)} runs, {len(self.transitions)} transitions>"


# ------------------------------------------------------------------ time


class InstantSleep:
    """A ``sleep`` for ``SagaOrchestrator(sleep=...)`` that records delays without waiting.

    Retry backoff then costs nothing; :attr:`delays` lists the requested waits. With
    ``scale`` > 0 it really waits ``seconds * scale`` (time scaling); at 0 it still
    yields to the event loop once, so concurrent tasks interleave as they would.
    """

    def __init__(self, scale: float = 0.0) -> None:
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale >= 0:
            raise SagaDefinitionError(f"InstantSleep(scale=...) must be >= 0, got {scale!r}")
        self.scale = float(scale)
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(seconds * self.scale)

    @property
    def total(self) -> float:
        """Seconds that would have been waited in all."""
        return sum(self.delays)

    def __repr__(self) -> str:
        return f"<InstantSleep {len(self.delays)} sleeps, {self.total:g} s skipped>"


# ------------------------------------------------------------------ the fault matrix

FaultMode = Literal["fail", "timeout"]


@dataclass(frozen=True, slots=True)
class FaultCase:
    """One run of the fault matrix: step ``index`` failing (or timing out), and what followed."""

    index: int
    step: str
    mode: FaultMode
    expected_compensations: tuple[str, ...]
    compensations: tuple[str, ...]
    status: SagaStatus | None
    error: BaseException | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        verb = "fails" if self.mode == "fail" else "times out"
        head = f"step {self.index} {self.step!r} {verb}: "
        if self.ok:
            undone = ", ".join(self.compensations) or "nothing"
            return head + f"ended {self.status}, undid {undone}"
        return head + "; ".join(self.problems)


@dataclass(frozen=True, slots=True)
class FaultMatrixReport:
    """Every case the fault matrix ran, for one saga."""

    saga: str
    steps: tuple[str, ...]
    cases: tuple[FaultCase, ...]

    @property
    def failures(self) -> tuple[FaultCase, ...]:
        return tuple(case for case in self.cases if not case.ok)

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        lines = [f"fault matrix of saga {self.saga!r}: {len(self.cases)} cases"]
        lines += [("  ok   " if case.ok else "  FAIL ") + str(case) for case in self.cases]
        return "\n".join(lines)


class _StepSpy:
    """A fault plan that injects nothing and notes the step run at each index."""

    def __init__(self) -> None:
        self.steps: dict[int, Step[Any, Any]] = {}

    def fault_for(
        self, step: Step[Any, Any], attempt: int, *, compensation: bool
    ) -> BaseException | _SimulatedTimeout | None:
        index = _running_index()
        if not compensation and index is not None:
            self.steps.setdefault(index, step)
        return None


def _label(index: int, step: Step[Any, Any]) -> str:
    return f"{index}:{step._self_name}"


def _expected(steps: list[Step[Any, Any]], index: int, mode: FaultMode) -> tuple[str, ...]:
    failing = steps[index]
    undo_self = (
        failing.compensate_on_timeout if mode == "timeout" else failing.compensate_on_failure
    )
    labels = [_label(i, s) for i, s in enumerate(steps[:index]) if s.compensation is not None]
    if undo_self and failing.compensation is not None:
        labels.append(_label(index, failing))
    return tuple(reversed(labels))


async def _run_case(
    orchestrator: SagaOrchestrator,
    definition: SagaDefinition,
    steps: list[Step[Any, Any]],
    index: int,
    mode: FaultMode,
    fault: Fault,
    run_id: str,
) -> FaultCase:
    recorder = SagaRecorder()
    injector = FaultInjector()
    if mode == "fail":
        injector.fail(steps[index], fault, index=index)
    else:
        injector.timeout(steps[index], index=index)
    saga_id = f"{run_id}-{mode}-{index}"
    error: BaseException | None = None
    orchestrator.add_listener(recorder)
    try:
        with injector:
            await orchestrator.execute(definition, saga_id=saga_id)
    except Exception as raised:
        error = raised
    finally:
        orchestrator.remove_listener(recorder)
    problems: list[str] = []
    expected = _expected(steps, index, mode)
    run = recorder._runs.get(saga_id)
    trail = [] if run is None else run.transitions
    started = sorted(
        {
            t.step_index
            for t in trail
            if t.kind is TransitionKind.STEP_STARTED and t.step_index is not None
        }
    )
    compensated = tuple(
        f"{t.step_index}:{t.step_name}"
        for t in trail
        if t.kind is TransitionKind.COMPENSATION_COMPLETED
    )
    status = None if run is None or not run.finished else run.status
    wanted: type[StepFailed] = StepTimeout if mode == "timeout" else StepFailed
    if error is None:
        problems.append("the saga completed, but the fault should have stopped it")
    elif isinstance(error, CompensationFailed):
        problems.append(f"a compensation failed: {error}")
    elif not isinstance(error, wanted) or (mode == "fail" and isinstance(error, StepTimeout)):
        problems.append(f"expected {wanted.__name__}, the saga raised {error!r}")
    elif error.step_index != index:
        problems.append(f"the error names step {error.step_index}, expected step {index}")
    if started != list(range(index + 1)):
        problems.append(f"forward steps started: {started}, expected steps 0 to {index}")
    if compensated != expected:
        problems.append(
            f"compensated {list(compensated)}, expected exactly {list(expected)} in this order"
        )
    if status is not SagaStatus.COMPENSATED:
        problems.append(f"status {status}, expected {SagaStatus.COMPENSATED}")
    if problems and run is not None:
        problems.append("trail:\n" + run.describe(indent="      "))
    return FaultCase(
        index,
        steps[index]._self_name,
        mode,
        tuple(label.partition(":")[2] for label in expected),
        tuple(label.partition(":")[2] for label in compensated),
        status,
        error,
        tuple(problems),
    )


async def run_fault_matrix(
    definition: SagaDefinition,
    *,
    orchestrator: SagaOrchestrator | None = None,
    failures: bool = True,
    timeouts: bool = True,
    error: Fault = InjectedFault,
    check: bool = True,
) -> FaultMatrixReport:
    """Run ``definition`` once per step with that step failing, and once with it timing out.

    The saga first runs once without faults to discover its steps (generator sagas
    reveal them only by running). After each faulty run it checks that exactly the
    completed steps with a compensation (plus the failing step itself when its
    ``compensate_on_failure``/``compensate_on_timeout`` says so) were compensated, in
    reverse order, that the saga raised ``StepFailed``/``StepTimeout`` naming that step,
    and that it ended ``COMPENSATED``. With ``check`` (the default) any problem raises
    an ``AssertionError`` listing every failing case; the report is returned otherwise.

    Without ``orchestrator`` a fresh in-memory one with :class:`InstantSleep` is used.
    Faults active around the call still apply (an inner scope is asked first).
    """
    if not isinstance(definition, SagaDefinition):
        raise SagaDefinitionError(
            f"run_fault_matrix() takes a SagaDefinition (call your @saga function: "
            f"transfer('A', 'B', 10)), got {definition!r}"
        )
    fault = _check_fault(error)
    own = orchestrator is None
    if orchestrator is None:
        orchestrator = SagaOrchestrator(sleep=InstantSleep(), history_limit=0)
    run_id = f"fault-matrix-{os.urandom(4).hex()}"
    spy = _StepSpy()
    outer = active_faults.get()
    token = active_faults.set(spy if outer is None else _Chain(spy, outer))
    try:
        try:
            await orchestrator.execute(definition, saga_id=f"{run_id}-discover")
        except Exception as failure:
            raise AssertionError(
                f"the fault matrix runs saga {definition.name!r} once without faults to "
                f"discover its steps, but that run failed: {failure!r}"
            ) from failure
        finally:
            active_faults.reset(token)
        steps = [spy.steps[i] for i in sorted(spy.steps)]
        modes: list[FaultMode] = []
        if failures:
            modes.append("fail")
        if timeouts:
            modes.append("timeout")
        cases = [
            await _run_case(orchestrator, definition, steps, index, mode, fault, run_id)
            for index in range(len(steps))
            for mode in modes
        ]
    finally:
        if own:
            await orchestrator.close()
    report = FaultMatrixReport(definition.name, tuple(s._self_name for s in steps), tuple(cases))
    if check and not report.ok:
        raise AssertionError(str(report))
    return report


async def simulate_restart(store: SagaStore) -> None:
    """Forget that this process owns the running sagas of ``store``, as if it had died.

    Use it after a :meth:`FaultInjector.crash`: a new orchestrator's ``recover()`` then
    claims those sagas, as a restarted process would. Every saga running in the store
    is released, so use it in tests only. An in-memory store loses its sagas in a real
    crash and cannot be restarted.
    """
    if not store.durable:
        raise SagaDefinitionError(
            f"{type(store).__name__} keeps sagas in memory, which a crash loses; simulate "
            "crashes and recovery with a durable store such as SQLiteStore(tmp_path / 'sagas.db')"
        )
    release_leases = getattr(store, "release_leases", None)
    if release_leases is not None:  # leases: give them up so another worker claims at once
        await release_leases()
        return
    release = getattr(store, "release", None)
    if release is None:
        raise SagaDefinitionError(
            f"{type(store).__name__} has no release() or release_leases(), so a restart "
            "cannot be simulated on it"
        )
    for saga in await store.running():
        if saga.id is not None:
            await release(saga.id)


__all__ = [
    "FaultCase",
    "FaultInjector",
    "FaultMatrixReport",
    "FaultMode",
    "FiredFault",
    "InjectedFault",
    "InstantSleep",
    "RecordedRun",
    "SagaRecorder",
    "SimulatedCrash",
    "run_fault_matrix",
    "simulate_restart",
]
