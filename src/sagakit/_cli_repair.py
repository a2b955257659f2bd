"""The ``sagakit`` commands that change the log: ``upgrade`` its schema, and ``release``,
``resume`` or ``resolve`` a saga."""

from __future__ import annotations

import argparse
import json
from typing import TextIO

from ._cli_db import _log_name
from ._notify import one_line
from .exceptions import StoreError
from .stores._pg_schema import SCHEMA_VERSION as PG_SCHEMA_VERSION
from .stores._protocol import CommittedThenCancelled
from .stores._sqlite_schema import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from .stores.postgres import PostgresStore
from .stores.sqlite import SQLiteStore


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


async def _upgrade(
    store: SQLiteStore | PostgresStore, args: argparse.Namespace, out: TextIO
) -> int:
    """``upgrade``: bring the log to this sagakit's schema version (create it, on
    PostgreSQL), and say from which."""
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
        json.dump({"schema_version": version, "previous_schema_version": before}, out, indent=2)
        out.write("\n")
    elif before is None and not isinstance(store, SQLiteStore):
        out.write(f"created saga log {_log_name(args)} at schema version {version}\n")
    elif before is None:
        out.write(f"saga log {_log_name(args)} is at schema version {version}, this sagakit's\n")
    elif before < version:
        out.write(
            f"upgraded saga log {_log_name(args)} from schema version {before} to {version}\n"
        )
    else:
        out.write(
            f"saga log {_log_name(args)} is at schema version {version} already, this sagakit's\n"
        )
    return 0


async def _release(
    store: SQLiteStore | PostgresStore, args: argparse.Namespace, out: TextIO
) -> int:
    """``release``: forget the owner of a running saga of a SQLite log."""
    try:
        if not isinstance(store, SQLiteStore):
            raise StoreError("release is for SQLite logs; PostgreSQL leases expire by themselves")
        await store.release(args.saga_id)
        return await _done(store, args, "released", out)
    except CommittedThenCancelled:
        # Ctrl-C while it waited for the log's write lock, but the write was made.
        args.made = "released"
        raise


async def _resume(store: SQLiteStore | PostgresStore, args: argparse.Namespace, out: TextIO) -> int:
    """``resume``: hand a dead letter back to the next ``recover``."""
    try:
        await store.resume_dead_letter(args.saga_id)
        return await _done(store, args, "resumed", out)
    except CommittedThenCancelled:
        # Ctrl-C while it waited for the log's write lock, but the write was made.
        args.made = "resumed"
        raise


async def _resolve(
    store: SQLiteStore | PostgresStore, args: argparse.Namespace, out: TextIO
) -> int:
    """``resolve``: mark a saga settled by an operator, with their ``--note``."""
    try:
        await store.resolve(args.saga_id, args.note)
        return await _done(store, args, "resolved", out)
    except CommittedThenCancelled:
        # Ctrl-C while it waited for the log's write lock, but the write was made.
        args.made = "resolved"
        raise
