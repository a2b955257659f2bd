"""``sagakit show`` gives the arguments a saga was called with, which its log keeps for
recovery: a line ``arguments: (...)`` (and ``, keywords: {...}``), and with ``--json``
an ``arguments`` object. Arguments this process cannot read back (a class it cannot
import, a row edited by hand) are shown as stored, with the reason, and the rest of the
saga as ever: not an error of the whole command."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli_helpers.run import cli
from pg_helpers.db import dsn_or_skip, query
from sagakit import SagaOrchestrator, SQLiteStore, saga, step


@dataclass(frozen=True)
class ShownParcel:
    weight: float


@step
async def shown_pack(item: str, count: int, parcel: ShownParcel | None, gift: bool) -> str:
    return f"{count} x {item}"


@saga(name="shown_order")
def shown_order(  # type: ignore[no-untyped-def]
    item: str, count: int, parcel: ShownParcel | None = None, *, gift: bool = False
):
    yield shown_pack(item, count, parcel, gift)


@step
async def shown_noop() -> None:
    return None


@saga(name="shown_nothing")
def shown_nothing():  # type: ignore[no-untyped-def]
    yield shown_noop()


@dataclass(frozen=True)
class Log:
    kind: str
    argv: list[str]
    stored: Any  # saga id -> the arguments as stored, one text
    edit: Any  # (saga id, sqlite SET clause, postgres SET clause) -> None


@contextmanager
def shown_log(tmp_path: Path, kind: str) -> Iterator[Log]:
    """``plain`` (positional arguments only), ``keywords`` (a dataclass and a keyword
    argument) and ``nothing`` (no arguments at all)."""
    if kind == "postgres":
        from sagakit import PostgresStore

        dsn = dsn_or_skip()
        schema = "sk_cli_args_" + uuid.uuid4().hex[:8]
        store: Any = PostgresStore(dsn, schema=schema)
        argv = ["--db", dsn, "--schema", schema]

        def stored(saga_id: str) -> str:
            [(args, kwargs)] = query(
                dsn, f'SELECT args, kwargs FROM "{schema}".sagas WHERE saga_id = %s', (saga_id,)
            )
            return f"[{args},{kwargs}]"

        def edit(saga_id: str, sqlite_set: str, pg_set: str) -> None:
            query(dsn, f'UPDATE "{schema}".sagas SET {pg_set} WHERE saga_id = %s', (saga_id,))
    else:
        path = str(tmp_path / "shown.db")
        store = SQLiteStore(path)
        argv = ["--db", path]

        def stored(saga_id: str) -> str:
            with closing(sqlite3.connect(path)) as conn:
                [(text,)] = conn.execute(
                    "SELECT arguments FROM sagakit_sagas WHERE id = ?", (saga_id,)
                )
            return str(text)

        def edit(saga_id: str, sqlite_set: str, pg_set: str) -> None:
            with closing(sqlite3.connect(path)) as conn, conn:
                conn.execute(f"UPDATE sagakit_sagas SET {sqlite_set} WHERE id = ?", (saga_id,))

    async def write() -> None:
        async with SagaOrchestrator(store) as orchestrator:
            await orchestrator.execute(shown_order("book", 2), saga_id="plain")
            await orchestrator.execute(
                shown_order("vase", 1, ShownParcel(1.5), gift=True), saga_id="keywords"
            )
            await orchestrator.execute(shown_nothing(), saga_id="nothing")

    try:
        asyncio.run(write())
        yield Log(kind, argv, stored, edit)
    finally:
        if kind == "postgres":
            query(dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def arguments_line(log: Log, saga_id: str) -> str:
    code, out = cli(*log.argv, "show", saga_id)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[1].startswith("started "), out
    assert lines[2].startswith("arguments: "), out  # after when it started
    assert lines[3].split()[:3] == ["#", "STEP", "STATUS"], out  # the step trail follows
    return lines[2]


KINDS = ["sqlite", "postgres"]


@pytest.mark.parametrize("kind", KINDS)
def test_show_gives_the_arguments_as_a_call_s(tmp_path: Path, kind: str) -> None:
    with shown_log(tmp_path, kind) as log:
        assert arguments_line(log, "plain") == "arguments: ('book', 2)"
        assert arguments_line(log, "keywords") == (
            "arguments: ('vase', 1, ShownParcel(weight=1.5)), keywords: {'gift': True}"
        )
        assert arguments_line(log, "nothing") == "arguments: ()"


@pytest.mark.parametrize("kind", KINDS)
def test_show_json_gives_the_arguments(tmp_path: Path, kind: str) -> None:
    with shown_log(tmp_path, kind) as log:
        shown = {}
        for saga_id in ("plain", "keywords", "nothing"):
            code, out = cli(*log.argv, "show", saga_id, "--json")
            assert code == 0, out
            shown[saga_id] = json.loads(out)
        assert shown["plain"]["arguments"] == {
            "args": ["book", 2],
            "kwargs": {},
            "raw": None,
            "error": None,
        }
        # A value JSON cannot hold as it is: its repr(), as for events.
        assert shown["keywords"]["arguments"] == {
            "args": ["vase", 1, "ShownParcel(weight=1.5)"],
            "kwargs": {"gift": True},
            "raw": None,
            "error": None,
        }
        assert shown["nothing"]["arguments"]["args"] == []
        assert list(shown["plain"])[-2:] == ["arguments", "parked"]


UNREADABLE = {
    # A class this process cannot import (renamed since the saga started).
    "class": (
        "arguments = replace(arguments, 'ShownParcel', 'GoneParcel')",
        "args = replace(args, 'ShownParcel', 'GoneParcel')",
        "cannot be imported",
    ),
    "corrupt": (
        "arguments = substr(arguments, 1, 10)",
        "kwargs = '{\"gift\": tr'",
        "not valid JSON",
    ),
    "not [args, kwargs]": (
        'arguments = \'{"item": "vase"}\'',
        'args = \'{"item": "vase"}\'',
        "not the [args, kwargs] array",
    ),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", list(UNREADABLE))
def test_arguments_that_cannot_be_read_are_shown_as_stored_with_why(
    tmp_path: Path, kind: str, how: str
) -> None:
    sqlite_set, pg_set, reason = UNREADABLE[how]
    with shown_log(tmp_path, kind) as log:
        log.edit("keywords", sqlite_set, pg_set)
        raw = log.stored("keywords")
        code, out = cli(*log.argv, "show", "keywords", "--json")
        assert code == 0, out
        shown = json.loads(out)
        arguments = shown["arguments"]
        assert (arguments["args"], arguments["kwargs"], arguments["raw"]) == (None, None, raw)
        assert reason in arguments["error"], arguments
        assert [step["name"] for step in shown["steps"]] == ["shown_pack"]  # shown as ever
        line = arguments_line(log, "keywords")
        assert line.startswith("arguments: cannot be read: "), line
        assert reason in line, line
        assert line.endswith(f"; as stored: {raw}"), line
        # The other sagas' arguments read as ever.
        assert arguments_line(log, "plain") == "arguments: ('book', 2)"


def test_values_whose_class_module_exits_when_imported_are_shown_as_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: `show` of a saga holding a value of such a class (its module exits when
    # imported, as a script does) ended sagakit with that module's message and status.
    (tmp_path / "sk_exits_shown.py").write_text("import sys\nsys.exit('set APP_ENV first')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with shown_log(tmp_path, "sqlite") as log:
        log.edit(
            "keywords",
            'arguments = replace(arguments, \'"t":"\', \'"t":"sk_exits_shown:X","was":"\')',
            "",
        )
        line = arguments_line(log, "keywords")
    assert line.startswith("arguments: cannot be read: "), line
    assert "its module exits when imported (SystemExit: set APP_ENV first)" in line
