"""Row limits and ids given to the monitoring and recovery reads, the same on every store.

A limit past a 64-bit integer is all the rows (SQLite raised ``OverflowError``,
PostgreSQL its driver's "bigint out of range"); one that is not a whole number is a
``SagaDefinitionError`` (``"5"`` and ``True`` failed with a ``TypeError``, or were read
as 1). ``get_saga()`` of something not a string is refused (PostgreSQL failed with its
driver's error, the other stores found nothing).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from sagakit import MemoryStore, SagaDefinitionError, SagaOrchestrator, saga, step

pytestmark = pytest.mark.asyncio

HUGE = 10**20


@step
async def sl_note(n: int) -> int:
    return n


@saga(name="store_limits.note")
def note(n: int) -> Any:
    yield sl_note(n)


async def _two_finished(store: Any) -> SagaOrchestrator:
    orchestrator = SagaOrchestrator(store)
    await orchestrator.execute(note(1), saga_id="first")
    await orchestrator.execute(note(2), saga_id="second")
    return orchestrator


async def test_a_huge_limit_reads_every_row(durable_store: Callable[[], Any]) -> None:
    store = durable_store()
    orchestrator = await _two_finished(store)
    try:
        assert [m.id for m in await orchestrator.get_history(HUGE)] == ["first", "second"]
        assert [m.id for m in await store.history(HUGE)] == ["first", "second"]
        assert [m.id for m in await store.list_sagas(limit=HUGE)] == ["second", "first"]
        assert await store.claim_orphans(limit=HUGE) == []  # nothing orphaned: no error
        assert await store.claim_orphans(limit=-1) == []  # PostgreSQL refused a negative LIMIT
        assert [m.id for m in await store.history(1)] == ["second"]  # still a limit
    finally:
        await orchestrator.close()


async def test_a_huge_limit_reads_every_row_in_memory() -> None:
    store = MemoryStore()
    orchestrator = await _two_finished(store)
    assert [m.id for m in await orchestrator.get_history(HUGE)] == ["first", "second"]
    assert [m.id for m in await store.history(HUGE)] == ["first", "second"]


@pytest.mark.parametrize("limit", ["5", True, 1.5])
async def test_a_limit_that_is_no_whole_number_is_refused(
    durable_store: Callable[[], Any], limit: Any
) -> None:
    store = durable_store()
    try:
        for read, what in (
            (lambda: store.history(limit), "history"),
            (lambda: store.list_sagas(limit=limit), "list_sagas"),
            (lambda: store.claim_orphans(limit=limit), "claim_orphans"),
        ):
            with pytest.raises(
                SagaDefinitionError, match=rf"{what}\(limit=\.\.\.\) must be a whole"
            ):
                await read()
        with pytest.raises(SagaDefinitionError, match="max_attempts must be a whole number"):
            await store.claim_orphans(max_attempts=0)
        with pytest.raises(
            SagaDefinitionError, match=re.escape("history(limit=...) must be a whole")
        ):
            await MemoryStore().history(limit)
    finally:
        await store.close()


@pytest.mark.parametrize("store_kind", ["memory", "durable"])
async def test_get_saga_refuses_an_id_that_is_no_string(
    durable_store: Callable[[], Any], store_kind: str
) -> None:
    store = MemoryStore() if store_kind == "memory" else durable_store()
    orchestrator = await _two_finished(store)
    try:
        with pytest.raises(
            SagaDefinitionError, match=re.escape("get_saga() takes a saga id string")
        ):
            await orchestrator.get_saga(123)  # type: ignore[arg-type]
        found = await orchestrator.get_saga("first")
        assert found is not None
        assert found.id == "first"
    finally:
        await orchestrator.close()


def _id_methods(store: Any, bad: Any = 123) -> dict[str, Callable[[], Any]]:
    """Every public method of ``store`` taking a saga id, called with ``bad`` for it."""
    calls: dict[str, Callable[[], Any]] = {"get()": lambda: store.get(bad)}
    if store.durable:
        calls |= {
            "dead_letter()": lambda: store.dead_letter(bad, "parked"),
            "resume_dead_letter()": lambda: store.resume_dead_letter(bad),
            "resolve()": lambda: store.resolve(bad, "settled"),
            "read_events(saga_id=...)": lambda: store.read_events(saga_id=bad),
            "claim_orphans(saga_ids=...)": lambda: store.claim_orphans(saga_ids=[bad]),
        }
    if hasattr(store, "release"):  # SQLite
        calls["release()"] = lambda: store.release(bad)
    if hasattr(store, "release_leases"):  # PostgreSQL
        calls["release_leases(saga_ids=...)"] = lambda: store.release_leases(saga_ids=[bad])
        calls["owns()"] = lambda: store.owns(bad)
    return calls


@pytest.mark.parametrize("store_kind", ["memory", "durable"])
async def test_store_methods_refuse_an_id_that_is_no_string_alike(
    durable_store: Callable[[], Any], store_kind: str
) -> None:
    # Regression: store.get(123) found nothing in memory, found the saga "123" in SQLite
    # (its column's text affinity) and failed with the driver's error in PostgreSQL.
    store = MemoryStore() if store_kind == "memory" else durable_store()
    orchestrator = await _two_finished(store)
    try:
        await orchestrator.execute(note(3), saga_id="123")
        for where, call in _id_methods(store).items():
            with pytest.raises(SagaDefinitionError) as caught:
                await call() if where != "owns()" else call()
            assert str(caught.value) == (
                f"{where} takes a saga id string, got 123; pass the id as text"
            )
        found = await store.get("123")
        assert found is not None
        assert found.id == "123"
        with pytest.raises(SagaDefinitionError, match=re.escape("get_saga() takes a saga id")):
            await orchestrator.get_saga(123)  # type: ignore[arg-type]
    finally:
        await orchestrator.close()


@pytest.mark.parametrize("store_kind", ["memory", "durable"])
async def test_store_methods_refuse_an_id_that_is_no_valid_text_alike(
    durable_store: Callable[[], Any], store_kind: str
) -> None:
    # Regression: get_saga() of an id with a lone surrogate (bytes decoded with
    # errors="surrogateescape", as sys.argv is; execute() refuses such an id) found
    # nothing in memory, and failed with the driver's UnicodeEncodeError in SQLite and
    # PostgreSQL (`sagakit show` printed its traceback), as did every other id method.
    store = MemoryStore() if store_kind == "memory" else durable_store()
    orchestrator = await _two_finished(store)
    try:
        for where, call in _id_methods(store, "o-\udcff").items():
            with pytest.raises(SagaDefinitionError) as caught:
                await call() if where != "owns()" else call()
            assert str(caught.value).startswith(
                f"{where} takes a saga id of valid Unicode text, got 'o-\\udcff'"
            )
        with pytest.raises(
            SagaDefinitionError, match=re.escape("get_saga() takes a saga id of valid Unicode")
        ):
            await orchestrator.get_saga("o-\udcff")
        assert await orchestrator.get_saga("o-\ufffd") is None  # decoded with "replace"
    finally:
        await orchestrator.close()


@pytest.mark.parametrize("bad", [None, 3])
async def test_a_reason_or_note_that_is_no_string_is_refused_alike(
    durable_store: Callable[[], Any], bad: Any
) -> None:
    # Regression: SQLite's dead_letter(id, None) failed as if its log could not be written
    # ("cannot write saga log ...: AttributeError"), and PostgreSQL's stored None as no
    # reason: the saga was not dead-lettered at all, only released; resolve(id, None)
    # wrote "resolved by an operator: None" on SQLite.
    store = durable_store()
    orchestrator = await _two_finished(store)
    try:
        with pytest.raises(SagaDefinitionError) as caught:
            await store.dead_letter("first", bad)
        assert str(caught.value) == (
            f"dead_letter() takes the reason as a string, got {bad!r}; say why the saga is parked"
        )
        with pytest.raises(SagaDefinitionError) as caught:
            await store.resolve("first", bad)
        assert str(caught.value) == (
            f"resolve() takes the note as a string, got {bad!r}; say how the saga was settled"
        )
        found = await store.get("first")
        assert found is not None
        assert (found.status, found.error) == ("completed", None)
        assert await store.dead_letters() == []
    finally:
        await orchestrator.close()
