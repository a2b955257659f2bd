"""The ``sagakit`` command: inspect and repair a durable saga log.

    sagakit --db sagas.db list [--status failed] [--limit 50] [--json]
    sagakit --db sagas.db show SAGA_ID [--json]
    sagakit --db sagas.db recover --import myapp.sagas [--max-attempts 3]
    sagakit --db sagas.db dead-letters
    sagakit --db sagas.db resume SAGA_ID       # un-park; the next recover runs it
    sagakit --db sagas.db release SAGA_ID      # its owner is gone (another host/container)
    sagakit --db sagas.db resolve SAGA_ID --note "refunded by hand"
    sagakit --version

``--db`` also takes a PostgreSQL URL (``postgresql://user@host/db``, with
``--schema`` if the log is not in schema ``sagakit``); a SQLite log another process holds
locked is waited for ``--busy-timeout SECONDS`` (5). Every command prints JSON with ``--json``.

Exit status: 0 on success; 1 for an error (a message on stderr); 2 for a usage error; 3 for a
``recover`` after which a saga needs an operator (parked as a dead letter, by this run or
still from an earlier one, or recovered to FAILED), for a cron job to notice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import TextIO, cast

from ._cli_db import (
    _READ_ONLY_COMMANDS,
    _db_argument,
    _is_postgres,
    _log_name,
    _store_for,
)
from ._cli_import import _current_directory, _declared_in, _import
from ._cli_logs import (
    check_postgres_log,
    check_sqlite_log,
    is_locked,
    locked_message,
    url_problem,
)
from ._cli_output import _Output, _OutputFailed, _stop_writing_stdout, _stoppable, _Terminated
from ._cli_parser import _parser
from ._cli_read import _dead_letters, _list, _show
from ._cli_text import _counted, _cut, _first_few, _table
from ._commands import command_line
from ._notify import one_line
from ._orchestrator import SagaOrchestrator
from ._recovery import RecoveryOutcome
from ._sagas import registered_sagas
from .exceptions import (
    CorruptLog,
    SagaAlreadyResolved,
    SagaError,
    StoreError,
    _start_of,
)
from .status import SagaStatus
from .stores._pg_schema import SCHEMA_VERSION as PG_SCHEMA_VERSION
from .stores._protocol import CommittedThenCancelled
from .stores._sqlite_schema import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from .stores.postgres import PostgresStore
from .stores.sqlite import DEFAULT_BUSY_TIMEOUT, SQLiteStore
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


async def _done(
    store: SQLiteStore | PostgresStore, args: argparse.Namespace, action: str, out: TextIO
) -> int:
    """What ``resume``, ``release`` or ``resolve`` did: a line, or with ``--json`` the
    saga's ``id``, ``name``, the ``action`` and its ``status`` after it."""
    if not args.json:
        if action == "resolved":
            out.write(f"saga {one_line(args.saga_id)} marked resolved\n")
        else:
            out.write(
                f"saga {one_line(args.saga_id)} will be recovered by the next `sagakit recover`\n"
            )
        return 0
    meta = await store.get(args.saga_id)
    data = {
        "id": args.saga_id,
        "name": None if meta is None else meta.name,
        "action": action,
        "status": None if meta is None else str(meta.status),
    }
    json.dump(data, out, indent=2)
    out.write("\n")
    return 0


