"""A generator saga whose body does not close cleanly is still compensated and ended.

Regression: the orchestrator closed the saga's generator before compensating, and a
body that yields from a ``finally`` (``RuntimeError: generator ignored GeneratorExit``)
or raises there escaped the handler: no compensation ran and the run stayed EXECUTING.
Closing is now logged, never raised (docs/concepts/statuses.md: a run is never left
EXECUTING or COMPENSATING once ``execute`` has returned or raised).
"""

from __future__ import annotations

from typing import Any

import pytest

from sagakit import SagaOrchestrator, SagaStatus, StepFailed, saga, step

undone: list[str] = []


@step
async def gcf_reserve(item: str) -> str:
    return f"reserved {item}"


@gcf_reserve.compensate
async def gcf_release(item: str) -> None:
    undone.append(item)


@step
async def gcf_pay(item: str) -> None:
    raise ValueError("card declined")


@step
async def gcf_notify(item: str) -> None:
    return None


@saga
def gcf_order(item: str):  # type: ignore[no-untyped-def]
    try:
        yield gcf_reserve(item)
        yield gcf_pay(item)
    finally:
        yield gcf_notify(item)  # "always notify": a yield in finally


@saga
def gcf_order_raising_on_close(item: str):  # type: ignore[no-untyped-def]
    try:
        yield gcf_reserve(item)
        yield gcf_pay(item)
    finally:
        raise RuntimeError("cleanup failed")


@pytest.mark.asyncio
@pytest.mark.parametrize("body", [gcf_order, gcf_order_raising_on_close])
async def test_a_body_that_yields_or_raises_while_closing_is_still_compensated(
    body: Any, caplog: pytest.LogCaptureFixture
) -> None:
    undone.clear()
    orchestrator = SagaOrchestrator()
    with pytest.raises(StepFailed, match="card declined"):  # the step's failure, as ever
        await orchestrator.execute(body("book"), saga_id="gcf-1")
    metadata = await orchestrator.get_saga("gcf-1")
    assert metadata is not None
    # The completed step is compensated and the run is finished, not left executing.
    assert undone == ["book"]
    assert metadata.status is SagaStatus.COMPENSATED
    assert await orchestrator.running_count() == 0
    assert "while being closed" in caplog.text  # what the body did is logged
