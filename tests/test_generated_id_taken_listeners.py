"""What listeners hear of a run whose generated saga id is already in a durable log.

Regression: on PostgreSQL, such a run (its first write refused: the id is another saga's,
``IdTaken``) told its listeners ``SAGA_STARTED`` and then ``SAGA_FINISHED``
``COMPENSATED``, as if recorded, while nothing of it was in the log (the store took every
later write of it for written, writing nothing), and the saga in the log under that id
had completed: a tracer made a span, and a recorder a run, of a saga that never was. It is
now told as on SQLite, as any run whose end the log could not record: ``SAGA_STOPPED``
alone, its error the one ``execute()`` raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

import sagakit._orchestrator
from sagakit import (
    SagaOrchestrator,
    SagaStatus,
    StoreError,
    Transition,
    TransitionKind,
    saga,
    step,
)
from store_helpers.unwritten import assert_told_nothing_logged

RAN: list[str] = []


@step
async def idt_reserve(item: str) -> str:
    RAN.append(item)
    return f"reserved-{item}"


@idt_reserve.compensate
async def idt_release(item: str) -> None:
    RAN.append(f"released-{item}")


@saga
def idt_order(item: str) -> Any:
    yield idt_reserve(item)


@saga
def idt_nothing(item: str) -> Any:  # its end is its first write, carrying its row
    if item == "chair":
        yield idt_reserve(item)


@pytest.mark.asyncio
@pytest.mark.parametrize("second", [idt_order, idt_nothing], ids=["a-step", "no-step"])
async def test_listeners_hear_nothing_recorded_of_a_run_whose_generated_id_is_taken(
    durable_store: Callable[..., Any],
    second: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    RAN.clear()
    monkeypatch.setattr(sagakit._orchestrator, "new_saga_id", lambda: "generated-twice")
    caplog.set_level(logging.WARNING, logger="sagakit")
    heard: list[Transition] = []
    async with SagaOrchestrator(durable_store(), listeners=[heard.append]) as orchestrator:
        assert await orchestrator.execute(idt_order("chair")) == ["reserved-chair"]
        assert heard[-1].kind is TransitionKind.SAGA_FINISHED
        heard.clear()
        with pytest.raises(StoreError) as raised:
            await orchestrator.execute(second("sofa"))
        meta = await orchestrator.get_saga("generated-twice")
        running = await orchestrator.running_count()
    assert [(t.saga_id, t.kind, t.status) for t in heard] == [
        ("generated-twice", TransitionKind.SAGA_STOPPED, SagaStatus.EXECUTING)
    ]
    assert heard[0].error is raised.value
    assert RAN == ["chair"]  # nothing of the second run ran
    assert meta is not None
    assert (meta.status, meta.events) == (SagaStatus.COMPLETED, ("reserved-chair",))
    assert running == 0
    assert_told_nothing_logged(caplog, raised.value)  # not "left for recovery"
