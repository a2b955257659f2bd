"""Notebook display: the escaped ``_repr_html_`` of runs, step records and definitions."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from html.parser import HTMLParser
from typing import Any

import pytest

from sagakit import (
    Retry,
    SagaDefinition,
    SagaMetadata,
    SagaOrchestrator,
    SagaStatus,
    StepFailed,
    StepRecord,
    StepStatus,
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


@step(retry=Retry(attempts=3, backoff=0), timeout=5)
async def charge(item: str) -> str:
    return "card"


@charge.compensate
async def refund(item: str) -> None:
    return None


@step
async def ship(item: str) -> None:
    return None


@saga(name="display.order")
def order(item: str) -> list[Any]:
    return [reserve(item), charge(item), ship(item)]


@saga(name="display.order_gen")
def order_gen(item: str) -> Any:
    yield reserve(item)


class _Cells(HTMLParser):
    """The text of every table row, as lists of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.tags: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _rows(html: str) -> list[list[str]]:
    parser = _Cells()
    parser.feed(html)
    assert "script" not in parser.tags
    return parser.rows


async def _failed_run() -> SagaMetadata:
    orchestrator = SagaOrchestrator(sleep=InstantSleep())
    faults = FaultInjector().fail("charge", times=1).fail("ship", ValueError("<script>x</script>"))
    with faults, pytest.raises(StepFailed):
        await orchestrator.execute(order("<b>book</b>"), saga_id="o&1")
    metadata = await orchestrator.get_saga("o&1")
    assert metadata is not None
    return metadata


@pytest.mark.asyncio
async def test_a_run_shows_steps_then_compensations_in_the_order_they_ran() -> None:
    metadata = await _failed_run()
    html = metadata._repr_html_()
    rows = _rows(html)
    assert rows[0] == ["#", "step", "status", "attempts", "duration", "timeline", "error"]
    body = [(r[0], r[1], r[2], r[3], r[6]) for r in rows[1:] if len(r) > 1]
    assert body == [
        ("0", "reserve", "completed", "1", ""),
        ("1", "charge", "completed", "2", ""),
        ("2", "ship", "failed", "1", "ValueError: <script>x</script>"),
        ("↩1", "charge", "completed", "1", ""),
        ("↩2", "reserve", "completed", "1", ""),
    ]
    assert ["compensations, in the order they ran"] in rows
    assert all(re.fullmatch(r"\d+(\.\d)? (ms|µs)", r[4]) for r in rows[1:] if len(r) > 1)
    # escaped: the error and the id appear as text, never as markup
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert "<code>o&amp;1</code>" in html
    assert "compensated</span> 2/3 steps" in html


def test_metadata_of_a_definition_not_run() -> None:
    html = order("x").metadata()._repr_html_()
    assert "not_started" in html
    assert "no step has run" in html
    assert "0/3 steps" in html
    assert "None" not in html  # no id yet: none shown (it said <code>None</code>)
    assert "<code>o-7</code>" in order("x").with_id("o-7").metadata()._repr_html_()


def test_a_step_record_is_one_row() -> None:
    record = StepRecord(
        index=4,
        name="pay<&>",
        status=StepStatus.TIMED_OUT,
        attempts=2,
        duration=1.5,
        error="StepTimeout: >",
        compensation=True,
    )
    rows = _rows(record._repr_html_())
    assert rows[1][:5] == ["compensation 4", "pay<&>", "timed_out", "2", "1500.0 ms"]
    assert rows[1][6] == "StepTimeout: >"
    assert "pay&lt;&amp;&gt;" in record._repr_html_()


def test_a_definition_lists_its_steps_and_compensations() -> None:
    html = order("<i>").with_id("id<1>")._repr_html_()
    assert "saga display.order(&#x27;&lt;i&gt;&#x27;)" in html
    assert "<code>id&lt;1&gt;</code>" in html
    rows = _rows(html)
    assert rows[0] == ["#", "step", "arguments", "timeout", "attempts", "compensation"]
    assert rows[1:] == [
        ["0", "reserve", "'<i>'", "30 s", "1", "release"],
        ["1", "charge", "'<i>'", "5 s", "3", "refund"],
        ["2", "ship", "'<i>'", "30 s", "1", "—"],
    ]
    builder = SagaDefinition("b-1").add_step(ship(item="z"))
    assert _rows(builder._repr_html_())[1][2] == "item='z'"


