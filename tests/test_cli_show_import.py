"""``sagakit show --import MODULE`` imports the application's module first, as
``recover --import`` does, so that values stored with a codec it registers (arguments,
results, events) are shown read back rather than as stored."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli_helpers.run import cli
from sagakit import Codec, JsonSerializer, SagaOrchestrator, SQLiteStore, saga, step


@dataclass(frozen=True)
class Amount:
    cents: int


@step
async def show_import_hold(amount: Amount) -> Amount:
    return amount


@saga(name="show_import_order")
def show_import_order(amount: Amount):  # type: ignore[no-untyped-def]
    yield show_import_hold(amount)


def test_show_imports_the_module_that_registers_a_codec_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"amount-{uuid.uuid4().hex[:8]}"  # the global registry outlives the test
    module = f"show_import_codecs_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(f"""\
            from dataclasses import dataclass
            from sagakit import register_codec

            @dataclass(frozen=True)
            class Cents:
                cents: int

            register_codec(Cents, encode=lambda c: c.cents, decode=Cents, name={name!r})
            """),
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    db = str(tmp_path / "sagas.db")
    codec = Codec(Amount, name, lambda a: a.cents, lambda v: Amount(v))

    async def run() -> None:
        store = SQLiteStore(db, serializer=JsonSerializer(codecs=[codec]))
        async with SagaOrchestrator(store) as orchestrator:
            await orchestrator.execute(show_import_order(Amount(250)), saga_id="s-1")

    asyncio.run(run())

    code, out = cli("--db", db, "show", "s-1", "--json", "--import", module)
    assert code == 0, capsys.readouterr().err
    shown = json.loads(out)
    assert shown["arguments"]["error"] is None
    assert shown["arguments"]["args"] == ["Cents(cents=250)"]
    assert shown["steps"][0]["events"] == ["Cents(cents=250)"]


def test_show_reports_an_import_module_that_does_not_import(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "sagas.db")

    async def run() -> None:
        async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
            await orchestrator.execute(show_import_order(Amount(1)), saga_id="s-2")

    asyncio.run(run())
    code, out = cli("--db", db, "show", "s-2", "--import", "no_such_module_show_xyz")
    assert code == 1
    assert out == ""
    assert "cannot import 'no_such_module_show_xyz'" in capsys.readouterr().err


def test_show_says_why_events_it_cannot_read_are_shown_as_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: run from another directory, `show` printed the events of a class it
    # cannot import as sagakit's raw JSON ({'__sk__': 'dataclass', 't': ...}) without a
    # word of why, where the arguments line says why they cannot be read.
    module = f"show_events_{uuid.uuid4().hex[:8]}"
    app = tmp_path / "app"
    app.mkdir()
    (app / f"{module}.py").write_text(
        textwrap.dedent("""\
            from dataclasses import dataclass

            @dataclass(frozen=True)
            class Refunded:
                order: str
            """),
        encoding="utf-8",
    )
    db = str(tmp_path / "sagas.db")
    monkeypatch.syspath_prepend(str(app))
    events = importlib.import_module(module)

    @step
    async def show_events_refund(order: str) -> Any:
        return events.Refunded(order)

    @saga(name=f"show_events_saga_{module}")
    def show_events_saga(order: str):  # type: ignore[no-untyped-def]
        yield show_events_refund(order)

    async def run() -> None:
        async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
            await orchestrator.execute(show_events_saga("o-1"), saga_id="s-3")

    asyncio.run(run())
    # As a process started elsewhere: the module is not importable from there.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(app)])
    monkeypatch.delitem(sys.modules, module)
    monkeypatch.chdir(tmp_path)
    code, out = cli("--db", db, "show", "s-3")
    assert code == 0, capsys.readouterr().err
    said = [line for line in out.splitlines() if line.startswith("events of ")]
    assert said == [
        f"events of step 0 ('show_events_refund'): cannot be read: stored value has type "
        f"'{module}:Refunded', which cannot be imported (No module named '{module}'); import "
        "the module defining it, or, if the class was renamed or moved since, keep its old "
        f"name as an alias (`Refunded = NewName` in module {module}); shown above as stored"
    ]
    # The module importable again (--import finds it in the current directory): read back.
    monkeypatch.chdir(app)
    code, out = cli("--db", db, "show", "s-3", "--import", module)
    assert code == 0, capsys.readouterr().err
    assert "Refunded(order='o-1')" in out
    assert "events of " not in out
