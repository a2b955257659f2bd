"""The ``sagakit`` commands that only read the log: ``list``, ``show`` and
``dead-letters``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any, TextIO

from ._cli_db import _log_name
from ._cli_import import _import_all
from ._cli_json import _parked_json, _saga_json, _shown_json
from ._cli_text import _cut, _indented, _table, _when
from ._counted import counted
from ._names import record_name
from ._notify import one_line
from ._serialization import JsonSerializer
from .exceptions import SerializationError
from .records import SagaMetadata
from .stores._cli_records import ListedSaga, StoredArguments
from .stores.postgres import PostgresStore
from .stores.sqlite import SQLiteStore

_PAGE = 500
"""Sagas ``list`` reads at a time (one query): it holds no more of them at once, and
Ctrl-C stops it after the page being read."""


async def _newest(
    store: SQLiteStore | PostgresStore, status: str | None, limit: int
) -> AsyncIterator[list[ListedSaga]]:
    """The ``limit`` newest sagas (of ``status``), a page at a time."""
    after = None
    while limit > 0:
        page, after = await store._list_page(status, min(limit, _PAGE), after)
        yield page
        limit -= len(page)
        if after is None:
            return


def _arguments_line(arguments: StoredArguments) -> str:
    """A saga's arguments for ``show``: as a call's argument list, the keywords apart
    (``('A', 10), keywords: {'note': 'x'}``), or, where they cannot be read, why and
    the text as stored."""
    if arguments.args is None or arguments.kwargs is None:
        return f"cannot be read: {arguments.error}; as stored: {arguments.raw}"
    line = f"({', '.join(repr(value) for value in arguments.args)})"
    return line + (f", keywords: {arguments.kwargs!r}" if arguments.kwargs else "")


def _error_of(meta: SagaMetadata | ListedSaga) -> str:
    """A saga's error for ``list``'s table: a dead letter's says why it is parked, then
    the saga's own error (``show`` prints them on lines of their own)."""
    if meta.dead_letter is None:
        return meta.error or ""
    own = f"; error: {meta.error}" if meta.error else ""
    return f"dead-lettered: {meta.dead_letter}{own}"


def _status_of(meta: SagaMetadata | ListedSaga, dead_letter: bool) -> str:
    """A saga's status for a table: a dead letter keeps the status it was parked in."""
    return f"{meta.status} (dead letter)" if dead_letter else str(meta.status)


async def _list(store: SQLiteStore | PostgresStore, args: argparse.Namespace, out: TextIO) -> int:
    """``list``: the newest sagas (of ``--status``), as a table or JSON."""
    # A parked saga keeps the status it had (executing, compensating): mark it,
    # by its own row (`dead_letter`), read with the page: a set of every dead
    # letter read first held them all, and missed a saga parked meanwhile.
    header = ["ID", "NAME", "STATUS", "STEPS", "STARTED", "ERROR"]
    rows: list[list[str]] = []
    listed = 0
    async for page in _newest(store, args.status, args.limit):
        for saga in page:
            parked = saga.dead_letter is not None
            if args.json:  # written as read: a long listing is never held whole
                item = json.dumps(_saga_json(saga, parked), indent=2)
                out.write(("[\n" if not listed else ",\n") + _indented(item))
            else:  # (its text only: the widths of the table's columns)
                total = "?" if saga.total_steps is None else str(saga.total_steps)
                rows.append(
                    [
                        str(saga.id),
                        saga.name,
                        _status_of(saga, parked),
                        f"{saga.steps_executed}/{total}",
                        _when(saga.started_at),
                        _cut(_error_of(saga), 60),
                    ]
                )
            listed += 1
    if args.json:
        out.write("\n]\n" if listed else "[]\n")
    elif not rows:
        out.write("no sagas\n")
    else:
        _table([header, *rows], out, cut=(1, 5))  # NAME, ERROR
    return 0