async def _run(args: argparse.Namespace, out: TextIO) -> int:
    store = _store_for(args)
    try:
        if args.command == "list":
            return await _list(store, args, out)
        if args.command == "show":
            return await _show(store, args, out)
        if args.command == "recover":
            for module in args.modules:
                _import(module)
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
            if waiting:
                # Or the operator reads "nothing to recover" while sagas wait for them.
                named = _first_few(waiting)
                db = _db_argument(args)
                were = "was" if len(waiting) == 1 else "were"
                note = (
                    f"{_counted(len(waiting), 'dead-lettered saga')} ({named}) {were} left "
                    "alone, as "
                    "recovery leaves every dead letter: `sagakit dead-letters` says why each "
                    f"was parked; `{command_line(db, 'resume', waiting[0])}` hands one "
                    "back to recovery, `sagakit resolve` settles it\n"
                )
                _side_note(args, out, note)
            if isinstance(store, PostgresStore):
                # No claim takes a saga before its owner's lease runs out: say how many
                # wait for it, or the operator reads "nothing to recover" and moves on.
                leased = await store._leased_count()
                if leased:
                    note = (
                        "1 saga is running under a lease; it is recovered once the lease "
                        "expires (a later recover, or any worker, claims it), or finished "
                        "by the worker holding it\n"
                        if leased == 1
                        else f"{leased} sagas are running under a lease; they are recovered "
                        "once it expires (a later recover, or any worker, claims them), "
                        "or finished by the workers holding them\n"
                    )
                    _side_note(args, out, note)
            if isinstance(store, SQLiteStore):
                # Owners on another host or in another container are never taken for
                # dead here: say so, or the operator reads "nothing to recover" while
                # `list` shows them executing, and never learns of `release`.
                far = await store._held_elsewhere()
                if far:
                    named = _first_few(far)
                    are = "is" if len(far) == 1 else "are"
                    note = (
                        f"{_counted(len(far), 'saga')} ({one_line(named)}) {are} run by a "
                        "process of another host or container, which no recovery here takes "
                        "over; once you know that process is gone, "
                        f"`{command_line(args.db, 'release', far[0])}` hands it to the next "
                        "recover" + ("" if len(far) == 1 else " (release each of them)") + "\n"
                    )
                    _side_note(args, out, note)
            unknown = await _unregistered_running(store, known)
            if unknown:
                modules = _declared_in(sorted(unknown))
                count = sum(unknown.values())
                were, them, they = ("was", "it", "it") if count == 1 else ("were", "them", "they")
                note = (
                    f"{_counted(count, 'unfinished saga')} named "
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
                _side_note(args, out, note)
            # Status 3 while a saga needs an operator: a cron job's only signal. A dead letter
            # parked before counts until resumed or resolved, as nothing else tells of it.
            if waiting or any(
                o.action == "dead_lettered" or o.status is SagaStatus.FAILED for o in outcomes
            ):
                return 3
            return 0
        if args.command == "dead-letters":
            return await _dead_letters(store, args, out)
        if args.command == "upgrade":
            # A SQLite log was migrated when opened for writing; PostgreSQL's is when the
            # store first connects.
            if isinstance(store, SQLiteStore):
                version = SQLITE_SCHEMA_VERSION
            else:
                await store.open()
                version = PG_SCHEMA_VERSION
            # What the log was at before: None where PostgreSQL had none (`upgrade` created
            # it), or where a SQLite file's version could not be read (the store read it).
            before = getattr(args, "version_found", None)
            if args.json:
                json.dump(
                    {"schema_version": version, "previous_schema_version": before}, out, indent=2
                )
                out.write("\n")
            elif before is None and not isinstance(store, SQLiteStore):
                out.write(f"created saga log {_log_name(args)} at schema version {version}\n")
            elif before is None:
                out.write(
                    f"saga log {_log_name(args)} is at schema version {version}, this sagakit's\n"
                )
            elif before < version:
                out.write(
                    f"upgraded saga log {_log_name(args)} from schema version {before} "
                    f"to {version}\n"
                )
            else:
                out.write(
                    f"saga log {_log_name(args)} is at schema version {version} already, "
                    "this sagakit's\n"
                )
            return 0
        try:
            if args.command == "release":
                if not isinstance(store, SQLiteStore):
                    raise StoreError(
                        "release is for SQLite logs; PostgreSQL leases expire by themselves"
                    )
                await store.release(args.saga_id)
                return await _done(store, args, "released", out)
            if args.command == "resume":
                await store.resume_dead_letter(args.saga_id)
                return await _done(store, args, "resumed", out)
            await store.resolve(args.saga_id, args.note)
            return await _done(store, args, "resolved", out)
        except CommittedThenCancelled:
            # Ctrl-C while it waited for the log's write lock, but the write was made.
            args.made = {"release": "released", "resume": "resumed"}.get(args.command, "resolved")
            raise
    finally:
        await store.close()


def _output_failed(args: argparse.Namespace, error: BaseException | None) -> str:
    """What ``main`` says when the output could not be written: why, and, where the
    command changed sagas before it wrote what it did, that it was done (run again, it
    would say there is nothing to do; ``upgrade`` run again says where the log is)."""
    said = f"cannot write its output: {error}"
    db = _db_argument(args)
    if args.command in ("resolve", "resume", "release"):
        shows = f"`{command_line(db, 'show', args.saga_id)}` shows the saga"
    elif args.command == "recover":
        shows = f"`{command_line(db, 'list')}` shows the sagas"
    else:
        return said
    return f"{said} ({args.command} was done all the same: {shows})"


def _refuse_a_running_loop() -> None:
    """A clear error for ``main()`` called inside a running event loop (a notebook cell), where
    ``asyncio.run`` would fail with a coroutine left never awaited. It does not repeat the
    command line, whose URL may hold a password."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        "sagakit.cli.main() runs its own event loop, so it cannot be called where one is "
        "running (a notebook cell, a coroutine); run the sagakit command instead (in a "
        "notebook cell: !sagakit --db ... COMMAND), or call main() from synchronous code"
    )


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the CLI; returns the exit status (1 with a message for sagakit errors; 3 for a
    ``recover`` that leaves a saga needing an operator)."""
    _refuse_a_running_loop()
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "db"):
        parser.error("the saga log is required: --db sagas.db")
    problem = None if _is_postgres(args.db) else url_problem(args.db)
    if problem is not None:  # before anything repeats the URL, which may hold a password
        parser.error(problem)
    if hasattr(args, "schema") and not _is_postgres(args.db):
        parser.error(
            "--schema applies to PostgreSQL URLs only (--db postgresql://...); "
            f"a SQLite log ({args.db!r}) has no schema: drop --schema"
        )
    if hasattr(args, "busy_timeout") and _is_postgres(args.db):
        parser.error(
            "--busy-timeout applies to SQLite logs only; a PostgreSQL log (--db "
            "postgresql://...) has no file lock to wait for: drop --busy-timeout"
        )
    args.busy_timeout = getattr(args, "busy_timeout", DEFAULT_BUSY_TIMEOUT)
    args.json = getattr(args, "json", False)
    if out is None and sys.stdout is None:
        # Started with its standard output closed (`>&-`, a service without one): refused
        # before a command that changes the log does so, then fails to say it did.
        sys.stderr.write(
            "sagakit: standard output is closed: give it one (a file, /dev/null) to write to\n"
        )
        return 1
    # Like `python -m sagakit`, the `sagakit` command finds `--import` modules, and the
    # classes of stored values, in the current directory (its own sys.path[0] is bin/).
    # (None where it was deleted: there is nothing to find there.)
    cwd = _current_directory() or ""
    added = cwd != "" and "" not in sys.path and cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    # A name or error the output's encoding lacks (a file on Windows, PYTHONIOENCODING=
    # ascii) is escaped as \U0001f525, not a UnicodeEncodeError traceback half-way.
    strict = out is None and getattr(sys.stdout, "errors", None) == "strict"
    if strict:
        sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    try:
        if _is_postgres(args.db):
            # `upgrade` creates a log that is not there yet: migrating ahead of the first
            # deploy, as a role that may, is what a role that may not create it is told.
            args.version_found = check_postgres_log(
                args.db,
                getattr(args, "schema", "sagakit"),
                missing_ok=args.command == "upgrade",
                read_only=args.command in _READ_ONLY_COMMANDS,
            )
        else:
            args.version_found = check_sqlite_log(args.db, args.busy_timeout)
        # (A cast: _Output passes for the stream it wraps.)
        output = _Output(out or sys.stdout)
        status = asyncio.run(_stoppable(lambda: _run(args, cast(TextIO, output))))
        output.flush()  # here, where a closed pipe or a full disk is caught below
        return status
    except _OutputFailed as failed:
        sys.stderr.write(f"sagakit: {one_line(_output_failed(args, failed.__cause__))}\n")
        if out is None:
            _stop_writing_stdout()
        return 1
    except (SagaError, ImportError) as error:
        said = str(error)
        if not _is_postgres(args.db) and is_locked(error):
            # The store's message names SQLiteStore(busy_timeout=...): say what holds
            # the log, and --busy-timeout.
            said = locked_message(args.db, args.busy_timeout)
        if isinstance(error, CorruptLog):
            # The store's message says to point SQLiteStore elsewhere: a CLI user has none.
            said = (
                f"saga log {error.path!r} is corrupt or not a sagakit log ({error.reason}); "
                "restore it from a backup, or pass --db the path of another saga log"
            )
        resolved = error.error if isinstance(error, SagaAlreadyResolved) else None
        if resolved is not None and _start_of(resolved) != resolved:
            # Its message repeats only the start of the saga's error, the note in it.
            shows = command_line(_db_argument(args), "show", args.saga_id)
            said += f"; `{shows}` shows its whole error (the note)"
        # Its control characters escaped: it may quote an id or a name from the log.
        sys.stderr.write(f"sagakit: {one_line(said)}\n")
        return 1
    except (KeyboardInterrupt, _Terminated) as stop:
        # Ctrl-C (status 130), or SIGTERM (143: `timeout`, systemd, Kubernetes): a saga
        # `recover` was resuming is left for the next recovery.
        stopped = "terminated (SIGTERM)" if isinstance(stop, _Terminated) else "interrupted"
        if args.command == "recover":
            # What it finished before, or the operator learns of it only from `list`.
            finished = getattr(args, "finished", [])
            done = (
                f" after finishing {_counted(len(finished), 'saga')} ({_first_few(finished)})"
                if finished
                else ""
            )
            sys.stderr.write(
                f"sagakit: {stopped}{one_line(done)}; a saga being recovered is left for "
                "the next `recover` (if it had started, this attempt counts toward "
                "--max-attempts)\n"
            )
        elif getattr(args, "made", None):
            # (A SQLite log's store says so: never a URL, which may hold a password.)
            sys.stderr.write(
                f"sagakit: {stopped}, but only once saga {one_line(args.saga_id)} was "
                f"{args.made}: the write it waited for was made; "
                f"`{one_line(command_line(args.db, 'show', args.saga_id))}` shows it\n"
            )
        else:
            sys.stderr.write(f"sagakit: {stopped}\n")
        return 143 if isinstance(stop, _Terminated) else 130  # 128 + the signal's number
    except BrokenPipeError:
        # The reader went away (`sagakit list | head -1`): stop quietly, and keep Python
        # from complaining again when it flushes stdout at exit. With the status of cat,
        # grep or git, which SIGPIPE stops: 128 + 13, as Ctrl-C's is 130 and SIGTERM's
        # 143; not 1, which says the command failed (and `set -o pipefail` scripts
        # check for 141 to ignore a reader that stopped early).
        if out is None:
            _stop_writing_stdout()
        return 141
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
        if strict and not sys.stdout.closed:
            sys.stdout.reconfigure(errors="strict")  # type: ignore[union-attr]


__all__ = ["main"]
