"""The fault matrix: a saga run once per step with that step failing, then timing out."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from .._hooks import CrashAfter, FaultPlan, SimulatedTimeout, faults_here
from .._orchestrator import SagaOrchestrator, _not_a_definition_fix
from .._runs import current_run
from .._sagas import SagaDefinition
from .._steps import Step
from .._tracebacks import hide_from_pytest
from ..exceptions import CompensationFailed, SagaDefinitionError, StepFailed, StepTimeout
from ..status import SagaStatus
from ..transitions import TransitionKind
from ._faults import (
    Fault,
    FaultInjector,
    FiredFault,
    InjectedFault,
    _applied,
    _check_fault,
    _running_index,
    _Scope,
)
from ._recorder import SagaRecorder
from ._sleep import InstantSleep

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest


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

    def __repr__(self) -> str:  # the dataclass one shows the whole error: kilobytes
        return f"<FaultCase {'ok' if self.ok else 'FAIL'}: {self}>"


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

    def __repr__(self) -> str:
        failed = len(self.failures)
        return (
            f"<FaultMatrixReport saga {self.saga!r}: {len(self.cases)} cases, "
            f"{failed} failed{'' if failed else ' (ok)'}>"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """IPython (a notebook cell's value, the REPL): every case, as :meth:`__str__`."""
        printer.text(str(self))


def _in_run(saga_id: str) -> bool:
    """Whether the running step is one of saga ``saga_id`` (not of a saga a step runs)."""
    run = current_run.get()
    return run is not None and run.id == saga_id


class _StepSpy:
    """A fault plan that injects nothing and notes the step run at each index of one saga."""

    def __init__(self, saga_id: str) -> None:
        self.saga_id = saga_id
        self.steps: dict[int, Step[Any, Any]] = {}

    def fault_for(
        self, step: Step[Any, Any], attempt: int, *, compensation: bool
    ) -> BaseException | SimulatedTimeout | None:
        index = _running_index()
        if not compensation and index is not None and _in_run(self.saga_id):
            self.steps.setdefault(index, step)
        return None


class _OnlyIn:
    """The faults of ``plan``, for the steps of saga ``saga_id`` only."""

    def __init__(self, plan: FaultPlan, saga_id: str) -> None:
        self.plan = plan
        self.saga_id = saga_id

    def fault_for(
        self, step: Step[Any, Any], attempt: int, *, compensation: bool
    ) -> BaseException | SimulatedTimeout | CrashAfter | None:
        if not _in_run(self.saga_id):
            return None
        return self.plan.fault_for(step, attempt, compensation=compensation)


def _injectors_around() -> list[FaultInjector]:
    """The fault injectors whose ``with`` blocks (or ``saga_faults``) are active here."""
    found = []
    scope = faults_here()
    while isinstance(scope, _Scope):
        if scope.open and isinstance(scope.inner, FaultInjector):
            found.append(scope.inner)
        scope = scope.outer
    return found


class _FiredAround:
    """The faults the injectors active around the matrix fire from now on."""

    def __init__(self) -> None:
        self._counts = [(injector, len(injector.fired)) for injector in _injectors_around()]

    def since(self) -> list[FiredFault]:
        """The faults they fired since this was made."""
        return [fault for injector, count in self._counts for fault in injector.fired[count:]]

    def raised(self, error: BaseException) -> FiredFault | None:
        """The fault of theirs that raised ``error`` (a crash), if one did."""
        return next((fault for fault in self.since() if fault.fault is error), None)


def _around_note(fired: FiredFault) -> str:
    """Why a run of the matrix failed: a fault active around it fired in it."""
    where = f"step {fired.step_name!r}"
    return (
        "; a fault active around the call fired in it (at "
        f"{f'the compensation of {where}' if fired.compensation else where}): run the matrix "
        "without that fault, outside its `with injector:` block or before adding "
        "it to saga_faults"
    )


def _label(index: int, step: Step[Any, Any]) -> str:
    return f"{index}:{step.name}"


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
) -> tuple[FaultCase, BaseException | None]:
    """The case, and its error if the case failed and its fault does not explain it."""
    recorder = SagaRecorder()
    injector = FaultInjector()
    if mode == "fail":
        injector.fail(steps[index], fault, index=index)
    else:
        injector.timeout(steps[index], index=index)
    saga_id = f"{run_id}-{mode}-{index}"
    error: BaseException | None = None
    around = _FiredAround()
    orchestrator.add_listener(recorder)
    try:
        with _applied(_OnlyIn(injector, saga_id)):  # not the sagas its steps run
            await orchestrator.execute(definition, saga_id=saga_id)
    except Exception as raised:
        error = raised
    except BaseException as stopped:
        # A crash a fault around the matrix injected fails it, as in its discovery run;
        # another BaseException (KeyboardInterrupt, a cancellation) passes through.
        crashed = around.raised(stopped)
        if crashed is None:
            raise
        faulted = f"step {index} {steps[index].name!r}"
        doing, does = ("failing", "fails") if mode == "fail" else ("timing out", "times out")
        raise AssertionError(
            f"the fault matrix runs saga {definition.name!r} with {faulted} {doing} (its "
            f'case "{faulted} {does}"), but that run failed: {stopped!r}'
            f"{_around_note(crashed)}"
        ) from stopped
    finally:
        orchestrator.remove_listener(recorder)
    problems: list[str] = []
    expected = _expected(steps, index, mode)
    run = recorder._last_of(saga_id)
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
    case = FaultCase(
        index,
        steps[index].name,
        mode,
        tuple(label.partition(":")[2] for label in expected),
        tuple(label.partition(":")[2] for label in compensated),
        status,
        error,
        tuple(problems),
    )
    explained = isinstance(error, StepFailed) and error.step_index == index and bool(injector.fired)
    return case, (None if not problems or explained else error)


