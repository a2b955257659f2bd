"""Telling the world about transitions: one log record each, then the listeners."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ._runs import describe_error
from .status import SagaStatus
from .transitions import Transition, TransitionKind

# Enum members as module globals: on Python 3.11 reading one off its class costs
# ~0.2 µs (a descriptor call), several times per step on the hot path.
_SAGA_COMPLETED = SagaStatus.COMPLETED
_SAGA_FAILED = SagaStatus.FAILED
_ON_COMPENSATION_FAILED = TransitionKind.COMPENSATION_FAILED
_ON_COMPENSATION_RETRYING = TransitionKind.COMPENSATION_RETRYING
_ON_SAGA_FINISHED = TransitionKind.SAGA_FINISHED
_ON_SAGA_STARTED = TransitionKind.SAGA_STARTED
_ON_STEP_FAILED = TransitionKind.STEP_FAILED
_ON_STEP_RETRYING = TransitionKind.STEP_RETRYING
_ON_STEP_TIMED_OUT = TransitionKind.STEP_TIMED_OUT

logger = logging.getLogger("sagakit")
logger.addHandler(logging.NullHandler())

Listener = Callable[[Transition], Awaitable[None] | None]
"""A callable told of every state change; it may be sync or async."""

_LEVELS = {
    _ON_SAGA_STARTED: logging.INFO,
    _ON_SAGA_FINISHED: logging.INFO,
    _ON_STEP_FAILED: logging.WARNING,
    _ON_STEP_TIMED_OUT: logging.WARNING,
    _ON_STEP_RETRYING: logging.INFO,
    _ON_COMPENSATION_RETRYING: logging.WARNING,
    _ON_COMPENSATION_FAILED: logging.ERROR,
}


def level_of(kind: TransitionKind, status: SagaStatus) -> int:
    """The log level of a transition: failures warn, a lost compensation is an error."""
    if kind is _ON_SAGA_FINISHED and status is not _SAGA_COMPLETED:
        return logging.ERROR if status is _SAGA_FAILED else logging.WARNING
    return _LEVELS.get(kind, logging.DEBUG)


async def tell(listeners: Sequence[Listener], level: int, transition: Transition) -> None:
    """Log ``transition`` (if ``level`` is enabled), then call every listener.

    A listener that raises is logged and never breaks the saga.
    """
    if logger.isEnabledFor(level):
        _log(level, transition)
    for listener in listeners:
        try:
            outcome = listener(transition)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            logger.exception(
                "sagakit listener %r raised on %s; the saga goes on",
                listener,
                transition.kind,
                extra=_extra(transition),
            )


def _log(level: int, transition: Transition) -> None:
    step = ""
    if transition.step_name is not None:
        step = f" step {transition.step_index} {transition.step_name!r}"
        if transition.attempt > 1:
            step += f" attempt {transition.attempt}"
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


__all__ = ["Listener", "level_of", "logger", "tell"]
