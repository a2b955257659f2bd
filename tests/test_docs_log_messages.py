"""The log records the docs quote are ones sagakit writes.

Every inline example of a log message in the pages below (`sagakit recovery resumes saga
order (o-1) ...`, `sagakit: saga order (o-1) could not record ...`), ``...`` standing for
any text, must fit a message format of the code (its ``%s``, ``%r``, ``%d`` standing for any
text too: a quote's text before its first ``...`` is what is checked best). The formatted log
line docs/observability.md shows is checked against a real run.
"""

from __future__ import annotations

import ast
import logging
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sagakit import SagaStatus, TransitionKind
from sagakit._notify import level_of

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["docs/observability.md", "docs/durability.md", "docs/postgres.md"]

# An inline code span (any number of backticks), as Markdown reads one.
_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
_FENCE = re.compile(r"^ *```.*?^ *```", re.S | re.M)
# What a quoted log message starts with (not a command line such as `sagakit recover`).
_MESSAGE = re.compile(
    r"(sagakit(: | recovery | worker | heartbeat | could | parked )|\.\.\. could |saga \S+ \()"
)
_WILD = "\0"  # stands for any text, on either side


def _examples(page: str) -> list[str]:
    text = _FENCE.sub("", (ROOT / page).read_text(encoding="utf-8"))
    spans = (" ".join(match.group(2).split()) for match in _SPAN.finditer(text))
    return [span for span in spans if _MESSAGE.match(span)]


def _formats() -> set[str]:
    """Every string constant of the code with a %-placeholder: log formats among them."""
    found: set[str] = set()
    for path in (ROOT / "src" / "sagakit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and re.search(r"%[srd]", node.value)
            ):
                found.add(node.value)
    return found


def _fits(example: str, form: str) -> bool:
    """Whether some message is both ``example`` (``...`` any text) and ``form`` filled in."""
    a = example.replace("...", _WILD)
    b = re.sub(r"%[srd]", _WILD, form).replace("%%", "%")

    # fits[i][j]: whether a[i:] and b[j:] have a message in common (filled from the ends).
    fits = [[False] * (len(b) + 1) for _ in range(len(a) + 1)]
    fits[len(a)][len(b)] = True
    for i in range(len(a), -1, -1):
        for j in range(len(b), -1, -1):
            if i < len(a) and a[i] == _WILD:
                fits[i][j] = fits[i + 1][j] or (j < len(b) and fits[i][j + 1])
            elif j < len(b) and b[j] == _WILD:
                fits[i][j] = fits[i][j + 1] or (i < len(a) and fits[i + 1][j])
            elif i < len(a) and j < len(b):
                fits[i][j] = a[i] == b[j] and fits[i + 1][j + 1]
    return fits[0][0]


def test_the_pages_quote_log_messages() -> None:
    # A guard: a change to how examples are found must not make the next test vacuous.
    assert len(_examples("docs/observability.md")) >= 6
    assert _fits("sagakit worker stopped saga ...", "sagakit %s stopped saga %s: %s")
    assert not _fits("sagakit worker stops saga o-1: boom", "sagakit %s stopped saga %s: %s")


@pytest.mark.parametrize("page", PAGES)
def test_quoted_log_messages_are_real(page: str) -> None:
    formats = _formats()
    unknown = [
        example for example in _examples(page) if not any(_fits(example, form) for form in formats)
    ]
    assert unknown == [], f"{page} quotes log messages sagakit does not write: {unknown}"


_RUN = """
import asyncio, logging
from sagakit import SagaOrchestrator, StepFailed
from sagakit.testing import FaultInjector

async def main():
    with FaultInjector().fail(send_receipt, ConnectionRefusedError("smtp down")):
        try:
            await SagaOrchestrator().execute(transfer("alice", "bob", 30), saga_id="transfer-2")
        except StepFailed:
            pass

asyncio.run(main())
"""


