"""Fault injection: make steps and compensations fail, time out or crash, per context."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from contextvars import ContextVar, Token
from dataclasses import dataclass
from difflib import get_close_matches
from types import MethodType
from typing import Any

from wrapt import BoundFunctionWrapper

from .._checks import not_the_class
from .._display import describe_args
from .._hooks import (
    SIMULATED_TIMEOUT,
    CrashAfter,
    FaultPlan,
    SimulatedCrash,
    SimulatedTimeout,
    active_faults,
    crashed_stores,
    faults_here,
    forget_crashes,
    revive,
    test_faults,
)
from .._names import written_name
from .._runs import SagaRun, current_run
from .._sagas import SagaDefinition, SagaFunction
from .._steps import COMPENSATED_NAMES, COMPENSATION_OF, DEFINED_NAMES, Step, StepCall
from .._tracebacks import hide_from_pytest
from ..exceptions import SagaDefinitionError
from ..stores import SagaStore, SQLiteStore

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest


StepTarget = (
    str
    | Step[Any, Any]
    | BoundFunctionWrapper[..., StepCall[Any]]
    # A class method step looked up (``Inventory.reserve``), as type checkers see it.
    | Callable[..., StepCall[Any]]
)
"""A step named by its name (``"debit"``), by the ``Step`` object itself, or by a method
step looked up on its class or an instance (``Bank.debit``, ``bank.debit``,
``Inventory.reserve`` for a class method step)."""

Fault = BaseException | type[BaseException]
"""An exception to raise, or an exception class instantiated for every attempt."""


class InjectedFault(Exception):
    """The exception a :class:`FaultInjector` raises when none is given."""

    # Where it is imported from, as tracebacks and pickles name it (not this private module).
    __module__ = "sagakit.testing"


# ------------------------------------------------------------------ fault injection


@dataclass(frozen=True, slots=True)
class FiredFault:
    """A fault that was injected: which step (or compensation), attempt, and what."""

    step_name: str
    step_index: int | None
    attempt: int
    compensation: bool
    # The exception raised (a crash's SimulatedCrash, "after" or not), or SIMULATED_TIMEOUT.
    fault: BaseException | SimulatedTimeout


@dataclass(frozen=True, slots=True, eq=False)  # each fault is its own: keyed by identity
class _Rule:
    target: str | Step[Any, Any]
    fault: Fault | SimulatedTimeout | CrashAfter
    compensation: bool
    times: int | None
    index: int | None
    skip: int

    def matches(self, step: Step[Any, Any], attempt: int, compensation: bool, aimed: bool) -> bool:
        return self.matches_step(step, attempt, compensation) and (
            self.index is None or (aimed and self.index == _running_index())
        )

    def matches_step(self, step: Step[Any, Any], attempt: int, compensation: bool) -> bool:
        """Whether this fault is for ``step``'s attempt, wherever it runs (``index`` aside)."""
        if compensation is not self.compensation:
            return False
        if self.times is not None and attempt > self.times:
            return False
        target = self.target
        if isinstance(target, str):
            return step.name == target
        return step is target


def _running_index() -> int | None:
    run = current_run.get()
    return None if run is None or run.step is None else run.step.index


def _started_in(base: SagaRun | None) -> bool:
    """Whether the running saga was started where ``base`` ran (``None``: outside any
    saga), rather than by a step of a saga started there (a nested saga)."""
    run = current_run.get()
    return run is not None and run.parent is base


def _check_target(target: object, method: str) -> str | Step[Any, Any]:
    """The step ``target`` names, for ``method`` (``"fail"``, ``"assert_completed"``...)."""
    if isinstance(target, str) and target:
        return target
    if isinstance(target, Step):
        return target
    parent = getattr(target, "_self_parent", None)  # a step looked up on a class or instance
    if isinstance(parent, Step):
        return parent
    if isinstance(target, MethodType) and isinstance(target.__func__, Step):
        return target.__func__  # a class method step looked up, from Python 3.13
    if isinstance(target, StepCall):
        raise SagaDefinitionError(_step_call_given(target, method))
    if isinstance(target, SagaFunction | SagaDefinition):
        raise SagaDefinitionError(_saga_given(target, method))
    if (given := _compensation_given(target, method)) is not None:
        raise SagaDefinitionError(given)
    raise SagaDefinitionError(
        f"name a step by name ('debit') or by its @step object (debit), got {target!r}"
    )


