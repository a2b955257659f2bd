"""What pytest shows of sagakit's own frames when a test fails.

A saga that fails in a test raises ``StepFailed`` (or ``StepTimeout``,
``CompensationFailed``, a simulated crash, the step's own error...) out of
``execute()``, through the orchestrator's frames; pytest's default long traceback prints
the source of each frame, several hundred lines of the orchestrator between the test's
line and the error. The modules on that path set ``__tracebackhide__`` (pytest's hook,
which it also asks of a module's globals) to :func:`hide_from_pytest`, so pytest shows
the test's line, the application's code and the error. ``pytest --full-trace`` shows
every frame. A failure inside sagakit itself (a bug) keeps its frames.

A ``CompensationFailed`` is chained to the failure that started compensating, so no
traceback shows where the compensation raised: :func:`compensation_notes` gives the notes
(PEP 678) that show it.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from types import TracebackType
from typing import Any

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def hide_from_pytest(excinfo: Any) -> bool:
    """Whether pytest may hide a sagakit frame of ``excinfo``'s traceback: the error is
    one of sagakit's own (a saga's outcome, a misuse it explains), or was raised by code
    outside sagakit (a step, a generator saga's body, a listener), which sagakit's frames
    only lead to."""
    error = getattr(excinfo, "value", None)
    if not isinstance(error, BaseException):
        return False
    exceptions = sys.modules.get("sagakit.exceptions")
    if exceptions is not None and isinstance(error, exceptions.SagaError):
        return True
    hooks = sys.modules.get("sagakit._hooks")
    if hooks is not None and isinstance(error, hooks.SimulatedCrash):
        return True
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return not os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE)


#: At most this many characters of one compensation error's traceback go into a note
#: (the end is kept: the raising line and the error are there).
MAX_NOTE_TRACEBACK = 4000
#: Notes for at most this many compensation errors (more only with the continue option).
MAX_NOTED_ERRORS = 5
#: At most this many exceptions of one error's chain (``__cause__``/``__context__``).
_MAX_CHAIN = 4

_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def _outside(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` from its first frame outside sagakit (the frames that led to the
    application's code dropped); ``None`` if every frame is sagakit's."""
    while tb is not None:
        if not os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE):
            return tb
        tb = tb.tb_next
    return None


def _formatted(error: BaseException, trigger: BaseException | None) -> str | None:
    """The traceback of ``error`` as Python prints it, its chain included up to
    ``trigger`` (which the ``CompensationFailed`` is chained to already), without the
    sagakit frames that called the compensation; ``None`` if no frame of it is outside
    sagakit (an injected fault, a timeout, a misuse sagakit found: the message says it)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current is not trigger and len(chain) < _MAX_CHAIN:
        if any(current is seen for seen in chain):
            break
        chain.append(current)
        if current.__cause__ is not None:
            current = current.__cause__
        elif current.__suppress_context__:
            current = None
        else:
            current = current.__context__
    parts: list[str] = []
    shown = False
    for earlier, later in zip(reversed(chain), [*reversed(chain[:-1]), None], strict=True):
        tb = _outside(earlier.__traceback__)
        shown = shown or tb is not None
        exception = traceback.TracebackException(type(earlier), earlier, tb, compact=True)
        parts.extend(exception.format(chain=False))
        if later is not None:
            parts.append(_CAUSE if later.__cause__ is earlier else _CONTEXT)
    if not shown:
        return None
    text = "".join(parts).rstrip("\n")
    if len(text) > MAX_NOTE_TRACEBACK:
        cut = len(text) - MAX_NOTE_TRACEBACK
        text = f"... ({cut} characters cut)\n{text[-MAX_NOTE_TRACEBACK:]}"
    return text


def compensation_notes(
    errors: Sequence[tuple[int, str, BaseException]], trigger: BaseException | None
) -> list[str]:
    """Notes for a ``CompensationFailed``: the traceback of each compensation error in
    ``errors`` raised by the compensation's code, which its ``__cause__`` (``trigger``)
    does not show. Strings only: no frame or traceback is kept."""
    notes = []
    for step_index, step_name, error in errors[:MAX_NOTED_ERRORS]:
        text = _formatted(error, trigger)
        if text is not None:
            notes.append(
                f"sagakit: compensation of step {step_index} ({step_name!r}) failed:\n{text}"
            )
    if len(errors) > MAX_NOTED_ERRORS:
        notes.append(
            f"sagakit: {len(errors) - MAX_NOTED_ERRORS} more compensations failed; their "
            "errors are in .errors"
        )
    return notes
