"""A run ending with a KeyboardInterrupt whose end the log cannot record: the log's error
is chained to the interrupt (its ``__context__``), with no cycle in the chain."""

from __future__ import annotations

from pathlib import Path

import pytest

from sagakit import SagaDefinition, SagaOrchestrator, SQLiteStore, StoreError, step
from sagakit.stores import SagaRunView


class EndlessStore(SQLiteStore):
    """Records everything but a run's end."""

    async def finish(self, run: SagaRunView) -> None:
        raise StoreError("disk full")


@step
async def uc_interrupted() -> None:
    raise KeyboardInterrupt


@pytest.mark.asyncio
async def test_an_unrecorded_end_is_chained_to_the_interrupt_without_a_cycle(
    tmp_path: Path,
) -> None:
    orchestrator = SagaOrchestrator(EndlessStore(tmp_path / "sagas.db"))
    with pytest.raises(KeyboardInterrupt) as raised:
        await orchestrator.execute(SagaDefinition("uc-1", steps=[uc_interrupted()]))
    await orchestrator.close()
    unrecorded = raised.value.__context__
    assert isinstance(unrecorded, StoreError)
    seen: list[BaseException] = []
    link: BaseException | None = raised.value
    while link is not None:
        assert link not in seen, f"a cycle in the chain: {seen}"
        seen.append(link)
        link = link.__context__