def _step_call_given(call: StepCall[Any], method: str) -> str:
    """The fix for ``method(debit("alice", 10))``: a step call where a step is wanted."""
    written = written_name(call.step, call.name)  # a step defined in a function: its name
    arguments = describe_args(call.args, call.kwargs)  # as the call's repr writes them
    text = (
        f"{method}() got a step call {written}({arguments}); pass the step itself: "
        f"{method}({written}) (or its name, {call.name!r})"
    )
    if method.startswith("assert_"):
        return text
    return (
        f"{text}. A fault hits the step whatever its arguments; to aim it at one use of a "
        f"step the saga runs more than once, give its position: {method}({written}, index=N)"
    )


def _saga_given(saga: SagaFunction[...] | SagaDefinition, method: str) -> str:
    """The fix for ``fail(order)`` or ``fail(order("lamp"))``: a saga where one of its
    steps is wanted."""
    function: SagaFunction[...] | None = saga if isinstance(saga, SagaFunction) else saga.factory
    if isinstance(saga, SagaFunction):
        what, calls = f"the saga {saga.name!r}", None
    else:
        what, calls = f"a definition of saga {saga.name!r}", saga.steps
    listed = f" ({', '.join(repr(call.name) for call in calls)})" if calls else ""
    text = f"{method}() got {what}, where one of its steps is wanted{listed}: "
    if method.startswith("assert_"):
        return text + (
            "pass the steps, by name or as their @step objects; check the saga's outcome "
            "with assert_status()"
        )
    definition = "definition" if function is None else f"{written_name(function, saga.name)}(...)"
    return text + (
        "pass the step, by name or as its @step object; to fault each step of the saga in "
        f"turn, run the fault matrix: await run_fault_matrix({definition})"
    )


# The call that faults (or checks) a compensation, for a method given one.
_FOR_COMPENSATION = {
    "fail": "fail_compensation({})",
    "timeout": "timeout_compensation({})",
    "crash": "crash({}, compensation=True)",
}


def _compensation_given(target: object, method: str) -> str | None:
    """The fix for ``method(refund)``: a compensation function where a step is wanted."""
    function = target.__func__ if isinstance(target, MethodType) else target
    if not callable(function):
        return None
    try:
        step = COMPENSATION_OF.get(function)
    except TypeError:  # not weakly referenceable: no compensation
        return None
    if step is None:
        return None
    name, written = step
    fix = _FOR_COMPENSATION.get(method, f"{method}({{}})").format(written)
    given = written_name(function, repr(function))
    return (
        f"{method}() got {given}, the compensation of step {name!r}, where a step is "
        f"wanted; pass the step: {fix}"
    )


def step_names(steps: tuple[object, ...], method: str) -> list[str]:
    """The names of steps given by name or as ``@step`` objects (as faults take them), to
    ``method``."""
    targets = [_check_target(step, method) for step in steps]
    return [target if isinstance(target, str) else target.name for target in targets]


def _check_fault(fault: object) -> Fault:
    if isinstance(fault, BaseException):
        return fault
    if isinstance(fault, type) and issubclass(fault, BaseException):
        try:
            fault("injected")  # it is built with a message for every attempt
        except TypeError as error:
            raise SagaDefinitionError(
                f"the fault class {fault.__name__} cannot be built from a message alone "
                f"({error}); pass an instance instead, e.g. {fault.__name__}(...)"
            ) from error
        return fault
    raise SagaDefinitionError(
        f"a fault must be an exception instance or class (ValueError('boom')), got {fault!r}"
    )


def _check_count(value: object, what: str, *, least: int = 0) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise SagaDefinitionError(
            f"{what} must be a whole number >= {least} or None, got {value!r}"
            + (" (a fault that never fires tests nothing)" if value == 0 and least else "")
        )
    return value


