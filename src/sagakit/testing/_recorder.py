"""A listener keeping each run's ordered trail, with assertion helpers."""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, TypeVar

from .._display import shown_rows
from .._runs import ABANDONED, current_run, describe_error
from .._steps import COMPENSATED_NAMES, DEFINED_NAMES
from .._tracebacks import hide_from_pytest
from ..exceptions import SagaDefinitionError
from ..records import shown_error
from ..status import SagaStatus
from ..transitions import Transition, TransitionKind
from ._faults import StepTarget, _check_target, step_names

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest


E = TypeVar("E", bound=StrEnum)

_COMPENSATION_KINDS = frozenset(
    {
        TransitionKind.COMPENSATION_STARTED,
        TransitionKind.COMPENSATION_COMPLETED,
        TransitionKind.COMPENSATION_RETRYING,
        TransitionKind.COMPENSATION_FAILED,
    }
)


_SAGA_KINDS = frozenset(
    {TransitionKind.SAGA_STARTED, TransitionKind.SAGA_FINISHED, TransitionKind.SAGA_STOPPED}
)


def _member(kind: type[E], value: E | str, where: str, what: str) -> E:
    """``value`` as a member of the string enum ``kind``; a typo is a mistake in the test."""
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(repr(str(member)) for member in kind)
        raise SagaDefinitionError(
            f"{where} got {value!r}, which is not {what}; use a {kind.__name__} or one of {known}"
        ) from None


def _one_per_argument(values: tuple[object, ...], where: str, what: str) -> None:
    """Refuse ``values`` given as one list (``assert_trail(run.trail())``): the assertion
    takes them one per argument."""
    if len(values) == 1 and isinstance(values[0], list | tuple):
        raise SagaDefinitionError(
            f"{where}() takes the {what} one per argument, got the "
            f"{type(values[0]).__name__} {values[0]!r}; unpack it: {where}(*{what})"
        )


def _check_lines(lines: tuple[object, ...]) -> list[str]:
    """``lines`` for ``assert_trail()``: strings, one per argument."""
    _one_per_argument(lines, "assert_trail", "lines")
    checked: list[str] = []
    for line in lines:
        if not isinstance(line, str):
            raise SagaDefinitionError(
                "assert_trail() takes the lines of the trail as strings, such as "
                f"'saga_started' or 'step_failed ship' (as trail() gives them), got {line!r}"
            )
        checked.append(line)
    return checked


def _line(transition: Transition, *, detail: bool = False, cut: bool = False) -> str:
    kind = transition.kind
    if kind is TransitionKind.SAGA_STARTED:
        return str(kind)
    if kind is TransitionKind.SAGA_STOPPED:  # unfinished here: say why, in detail
        error = transition.error
        return f"{kind}: {describe_error(error)}" if detail and error is not None else str(kind)
    if kind is TransitionKind.SAGA_FINISHED:
        return f"{kind} {transition.status}"
    text = f"{kind} {transition.step_name}"
    if detail:
        text += f" (step {transition.step_index}, attempt {transition.attempt})"
        if transition.error is not None:  # on one line, even if its str() raises
            described = describe_error(transition.error)
            text += f": {shown_error(described) if cut else described}"
    return text


