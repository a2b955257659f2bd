"""The saga log ``--db`` names: its store, and how a message names it (never by a URL,
which may hold a password)."""

from __future__ import annotations

import argparse

from .stores.postgres import PostgresStore
from .stores.sqlite import SQLiteStore

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def _is_postgres(db: str) -> bool:
    return db.startswith(_POSTGRES_SCHEMES)


def _log_name(args: argparse.Namespace) -> str:
    """The log ``--db`` names, for messages: never the URL, which may hold a password."""
    if _is_postgres(args.db):
        return f"schema {getattr(args, 'schema', 'sagakit')!r} of the PostgreSQL database"
    return repr(args.db)


def _db_argument(args: argparse.Namespace) -> str:
    """``--db`` as a command line suggested in a message gives it: ``...`` for a
    PostgreSQL URL, which may hold a password."""
    return "..." if _is_postgres(args.db) else str(args.db)


_READ_ONLY_COMMANDS = frozenset({"list", "show", "dead-letters"})
"""Commands that only read: a SQLite log is opened read-only for them (a backup listed
keeps its journal mode, a log on a read-only mount can be inspected)."""


def _store_for(args: argparse.Namespace) -> SQLiteStore | PostgresStore:
    """The store named by ``--db``: a PostgreSQL URL or a SQLite file path."""
    if _is_postgres(args.db):
        return PostgresStore(args.db, schema=getattr(args, "schema", "sagakit"))
    return SQLiteStore(
        args.db, read_only=args.command in _READ_ONLY_COMMANDS, busy_timeout=args.busy_timeout
    )
