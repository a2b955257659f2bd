"""What pytest shows of sagakit's own frames when a test fails.

A saga that fails in a test raises ``StepFailed`` (or ``StepTimeout``,
``CompensationFailed``, a simulated crash, the step's own error...) out of
``execute()``, through the orchestrator's frames; pytest's default long traceback prints
the source of each frame, several hundred lines of the orchestrator between the test's
line and the error. The modules on that path set ``__tracebackhide__`` (pytest's hook,
which it also asks of a module's globals) to :func:`hide_from_pytest`, so pytest shows
the test's line, the application's code and the error. ``pytest --full-trace`` shows
every frame. A failure inside sagakit itself (a bug) keeps its frames.
"""

from __future__ import annotations

import os
import sys
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