def _check_skip(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SagaDefinitionError(
            f"skip must be a whole number >= 0 (how many attempts the fault lets through "
            f"before it hits), got {value!r}"
        )
    return value


def add_notes(error: BaseException, notes: list[str]) -> None:
    """Add to ``error`` those of ``notes`` it does not say yet (its message, or a block
    around it, may); to its message if it is a ``pytest.fail(..., pytrace=False)``, which
    pytest shows by its message alone, without notes."""
    said = [note for note in getattr(error, "__notes__", ()) if isinstance(note, str)]
    with suppress(Exception):  # an exception whose str() raises says nothing
        said.append(str(error))
    new = [note for note in notes if not any(note in text for text in said)]
    if new and "pytest" in sys.modules:
        import pytest

        if isinstance(error, pytest.fail.Exception) and not error.pytrace:
            error.msg = "\n".join([error.msg, *new] if error.msg else new)
            return
    for note in new:
        error.add_note(note)


class _Scope:
    """The faults of one ``with injector:`` block, consulted first, then those active
    around it. Tasks started in the block keep this object: once the block ends
    (``open`` is false), they get only the outer faults. An injector's ``index`` faults
    hit only the sagas the block runs itself, not the sagas their steps run."""

    __slots__ = ("base", "inner", "open", "outer")

    def __init__(self, inner: FaultPlan, outer: FaultPlan | None) -> None:
        self.inner = inner
        self.outer = outer
        self.open = True
        self.base = current_run.get()  # the saga whose step entered the block, if any

    def fault_for(
        self, step: Step[Any, Any], attempt: int, *, compensation: bool
    ) -> BaseException | SimulatedTimeout | CrashAfter | None:
        return self._ask(step, attempt, compensation, ())

    def _ask(
        self,
        step: Step[Any, Any],
        attempt: int,
        compensation: bool,
        asked: tuple[FaultInjector, ...],
    ) -> BaseException | SimulatedTimeout | CrashAfter | None:
        """The fault for this attempt; ``asked``: the injectors of the blocks inside this
        one, asked already (an injector entered again in its own block, as with
        ``with saga_faults.fail(...):``, is asked once, by its innermost block)."""
        inner = self.inner
        if self.open and not any(inner is injector for injector in asked):
            if isinstance(inner, FaultInjector):
                aimed = _started_in(self.base)
                fault = inner._fault_for(step, attempt, compensation, aimed=aimed)
                asked = (*asked, inner)
            else:
                fault = inner.fault_for(step, attempt, compensation=compensation)
            if fault is not None:
                _note_ran_around(self.outer, step, attempt, compensation, asked)
                return fault
        outer = self.outer
        if isinstance(outer, _Scope):
            return outer._ask(step, attempt, compensation, asked)
        return None if outer is None else outer.fault_for(step, attempt, compensation=compensation)


def _note_ran_around(
    scope: FaultPlan | None,
    step: Step[Any, Any],
    attempt: int,
    compensation: bool,
    asked: tuple[FaultInjector, ...],
) -> None:
    """Tell the injectors of the open scopes around one that answered a fault for this
    attempt (so asked them nothing) that it ran: their faults on it did not fire because
    it never ran, but because a fault nearer came first. Those in ``asked`` know."""
    while isinstance(scope, _Scope):
        inner = scope.inner
        known = any(inner is injector for injector in asked)
        if scope.open and isinstance(inner, FaultInjector) and not known:
            asked = (*asked, inner)
            inner._ran.setdefault((id(step), attempt, compensation), step)
            aimed = _started_in(scope.base)
            inner._count_skipped(step, attempt, compensation, aimed=aimed)
        scope = scope.outer


@contextmanager
def _applied(plan: FaultPlan, *, test_wide: bool = False) -> Iterator[None]:
    """Make ``plan`` apply first within the block, the faults active around it after
    (checking nothing at its end); tasks started in the block keep it until it ends.
    ``test_wide`` (the ``saga_faults`` fixture): also in the tasks started before it,
    whose context has no faults (a worker an earlier fixture started)."""
    scope = _Scope(plan, faults_here())
    token = active_faults.set(scope)
    previous = test_faults.plan
    if test_wide:
        test_faults.plan = scope
    try:
        yield
    finally:
        scope.open = False  # also for the tasks started in the block
        if test_wide:
            test_faults.plan = previous
        active_faults.reset(token)


_scopes: ContextVar[tuple[tuple[Token[FaultPlan | None], _Scope], ...]] = ContextVar(
    "sagakit_fault_scopes", default=()
)


class FaultInjector:
    """Faults to inject into steps and compensations, active only where entered.

    Add faults with :meth:`fail`, :meth:`timeout`, :meth:`fail_compensation` and
    :meth:`timeout_compensation` (each returns the injector, so calls chain), then run
    sagas inside ``with injector:``. The scope is a context variable: it covers the
    current task and tasks started from it, never concurrently running tests or tasks
    that did not enter it. Scopes nest; an inner injector is asked first. The first
    matching fault wins; a fault fires on every attempt, or only on the first ``times``;
    ``skip`` lets through the first attempts it would hit, counted over every saga run
    while the injector is active (until :meth:`clear`). ``index`` restricts a fault to
    the step at that position in the saga under test (for a step used twice): a saga run
    in the block, not one a step of it runs (a nested saga, whose steps have positions of
    their own); a fault without ``index`` hits its step in nested sagas too.
    :attr:`fired` lists every fault injected, in order.
    """

    def __init__(self) -> None:
        self._rules: list[_Rule] = []
        self.fired: list[FiredFault] = []
        # Of an `index` fault: where its step ran when that index was not the one (its
        # position; whether in the saga under test); and the faults that fired. Keyed by
        # the rule itself (compared by identity), never by an id() a later rule may reuse.
        self._missed: dict[_Rule, dict[tuple[int | None, bool], None]] = {}
        self._hit: set[_Rule] = set()
        # Every attempt of a step or compensation asked about while active, by (id of the
        # step, attempt, compensation): why a fault that never fired did not.
        self._ran: dict[tuple[int, int, bool], Step[Any, Any]] = {}
        # Of a `skip` fault: how many attempts it would have hit so far.
        self._seen: dict[_Rule, int] = {}

    def _add(
        self,
        method: str,
        target: object,
        fault: Fault | SimulatedTimeout | CrashAfter,
        *,
        compensation: bool,
        times: int | None,
        index: int | None,
        skip: int,
    ) -> FaultInjector:
        self._rules.append(
            _Rule(
                _check_target(target, method),
                fault,
                compensation,
                _check_count(times, "times", least=1),
                _check_count(index, "index"),
                _check_skip(skip),
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
        skip: int = 0,
    ) -> FaultInjector:
        """Make ``step`` raise ``error`` instead of running (only its first ``times``
        attempts; letting the first ``skip`` attempts it would hit run)."""
        return self._add(
            "fail",
            step,
            _check_fault(error),
            compensation=False,
            times=times,
            index=index,
            skip=skip,
        )

    def timeout(
        self,
        step: StepTarget,
        *,
        times: int | None = None,
        index: int | None = None,
        skip: int = 0,
    ) -> FaultInjector:
        """Make ``step`` time out at once, without waiting for its timeout."""
        return self._add(
            "timeout",
            step,
            SIMULATED_TIMEOUT,
            compensation=False,
            times=times,
            index=index,
            skip=skip,
        )

    def fail_compensation(
        self,
        step: StepTarget,
        error: Fault = InjectedFault,
        *,
        times: int | None = None,
        index: int | None = None,
        skip: int = 0,
    ) -> FaultInjector:
        """Make the compensation of ``step`` raise ``error`` instead of running."""
        return self._add(
            "fail_compensation",
            step,
            _check_fault(error),
            compensation=True,
            times=times,
            index=index,
            skip=skip,
        )

    def timeout_compensation(
        self,
        step: StepTarget,
        *,
        times: int | None = None,
        index: int | None = None,
        skip: int = 0,
    ) -> FaultInjector:
        """Make the compensation of ``step`` time out at once."""
        return self._add(
            "timeout_compensation",
            step,
            SIMULATED_TIMEOUT,
            compensation=True,
            times=times,
            index=index,
            skip=skip,
        )

    def crash(
        self,
        step: StepTarget,
        *,
        after: bool = False,
        compensation: bool = False,
        index: int | None = None,
        skip: int = 0,
        process: bool = False,
    ) -> FaultInjector:
        """Stop the saga at ``step`` once, as if its process were killed there.

        Before the step runs, or with ``after=True`` once it has acted but before its
        outcome (completion or failure) is recorded; with ``compensation=True`` at the
        step's compensation instead; with ``skip=N`` at the attempt after the first ``N``
        it would stop. :class:`SimulatedCrash` propagates out of ``execute()``; the
        orchestrator runs and records nothing more, so a durable store keeps the saga for
        recovery: call :func:`simulate_restart` on the store, then ``recover()`` with a
        new orchestrator and store, as a restarted process would.

        With ``process=True`` the whole process dies, not only this saga: every other
        saga running on the same store object (a ``SQLiteStore`` or ``PostgresStore``)
        stops at its next write of the log, raising :class:`SimulatedCrash` too, and
        nothing more is written through that store until :func:`simulate_restart`.
        """
        options = (("after", after), ("compensation", compensation), ("process", process))
        for option, value in options:
            if not isinstance(value, bool):
                later = option == "after" and isinstance(value, int)  # "after 2 calls"
                hint = f" (to crash at a later attempt, pass skip={value})" if later else ""
                raise SagaDefinitionError(
                    f"crash({option}=...) must be True or False, got {value!r}{hint}"
                )
        [name] = step_names((step,), "crash")
        where = "the compensation of step" if compensation else "step"
        crash = SimulatedCrash(
            f"simulated {'process ' if process else ''}crash at {where} {name!r}"
            f"{' after it acted' if after else ''}"
        )
        crash.process = process
        fault: SimulatedCrash | CrashAfter = CrashAfter(crash) if after else crash
        return self._add(
            "crash", step, fault, compensation=compensation, times=None, index=index, skip=skip
        )

    def clear(self) -> None:
        """Forget every fault (and what fired; ``skip`` counts start over)."""
        self._rules.clear()
        self.fired.clear()
        self._missed.clear()
        self._hit.clear()
        self._ran.clear()
        self._seen.clear()

    def _unknown_steps(self) -> str | None:
        """What is wrong if a fault names a step no ``@step`` defines (a typo, say), or
        aims at the compensation of a step that has none: such a fault never fires."""
        unknown = dict.fromkeys(
            rule.target
            for rule in self._rules
            if isinstance(rule.target, str) and rule.target not in DEFINED_NAMES
        )
        uncompensated: dict[str, None] = {}
        for rule in self._rules:
            target = rule.target
            if not rule.compensation:
                continue
            if isinstance(target, str):
                if target in DEFINED_NAMES and target not in COMPENSATED_NAMES:
                    uncompensated[target] = None
            elif target.compensation is None:
                uncompensated[target.name] = None
        if not (unknown or uncompensated):
            return None
        problems = []
        for name in unknown:
            close = get_close_matches(name, DEFINED_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"no step is named {name!r}{hint}")
        problems += [f"step {name!r} has no compensation" for name in uncompensated]
        fixes = []
        if unknown:
            fixes.append(
                "use the name the step is recorded under (its function's, or "
                "@step(name=...)), or pass the @step object itself"
            )
        if uncompensated:
            fixes.append(
                "aim compensation faults (fail_compensation, timeout_compensation, "
                "crash(compensation=True)) at a step with a @<step>.compensate function, "
                "or fault the step itself with fail(), timeout() or crash()"
            )
        return f"FaultInjector: {'; '.join(problems)}, so its fault never fired; {'; '.join(fixes)}"

    def _index_misses(self) -> str | None:
        """What is likely wrong if an ``index`` fault never fired though its step ran, at
        other positions or only in nested sagas: said on a failure, never an error itself
        (a saga may run a step elsewhere in one test and at that index in another)."""
        misses = []
        for rule in self._rules:
            where = self._missed.get(rule)
            if where is None or rule in self._hit:
                continue
            name = rule.target if isinstance(rule.target, str) else rule.target.name
            what = f"the compensation of step {name!r}" if rule.compensation else f"step {name!r}"
            under_test = sorted({i for i, aimed in where if aimed and i is not None})
            nested = sorted({i for i, aimed in where if not aimed and i is not None})
            ran = []
            if under_test:
                ran.append(f"at index {', '.join(map(str, under_test))} of the saga under test")
            if nested:
                ran.append(
                    f"at index {', '.join(map(str, nested))} of a nested saga, which index= "
                    "does not aim at (leave index out to fault it there)"
                )
            if not ran:
                ran.append("outside any saga, where index= never hits")
            ran_at = " and ".join(ran)
            skipped = self._skipped_all(rule)
            at_index = f"; at index {rule.index}, {skipped}" if skipped else ""
            misses.append(
                f"the fault on {what} with index={rule.index} never fired: it ran {ran_at}"
                f"{at_index}"
            )
        return "FaultInjector: " + "; ".join(misses) if misses else None

    def _never_fired(self) -> str | None:
        """What is likely wrong if a fault on a real step never fired, its step (or
        compensation) having never run — not in this saga, or not reached — or having run
        only where an earlier fault came first: said on a failure, never an error itself
        (a fault on a step the saga did not reach is a fine thing to set up)."""
        misses = []
        for rule in self._rules:
            target = rule.target
            if rule in self._hit or rule in self._missed:  # fired, or said where
                continue
            if isinstance(target, str) and target not in DEFINED_NAMES:
                continue  # said by _unknown_steps
            name = target if isinstance(target, str) else target.name
            runs = [
                (step, attempt)
                for (_, attempt, compensation), step in self._ran.items()
                if compensation is rule.compensation
                and (step.name == target if isinstance(target, str) else step is target)
            ]
            if rule.compensation and (
                target.compensation is None
                if isinstance(target, Step)
                else target not in COMPENSATED_NAMES
            ):
                continue  # no compensation: said by _unknown_steps
            what = f"the compensation of step {name!r}" if rule.compensation else f"step {name!r}"
            if not runs:
                why = (
                    "the step was never compensated where the injector is active"
                    if rule.compensation
                    else "the step never ran where the injector is active (is it a step "
                    "of the saga under test?)"
                )
            elif skipped := self._skipped_all(rule):
                why = skipped
            elif any(rule.matches_step(step, attempt, rule.compensation) for step, attempt in runs):
                why = (
                    "another fault on it was injected first (the first matching fault "
                    "wins, and an injector entered inside this one's block is asked first)"
                )
            else:
                why = f"it ran only at attempts past times={rule.times}"
            misses.append(f"the fault on {what} never fired: {why}")
        return "FaultInjector: " + "; ".join(misses) if misses else None

    def _skipped_all(self, rule: _Rule) -> str | None:
        """Why ``rule`` never fired if its ``skip`` let through every attempt it would hit."""
        seen = self._seen.get(rule, 0)
        if not seen or seen > rule.skip:
            return None
        ran = "1 attempt" if seen == 1 else f"{seen} attempts"
        why = (
            f"only {ran} it would hit ran (counted over every saga run where the injector is "
            f"active), {'' if seen == 1 else 'all '}let through by skip={rule.skip}"
        )
        times = rule.times
        if times is not None and times <= rule.skip:  # a window one use of the step never reaches
            last = rule.skip + times
            which = f"attempt {last}" if times == 1 else f"attempts {rule.skip + 1} to {last}"
            why += (
                f"; only attempts up to times={times} of each use of the step count (to fault "
                f"{which} of one use, give times={last}, skip={rule.skip})"
            )
        return why

    def _failure_notes(self) -> list[str]:
        """Why a block (or a test) that failed may have: its faults that never fired."""
        notes = (self._unknown_steps(), self._index_misses(), self._never_fired())
        return [note for note in notes if note]

    def _strict_problem(self) -> str | None:
        """What a strict ``saga_faults`` says at the teardown of a test that passed though
        some of its faults never fired (None if each fired)."""
        unfired = sum(1 for rule in self._rules if rule not in self._hit)  # (a crash: gone)
        if not unfired:
            return None
        why = "\n".join(note.removeprefix("FaultInjector: ") for note in self._failure_notes())
        return (
            f"saga_faults is strict, and {unfired} of its faults never fired, so the test "
            f"passed without {'it' if unfired == 1 else 'them'}:\n{why}\nMake each fault hit "
            "a step the saga under test runs (by its name or @step object, at the index it "
            "runs at), remove the faults the test does not need, or mark the test "
            "@pytest.mark.saga_faults(strict=False)"
        )

    def _note_failure(self, error: BaseException) -> bool:
        """Note on ``error``, the failure of a block (or test), its faults that never
        fired; whether there were any."""
        notes = self._failure_notes()
        add_notes(error, notes)
        return bool(notes)

    def _check_steps(self, error: BaseException | None) -> None:
        """At the end of a block: refuse faults on unknown steps (noted on ``error``)."""
        __tracebackhide__ = True  # pytest shows the test's `with` line
        if error is not None:  # the block failed, perhaps because a fault never fired
            self._note_failure(error)
            return
        problem = self._unknown_steps()
        if problem is not None:
            raise SagaDefinitionError(problem)

    def fault_for(
        self, step: Step[Any, Any], attempt: int, *, compensation: bool
    ) -> BaseException | SimulatedTimeout | CrashAfter | None:
        """The :class:`~sagakit._hooks.FaultPlan` hook, asked per attempt. Asked directly
        rather than through ``with injector:`` (which aims ``index`` faults at the sagas
        the block runs), an ``index`` fault matches the running step of any saga."""
        return self._fault_for(step, attempt, compensation, aimed=True)

    def _fault_for(
        self, step: Step[Any, Any], attempt: int, compensation: bool, *, aimed: bool
    ) -> BaseException | SimulatedTimeout | CrashAfter | None:
        """The fault for this attempt; ``aimed``: the running saga is the one under test."""
        self._ran.setdefault((id(step), attempt, compensation), step)
        for position, rule in enumerate(self._rules):
            if not rule.matches(step, attempt, compensation, aimed):
                if rule.index is not None and rule.matches_step(step, attempt, compensation):
                    self._missed.setdefault(rule, {})[_running_index(), aimed] = None
                continue
            if self._let_through(rule):
                continue
            # The attempt is this fault's: the `skip` faults after it count it all the same.
            self._count_skipped(step, attempt, compensation, aimed=aimed, start=position + 1)
            fault = rule.fault
            if isinstance(fault, SimulatedCrash | CrashAfter):
                self._rules.remove(rule)  # a process dies once: nothing is kept of it
                self._missed.pop(rule, None)
                self._seen.pop(rule, None)
                crash = fault if isinstance(fault, SimulatedCrash) else fault.crash
                self.fired.append(
                    FiredFault(step.name, _running_index(), attempt, compensation, crash)
                )
                return fault
            self._hit.add(rule)
            if isinstance(fault, type):
                what = "the compensation of step" if compensation else "step"
                fault = fault(f"injected into {what} {step.name!r}, attempt {attempt}")
            self.fired.append(FiredFault(step.name, _running_index(), attempt, compensation, fault))
            return fault
        return None

    def _let_through(self, rule: _Rule) -> bool:
        """Count an attempt ``rule`` would hit; whether its ``skip`` lets this one run."""
        if not rule.skip:
            return False
        seen = self._seen[rule] = self._seen.get(rule, 0) + 1
        return seen <= rule.skip

    def _count_skipped(
        self, step: Step[Any, Any], attempt: int, compensation: bool, *, aimed: bool, start: int = 0
    ) -> None:
        """Count, for its ``skip`` faults from ``start`` on, an attempt another fault took."""
        for rule in self._rules[start:]:
            if rule.skip and rule.matches(step, attempt, compensation, aimed):
                self._let_through(rule)

    @contextmanager
    def activate(self) -> Iterator[FaultInjector]:
        """Make these faults apply within the ``with`` block (same as ``with injector:``)."""
        __tracebackhide__ = True
        with self._active():
            try:
                yield self
            except BaseException as error:
                self._check_steps(error)
                raise
            else:
                self._check_steps(None)

    def _active(self, *, test_wide: bool = False) -> AbstractContextManager[None]:
        """Make these faults apply within the block, checking nothing at its end (the
        ``saga_faults`` fixture checks the steps named itself); ``test_wide``: in the
        tasks started before it too (the fixture's)."""
        return _applied(self, test_wide=test_wide)

    def __enter__(self) -> FaultInjector:
        scope = _Scope(self, faults_here())
        token = active_faults.set(scope)
        _scopes.set((*_scopes.get(), (token, scope)))
        return self

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        __tracebackhide__ = True
        scopes = _scopes.get()
        wrong_task = RuntimeError("FaultInjector exited in a task (context) that did not enter it")
        if not scopes:
            raise wrong_task
        token, scope = scopes[-1]
        try:
            active_faults.reset(token)
        except ValueError:  # a task started inside the block inherited the scopes
            raise wrong_task from None
        scope.open = False  # also for the tasks started in the block
        _scopes.set(scopes[:-1])
        self._check_steps(error)

    def __repr__(self) -> str:
        faults = f"{len(self._rules)} fault{'' if len(self._rules) == 1 else 's'}"
        return f"<FaultInjector {faults}, {len(self.fired)} fired>"


def _crashed_on_its_file(store: SQLiteStore) -> bool:
    """Whether a simulated crash stopped another SQLite store on ``store``'s file, which
    ``simulate_restart(store)`` then restarts (its claims are in the file)."""
    return any(
        other is not store and isinstance(other, SQLiteStore) and other._file == store._file
        for other in crashed_stores()
    )


async def simulate_restart(store: SagaStore) -> None:
    """Forget that this process owns the running sagas of ``store``, as if it had died.

    Use it after a :meth:`FaultInjector.crash`: a new orchestrator's ``recover()`` then
    claims those sagas, as a restarted process would. Every saga running in the store
    is released, so use it in tests only. A SQLite store closed since the crash (by an
    ``async with SagaOrchestrator(store)`` the crash left) is taken too: the claim is
    in its file. On PostgreSQL, whose leases are each store object's own, a store that
    no simulated crash stopped (a new one, to recover with) restarts the stores on its
    log (the same ``dsn`` and ``schema``) that one did stop. Given so to restart the
    stores a crash stopped on its log, a store no simulated crash stopped keeps the sagas
    it is running itself (its leases, its SQLite claims): they run on. An in-memory store
    loses its sagas in a real crash and cannot be restarted.
    """
    if isinstance(store, type):  # a class has the protocol's methods, unbound
        raise not_the_class(store, "simulate_restart()'s store")
    if not isinstance(store, SagaStore):
        fix = "orchestrator.store" if hasattr(store, "store") else "SQLiteStore(...)"
        raise SagaDefinitionError(
            f"simulate_restart() takes the saga store the crashed orchestrator used "
            f"({fix}), got {store!r}"
        )
    if not store.durable:
        raise SagaDefinitionError(
            f"{type(store).__name__} keeps sagas in memory, which a crash loses; simulate "
            "crashes and recovery with a durable store such as SQLiteStore(tmp_path / 'sagas.db')"
        )
    stopped = any(found is store for found in crashed_stores())  # (before forgetting)
    crashed = forget_crashes(store)  # restarted: what the crashes stopped is recovery's
    restart = getattr(store, "_restart_process", None)
    if restart is not None:  # a process crash refused its writes: "the process" is back
        restart()
    revive(store)  # (its worker may run again)
    if isinstance(store, SQLiteStore) and not store._writer.usable:
        # Closed already, as `async with SagaOrchestrator(store)` leaves it after the crash:
        # this process's claim is in the file, so give it up through a store of its own.
        reopened = SQLiteStore(
            store._file, busy_timeout=store.busy_timeout, serializer=store.serializer
        )
        try:
            await simulate_restart(reopened)
        finally:
            await reopened.close()
        return
    if isinstance(store, SQLiteStore) and (stopped or not _crashed_on_its_file(store)):
        store._live.clear()  # "the process died": nothing runs under it any more
    # (Else a store no crash stopped, given to restart the crashed ones on its file: the
    # runs it has live are this process's own, and run on.)
    release_leases = getattr(store, "release_leases", None)
    if release_leases is not None:
        same_log: Callable[[object], bool] | None = getattr(store, "_same_log", None)
        if same_log is not None and not stopped:
            # PostgreSQL: leases are each store object's own, so given a store no crash
            # stopped (a new one, to recover with), restart the crashed ones on its log,
            # and only those: the sagas this store runs keep their leases.
            others = [other for other in crashed_stores() if same_log(other)]
            if others:
                for other in others:
                    await simulate_restart(other)
                return
        # Leases: give them up so another worker claims at once, counting that claim as
        # a recovery attempt.
        await release_leases(as_crash=True)
        forget_runs: Callable[[set[str]], None] | None = getattr(store, "_forget_runs", None)
        if forget_runs is not None:  # the crashed runs never finish(): drop what it keeps of them
            forget_runs(crashed)
        return
    release = getattr(store, "release", None)
    if release is None:
        raise SagaDefinitionError(
            f"{type(store).__name__} has no release() or release_leases(), so a restart "
            "cannot be simulated on it"
        )
    live: set[str] = store._live if isinstance(store, SQLiteStore) else set()  # (see above)
    for saga in await store.running():
        if saga.id is not None and saga.id not in live:
            await release(saga.id)