def _unmatchable(steps: tuple[StepTarget, ...], *, compensated: bool = False) -> list[str]:
    """Why a run could match none of ``steps``: no step has that name (a typo), or, for
    ``compensated``, the step has no compensation (as fault injection says). A step given
    by name is looked up among the names of every step defined in this process."""
    why: dict[str, None] = {}
    for step in steps:
        target = _check_target(step, "")  # a Step, for a method step looked up
        if isinstance(target, str):
            name = target
            if name not in DEFINED_NAMES:
                close = difflib.get_close_matches(name, DEFINED_NAMES, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                why[f"no step is named {name!r}{hint}"] = None
                continue
            uncompensated = name not in COMPENSATED_NAMES
        else:
            name = target.name
            uncompensated = target.compensation is None
        if compensated and uncompensated:
            why[f"step {name!r} has no compensation, so it is never compensated"] = None
    return list(why)


def _mismatch(
    what: str, expected: list[str], actual: list[str], run: RecordedRun, why: Iterable[str] = ()
) -> str:
    diff = "\n".join(
        f"  {line}" for line in difflib.ndiff(expected, actual) if not line.startswith("?")
    )
    notes = "".join(f"{line}\n" for line in why)
    return (
        f"{run.label}: {what} differ (- expected, + actual):\n{diff}\n{notes}"
        f"trail:\n{run.describe(indent='  ')}"
    )


@dataclass(slots=True)
class RecordedRun:
    """The ordered transitions of one saga run, with assertion helpers."""

    saga_id: str
    saga_name: str
    transitions: list[Transition] = field(default_factory=list)
    # The simulated crash that ended the run, if one did (it tells no transition).
    crash: BaseException | None = None
    # Whether its event loop was closed while it ran (its last transition: its end as
    # the store left it, which no listener but a recorder or tracer hears).
    abandoned: bool = False
    # The runs a step of this one started (nested sagas), as the recorder heard them.
    nested: list[RecordedRun] = field(default_factory=list, repr=False)

    @property
    def label(self) -> str:
        return f"saga {self.saga_name!r} (id {self.saga_id})"

    @property
    def status(self) -> SagaStatus:
        """The saga's status after its last transition (``NOT_STARTED`` before any: a
        run made by hand with none)."""
        if not self.transitions:
            return SagaStatus.NOT_STARTED
        return self.transitions[-1].status

    @property
    def finished(self) -> bool:
        """Whether the run's ``SAGA_FINISHED`` was recorded."""
        return bool(self.transitions) and self.transitions[-1].kind is TransitionKind.SAGA_FINISHED

    def names(self, kind: TransitionKind | str) -> list[str]:
        """Step names of the transitions of ``kind`` (or its text), in order."""
        kind = _member(TransitionKind, kind, "names()", "a transition kind")
        if kind in _SAGA_KINDS:
            raise SagaDefinitionError(
                f"names() got {str(kind)!r}, a saga transition, which names no step; check "
                "the run's status, finished or trail() instead, or pass a step or "
                "compensation kind such as 'step_retrying'"
            )
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
        """Assert the run has ended with ``status`` (a run still going fails it)."""
        __tracebackhide__ = True  # pytest shows the line of the test that called it
        status = _member(SagaStatus, status, "assert_status()", "a saga status")
        if not self.transitions:
            raise AssertionError(
                f"{self.label} has not started (no transitions recorded), expected {status}"
            )
        if not self.finished:
            why = f": {self.crash}" if self.crash is not None else ""
            why = f": {ABANDONED}" if self.abandoned else why
            raise AssertionError(
                f"{self.label} has not finished (status {self.status}{why}), expected {status}\n"
                f"trail:\n{self.describe('  ')}"
            )
        if self.status != status:
            raise AssertionError(
                f"{self.label} ended {self.status}, expected {status}\n"
                f"trail:\n{self.describe('  ')}"
            )

    def assert_compensated(self, *steps: StepTarget) -> None:
        """Assert exactly these steps were compensated, in this order (none if empty)."""
        __tracebackhide__ = True
        _one_per_argument(steps, "assert_compensated", "steps")
        names = step_names(steps, "assert_compensated")
        if self.compensated != names:
            why = _unmatchable(steps, compensated=True)
            why += self._done_nested(names, self.compensated, "compensated")
            raise AssertionError(_mismatch("compensations", names, self.compensated, self, why))

    def assert_completed(self, *steps: StepTarget) -> None:
        """Assert exactly these forward steps completed, in this order."""
        __tracebackhide__ = True
        _one_per_argument(steps, "assert_completed", "steps")
        names = step_names(steps, "assert_completed")
        if self.completed != names:
            why = _unmatchable(steps) + self._done_nested(names, self.completed, "completed")
            raise AssertionError(_mismatch("completed steps", names, self.completed, self, why))

    def _done_nested(
        self, expected: list[str], actual: list[str], done: Literal["completed", "compensated"]
    ) -> list[str]:
        """Where the expected steps this run did not do (complete or compensate) were done
        by a saga that a step of it ran: a run of its own."""

        def did(run: RecordedRun) -> list[str]:
            return run.completed if done == "completed" else run.compensated

        missing = Counter(expected) - Counter(actual)
        why = []
        for name in missing:
            run = next((run for run in self._nested_runs() if name in did(run)), None)
            if run is not None:
                why.append(
                    f"step {name!r} was {done} in {run.label}, a nested saga that a step of "
                    f"this run ran: check that run with saga_id={run.saga_id!r}"
                )
        return why

    def _nested_runs(self) -> Iterator[RecordedRun]:
        """The runs the steps of this one started, and those their steps started."""
        for run in self.nested:
            yield run
            yield from run._nested_runs()

    def assert_trail(self, *lines: str) -> None:
        """Assert the whole trail, as :meth:`trail` lines, is exactly ``lines``."""
        __tracebackhide__ = True
        expected = _check_lines(lines)
        if self.trail() != expected:
            raise AssertionError(_mismatch("trails", expected, self.trail(), self))

    def _state(self) -> str:
        if not self.transitions:  # made by hand
            return "no transitions"
        if self.finished:
            ended = ""
        elif self.crash:
            ended = " (crashed)"
        else:
            ended = " (abandoned)" if self.abandoned else " (unfinished)"
        count = len(self.transitions)
        return f"{self.status}{ended}, {count} transition{'' if count == 1 else 's'}"

    def __repr__(self) -> str:
        return f"<RecordedRun {self.saga_name} id={self.saga_id!r} {self._state()}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """IPython (a notebook cell's value, the REPL): the run's state, then its trail as
        :meth:`describe` gives it, each error cut to 200 characters as a run's repr cuts
        it, and past 100 transitions the first and last 40 (a saga of thousands of steps
        would be thousands of lines)."""
        first, hidden, last = shown_rows(self.transitions, limit=100, ends=40)
        lines = [f"  {_line(t, detail=True, cut=True)}" for t in first]
        if hidden:
            lines.append(f"  … {hidden:,} more transitions (describe() gives them all)")
        lines += [f"  {_line(t, detail=True, cut=True)}" for t in last]
        printer.text("\n".join([f"{self.label}: {self._state()}", *lines]))


class SagaRecorder:
    """A listener that records every transition, grouped per saga run.

    Pass it to ``SagaOrchestrator(listeners=[recorder])`` (or ``add_listener``). The
    ``assert_*`` helpers check :attr:`last`, the most recently started top-level run,
    unless given a ``saga_id``.
    """

    def __init__(self) -> None:
        # By saga id and run number (Transition.run_number), in the order the runs
        # started: orchestrators with stores of their own may run one id at the same
        # time, and each run has a record of its own.
        self._runs: dict[tuple[str, int], RecordedRun] = {}
        # Each id's run numbers among those keys, in start order: finding an id's runs
        # must not scan every run recorded (a recorder may hear thousands).
        self._numbers: dict[str, list[int]] = {}
        self._ended: set[tuple[str, int]] = set()  # runs stopped here unfinished, or crashed
        # Runs started inside a step of another run recorded here (nested sagas).
        self._nested: set[tuple[str, int]] = set()
        self.transitions: list[Transition] = []

    def __call__(self, transition: Transition) -> None:
        self.transitions.append(transition)
        saga_id = transition.saga_id
        key = (saga_id, transition.run_number)
        kind = transition.kind
        run = self._runs.get(key)
        if run is None or kind is TransitionKind.SAGA_STARTED or run.finished or key in self._ended:
            # A new run (every run but a recovery's compensation begins SAGA_STARTED; a
            # transition made by hand has run number 0, so its key may repeat).
            self._drop_ended(saga_id, key)
            run = RecordedRun(saga_id, transition.saga_name)
            self._runs[key] = run
            self._numbers.setdefault(saga_id, []).append(key[1])
            parent = self._started_inside(transition)
            if parent is not None:
                self._nested.add(key)
                parent.nested.append(run)
        run.transitions.append(transition)
        if kind is TransitionKind.SAGA_STOPPED:
            self._ended.add(key)

    def _started_inside(self, transition: Transition) -> RecordedRun | None:
        """The run recorded here inside a step of which the run ``transition`` begins was
        started, if any. Listeners are told in the run's own task, so the running saga
        there is the run itself, which knows the run it was started in."""
        run = current_run.get()
        if run is None or run.number != transition.run_number or run.id != transition.saga_id:
            return None  # a transition made by hand, or told elsewhere: not known
        parent = run.parent
        return None if parent is None else self._runs.get((parent.id, parent.number))

    def _drop_ended(self, saga_id: str, key: tuple[str, int]) -> None:
        """Forget the runs of ``saga_id`` a new run (``key``) replaces: those that ended
        (finished, stopped or crashed; reused, or recovered after) and any of ``key``.
        One still running (another orchestrator's, with a store of its own) stays."""
        numbers = self._numbers.get(saga_id)
        if not numbers:
            return
        for number in list(numbers):
            earlier = (saga_id, number)
            if earlier == key or self._runs[earlier].finished or earlier in self._ended:
                del self._runs[earlier]
                numbers.remove(number)
                self._ended.discard(earlier)
                self._nested.discard(earlier)
        if not numbers:
            del self._numbers[saga_id]

    def _sagakit_crashed(self, saga_id: str, crash: BaseException, run_number: int) -> None:
        """A simulated crash ended a run of ``saga_id``: nothing is recorded for it (a
        killed process tells nothing), but a recovery of the saga is a run of its own."""
        key = (saga_id, run_number)
        if key in self._runs:
            self._ended.add(key)
            self._runs[key].crash = crash

    def _sagakit_abandoned(self, saga_id: str, end: Transition, run_number: int) -> None:
        """The event loop of a run of ``saga_id`` was closed while it ran: it tells no
        listener its end, ``end``, as the store left it (``SAGA_FINISHED`` ``FAILED`` from
        a store that is not durable, else ``SAGA_STOPPED`` with the status the log keeps
        for recovery). Recorded as told, for a run recorded here still going (of one the
        recorder heard nothing of, nothing is made up)."""
        key = (saga_id, run_number)
        run = self._runs.get(key)
        if run is None or run.finished or key in self._ended:
            return
        run.abandoned = True
        self(end)

    def _last_of(self, saga_id: str) -> RecordedRun | None:
        """The most recently started run of ``saga_id`` still recorded, if any."""
        numbers = self._numbers.get(saga_id)
        return self._runs[saga_id, numbers[-1]] if numbers else None

    @property
    def runs(self) -> list[RecordedRun]:
        """Every recorded run, in the order they started."""
        return list(self._runs.values())

    @property
    def last(self) -> RecordedRun:
        """The most recently started top-level run: not one of a saga run inside a step
        of another run recorded here (a nested saga's run is found by its saga id)."""
        __tracebackhide__ = True
        if not self._runs:
            raise AssertionError("no saga run was recorded; is the recorder a listener?")
        for key in reversed(self._runs):
            if key not in self._nested:
                return self._runs[key]
        return next(reversed(self._runs.values()))  # their outer runs were forgotten

    def run(self, saga_id: str | None = None) -> RecordedRun:
        """The run of ``saga_id`` — its most recently started one, when runs of the id
        overlapped (two orchestrators with stores of their own) — or :attr:`last`, the
        most recently started top-level run, if ``None``."""
        __tracebackhide__ = True
        if saga_id is None:
            return self.last
        run = self._last_of(saga_id)
        if run is None:
            known = ", ".join(dict.fromkeys(key[0] for key in self._runs)) or "none"
            raise AssertionError(f"no run of saga id {saga_id!r} was recorded (recorded: {known})")
        return run

    def clear(self) -> None:
        """Forget everything recorded."""
        self._runs.clear()
        self._numbers.clear()
        self._ended.clear()
        self._nested.clear()
        self.transitions.clear()

    def assert_status(self, status: SagaStatus | str, *, saga_id: str | None = None) -> None:
        """Assert a run ended with ``status``."""
        __tracebackhide__ = True
        self.run(saga_id).assert_status(status)

    def assert_compensated(self, *steps: StepTarget, saga_id: str | None = None) -> None:
        """Assert exactly these steps of a run were compensated, in this order."""
        __tracebackhide__ = True
        self.run(saga_id).assert_compensated(*steps)

    def assert_completed(self, *steps: StepTarget, saga_id: str | None = None) -> None:
        """Assert exactly these forward steps of a run completed, in this order."""
        __tracebackhide__ = True
        self.run(saga_id).assert_completed(*steps)

    def assert_trail(self, *lines: str, saga_id: str | None = None) -> None:
        """Assert the whole trail of a run."""
        __tracebackhide__ = True
        self.run(saga_id).assert_trail(*lines)

    def __repr__(self) -> str:
        runs, transitions = len(self._runs), len(self.transitions)
        return (
            f"<SagaRecorder {runs} run{'' if runs == 1 else 's'}, "
            f"{transitions} transition{'' if transitions == 1 else 's'}>"
        )
