"""A seam for :mod:`sagakit.testing`: faults injected into step attempts, per context."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable
from contextvars import ContextVar
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, NoReturn, Protocol

if TYPE_CHECKING:
    from ._steps import Step


class SimulatedTimeout(Enum):
    """The type of :data:`SIMULATED_TIMEOUT`, what a fault plan returns to make an attempt
    time out at once (and a ``FiredFault.fault`` of a simulated timeout).

    A one-member enum, so that ``fault is SIMULATED_TIMEOUT`` (or ``is not``) narrows
    a ``FiredFault.fault`` for type checkers to the exception it is otherwise.
    """

    # Where it is imported from, as reprs and pickles name it (not this private module).
    __module__ = "sagakit.testing"

    SIMULATED_TIMEOUT = "SIMULATED_TIMEOUT"

    def __repr__(self) -> str:
        return "SIMULATED_TIMEOUT"

    __str__ = __repr__  # not the enum's "SimulatedTimeout.SIMULATED_TIMEOUT"


SIMULATED_TIMEOUT: Final = SimulatedTimeout.SIMULATED_TIMEOUT


class SimulatedCrash(BaseException):
    """Stops a saga as if its process died at this point (see ``FaultInjector.crash``).

    The orchestrator runs nothing more and records nothing more for the run, exactly as
    after a SIGKILL; a durable store keeps it ``EXECUTING`` or ``COMPENSATING`` for
    recovery. A ``BaseException``, so that a step's ``except Exception`` cannot stop it.
    """

    # Where it is imported from, as tracebacks and pickles name it (not this private module).
    __module__ = "sagakit.testing"

    process: bool = False
    """A crash of the whole process (``FaultInjector.crash(..., process=True)``): every
    saga of the store stops at its next write of the log, not only this one."""


def process_died(what: str) -> SimulatedCrash:
    """The crash a saga meets at a write of a store whose process a simulated crash
    killed (``what``: that crash)."""
    crash = SimulatedCrash(
        f"{what}: the process is dead, so this saga stopped at its next write of the saga log"
    )
    crash.process = True
    return crash


def crash_process(store: object, crash: SimulatedCrash) -> None:
    """``crash``, a process crash, stopped a saga of ``store``: from now on every saga of
    ``store`` stops at its next write (the store's ``_crash_process``), until
    ``simulate_restart(store)``. A store without that hook (in memory, or one of the
    user's) keeps serving its other sagas: a note on ``crash`` says so."""
    kill = getattr(store, "_crash_process", None)
    if kill is not None:
        kill(str(crash))
        with contextlib.suppress(TypeError):  # a store class of one's own without weak references
            _dead.setdefault(store, str(crash))
        return
    note = (
        f"sagakit: crash(process=True) stops every saga of the store only on a durable "
        f"built-in store (SQLiteStore, PostgresStore); {type(store).__name__} kept running "
        "its other sagas: simulate process crashes on SQLiteStore(tmp_path / 'sagas.db')"
    )
    if note not in getattr(crash, "__notes__", ()):
        crash.add_note(note)


# The stores whose "process" a simulated crash killed (crash_process), with that crash,
# until simulate_restart().
_dead: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def dead_process(store: object) -> SimulatedCrash | None:
    """The crash a worker of ``store`` meets, if a simulated crash killed the store's
    process (``crash(..., process=True)``) and ``simulate_restart()`` has not brought it
    back: a dead process runs no worker either (None: alive)."""
    try:
        what = _dead.get(store)
    except TypeError:
        return None
    if what is None:
        return None
    crash = SimulatedCrash(
        f"{what}: the process is dead, so its worker stopped and claims nothing more "
        "(simulate_restart(store) brings the store back; then recover() or a worker "
        "finishes what the crash left)"
    )
    crash.process = True
    return crash


def revive(store: object) -> None:
    """``simulate_restart(store)``: its process is alive again."""
    with contextlib.suppress(TypeError):
        _dead.pop(store, None)


def crash_in(error: BaseException) -> SimulatedCrash | None:
    """The :class:`SimulatedCrash` that ``error``, a group of exceptions, holds (a step
    fanning out inner sagas in an ``asyncio.TaskGroup`` gets the crash of one of them
    wrapped in a ``BaseExceptionGroup``), if any: the run stops as at the crash itself."""
    pending = [error]
    while pending:
        found = pending.pop()
        if isinstance(found, SimulatedCrash):
            return found
        if isinstance(found, BaseExceptionGroup):
            pending.extend(reversed(found.exceptions))  # the first one first
    return None


class CrashAfter:
    """A fault plan's answer (``FaultInjector.fault_for``): run the attempt, then crash
    with ``crash`` before its outcome is recorded (``FaultInjector.crash(..., after=True)``)."""

    __module__ = "sagakit.testing"

    __slots__ = ("crash",)

    crash: SimulatedCrash

    def __init__(self, crash: SimulatedCrash) -> None:
        self.crash = crash


class FaultPlan(Protocol):
    """Decides, before each attempt, whether it should fail instead of running."""

    def fault_for(
        self, step: Step[Any, Any], attempt: int, *, compensation: bool
    ) -> BaseException | SimulatedTimeout | CrashAfter | None:
        """An exception to raise, ``SIMULATED_TIMEOUT``, a :class:`CrashAfter`, or ``None``."""
        ...


active_faults: ContextVar[FaultPlan | None] = ContextVar("sagakit_faults", default=None)


class _TestFaults:
    """The faults of the running test (the pytest plugin's ``saga_faults``), asked where
    the context has none: a task created before the fixture's setup (a worker an async
    fixture started) copied a context without them, and the test means them for every
    saga it runs. Set and reset by the fixture only."""

    __slots__ = ("plan",)

    def __init__(self) -> None:
        self.plan: FaultPlan | None = None


test_faults: Final = _TestFaults()


def faults_here() -> FaultPlan | None:
    """The faults active here: the context's, else the running test's (``saga_faults``).
    The orchestrator inlines it, once per saga."""
    faults = active_faults.get()
    return test_faults.plan if faults is None else faults


# The saga ids a simulated crash stopped, per store: still running in this process as
# far as the store knows ("the process died" holding them), until simulate_restart().
_crashed: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def note_crash(store: object, saga_id: str) -> None:
    """Remember that a simulated crash stopped ``saga_id`` on ``store``."""
    with contextlib.suppress(TypeError):  # a store class of one's own without weak references
        _crashed.setdefault(store, set()).add(saga_id)


def forget_crashes(store: object, saga_ids: Iterable[str] | None = None) -> set[str]:
    """Forget ``saga_ids`` (all, if ``None``) of ``store``: restarted, or claimed again.
    Returns those a simulated crash had stopped."""
    try:
        crashed = _crashed.get(store)
    except TypeError:
        return set()
    if crashed is None:
        return set()
    forgotten = crashed.copy() if saga_ids is None else crashed.intersection(saga_ids)
    crashed.difference_update(forgotten)
    return forgotten


def crashed_stores() -> list[Any]:
    """The stores a simulated crash stopped sagas of, or killed the process of, that
    ``simulate_restart()`` has not restarted since."""
    found = {id(store): store for store, ids in list(_crashed.items()) if ids}
    found.update((id(store), store) for store in list(_dead.keys()))
    return list(found.values())


def crash_hint(store: object, saga_ids: Iterable[str] | None = None) -> str | None:
    """What to do about those of ``saga_ids`` (all, if ``None``) a simulated crash left
    running on ``store`` (``None`` if none): the store refuses them to this process, which
    it sees running them."""
    try:
        crashed = _crashed.get(store, set())
    except TypeError:
        return None
    stopped = sorted(crashed if saga_ids is None else crashed.intersection(saga_ids))
    if not stopped:
        return None
    which = ", ".join(repr(saga_id) for saga_id in stopped[:5])
    if len(stopped) > 5:
        which += f" and {len(stopped) - 5} more"
    sagas = f"saga{'s' if len(stopped) > 1 else ''} {which} {'were' if len(stopped) > 1 else 'was'}"
    if not getattr(store, "durable", True):
        return (
            f"{sagas} stopped by a simulated crash (FaultInjector.crash) on an in-memory "
            "store, which keeps it running and cannot recover it (a real crash would have "
            "lost it): simulate crashes on a durable store, such as SQLiteStore(tmp_path / "
            "'sagas.db'), or run the saga again under another id"
        )
    return (
        f"{sagas} stopped by a simulated crash (FaultInjector.crash) in this process, which "
        "the store still sees running it (as a killed process's log does until a restart), "
        "so this process neither runs nor recovers it: simulate the restart, `await "
        "simulate_restart(store)`, then recover() it, best with a new store on the same log "
        "(see 'Crash simulation' in docs/testing.md)"
    )


def raised_by_step(fault: Exception) -> Exception:
    """What a step (an ``async def``) raising ``fault`` raises: ``fault`` itself, but a
    ``StopIteration`` becomes ``RuntimeError("coroutine raised StopIteration")`` (PEP 479),
    which Python does by raising it from a coroutine, as here."""
    if not isinstance(fault, StopIteration):
        return fault

    async def step() -> NoReturn:
        raise fault

    try:
        step().send(None)
    except Exception as raised:
        return raised
    raise AssertionError("unreachable: the coroutine raises")  # pragma: no cover


__all__ = [
    "SIMULATED_TIMEOUT",
    "CrashAfter",
    "FaultPlan",
    "SimulatedCrash",
    "active_faults",
    "crash_hint",
    "crash_process",
    "crashed_stores",
    "dead_process",
    "forget_crashes",
    "note_crash",
    "process_died",
    "raised_by_step",
    "revive",
]
