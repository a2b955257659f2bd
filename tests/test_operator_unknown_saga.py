"""An operator's command on a saga id the log does not hold says there is no such saga.

Regression: ``resume`` (``store.resume_dead_letter()``) of an id with no saga in the log
(a typo, the wrong log) said "saga 'nope' is not dead-lettered", as if the saga were
there but not parked, sending the operator to ``sagakit dead-letters`` to look for it;
and ``resolve`` named a missing saga differently on each store ("saga 'nope' is not in
'sagas.db'", "no saga with id 'nope' in schema ..."). Both now say "no saga 'nope' in
<the log>", as ``sagakit show`` does; a saga that is there but not parked is still "not
dead-lettered".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cli_helpers.run import cli
from sagakit import SagaOrchestrator, SQLiteStore, StoreError, saga, step


@step
async def unknown_saga_hold(item: str) -> str:
    return item


@saga(name="operator_unknown_saga.order")
def unknown_saga_order(item: str):  # type: ignore[no-untyped-def]
    yield unknown_saga_hold(item)


@pytest.mark.asyncio
async def test_resume_of_an_id_the_log_does_not_hold_says_there_is_no_such_saga(
    durable_store: Callable[..., Any],
) -> None:
    store = durable_store()
    try:
        await SagaOrchestrator(store).execute(unknown_saga_order("book"), saga_id="done-1")
        with pytest.raises(StoreError) as missing:
            await store.resume_dead_letter("nope")
        with pytest.raises(StoreError) as unparked:
            await store.resume_dead_letter("done-1")
    finally:
        await store.close()
    assert str(missing.value).startswith("no saga 'nope' in "), missing.value
    assert "`sagakit list` lists its sagas" in str(missing.value), missing.value
    assert "dead-lettered" not in str(missing.value), missing.value
    # A saga that is there is named as it was: not parked.
    assert "saga 'done-1' is not dead-lettered" in str(unparked.value), unparked.value


@pytest.mark.asyncio
async def test_resolve_of_an_id_the_log_does_not_hold_is_worded_alike_on_every_store(
    durable_store: Callable[..., Any],
) -> None:
    store = durable_store()
    try:
        with pytest.raises(StoreError) as missing:
            await store.resolve("nope", "refunded by hand")
    finally:
        await store.close()
    assert str(missing.value).startswith("no saga 'nope' in "), missing.value
    assert str(missing.value).endswith("; `sagakit list` lists its sagas"), missing.value


def test_the_cli_says_alike_that_resume_resolve_and_show_found_no_saga(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "sagas.db")

    async def one() -> None:
        async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
            await orchestrator.execute(unknown_saga_order("book"), saga_id="done-1")

    asyncio.run(one())
    said = []
    for command in (["show", "nope"], ["resume", "nope"], ["resolve", "nope", "--note", "x"]):
        assert cli("--db", db, *command) == (1, "")
        said.append(capsys.readouterr().err)
    for err in said:
        assert err.startswith(f"sagakit: no saga 'nope' in {db!r}; "), said
