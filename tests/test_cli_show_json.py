"""``sagakit show --json`` gives what a saga's :class:`~sagakit.SagaMetadata` offers.

Regression: it left out ``updated_at`` (when the run last changed: what tells a stuck saga
from a slow one) and ``compensation_events``, both fields of the records the Python API
returns, so a script had to read the log with sagakit to get them. Both are given, on
SQLite and PostgreSQL alike, as ``get_saga()`` returns them.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli_helpers.run import cli
from pg_helpers.db import dsn_or_skip, query
from sagakit import SagaMetadata, SagaOrchestrator, SQLiteStore, StepFailed, saga, step

KINDS = ["sqlite", "postgres"]


@dataclass(frozen=True)
class Released:
    item: str


@step
async def json_reserve(item: str) -> str:
    return f"reserved {item}"


@json_reserve.compensate
async def json_release(result: str, item: str) -> list[Any]:
    return [Released(item), {"item": item}]


@step
async def json_ship(item: str) -> None:
    raise ValueError("no courier")


@saga(name="show_json.order")
def json_order(first: str, second: str):  # type: ignore[no-untyped-def]
    yield json_reserve(first)
    yield json_reserve(second)
    yield json_ship(first)


@contextmanager
def shown(tmp_path: Path, kind: str) -> Iterator[tuple[list[str], SagaMetadata]]:
    """A log holding saga ``o1``, compensated: the ``--db`` arguments of ``sagakit`` for
    it, and the saga's metadata as ``get_saga()`` returned it."""
    store: Any
    if kind == "postgres":
        from sagakit import PostgresStore

        dsn = dsn_or_skip()
        schema = "sk_show_json_" + uuid.uuid4().hex[:8]
        store = PostgresStore(dsn, schema=schema)
        argv = ["--db", dsn, "--schema", schema]
    else:
        path = str(tmp_path / "shown.db")
        store = SQLiteStore(path)
        argv = ["--db", path]

    async def write() -> SagaMetadata:
        async with SagaOrchestrator(store) as orchestrator:
            with pytest.raises(StepFailed):
                await orchestrator.execute(json_order("jug", "mug"), saga_id="o1")
            meta = await orchestrator.get_saga("o1")
        assert meta is not None
        return meta

    try:
        yield argv, asyncio.run(write())
    finally:
        if kind == "postgres":
            query(dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.mark.parametrize("kind", KINDS)
def test_show_json_gives_updated_at_and_compensation_events(tmp_path: Path, kind: str) -> None:
    with shown(tmp_path, kind) as (argv, meta):
        code, out = cli(*argv, "show", "o1", "--json")
    assert code == 0, out
    data = json.loads(out)
    # In SagaMetadata's order: the times together, the events together.
    assert list(data) == [
        "id",
        "name",
        "status",
        "steps_executed",
        "total_steps",
        "started_at",
        "updated_at",
        "finished_at",
        "error",
        "dead_letter",
        "dead_letter_reason",
        "steps",
        "compensations",
        "events",
        "compensation_events",
        "arguments",
        "parked",
    ]
    assert meta.updated_at is not None
    assert data["updated_at"] == meta.updated_at.isoformat()
    # The compensations' events in the order they ran (the second step's undone first),
    # each as the compensation's own record gives it (a dataclass as its repr()).
    jug, mug = Released("jug"), Released("mug")
    assert meta.compensation_events == (mug, {"item": "mug"}, jug, {"item": "jug"})
    assert data["compensation_events"] == [repr(mug), {"item": "mug"}, repr(jug), {"item": "jug"}]
    assert data["compensation_events"] == [
        event for record in data["compensations"] for event in record["events"]
    ]
    assert data["events"] == ["reserved jug", "reserved mug"]