async def _show(store: SQLiteStore | PostgresStore, args: argparse.Namespace, out: TextIO) -> int:
    """``show``: one saga with its arguments, parking and step trail."""
    # First: a module registering codecs lets the saga's values be read back.
    _import_all(args.modules)
    found = await store.get(args.saga_id)
    if found is None:
        sys.stderr.write(
            f"sagakit: no saga {args.saga_id!r} in {_log_name(args)}; "
            "`sagakit list` lists its sagas, newest first\n"
        )
        return 1
    meta = found
    # When and after how many attempts it was parked: read for a parked saga only
    # (dead_letters() reads every parked saga of the log).
    letter = (
        None
        if meta.dead_letter is None
        else next((d for d in await store.dead_letters() if d.saga_id == meta.id), None)
    )
    arguments = await store._arguments(args.saga_id)
    if args.json:
        shown = _shown_json(meta, letter is not None, arguments)
        shown["parked"] = None if letter is None else _parked_json(letter)
        json.dump(shown, out, indent=2)
        out.write("\n")
        return 0
    status = _status_of(meta, letter is not None)
    out.write(f"saga {one_line(str(meta.id))} ({one_line(meta.name)}): {status}\n")
    ended = "" if meta.finished_at is None else f"  finished {_when(meta.finished_at)}"
    out.write(f"started {_when(meta.started_at)}{ended}\n")
    if arguments is not None:
        out.write(f"arguments: {one_line(_arguments_line(arguments))}\n")
    if letter is not None:
        out.write(
            f"parked {_when(letter.parked_at)} after "
            f"{counted(letter.recovery_attempts, 'recovery attempt')}: "
            f"{one_line(letter.reason)}; `sagakit resume` or "
            "`sagakit resolve` it\n"
        )
    if meta.error:
        out.write(f"error: {one_line(meta.error)}\n")
    rows = [["", "#", "STEP", "STATUS", "ATTEMPTS", "EVENTS / ERROR"]]
    for record in (*meta.steps, *meta.compensations):
        detail = record.error or ", ".join(repr(e) for e in record.events)
        rows.append(
            [
                "undo" if record.compensation else "step",
                str(record.index),
                record.name,
                str(record.status),
                str(record.attempts),
                _cut(detail, 70),
            ]
        )
    _table(rows, out, cut=(2, 5))  # STEP, EVENTS / ERROR
    for record in (*meta.steps, *meta.compensations):
        why = _unreadable(store.serializer, record.events)
        if why is not None:  # as the arguments line says why
            which = record_name(record.compensation, record.index, record.name)
            out.write(
                f"events of {which}: cannot be read: {one_line(why)}; shown above as stored\n"
            )
    return 0


def _unreadable(serializer: JsonSerializer, events: Sequence[Any]) -> str | None:
    """Why the first event of ``events`` that the store could not read back (a class this
    process cannot import) cannot be read, else ``None``. The store gives such an event
    as the JSON it was stored as, and reading that again raises the store's error; a
    dict or list that was read back is no JSON (it holds an object), or reads back again."""
    for event in events:
        if isinstance(event, dict | list):
            try:
                serializer.loads(json.dumps(event))
            except SerializationError as error:
                return str(error)
            except (TypeError, ValueError, RecursionError):  # not as stored: read back
                pass
    return None


async def _dead_letters(
    store: SQLiteStore | PostgresStore, args: argparse.Namespace, out: TextIO
) -> int:
    """``dead-letters``: the sagas parked after failing recovery."""
    letters = await store.dead_letters()
    if args.json:
        json.dump(
            [
                {"id": d.saga_id, "name": d.name, "status": str(d.status)} | _parked_json(d)
                for d in letters
            ],
            out,
            indent=2,
        )
        out.write("\n")
    elif not letters:
        out.write("no dead letters\n")
    else:
        rows = [["ID", "NAME", "STATUS", "ATTEMPTS", "PARKED", "REASON"]]
        rows += [
            [
                d.saga_id,
                d.name,
                str(d.status),
                str(d.recovery_attempts),
                _when(d.parked_at),
                _cut(d.reason, 70),
            ]
            for d in letters
        ]
        _table(rows, out, cut=(1, 5))  # NAME, REASON
    return 0
