"""Telling the world about transitions: one log record each, then the listeners."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._logger import logger
from ._members import (
    ON_COMPENSATION_COMPLETED,
    ON_COMPENSATION_FAILED,
    ON_COMPENSATION_RETRYING,
    ON_COMPENSATION_STARTED,
    ON_SAGA_FINISHED,
    ON_SAGA_STARTED,
    ON_SAGA_STOPPED,
    ON_STEP_COMPLETED,
    ON_STEP_FAILED,
    ON_STEP_RETRYING,
    ON_STEP_STARTED,
    ON_STEP_TIMED_OUT,
    SAGA_COMPLETED,
    SAGA_FAILED,
)
from ._names import qualname_of, record_name
from ._runs import SagaRun, describe_error
from ._tracebacks import hide_from_pytest
from .exceptions import SagaDefinitionError
from .records import one_line
from .status import SagaStatus
from .transitions import Transition, TransitionKind

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest


Listener = Callable[[Transition], object]
"""A callable told of every state change; it may be sync or async. What it returns is
ignored (awaited first when it is awaitable), so it may return anything."""


def _check_listener_not_a_generator(listener: Listener) -> None:
    """Refuse a generator (or async generator) function as a listener: each call would
    only make a generator, which nothing runs, so it would hear nothing, silently."""
    called: object = listener
    if not (inspect.isroutine(listener) or isinstance(listener, functools.partial)):
        called = type(listener).__call__  # an instance: its __call__ method
    if inspect.isasyncgenfunction(called):
        kind = "an async generator"
    elif inspect.isgeneratorfunction(called):
        kind = "a generator"
    else:
        return
    function = listener.func if isinstance(listener, functools.partial) else called
    raise SagaDefinitionError(
        f"a listener is called once per transition, but {qualname_of(function)} is {kind} "
        "function: a call only makes a generator, which nothing runs, so it would hear "
        "nothing; remove the 'yield' (an 'async def' listener is awaited)"
    )


def _check_listener_signature(listener: Listener) -> None:
    """Refuse a listener that cannot be called with one argument, the transition: it
    would fail on every transition, each failure only logged."""
    try:
        signature = inspect.signature(listener)
    except (TypeError, ValueError):  # a builtin without one: nothing to check
        return
    try:
        signature.bind(None)
    except TypeError:
        name = getattr(listener, "__qualname__", None) or type(listener).__qualname__
        shown = signature.replace(return_annotation=inspect.Signature.empty)
        raise SagaDefinitionError(
            f"a listener is called with one argument, the Transition, but {name}{shown} "
            "cannot take it; give it one parameter (def listener(transition): ...), and "
            "defaults for any others"
        ) from None


_LEVELS = {
    ON_SAGA_STARTED: logging.INFO,
    ON_SAGA_FINISHED: logging.INFO,
    ON_SAGA_STOPPED: logging.INFO,  # raised to execute()'s caller; recovery warns itself
    ON_STEP_FAILED: logging.WARNING,
    ON_STEP_TIMED_OUT: logging.WARNING,
    ON_STEP_RETRYING: logging.INFO,
    ON_COMPENSATION_RETRYING: logging.WARNING,
    ON_COMPENSATION_FAILED: logging.ERROR,
}


def level_of(kind: TransitionKind, status: SagaStatus) -> int:
    """The log level of a transition: failures warn, a lost compensation is an error."""
    if kind is ON_SAGA_FINISHED and status is not SAGA_COMPLETED:
        return logging.ERROR if status is SAGA_FAILED else logging.WARNING
    return _LEVELS.get(kind, logging.DEBUG)


async def tell(
    listeners: Sequence[Listener], level: int, transition: Transition, run: SagaRun | None = None
) -> None:
    """Log ``transition`` (if ``level`` is enabled), then call every listener.

    A listener that raises is logged and never breaks the saga (a ``CancelledError`` of
    its own too: one raised while this task is not being cancelled — no more than when
    ``run`` started in it, ``run.cancel_base``: a cancellation its caller caught earlier,
    without ``uncancel()``, is not the saga's). A cancellation while a listener is awaited
    goes on once the others have heard of the transition too (a tracer must hear the end
    of the saga whose spans it opened).
    """
    if logger.isEnabledFor(level):
        _log(level, transition)
    in_flight = sys.exception()  # what sagakit handles while it tells (a step's error...)
    cancelled: asyncio.CancelledError | None = None
    for listener in listeners:
        try:
            outcome = listener(transition)
            if inspect.isawaitable(outcome):
                await outcome
        except asyncio.CancelledError as cancellation:
            task = asyncio.current_task()
            base = run.cancel_base if run is not None and run.task is task else 0
            if task is None or task.cancelling() > base:
                cancelled = cancellation
            else:  # not the saga's task cancelled: the listener's own (it awaited something
                _listener_failed(listener, transition, in_flight)  # cancelled), an error
        except Exception:  # like any other
            _listener_failed(listener, transition, in_flight)
    in_flight = None  # its traceback holds our caller's frame: no cycle through this one
    if cancelled is not None:
        try:
            raise cancelled
        finally:
            cancelled = None  # its traceback holds this frame: no reference cycle


async def tell_each(
    listeners: Sequence[Listener],
    told: Sequence[tuple[int, Transition]],
    run: SagaRun | None = None,
) -> None:
    """:func:`tell` each ``(level, transition)`` in order; a cancellation while one is
    told goes on once the later ones are told too."""
    cancelled: asyncio.CancelledError | None = None
    for level, transition in told:
        try:
            await tell(listeners, level, transition, run)
        except asyncio.CancelledError as cancellation:
            cancelled = cancellation
    if cancelled is not None:
        try:
            raise cancelled
        finally:
            cancelled = None


def _listener_failed(
    listener: object, transition: Transition, in_flight: BaseException | None
) -> None:
    """Log the exception ``listener`` raised on ``transition`` (being handled), without
    ``in_flight``, what sagakit was handling when it called the listener (see
    :func:`_unchain`)."""
    if in_flight is not None:
        _unchain(sys.exception(), in_flight)
    logger.exception(
        "sagakit listener %s raised on %s; the saga goes on",
        _name_of(listener),
        transition.kind,
        extra=_extra(transition),
    )


def _unchain(error: BaseException | None, in_flight: BaseException) -> None:
    """Stop the traceback of ``error`` (a listener's) at ``in_flight``: a link the
    listener raised while sagakit handled ``in_flight`` (the step's error of a saga being
    compensated...) gets ``__suppress_context__``, as ``raise ... from None`` would, so it
    is not shown as raised "during handling of" an error that was never the listener's.

    Only links whose implicit ``__context__`` is ``in_flight`` change, and only that flag
    (``__context__`` itself is kept); ``in_flight`` and its own chain, and a cause the
    listener gave (``raise ... from error``), are left as they are."""
    seen: set[int] = set()
    while error is not None and error is not in_flight and id(error) not in seen:
        seen.add(id(error))
        if error.__cause__ is not None:
            error = error.__cause__
        elif error.__suppress_context__:
            return
        elif error.__context__ is in_flight:
            error.__suppress_context__ = True
            return
        else:
            error = error.__context__


def _name_of(listener: object) -> str:
    """How a log record names a listener: its qualified name, else its class (never its
    ``repr()``, which may raise)."""
    name = getattr(listener, "__qualname__", None)
    return name if isinstance(name, str) else f"<{type(listener).__qualname__} object>"


def _log(level: int, transition: Transition) -> None:
    step = ""
    if transition.step_name is not None:
        step = f" step {transition.step_index} {transition.step_name!r}"
        if transition.attempt > 1:
            step += f" attempt {transition.attempt}"
    if transition.kind is ON_SAGA_FINISHED:
        step = f" {transition.status}"  # how it ended, in the line as in the fields
    error = f": {describe_error(transition.error)}" if transition.error is not None else ""
    logger.log(
        level,
        "saga %s (%s) %s%s%s",
        transition.saga_name,
        transition.saga_id,
        transition.kind,
        step,
        error,
        extra=_extra(transition),
    )


_UNWRITTEN_VERBS = {
    ON_SAGA_STARTED: "started",
    ON_STEP_STARTED: "started",
    ON_STEP_COMPLETED: "completed",
    ON_STEP_RETRYING: "is retried",
    ON_STEP_FAILED: "failed",
    ON_STEP_TIMED_OUT: "timed out",
    ON_COMPENSATION_STARTED: "started",
    ON_COMPENSATION_COMPLETED: "completed",
    ON_COMPENSATION_RETRYING: "is retried",
    ON_COMPENSATION_FAILED: "failed",
}


def unwritten_what(transition: Transition) -> str:
    """What ``transition`` (which the log could not record) told, for a message:
    ``"that step 1 ('ship') failed (ValueError: boom)"``."""
    kind = transition.kind
    if kind is ON_SAGA_FINISHED:
        return f"that the saga finished {transition.status}"
    verb = _UNWRITTEN_VERBS.get(kind, str(kind))
    if transition.step_index is None:
        return f"that the saga {verb}"
    undo = kind.startswith("compensation")
    text = f"that {record_name(undo, transition.step_index, transition.step_name)} {verb}"
    if transition.error is not None:  # a failure, or the attempt's that is retried
        text += f" ({describe_error(transition.error)})"
    return text


def log_unwritten(run: SagaRun, level: int, transition: Transition, stored: str, then: str) -> None:
    """Log that the log could not record ``transition`` (``stored``: the store's error)
    and ``then``, what the run does about it, with the run's and the step's fields."""
    logger.log(
        level,
        "sagakit: saga %s (%s) could not record %s: %s; %s",
        run.name,
        run.id,
        unwritten_what(transition),
        stored,
        then,
        extra={
            "saga_id": run.id,
            "saga_name": run.name,
            "saga_status": str(run.status),
            "step_name": transition.step_name,
            "step_index": transition.step_index,
            "attempt": transition.attempt,
        },
    )


def _extra(transition: Transition) -> dict[str, Any]:
    """The structured fields every sagakit log record carries."""
    return {
        "saga_id": transition.saga_id,
        "saga_name": transition.saga_name,
        "saga_status": str(transition.status),
        "step_name": transition.step_name,
        "step_index": transition.step_index,
        "attempt": transition.attempt,
        "transition": str(transition.kind),
    }


__all__ = [
    "Listener",
    "level_of",
    "log_unwritten",
    "logger",
    "one_line",
    "tell",
    "tell_each",
    "unwritten_what",
]
