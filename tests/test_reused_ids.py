"""An explicit saga id that completed answers with its recorded events only the same saga
called with the same arguments; another saga, or other arguments, is a SagaIdReused
(the recorded events were silently returned to them), on each of the three stores."""

from __future__ import annotations

import pickle
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pg_helpers.db import dsn_or_skip, fresh_schema
from sagakit import (
    MemoryStore,
    SagaDefinition,
    SagaError,
    SagaIdReused,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StepFailed,
    saga,
    step,
)

CALLS: list[str] = []

Opener = Callable[[], AbstractAsyncContextManager[SagaOrchestrator]]


@dataclass(frozen=True)
class Money:
    amount: int
    currency: str


@step
async def charge(order: str, money: Money, tags: frozenset[str]) -> str:
    CALLS.append(f"charge {order} {money.amount}")
    if money.amount < 0:
        raise ValueError("a negative amount")
    return f"charged {order} {money.amount}"


@step
async def refund(order: str) -> str:
    CALLS.append(f"refund {order}")
    return f"refunded {order}"


@saga(name="reused_ids.checkout")
def checkout(order: str, money: Money, tags: frozenset[str] = frozenset(), note: str = ""):  # type: ignore[no-untyped-def]
    yield charge(order, money, tags)


@saga(name="reused_ids.give_back")
def give_back(order: str):  # type: ignore[no-untyped-def]
    yield refund(order)


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens an orchestrator on the store under test: the same log each time (the
    in-memory store is kept, as a process that goes on would keep it)."""
    kind = request.param
    schemas: Iterator[str] | None = None
    if kind == "postgres":
        dsn = dsn_or_skip()
        schemas = fresh_schema(dsn)
        schema = next(schemas)
    memory = MemoryStore()

    @asynccontextmanager
    async def opened() -> AsyncIterator[SagaOrchestrator]:
        store: Any
        if kind == "memory":
            store = memory
        elif kind == "sqlite":
            store = SQLiteStore(tmp_path / "reused.db")
        else:
            from sagakit import PostgresStore

            store = PostgresStore(dsn, schema=schema)
        async with SagaOrchestrator(store) as orchestrator:
            yield orchestrator
        if kind != "memory":
            await store.close()

    yield opened
    if schemas is not None:
        for _ in schemas:  # drops the schema
            pass


EUR10 = Money(10, "EUR")


@pytest.mark.asyncio
async def test_the_same_call_gets_the_recorded_events_without_running(opener: Opener) -> None:
    async with opener() as orchestrator:
        first = await orchestrator.execute(
            checkout("o-1", EUR10, frozenset({"a", "b", "c"})).with_id("k")
        )
    # Another process: equal (not identical) values, given by keyword, a default spelled out.
    async with opener() as orchestrator:
        again = await orchestrator.execute(
            checkout(money=Money(10, "EUR"), order="o-1", tags=frozenset({"c", "b", "a"}), note=""),
            saga_id="k",
        )
        assert again == first == ["charged o-1 10"]
        assert CALLS == ["charge o-1 10"]  # ran once
        assert await orchestrator.history_count() == 1


@pytest.mark.asyncio
async def test_other_arguments_under_a_completed_id_are_refused(opener: Opener) -> None:
    async with opener() as orchestrator:
        await orchestrator.execute(checkout("o-1", EUR10), saga_id="k")
    async with opener() as orchestrator:
        # The recorded ["charged o-1 10"] was returned: the caller believed 20 charged.
        with pytest.raises(SagaIdReused) as caught:
            await orchestrator.execute(checkout("o-1", Money(20, "EUR")), saga_id="k")
        error = caught.value
        assert isinstance(error, SagaError)
        assert (error.saga_id, error.recorded_name, error.name) == (
            "k",
            "reused_ids.checkout",
            "reused_ids.checkout",
        )
        assert error.arguments == ("money",)
        assert str(error) == (
            "saga id 'k' is reused for saga 'reused_ids.checkout' with other arguments "
            "(differing: money); an explicit id answers with the recorded events only the same "
            "saga called with the same arguments: give this run a new id (one naming its own "
            "operation, e.g. with what differs in it)"
        )
        with pytest.raises(SagaIdReused, match=r"\(differing: note\)"):
            await orchestrator.execute(checkout("o-1", EUR10, note="gift"), saga_id="k")
        with pytest.raises(SagaIdReused, match=r"\(differing: order, tags\)"):
            await orchestrator.execute(checkout("o-2", EUR10, frozenset("x")), saga_id="k")
        assert CALLS == ["charge o-1 10"]  # nothing else ran
        meta = await orchestrator.get_saga("k")
        assert meta is not None
        assert meta.status is SagaStatus.COMPLETED
        assert meta.events == ("charged o-1 10",)
        # A new id runs it.
        assert await orchestrator.execute(checkout("o-1", Money(20, "EUR")), saga_id="k2") == [
            "charged o-1 20"
        ]


@pytest.mark.asyncio
async def test_another_saga_under_a_completed_id_is_refused(opener: Opener) -> None:
    async with opener() as orchestrator:
        await orchestrator.execute(checkout("o-1", EUR10), saga_id="o-1")
        with pytest.raises(SagaIdReused) as caught:
            await orchestrator.execute(give_back("o-1"), saga_id="o-1")
        assert caught.value.arguments == ()
        assert "is reused for saga 'reused_ids.give_back', but it completed a run of saga " in (
            str(caught.value)
        )
        assert "'reused_ids.checkout'; " in str(caught.value)
        # A builder saga is named by its id unless given a name: one named otherwise.
        with pytest.raises(SagaIdReused, match="reused for saga 'undo', but it completed"):
            await orchestrator.execute(
                SagaDefinition(name="undo").add_step(refund("o-1")), saga_id="o-1"
            )
        assert CALLS == ["charge o-1 10"]


@pytest.mark.asyncio
async def test_a_builder_saga_executed_again_gets_its_events(opener: Opener) -> None:
    definition = SagaDefinition("b-1").add_step(refund("o-1"))
    async with opener() as orchestrator:
        first = await orchestrator.execute(definition)
    async with opener() as orchestrator:
        assert await orchestrator.execute(SagaDefinition("b-1").add_step(refund("o-1"))) == first
    assert CALLS == ["refund o-1"]


@pytest.mark.asyncio
async def test_a_compensated_id_still_runs_again_with_other_arguments(opener: Opener) -> None:
    async with opener() as orchestrator:
        with pytest.raises(StepFailed):
            await orchestrator.execute(checkout("o-1", Money(-1, "EUR")), saga_id="k")
        # It left nothing behind: the id runs again, with the corrected amount.
        assert await orchestrator.execute(checkout("o-1", EUR10), saga_id="k") == ["charged o-1 10"]


def test_the_error_pickles() -> None:
    error = SagaIdReused("k", "a", "a", ("x",))
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.saga_id, copy.recorded_name, copy.name, copy.arguments) == (
        "k",
        "a",
        "a",
        ("x",),
    )
    assert str(copy) == str(error)


@pytest.mark.asyncio
async def test_arguments_that_no_longer_load_are_compared_as_written(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "renamed.db"
    async with SagaOrchestrator(SQLiteStore(path)) as orchestrator:
        await orchestrator.execute(checkout("o-1", EUR10), saga_id="k")
        await orchestrator.execute(checkout("o-1", EUR10), saga_id="k2")
    # Their class was renamed since (the log still names the old one): the text that a
    # same call writes now differs, and the one recorded cannot be read to compare.
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE sagakit_sagas SET arguments = replace(arguments, ':Money', ':OldMoney') "
            "WHERE id = 'k'"
        )
    conn.close()
    async with SagaOrchestrator(SQLiteStore(path)) as orchestrator:
        with pytest.raises(
            SagaIdReused, match=r"\(differing: the arguments as written, which no longer load\)"
        ):
            await orchestrator.execute(checkout("o-1", EUR10), saga_id="k")
        # Written the same as recorded: the same call, whatever can be read.
        assert await orchestrator.execute(checkout("o-1", EUR10), saga_id="k2") == [
            "charged o-1 10"
        ]
    assert CALLS == ["charge o-1 10", "charge o-1 10"]


@step
async def measure(value: float) -> str:
    CALLS.append(f"measure {value}")
    return "measured"


@saga(name="reused_ids.measured")
def measured(value: float):  # type: ignore[no-untyped-def]
    yield measure(value)


@pytest.mark.asyncio
async def test_a_nan_argument_is_the_same_nan(opener: Opener) -> None:
    # NaN is not equal to itself, but it is written the same: the same call.
    async with opener() as orchestrator:
        await orchestrator.execute(measured(float("nan")), saga_id="m")
    async with opener() as orchestrator:
        assert await orchestrator.execute(measured(float("nan")), saga_id="m") == ["measured"]
    assert CALLS == ["measure nan"]


@pytest.mark.asyncio
async def test_a_builder_saga_with_other_steps_or_arguments_is_refused(opener: Opener) -> None:
    # A builder saga's steps are what its id stands for (it has no arguments of its own):
    # other steps, or other arguments to them, were silently given the recorded events.
    def booked(money: Money, tags: frozenset[str]) -> SagaDefinition:
        return SagaDefinition("b-1").add_step(charge("o-1", money, tags)).add_step(refund("o-1"))

    async with opener() as orchestrator:
        first = await orchestrator.execute(booked(EUR10, frozenset({"a", "b", "c"})))
    async with opener() as orchestrator:
        # Equal values, a set listed in another order: the same operation.
        assert await orchestrator.execute(booked(Money(10, "EUR"), frozenset("cba"))) == first
        for other in (
            booked(Money(20, "EUR"), frozenset("abc")),  # another amount
            booked(EUR10, frozenset("ab")),  # another tag set
            SagaDefinition("b-1").add_step(refund("o-1")),  # a step fewer
            SagaDefinition("b-1").add_step(refund("o-1")).add_step(charge("o-1", EUR10, "")),
        ):
            with pytest.raises(
                SagaIdReused, match=r"^saga id 'b-1' is reused for saga 'b-1' "
            ) as caught:
                await orchestrator.execute(other)
            assert caught.value.arguments, "says what differs"
        meta = await orchestrator.get_saga("b-1")
        assert meta is not None
        assert meta.events == tuple(first)
    assert CALLS == ["charge o-1 10", "refund o-1"]  # ran once


@step
async def pack(order: str, items: list[str]) -> str:
    CALLS.append(f"pack {order} {'+'.join(items)}")
    return f"packed {order} {'+'.join(items)}"


@saga(name="reused_ids.basket")
def basket(order: str, items: list[str]):  # type: ignore[no-untyped-def]
    yield pack(order, items)


@pytest.mark.asyncio
async def test_an_argument_changed_in_place_since_the_run_is_other_arguments(
    opener: Opener,
) -> None:
    # A caller that keeps its list and adds to it calls again with other arguments: the
    # in-memory store compared the list with itself (it keeps the run's definition, whose
    # arguments are the caller's objects) and answered with the recorded events, where a
    # durable store, which wrote the arguments when the run began, refused it.
    items = ["book"]
    definition = basket("o-1", items)
    tags = ["a"]
    builder = SagaDefinition("b-1").add_step(pack("o-2", tags))
    async with opener() as orchestrator:
        assert await orchestrator.execute(definition, saga_id="k") == ["packed o-1 book"]
        assert await orchestrator.execute(builder) == ["packed o-2 a"]
        items.append("pen")
        tags.append("b")
        for again in (basket("o-1", items), definition):  # a new definition, the same one
            with pytest.raises(SagaIdReused, match=r"\(differing: items\)"):
                await orchestrator.execute(again, saga_id="k")
        with pytest.raises(SagaIdReused, match=r"^saga id 'b-1' is reused for saga 'b-1' "):
            await orchestrator.execute(builder)
        # Unchanged: the same call, answered from the log.
        assert await orchestrator.execute(basket("o-1", ["book"]), saga_id="k") == [
            "packed o-1 book"
        ]
        unchanged = SagaDefinition("b-1").add_step(pack("o-2", ["a"]))
        assert await orchestrator.execute(unchanged) == ["packed o-2 a"]
    assert CALLS == ["pack o-1 book", "pack o-2 a"]


@pytest.mark.asyncio
async def test_the_memory_store_names_the_builder_step_that_differs() -> None:
    async with SagaOrchestrator(MemoryStore()) as orchestrator:
        await orchestrator.execute(
            SagaDefinition("b-1").add_step(refund("o-1")).add_step(refund("o-2"))
        )
        with pytest.raises(SagaIdReused, match=r"\(differing: step 1 \(refund\)\)"):
            await orchestrator.execute(
                SagaDefinition("b-1").add_step(refund("o-1")).add_step(refund("o-3"))
            )
        with pytest.raises(SagaIdReused, match=r"\(differing: its steps\)"):
            await orchestrator.execute(SagaDefinition("b-1").add_step(refund("o-1")))


_FINGERPRINT = """
from sagakit import SagaDefinition, JsonSerializer, step
from sagakit.stores._fingerprint import definition_fingerprint

