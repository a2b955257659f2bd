"""Mermaid flowcharts of definitions and runs."""

from __future__ import annotations

from typing import Any

import pytest

from sagakit import (
    CompensationFailed,
    SagaDefinition,
    SagaOrchestrator,
    SagaStatus,
    StepFailed,
    StepTimeout,
    saga,
    step,
)
from sagakit.testing import FaultInjector, InstantSleep


@step
async def reserve(item: str) -> str:
    return f"reserved {item}"


@reserve.compensate
async def release(item: str) -> None:
    return None


@step
async def charge(item: str) -> str:
    return "card"


@charge.compensate
async def refund(item: str) -> None:
    return None


@step(name='ship "fast" #1')
async def ship(item: str) -> None:
    return None


@saga(name="mermaid.order")
def order(item: str) -> list[Any]:
    return [reserve(item), charge(item), ship(item)]


@saga(name="mermaid.order_gen")
def order_gen(item: str) -> Any:
    yield reserve(item)


def test_definition_draws_forward_steps_and_compensations() -> None:
    assert order("x").to_mermaid().splitlines() == [
        "flowchart LR",
        '    start(["mermaid.order"])',
        '    start --> s0["reserve"]',
        '    s0 -. on failure .-> c0[/"release"/]',
        '    s0 --> s1["charge"]',
        '    s1 -. on failure .-> c1[/"refund"/]',
        '    s1 --> s2["ship #quot;fast#quot; #35;1"]',
        "    s2 --> done([completed])",
        "    c1 -.-> c0",
    ]


def test_generator_definition_says_steps_come_when_run() -> None:
    text = order_gen("x").to_mermaid()
    assert "steps known only when the generator saga runs" in text


async def _run(faults: FaultInjector) -> Any:
    orchestrator = SagaOrchestrator(sleep=InstantSleep())
    with faults, pytest.raises(StepFailed):
        await orchestrator.execute(order("x"), saga_id="o-1")
    return await orchestrator.get_saga("o-1")


@pytest.mark.asyncio
async def test_a_run_marks_the_failed_step_and_the_compensation_path() -> None:
    metadata = await _run(FaultInjector().fail("charge", ValueError("card <declined>")))
    lines = metadata.to_mermaid().splitlines()
    assert lines[:6] == [
        "flowchart LR",
        '    start(["mermaid.order<br/>o-1"])',
        '    start --> s0["reserve"]:::completed',
        '    s0 --> s1["charge<br/>ValueError: card #lt;declined#gt;"]:::failed',
        '    s1 -.-> rest["1 more not run"]:::pending',
        '    s1 ==>|1| c1[/"undo reserve"/]:::compensated',
    ]
    assert '    c1 --> finish(["compensated"])' in lines
    assert "    classDef failed fill:#ffebe9,stroke:#cf222e,stroke-width:3px" in lines


@pytest.mark.asyncio
async def test_a_timed_out_step_and_a_failed_compensation() -> None:
    faults = FaultInjector().timeout(ship).fail_compensation("charge", OSError("ledger"))
    orchestrator = SagaOrchestrator(sleep=InstantSleep(), continue_on_compensation_failure=True)
    with faults, pytest.raises(CompensationFailed) as caught:
        await orchestrator.execute(order("x"), saga_id="o-2")
    assert isinstance(caught.value.__cause__, StepTimeout)
    metadata = await orchestrator.get_saga("o-2")
    assert metadata is not None
    assert metadata.status is SagaStatus.FAILED
    text = metadata.to_mermaid()
    assert ":::timed_out" in text
    assert '    s2 ==>|1| c1[/"undo charge<br/>OSError: ledger"/]:::failed' in text
    assert '    c1 ==>|2| c2[/"undo reserve"/]:::compensated' in text
    assert '    c2 --> finish(["failed"])' in text


def test_a_run_not_started_has_no_finish() -> None:
    text = order("x").metadata().to_mermaid()
    assert "finish" not in text
    assert '    start -.-> rest["3 more not run"]:::pending' in text


@pytest.mark.asyncio
async def test_a_directive_or_comment_in_an_error_stays_text() -> None:
    """Mermaid applies a ``%%{init: ...}%%`` directive found anywhere in the source (even
    inside a quoted label) and drops a line starting with ``%%`` (a ``\\r`` starts one), so
    an error message could restyle the diagram or break it: ``%`` and ``\\r`` are escaped."""
    error = ValueError("upstream said %%{init: {'theme': 'dark'}}%%\r%% gone\"]")
    metadata = await _run(FaultInjector().fail("charge", error))
    text = metadata.to_mermaid()
    assert "%" not in text
    assert "\r" not in text
    assert (
        '    s0 --> s1["charge<br/>ValueError: upstream said #37;#37;{init: '
        "{'theme': 'dark'}}#37;#37; #37;#37; gone#quot;]\"]:::failed"
    ) in text.splitlines()


