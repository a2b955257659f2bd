"""The ``sagakit`` command's argument parser: its options, subcommands and their types."""

from __future__ import annotations

import argparse

from ._checks import MAX_COUNT
from ._seconds import seconds_number
from .status import SagaStatus
from .stores.sqlite import DEFAULT_BUSY_TIMEOUT

_MAX_BUSY_TIMEOUT = 2_147_483.0
"""The longest wait SQLite takes (2**31 - 1 milliseconds, about 24 days)."""


def _import_option(command: argparse.ArgumentParser, help: str) -> None:
    """A command's ``--import MODULE`` (repeatable), into ``args.modules``."""
    command.add_argument(
        "--import", dest="modules", action="append", default=[], metavar="MODULE", help=help
    )


def _seconds(text: str) -> float:
    """An argparse type: ``--busy-timeout``, a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):  # (NaN too)
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return min(value, _MAX_BUSY_TIMEOUT)


def _at_least_one(text: str) -> int:
    """An argparse type: a whole number >= 1 (capped at what a database takes: all)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return min(value, MAX_COUNT)  # the most a database takes as a LIMIT: all


def _note(text: str) -> str:
    """An argparse type: the ``resolve --note``, which must say something."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"must say what an operator did about the saga (kept in its error), got {text!r}"
        )
    return text


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db",
        default=argparse.SUPPRESS,
        help="path of the SQLite saga log, or a postgresql:// URL",
    )
    common.add_argument(
        "--schema", default=argparse.SUPPRESS, help="PostgreSQL schema of the log (sagakit)"
    )
    common.add_argument(
        "--busy-timeout",
        type=_seconds,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help="how long to wait for a SQLite log another process holds locked "
        f"(default {seconds_number(DEFAULT_BUSY_TIMEOUT)})",
    )
    top = argparse.ArgumentParser(add_help=False, parents=[common])
    top.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print JSON for scripts",
    )
    printing = argparse.ArgumentParser(add_help=False, parents=[common])
    printing.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
    )
    parser = argparse.ArgumentParser(
        prog="sagakit", description="Inspect and repair a saga log.", parents=[top]
    )
    from . import __version__  # the installed distribution's, from importlib.metadata

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="list sagas, newest first", parents=[printing])
    statuses = [str(s) for s in SagaStatus if s is not SagaStatus.NOT_STARTED]
    listing.add_argument(
        "--status",
        type=str.lower,  # FAILED, as the docs write statuses, is failed
        choices=statuses,
        help="only the sagas in this status (any case)",
    )
    listing.add_argument(
        "--limit", type=_at_least_one, default=50, metavar="N", help="at most N sagas (default 50)"
    )
    show = commands.add_parser("show", help="one saga with its step trail", parents=[printing])
    show.add_argument("saga_id")
    _import_option(
        show,
        "module to import first: one registering the codecs of the saga's values (repeatable)",
    )
    recover = commands.add_parser(
        "recover",
        help="finish sagas left running by dead processes",
        epilog="exit status 3: a saga needs an operator (a dead letter, or recovered to failed)",
        parents=[printing],
    )
    _import_option(recover, "module defining the @saga functions (repeatable)")
    recover.add_argument(
        "--max-attempts",
        type=_at_least_one,
        default=3,
        metavar="N",
        help="recovery attempts of a saga before it is parked as a dead letter (default 3)",
    )
    commands.add_parser(
        "dead-letters", help="sagas parked after failing recovery", parents=[printing]
    )
    resume = commands.add_parser(
        "resume", help="un-park a dead-lettered saga for recover", parents=[printing]
    )
    resume.add_argument("saga_id")
    release = commands.add_parser(
        "release",
        help="forget the owner of a running saga whose process is known dead (SQLite)",
        parents=[printing],
    )
    release.add_argument("saga_id")
    resolve = commands.add_parser(
        "resolve",
        help="mark a dead-lettered or failed saga (or one whose process is gone) settled",
        parents=[printing],
    )
    resolve.add_argument("saga_id")
    resolve.add_argument("--note", type=_note, required=True, help="what an operator did about it")
    commands.add_parser(
        "upgrade",
        help="bring a log written by an older sagakit to this version's schema "
        "(PostgreSQL: create the log in a schema that holds none yet)",
        parents=[printing],
    )
    return parser
