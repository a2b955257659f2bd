"""``sagakit recover``: finishing the sagas of dead processes, and saying what it left for
an operator (dead letters, sagas of another host, sagas no ``--import`` declares)."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from typing import TextIO

from ._cli_db import _db_argument
from ._cli_import import _declared_in, _import_all
from ._cli_text import _cut, _first_few, _table
from ._commands import command_line
from ._counted import counted
from ._notify import one_line
from ._orchestrator import SagaOrchestrator
from ._recovery import RecoveryOutcome
from ._sagas import registered_sagas
from .status import SagaStatus
from .stores.postgres import PostgresStore
from .stores.sqlite import SQLiteStore
from .transitions import Transition, TransitionKind


async def _unregistered_running(
    store: SQLiteStore | PostgresStore, known: frozenset[str]
) -> dict[str, int]:
    """Unfinished sagas recovery skipped: no ``@saga`` of their name was registered
    (``known``) when it ran. Reading them may have imported their module since (the
    module of a stored event's class), so what is registered now does not tell.

    Counted by name in the log, not read: every running saga with its records was
    (100,000 orphans: 9 s). One of each name left alone is read, for
    :func:`_declared_in`: its events import the module declaring the saga."""
    found: dict[str, int] = {}
    for name, count, one in await store._running_names(claimable=True):
        if name not in known:
            found[name] = count
            await store.get(one)
    return found


def _side_note(args: argparse.Namespace, out: TextIO, note: str) -> None:
    """A line beside ``recover``'s result: on stderr with ``--json``, so that stdout
    stays one JSON document."""
    # Control characters escaped (one_line), the command it names for an id included.
    note = one_line(note.removesuffix("\n")) + "\n"
    if args.json:
        sys.stderr.write(f"sagakit: {note}")
    else:
        out.write(note)


async def _recover(
    store: SQLiteStore | PostgresStore, args: argparse.Namespace, out: TextIO
) -> int:
    """``recover``: finish the sagas left running by dead processes, and say what waits
    for an operator or for something else; 3 while a saga needs an operator."""
    _import_all(args.modules)
    finished: list[str] = []  # told before recover() returns: for a Ctrl-C

    def heard(transition: Transition) -> None:
        if transition.kind is TransitionKind.SAGA_FINISHED:
            finished.append(f"{transition.saga_id} {transition.status}")

    # Its limit too, not only recover()'s: an inner saga a resumed step executes
    # again is claimed with the orchestrator's (else parked after 3, whatever N).
    orchestrator = SagaOrchestrator(
        store, listeners=[heard], max_recovery_attempts=args.max_attempts
    )
    known = frozenset(function.name for function in registered_sagas())
    parked_before = {d.saga_id for d in await store.dead_letters()}
    try:
        outcomes = await orchestrator.recover()
    except asyncio.CancelledError:
        args.finished = finished
        raise
    # A store parks a saga past its attempts while claiming, which recover()
    # does not report: name those too, or the operator reads "nothing to recover".
    reported = parked_before | {o.saga_id for o in outcomes}
    letters = await store.dead_letters()
    outcomes += [
        RecoveryOutcome(d.saga_id, d.name, "dead_lettered", d.status, d.reason)
        for d in letters
        if d.saga_id not in reported
    ]
    # Parked before this run, and left so: recovery never takes a dead letter.
    waiting = [d.saga_id for d in letters if d.saga_id in parked_before]
    _write_outcomes(outcomes, args, out)
    if waiting:
        # Or the operator reads "nothing to recover" while sagas wait for them.
        _side_note(args, out, _waiting_note(waiting, args))
    if isinstance(store, PostgresStore):
        # No claim takes a saga before its owner's lease runs out: say how many
        # wait for it, or the operator reads "nothing to recover" and moves on.
        leased, first, last = await store._leases()
        if leased:
            _side_note(args, out, _leased_note(leased, first, last))
    if isinstance(store, SQLiteStore):
        # Owners on another host or in another container are never taken for
        # dead here: say so, or the operator reads "nothing to recover" while
        # `list` shows them executing, and never learns of `release`.
        far = await store._held_elsewhere()
        if far:
            _side_note(args, out, _held_elsewhere_note(far, args))
    unknown = await _unregistered_running(store, known)
    if unknown:
        _side_note(args, out, _unregistered_note(unknown, args))
    # Status 3 while a saga needs an operator: a cron job's only signal. A dead letter
    # parked before counts until resumed or resolved, as nothing else tells of it.
    if waiting or any(
        o.action == "dead_lettered" or o.status is SagaStatus.FAILED for o in outcomes
    ):
        return 3
    return 0


def _write_outcomes(outcomes: list[RecoveryOutcome], args: argparse.Namespace, out: TextIO) -> None:
    """What ``recover`` did to each saga: a table, or JSON."""
    if args.json:
        json.dump(
            [
                {
                    "id": o.saga_id,
                    "name": o.name,
                    "action": o.action,
                    "status": str(o.status),
                    "error": o.error,
                }
                for o in outcomes
            ],
            out,
            indent=2,
        )
        out.write("\n")
    else:
        if not outcomes:
            out.write("nothing to recover\n")
        else:
            rows = [["ID", "NAME", "ACTION", "STATUS", "ERROR"]]
            rows += [
                [o.saga_id, o.name, o.action, str(o.status), _cut(o.error or "", 60)]
                for o in outcomes
            ]
            _table(rows, out, cut=(1, 4))  # NAME, ERROR


def _waiting_note(waiting: list[str], args: argparse.Namespace) -> str:
    """The dead letters parked before ``recover`` ran, which it left alone."""
    named = _first_few(waiting)
    db = _db_argument(args)
    were = "was" if len(waiting) == 1 else "were"
    return (
        f"{counted(len(waiting), 'dead-lettered saga')} ({named}) {were} left "
        "alone, as "
        "recovery leaves every dead letter: `sagakit dead-letters` says why each "
        f"was parked; `{command_line(db, 'resume', waiting[0])}` hands one "
        "back to recovery, `sagakit resolve` settles it\n"
    )


def _leased_note(leased: int, first: float, last: float) -> str:
    """The sagas running under a PostgreSQL lease, which no claim takes before it
    expires, and when the first and the last of those leases run out (seconds from now,
    by the database's clock): whether to run ``recover`` again in a minute or an hour."""
    if leased == 1:
        return (
            f"1 saga is running under a lease, which runs out in {_runs_out_in(first)} "
            "(by the database's clock); it is recovered once the lease expires (a later "
            "recover, or any worker, claims it), or finished by the worker holding it\n"
        )
    soon, late = _runs_out_in(first), _runs_out_in(last)
    when = (
        f"which all run out in {soon}"
        if soon == late
        else f"the first of which runs out in {soon}, the last in {late}"
    )
    return (
        f"{counted(leased, 'saga')} are running under leases, {when} (by the database's "
        "clock); they are recovered once their lease expires (a later recover, or any "
        "worker, claims them), or finished by the workers holding them\n"
    )


def _runs_out_in(seconds: float) -> str:
    """``seconds`` in words, rounded up (by then a lease has run out): seconds below 2
    minutes, minutes below 2 hours, hours below 2 days, then days ("13 seconds", "2
    minutes", "3 hours"); never "0 seconds"."""
    for unit, size, below in (("second", 1, 120), ("minute", 60, 120), ("hour", 3600, 48)):
        count = max(1, math.ceil(seconds / size))
        if count < below:
            return counted(count, unit)
    return counted(math.ceil(seconds / 86400), "day")


def _held_elsewhere_note(far: list[str], args: argparse.Namespace) -> str:
    """The sagas of a SQLite log run by a process of another host or container."""
    named = _first_few(far)
    are = "is" if len(far) == 1 else "are"
    return (
        f"{counted(len(far), 'saga')} ({one_line(named)}) {are} run by a "
        "process of another host or container, which no recovery here takes "
        "over; once you know that process is gone, "
        f"`{command_line(args.db, 'release', far[0])}` hands it to the next "
        "recover" + ("" if len(far) == 1 else " (release each of them)") + "\n"
    )


def _unregistered_note(unknown: dict[str, int], args: argparse.Namespace) -> str:
    """The unfinished sagas left alone because no ``@saga`` of their name is registered."""
    modules = _declared_in(sorted(unknown))
    count = sum(unknown.values())
    were, them, they = ("was", "it", "it") if count == 1 else ("were", "them", "they")
    return (
        f"{counted(count, 'unfinished saga')} named "
        f"{one_line(', '.join(sorted(unknown)))} "
        f"{were} left alone: no @saga of that name is registered here; pass "
        f"--import with the module that declares {them}"
        + (f" ({one_line(', '.join(modules))})" if modules else "")
        + (
            # The modules imported declare none: the saga may have been
            # renamed in a deployment since those sagas started.
            f"; if the saga was renamed since {they} started, give it its old "
            f"name back: @saga(name={one_line(repr(sorted(unknown)[0]))})"
            if args.modules and not modules
            else ""
        )
        + "\n"
    )