def test_the_formatted_log_line_shown_is_what_a_run_logs(tmp_path: Path) -> None:
    # The logging block: its formatter, and the line it shows for a failed send_receipt.
    page = (ROOT / "docs/observability.md").read_text(encoding="utf-8")
    [block] = [b for b in re.findall(r"```python\n(.*?)```", page, re.S) if "Formatter(" in b]
    [shown] = re.findall(r"^# (WARNING .*)$", block, re.M)
    saga = re.findall(r"```python\n(.*?)```", (ROOT / "docs/testing.md").read_text("utf-8"), re.S)
    script = tmp_path / "run.py"
    script.write_text("\n\n".join([saga[0], block, textwrap.dedent(_RUN)]), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert shown in result.stderr.splitlines(), result.stderr


# The phrases of docs/observability.md's table of levels, and the transitions they name
# (with the saga's status for SAGA_FINISHED).
_K = TransitionKind
_PHRASES: dict[str, list[tuple[TransitionKind, SagaStatus | None]]] = {
    "step and compensation started and completed": [
        (_K.STEP_STARTED, None),
        (_K.STEP_COMPLETED, None),
        (_K.COMPENSATION_STARTED, None),
        (_K.COMPENSATION_COMPLETED, None),
    ],
    "saga started": [(_K.SAGA_STARTED, None)],
    "step retrying": [(_K.STEP_RETRYING, None)],
    "saga finished `COMPLETED`": [(_K.SAGA_FINISHED, SagaStatus.COMPLETED)],
    "saga stopped (`SAGA_STOPPED`)": [(_K.SAGA_STOPPED, None)],
    "step failed": [(_K.STEP_FAILED, None)],
    "step timed out": [(_K.STEP_TIMED_OUT, None)],
    "compensation retrying": [(_K.COMPENSATION_RETRYING, None)],
    "saga finished `COMPENSATED`": [(_K.SAGA_FINISHED, SagaStatus.COMPENSATED)],
    "compensation failed": [(_K.COMPENSATION_FAILED, None)],
    "saga finished `FAILED`": [(_K.SAGA_FINISHED, SagaStatus.FAILED)],
    "a listener raised (with its traceback)": [],  # not a transition
}


def test_the_table_of_levels_is_the_code_s() -> None:
    page = (ROOT / "docs/observability.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(DEBUG|INFO|WARNING|ERROR)` \| (.+?) \|$", page, re.M)
    assert [level for level, _ in rows] == ["DEBUG", "INFO", "WARNING", "ERROR"]
    told: list[tuple[TransitionKind, SagaStatus | None]] = []
    for level, text in rows:
        for phrase in text.split("; "):
            assert phrase in _PHRASES, f"add {phrase!r} to this test's _PHRASES"
            for kind, status in _PHRASES[phrase]:
                real = level_of(kind, status or SagaStatus.EXECUTING)
                assert logging.getLevelName(real) == level, (phrase, kind, status)
                told.append((kind, status))
    finished = [(_K.SAGA_FINISHED, status) for status in SagaStatus if status.is_finished]
    every = [(kind, None) for kind in TransitionKind if kind is not _K.SAGA_FINISHED] + finished
    assert sorted(told, key=str) == sorted(every, key=str)  # each transition in one row, once


def test_the_monitoring_page_s_table_of_levels_is_the_code_s() -> None:
    page = (ROOT / "docs/concepts/monitoring.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(DEBUG|INFO|WARNING|ERROR)` \| (.+?) \|$", page, re.M)
    assert sorted(level for level, _ in rows) == ["DEBUG", "ERROR", "INFO", "WARNING"]
    named: set[tuple[TransitionKind, SagaStatus]] = set()
    for level, text in rows:
        if level == "DEBUG":
            assert text.startswith("every other transition"), text
            continue
        for item in text.split(", "):
            match = re.fullmatch(r"`(\w+)`(?: when (\w+))?", item)
            assert match is not None, item
            kind = TransitionKind[match.group(1)]
            status = SagaStatus(match.group(2)) if match.group(2) else SagaStatus.EXECUTING
            assert logging.getLevelName(level_of(kind, status)) == level, item
            named.add((kind, status))
    for kind in TransitionKind:
        for status in [SagaStatus.EXECUTING, *(s for s in SagaStatus if s.is_finished)]:
            if (kind, status) not in named and (kind is _K.SAGA_FINISHED) == status.is_finished:
                assert level_of(kind, status) == logging.DEBUG, ("every other", kind, status)