def test_a_generator_definition_says_its_steps_are_known_when_run() -> None:
    html = order_gen("x")._repr_html_()
    assert "known only when it runs" in html
    assert "<table" not in html


def test_rendering_imports_nothing_from_ipython() -> None:
    code = (
        "import sys, sagakit;"
        "from sagakit import SagaStatus, SagaMetadata;"
        "SagaMetadata(id='x', name='n', status=SagaStatus.COMPLETED)._repr_html_();"
        "print([m for m in sys.modules if m.split('.')[0] in ('IPython', 'ipykernel')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_status_colours_differ_by_outcome() -> None:
    done = SagaMetadata(id="a", name="n", status=SagaStatus.COMPLETED)._repr_html_()
    failed = SagaMetadata(id="a", name="n", status=SagaStatus.FAILED)._repr_html_()
    assert re.search(r"color:(#[0-9a-f]+);font-weight:bold\">completed", done)
    assert re.search(r"color:#cf222e;font-weight:bold\">failed", failed)


class _Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_a_definition_shows_even_arguments_that_cannot_be_shown_in_full() -> None:
    looped: list[Any] = [1]
    looped.append(looped)
    for argument in (_Unprintable(), list(range(100_000)), "x" * 100_000, looped):
        html = order(argument)._repr_html_()  # never raises, never grows with the argument
        assert len(html) < 5_000
        assert rows_of_steps(html) == ["reserve", "charge", "ship"]
    assert "_Unprintable" in order(_Unprintable())._repr_html_()
    assert "[0, 1, 2" in order(list(range(100_000)))._repr_html_()


def rows_of_steps(html: str) -> list[str]:
    return [row[1] for row in _rows(html)[1:]]


def test_a_long_error_is_cut_in_reprs_and_kept_whole_in_the_record() -> None:
    from datetime import UTC, datetime

    from sagakit import SagaMetadata, SagaStatus, StepRecord, StepStatus

    error = "ValueError: " + "x" * 5_000
    record = StepRecord(0, "charge", StepStatus.FAILED, 1, 0.001, error)
    now = datetime.now(UTC)
    meta = SagaMetadata(
        "s-1", "order", SagaStatus.COMPENSATED, 1, 2, now, now, now, error, (record,)
    )
    for text in (repr(record), repr(meta)):
        assert len(text) < 400
        assert "ValueError: xxx" in text
        assert text.endswith("…)>")
    assert meta.error == error  # the record keeps it whole
    html = meta._repr_html_()
    assert f'title="{error}"' in html  # whole on hover
    assert html.count("x" * 5_000) == 2  # the two titles only, not the visible text


def test_a_dead_letter_shows_why_it_was_parked_beside_its_own_error() -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    parked = SagaMetadata(
        "o-1",
        "order",
        SagaStatus.COMPENSATING,
        1,
        3,
        now,
        now,
        error="StepFailed: step 1 ('charge') failed",
        dead_letter="compensation <b>crashed</b> its process",
    )
    text = repr(parked)
    assert text.endswith(
        "(StepFailed: step 1 ('charge') failed) "
        "dead-lettered (compensation <b>crashed</b> its process)>"
    )
    html = parked._repr_html_()
    assert "<em>dead-lettered:</em> " in html
    assert "compensation &lt;b&gt;crashed&lt;/b&gt; its process" in html  # escaped
    assert "<b>crashed" not in html
    assert html.index("StepFailed") < html.index("dead-lettered")  # its error first
    # A saga not parked says nothing of it.
    running = SagaMetadata("o-2", "order", SagaStatus.EXECUTING, 1, 3, now, now)
    assert "dead-lettered" not in repr(running)
    assert "dead-lettered" not in running._repr_html_()


def test_a_step_call_shows_even_arguments_that_cannot_be_shown_in_full() -> None:
    # Regression: a step call's repr (a notebook cell's value, the "got <StepCall ...>" of
    # a misuse error) was the whole repr() of every argument: 700 kB for a list of 100,000
    # numbers, and it raised when an argument's repr() raised.
    looped: list[Any] = [1]
    looped.append(looped)
    for argument in (_Unprintable(), list(range(100_000)), "x" * 100_000, looped):
        text = repr(reserve(argument))
        assert len(text) < 200
        assert text.startswith("<StepCall reserve(")
    assert "_Unprintable" in repr(reserve(_Unprintable()))
    assert repr(reserve(list(range(100_000)))).startswith("<StepCall reserve([0, 1, 2")
    assert (
        repr(charge(item=["a"] * 1_000))
        == "<StepCall charge(item=['a', 'a', 'a', 'a', 'a', 'a', ...])>"
    )


@saga(name="display.many")
def many(count: int) -> list[Any]:
    return [reserve(str(index)) for index in range(count)]


def _huge_run(count: int) -> SagaMetadata:
    """A run of ``count`` steps, the last failed, then ``count - 1`` compensations."""
    from datetime import UTC, datetime

    steps = [StepRecord(i, f"s{i}", StepStatus.COMPLETED, 1, 0.001) for i in range(count)]
    steps[-1] = StepRecord(count - 1, f"s{count - 1}", StepStatus.FAILED, 1, 0.001, "boom")
    undone = tuple(
        StepRecord(i, f"s{i}", StepStatus.COMPLETED, 1, 0.001, compensation=True)
        for i in reversed(range(count - 1))
    )
    now = datetime.now(UTC)
    return SagaMetadata(
        "h-1", "huge", SagaStatus.COMPENSATED, count, count, now, now, now, "StepFailed: boom",
        tuple(steps), undone,
    )  # fmt: skip


def test_a_huge_run_shows_its_first_and_last_steps_and_compensations() -> None:
    # Regression: a row per step and per compensation, however many: 3 MB of HTML for a
    # run of 5,000 steps, kept in the notebook's file and slow to draw.
    html = _huge_run(5_000)._repr_html_()
    assert len(html) < 50_000
    rows = _rows(html)
    split = rows.index(["compensations, in the order they ran"])
    steps, compensations = rows[1:split], rows[split + 1 :]
    assert [row[0] for row in steps[:2]] == ["0", "1"]
    assert steps[20] == ["… 4,960 more steps"]
    assert steps[-1][:3] == ["4999", "s4999", "failed"]  # the failed step is shown
    assert len(steps) == 41
    assert compensations[0][:2] == ["↩1", "s4998"]  # the first to run
    assert compensations[20] == ["… 4,959 more compensations"]
    assert compensations[-1][:2] == ["↩4999", "s0"]  # the last to run
    assert len(compensations) == 41
    # Up to 50 rows are all shown.
    assert len(_rows(_huge_run(50)._repr_html_())) == 1 + 50 + 1 + 49


def test_a_huge_definition_shows_its_first_and_last_steps() -> None:
    html = many(5_000)._repr_html_()
    assert len(html) < 50_000
    rows = _rows(html)[1:]
    assert [row[0] for row in rows[:2]] == ["0", "1"]
    assert rows[20] == ["… 4,960 more steps"]
    assert rows[-1][:3] == ["4999", "reserve", "'4999'"]
    assert len(rows) == 41
    assert len(_rows(many(50)._repr_html_())) == 51


def test_a_long_recovery_error_or_dead_letter_reason_is_cut_in_reprs() -> None:
    # Regression: recover()'s outcomes (a notebook cell's value) and the store's dead
    # letters showed their whole error in their repr — up to 64 kB each — where a run's
    # repr shows the first 200 characters.
    from sagakit import DeadLetter, RecoveryOutcome

    error = "ValueError: " + "x" * 5_000
    outcome = RecoveryOutcome("o-1", "order", "compensated", SagaStatus.COMPENSATED, error)
    letter = DeadLetter("o-1", "order", SagaStatus.EXECUTING, 3, f"replaying raised {error}")
    for text in (repr(outcome), repr(letter)):
        assert len(text) < 400
        assert text.endswith("…)>" if text.startswith("<Recovery") else "…>")
    assert repr(outcome).startswith("<RecoveryOutcome order id='o-1' compensated -> ")
    assert repr(letter).startswith(
        "<DeadLetter order id='o-1' executing after 3 attempts: replaying raised ValueError: x"
    )
    one = DeadLetter("o-2", "order", SagaStatus.EXECUTING, 1, "parked")
    assert repr(one) == "<DeadLetter order id='o-2' executing after 1 attempt: parked>"
    assert outcome.error == error  # the records keep it whole
    assert letter.reason == f"replaying raised {error}"


async def forget(cache: str, item: str) -> None:
    return None


@step(name="display.lookup")
async def lookup(item: str) -> str:
    return item


lookup.compensate(functools.partial(forget, "cache-1"))


def test_a_partial_compensation_is_named_by_its_function() -> None:
    # Regression: a compensation without a __name__ (a functools.partial) was shown as "—",
    # as a step without one is, and drawn as "compensation".
    definition = SagaDefinition("p-1").add_step(lookup("x"))
    assert _rows(definition._repr_html_())[1][5] == "forget"
    assert '    s0 -. on failure .-> c0[/"forget"/]' in definition.to_mermaid().splitlines()


def test_a_stored_events_repr_shortens_the_event() -> None:
    # Regression: read_events()'s records (a notebook cell's value) showed each event's
    # whole repr(), and raised when it raised.
    from sagakit import StoredEvent

    record = StoredEvent(7, "o-1", "order", 0, "reserve", False, {"rows": list(range(10**5))})
    assert (
        repr(record)
        == "<StoredEvent #7 order 'o-1' step 0 reserve: {'rows': [0, 1, 2, 3, 4, 5, ...]}>"
    )
    odd = StoredEvent(8, "o-1", "order", 0, "reserve", False, _Unprintable())
    assert "_Unprintable" in repr(odd)


class _Bank:
    def __repr__(self) -> str:
        return "<bank>"

    @step(timeout=7)
    async def move(self, amount: int) -> int:
        return amount


def test_a_bound_step_shows_as_a_step_in_ipython() -> None:
    # Regression: a step looked up on an instance (the last expression of a cell, print(),
    # an f-string) showed wrapt's "<_wrappers.BoundFunctionWrapper at 0x... for method at
    # 0x...>".
    formatter = pytest.importorskip("IPython.core.formatters", reason="IPython is in the dev extra")
    shown = formatter.DisplayFormatter().format(_Bank().move)[0]
    assert shown["text/plain"] == "<bound Step move timeout=7s of <bank>>"


def test_a_bound_step_says_what_it_is_bound_to() -> None:
    bound = _Bank().move
    assert repr(bound) == str(bound) == f"{bound}" == "<bound Step move timeout=7s of <bank>>"
    assert repr(_Bank.move) == "<Step move timeout=7s>"  # looked up on the class
    bank = _Bank()
    bank.__class__ = type("_Unshown", (_Bank,), {"__repr__": _Unprintable.__repr__})
    unshown = f"<_Unshown instance at {id(bank):#x}>"
    assert repr(bank.move) == f"<bound Step move timeout=7s of {unshown}>"


def test_a_step_shows_its_options_in_a_notebook() -> None:
    # Regression: IPython drew a step, the last expression of a cell, by the class its proxy
    # claims (the function's): "<function reserve(item: 'str') -> 'str'>", as if @step had
    # not applied; a notebook now shows the step's table, and its text is unchanged.
    html = charge._repr_html_()
    assert _rows(html) == [
        ["step", "parameters", "timeout", "attempts", "compensation"],
        ["charge", "(item: str)", "5 s", "3", "refund"],
    ]
    assert _rows(reserve._repr_html_())[1][-1] == "release"
    assert _rows(ship._repr_html_())[1][-1] == "—"

    @step(name="<b>x</b>")
    async def tagged(label: "<script>") -> None:  # type: ignore[valid-type]  # noqa: F722
        return None

    shown = tagged._repr_html_()
    assert "<b>" not in shown
    assert _rows(shown)[1][:2] == ["<b>x</b>", "(label: '<script>')"]  # _rows: no script tag
    formatter = pytest.importorskip("IPython.core.formatters", reason="IPython is in the dev extra")
    assert formatter.DisplayFormatter().format(charge)[0]["text/html"] == html