@step(name="`**loud**`")
async def loud(item: str) -> None:
    return None


def test_a_backtick_name_is_not_a_markdown_string() -> None:
    """A label quoted as "`...`" is a Mermaid markdown string (``**`` turns bold)."""
    lines = SagaDefinition("l-1", steps=[loud("x")]).to_mermaid().splitlines()
    assert '    start --> s0["#96;**loud**#96;"]' in lines


@step(name="R&amp;D &lt;b&gt;")
async def entity(item: str) -> None:
    return None


def test_an_html_entity_in_a_name_is_drawn_as_written() -> None:
    """Mermaid labels are HTML: an ``&`` left as is would draw ``&lt;`` as ``<``."""
    lines = SagaDefinition("e-1", steps=[entity("x")]).to_mermaid().splitlines()
    assert '    start --> s0["R#38;amp;D #38;lt;b#38;gt;"]' in lines


@pytest.mark.asyncio
async def test_a_long_error_is_cut_as_in_the_html_table() -> None:
    """Regression: a run's diagram held each error whole, so a failure carrying a service's
    whole error page (say) made a diagram Mermaid refuses to draw (its default
    ``maxTextSize`` is 50,000 characters). Errors are cut as the repr and HTML cut them."""
    page = "<html>" + "x" * 60_000 + "</html>"
    faults = FaultInjector().fail("charge", ValueError(page))
    faults.fail_compensation("reserve", OSError(page))
    orchestrator = SagaOrchestrator(sleep=InstantSleep(), continue_on_compensation_failure=True)
    with faults, pytest.raises(CompensationFailed):
        await orchestrator.execute(order("x"), saga_id="o-long")
    metadata = await orchestrator.get_saga("o-long")
    assert metadata is not None
    text = metadata.to_mermaid()
    assert len(text) < 2_000
    shown = "x" * (199 - len("ValueError: <html>"))  # 200 characters with the "…"
    lines = text.splitlines()
    assert f'    s0 --> s1["charge<br/>ValueError: #lt;html#gt;{shown}…"]:::failed' in lines
    undo = f'    s1 ==>|1| c1[/"undo reserve<br/>OSError: #lt;html#gt;{shown}xxx…"/]:::failed'
    assert undo in lines


@saga(name="mermaid.many")
def many(count: int) -> list[Any]:
    return [reserve(str(index)) for index in range(count)]


def test_a_huge_saga_draws_its_first_and_last_steps() -> None:
    # Regression: a node per step, however many: 460 kB for a definition of 5,000 steps,
    # past Mermaid's limit on a diagram's size (50,000 characters), so it drew nothing.
    lines = many(5_000).to_mermaid().splitlines()
    assert len("\n".join(lines)) < 50_000
    assert '    s19 --> s_more["… 4,960 more steps"]' in lines
    assert '    s_more -. on failure .-> c_more[/"… 4,960 more compensations"/]' in lines
    assert '    s_more --> s4980["reserve"]' in lines
    assert "    s4999 --> done([completed])" in lines
    assert "    c_more -.-> c19" in lines
    assert "    c4980 -.-> c_more" in lines
    assert sum(" --> s" in line for line in lines) == 41
    assert "s_more" not in many(50).to_mermaid()


def test_a_huge_run_draws_its_first_and_last_steps_and_compensations() -> None:
    from datetime import UTC, datetime

    from sagakit import SagaMetadata, StepRecord, StepStatus

    count = 5_000
    steps = [StepRecord(i, "reserve", StepStatus.COMPLETED, 1, 0.001) for i in range(count)]
    steps[-1] = StepRecord(count - 1, "reserve", StepStatus.FAILED, 1, 0.001, "boom")
    undone = tuple(
        StepRecord(i, "reserve", StepStatus.COMPLETED, 1, 0.001, compensation=True)
        for i in reversed(range(count - 1))
    )
    now = datetime.now(UTC)
    run = SagaMetadata(
        "h-1", "huge", SagaStatus.COMPENSATED, count, count, now, now, now, "boom",
        tuple(steps), undone,
    )  # fmt: skip
    lines = run.to_mermaid().splitlines()
    assert len("\n".join(lines)) < 50_000
    assert '    s19 --> s_more["… 4,960 more steps"]' in lines
    assert '    s_more --> s4980["reserve"]:::completed' in lines
    assert '    s4998 --> s4999["reserve<br/>boom"]:::failed' in lines
    assert '    s4999 ==>|1| c1[/"undo reserve"/]:::compensated' in lines
    assert '    c20 ==> c_more[/"… 4,959 more compensations"/]' in lines
    assert '    c_more ==>|4980| c4980[/"undo reserve"/]:::compensated' in lines
    assert '    c4999 --> finish(["compensated"])' in lines
