"""The ``sagakit`` command: inspect and repair a durable saga log.

    sagakit --db sagas.db list [--status failed] [--limit 50] [--json]
    sagakit --db sagas.db show SAGA_ID [--json] [--import myapp.codecs]
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
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TextIO, cast

from ._cli_db import _READ_ONLY_COMMANDS, _db_argument, _is_postgres, _store_for
from ._cli_import import _current_directory
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
from ._cli_recover import _recover
from ._cli_repair import _release, _resolve, _resume, _upgrade
from ._cli_text import _first_few
from ._commands import command_line
from ._counted import counted
from ._notify import one_line
from .exceptions import (
    CorruptLog,
    SagaAlreadyResolved,
    SagaError,
    _start_of,
)
from .stores.postgres import PostgresStore
from .stores.sqlite import DEFAULT_BUSY_TIMEOUT, SQLiteStore

_Command = Callable[[SQLiteStore | PostgresStore, argparse.Namespace, TextIO], Awaitable[int]]

_COMMANDS: dict[str, _Command] = {
    "list": _list,
    "show": _show,
    "recover": _recover,
    "dead-letters": _dead_letters,
    "upgrade": _upgrade,
    "release": _release,
    "resume": _resume,
    "resolve": _resolve,
}
"""The function running each subcommand on the store ``--db`` names; its exit status."""


async def _run(args: argparse.Namespace, out: TextIO) -> int:
    """The command ``args`` names, on the store ``--db`` names, closed after it."""
    store = _store_for(args)
    try:
        return await _COMMANDS[args.command](store, args, out)
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


def _error_message(args: argparse.Namespace, error: SagaError | ImportError) -> str:
    """What ``main`` says of a sagakit error or an ``--import`` that failed: the error's
    message, or what a CLI user can do where the store's names a Python argument."""
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
    return said


def _stopped_message(args: argparse.Namespace, stop: BaseException) -> str:
    """The line ``main`` writes to stderr when Ctrl-C or SIGTERM (``stop``) stopped the
    command: what ``recover`` finished first, or the write made before it stopped."""
    stopped = "terminated (SIGTERM)" if isinstance(stop, _Terminated) else "interrupted"
    if args.command == "recover":
        # What it finished before, or the operator learns of it only from `list`.
        finished = getattr(args, "finished", [])
        done = (
            f" after finishing {counted(len(finished), 'saga')} ({_first_few(finished)})"
            if finished
            else ""
        )
        return (
            f"sagakit: {stopped}{one_line(done)}; a saga being recovered is left for "
            "the next `recover` (if it had started, this attempt counts toward "
            "--max-attempts)\n"
        )
    if getattr(args, "made", None):
        # (A SQLite log's store says so: never a URL, which may hold a password.)
        return (
            f"sagakit: {stopped}, but only once saga {one_line(args.saga_id)} was "
            f"{args.made}: the write it waited for was made; "
            f"`{one_line(command_line(args.db, 'show', args.saga_id))}` shows it\n"
        )
    return f"sagakit: {stopped}\n"


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
        # Its control characters escaped: it may quote an id or a name from the log.
        sys.stderr.write(f"sagakit: {one_line(_error_message(args, error))}\n")
        return 1
    except (KeyboardInterrupt, _Terminated) as stop:
        # Ctrl-C (status 130), or SIGTERM (143: `timeout`, systemd, Kubernetes): a saga
        # `recover` was resuming is left for the next recovery.
        sys.stderr.write(_stopped_message(args, stop))
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
