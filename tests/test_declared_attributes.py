"""The public attributes of sagakit's classes are declared in their class bodies, so
type checkers read their types rather than infer them from ``__init__``: pyright's
``--verifytypes`` counted 65 public symbols of inferred ("ambiguous") type, such as
``SagaRun.status``, ``StepTimeout.error`` and ``PostgresStore.lease``."""

from __future__ import annotations

import datetime
import inspect
import weakref
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    CompensationFailed,
    CorruptLog,
    LeaseLost,
    SagaAlreadyExecuting,
    SagaAlreadyFailed,
    SagaAlreadyResolved,
    SagaDefinition,
    SagaIdReused,
    SagaOrchestrator,
    StepFailed,
    StepTimeout,
    saga,
    step,
)
from sagakit._hooks import CrashAfter
from sagakit._runs import SagaRun, StepRun
from sagakit._serialization import JsonSerializer
from sagakit.stores import MemoryStore, PostgresStore, SQLiteStore
from sagakit.testing import InstantSleep


def _declared(cls: type) -> set[str]:
    """The names annotated in the bodies of ``cls`` and its bases."""
    return {name for klass in cls.__mro__ for name in inspect.get_annotations(klass)}


def _undeclared(value: object, *names: str) -> list[str]:
    """The public attributes of ``value`` (and ``names``) no class body declares."""
    held = [name for name in vars(value) if not name.startswith("_")]
    return sorted(set(held).union(names) - _declared(type(value)))


@pytest.mark.parametrize("cls", [SagaRun, StepRun, JsonSerializer, CrashAfter])
def test_slots_are_declared(cls: type) -> None:
    public = {name for name in cls.__dict__["__slots__"] if not name.startswith("_")}
    assert sorted(public - _declared(cls)) == []


@pytest.mark.asyncio
async def test_a_saga_run_declares_what_its_init_sets() -> None:
    @step
    async def noop() -> None:
        pass

    async with SagaOrchestrator() as orchestrator:
        definition = SagaDefinition(name="declared-attributes-run").add_step(noop())
        run = SagaRun("run-1", definition, False, 0.0, weakref.ref(orchestrator))
    set_by_init = [name for name in run.__slots__ if hasattr(run, name)]
    assert sorted(set(set_by_init) - _declared(SagaRun)) == []
    assert "status" in set_by_init  # a slot __init__ sets, so the test reads them


def _errors() -> list[BaseException]:
    moment = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    boom = ValueError("boom")
    return [
        StepFailed(0, "debit", boom),
        StepTimeout(0, "debit", 2.0, 1.0, compensation=True),
        CompensationFailed(1, "credit", boom, None, ["debit"], [(1, "credit", boom)]),
        SagaAlreadyExecuting("s-1", "parked"),
        SagaAlreadyFailed("s-1", in_memory=True),
        SagaIdReused("s-1", "transfer", "refund", ["amount"]),
        SagaAlreadyResolved("s-1", moment, "resolved by an operator: done"),
        CorruptLog("sagas.db", "file is not a database"),
        LeaseLost("s-1", released=True),
    ]


@pytest.mark.parametrize("error", _errors(), ids=lambda error: type(error).__name__)
def test_errors_declare_their_attributes(error: BaseException) -> None:
    assert _undeclared(error) == []


def test_a_saga_function_declares_its_names() -> None:
    @saga(name="declared-attributes-saga")
    def transfer() -> list[Any]:
        return []

    assert _undeclared(transfer, "__name__", "__qualname__") == []


@pytest.mark.asyncio
async def test_stores_declare_their_settings(tmp_path: Path) -> None:
    memory = MemoryStore()
    sqlite = SQLiteStore(tmp_path / "sagas.db")
    postgres = PostgresStore("postgresql://nobody@127.0.0.1:1/none")  # never connects
    try:
        assert _undeclared(memory) == []
        assert _undeclared(sqlite) == []
        assert _undeclared(postgres) == []
    finally:
        await postgres.close()
        await sqlite.close()
        await memory.close()


def test_instant_sleep_declares_its_attributes() -> None:
    assert _undeclared(InstantSleep(scale=0.5)) == []


@pytest.mark.asyncio
async def test_the_orchestrator_declares_its_attributes() -> None:
    async with SagaOrchestrator() as orchestrator:
        assert _undeclared(orchestrator) == []