def check_matrix_error(error: object, where: str) -> Fault:
    """``error`` as the fault matrix takes it: an ``Exception`` instance or class."""
    __tracebackhide__ = True
    if not isinstance(error, BaseException) and not (
        isinstance(error, type) and issubclass(error, BaseException)
    ):
        raise SagaDefinitionError(
            f"{where} must be an exception instance or class, such as ValueError('boom') "
            f"or ConnectionError, got {error!r}"
        )
    fault = _check_fault(error)
    kind = fault if isinstance(fault, type) else type(fault)
    if not issubclass(kind, Exception):
        raise SagaDefinitionError(
            f"{where} must be an Exception, got {kind.__name__}: a step "
            f"raising it stops the saga never compensated, which the matrix cannot check; "
            f"test it with FaultInjector().fail(step, {kind.__name__})"
        )
    return fault


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
    an ``AssertionError`` listing every failing case (caused by the first error no
    injected fault explains: a compensation's, say); the report is returned otherwise.

    Without ``orchestrator`` a fresh in-memory one with :class:`InstantSleep` is used.
    Faults active around the call still apply (an inner scope is asked first).
    """
    __tracebackhide__ = True  # pytest shows the line of the test that called it
    if not isinstance(definition, SagaDefinition):
        raise SagaDefinitionError(
            f"run_fault_matrix() takes a SagaDefinition, got {definition!r}; "
            f"{_not_a_definition_fix(definition)}"
        )
    for option, value in (("failures", failures), ("timeouts", timeouts), ("check", check)):
        if not isinstance(value, bool):
            raise SagaDefinitionError(
                f"run_fault_matrix({option}=...) must be True or False, got {value!r}"
            )
    if orchestrator is not None and not isinstance(orchestrator, SagaOrchestrator):
        raise SagaDefinitionError(
            f"run_fault_matrix(orchestrator=...) must be a SagaOrchestrator, got {orchestrator!r}"
        )
    if not (failures or timeouts):
        raise SagaDefinitionError(
            "run_fault_matrix(failures=False, timeouts=False) would run no case and pass; "
            "leave failures or timeouts on"
        )
    fault = check_matrix_error(error, "run_fault_matrix(error=...)")
    own = orchestrator is None
    if orchestrator is None:
        orchestrator = SagaOrchestrator(sleep=InstantSleep(), history_limit=0)
    run_id = f"fault-matrix-{os.urandom(4).hex()}"
    spy = _StepSpy(f"{run_id}-discover")
    around = _FiredAround()
    try:
        try:
            with _applied(spy):
                await orchestrator.execute(definition, saga_id=spy.saga_id)
        except BaseException as failure:
            # A BaseException passes through, unless an injected fault raised it (a crash).
            if not isinstance(failure, Exception) and around.raised(failure) is None:
                raise
            fired = around.since()
            cause = _around_note(fired[0]) if fired else ""
            raise AssertionError(
                f"the fault matrix runs saga {definition.name!r} once without faults of its "
                f"own to discover its steps, but that run failed: {failure!r}{cause}"
            ) from failure
        steps = [spy.steps[i] for i in sorted(spy.steps)]
        modes: list[FaultMode] = []
        if failures:
            modes.append("fail")
        if timeouts:
            modes.append("timeout")
        runs = [
            await _run_case(orchestrator, definition, steps, index, mode, fault, run_id)
            for index in range(len(steps))
            for mode in modes
        ]
    finally:
        if own:
            await orchestrator.close()
    cases = tuple(case for case, _ in runs)
    report = FaultMatrixReport(definition.name, tuple(s.name for s in steps), cases)
    if check and not report.ok:
        # The first error no injected fault explains (a compensation's, another step's, the
        # saga body's) is the cause: pytest shows it, and where it was raised, above.
        unexplained = next((error for _, error in runs if error is not None), None)
        raise AssertionError(str(report)) from unexplained
    return report