@step
async def tag(labels: frozenset[str], counts: dict[str, int]) -> None: ...

labels = frozenset(["apple", "banana", "cherry", "kiwi", "lemon", "mango"])
definition = SagaDefinition("b-1").add_step(tag(labels, {"b": 2, "a": 1}))
print(definition_fingerprint(definition, JsonSerializer().dumps))
"""


def test_a_builder_fingerprint_is_the_same_in_every_process() -> None:
    # A set of strings is iterated (so written) in another order under another hash seed:
    # the same builder saga retried by another process must not be refused.
    import os
    import subprocess
    import sys

    printed = set()
    for seed in ("1", "2", "3", "4"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", _FINGERPRINT],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        printed.add(done.stdout.strip())
    assert len(printed) == 1, printed


@pytest.mark.asyncio
async def test_a_log_from_before_builder_arguments_were_fingerprinted(tmp_path: Path) -> None:
    # A completed builder run recorded with the fingerprint of its step names alone (as
    # earlier versions wrote it) still answers the same steps; other steps are refused.
    import sqlite3

    from sagakit.stores._fingerprint import definition_fingerprint

    definition = SagaDefinition("b-1").add_step(refund("o-1"))
    async with SagaOrchestrator(SQLiteStore(tmp_path / "old.db")) as orchestrator:
        first = await orchestrator.execute(definition)
    with sqlite3.connect(tmp_path / "old.db") as conn:
        conn.execute(
            "UPDATE sagakit_sagas SET fingerprint = ?", (definition_fingerprint(definition),)
        )
    conn.close()
    async with SagaOrchestrator(SQLiteStore(tmp_path / "old.db")) as orchestrator:
        assert await orchestrator.execute(SagaDefinition("b-1").add_step(refund("o-1"))) == first
        with pytest.raises(SagaIdReused):
            await orchestrator.execute(SagaDefinition("b-1").add_step(charge("o-1", EUR10, "")))
    assert CALLS == ["refund o-1"]
