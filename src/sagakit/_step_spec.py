"""A step's options and call shape, as the orchestrator reads them."""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

from ._retry import Retry


class StepSpec:
    """A step's options and call shape, in plain slots.

    The orchestrator reads these once or more per step; reading them off the
    :class:`Step` proxy itself costs several times as much.
    """

    __slots__ = (
        "arity",
        "call_shapes",
        "class_methods",
        "compensate_on_failure",
        "compensate_on_timeout",
        "compensation",
        "compensation_retry",
        "compensation_tails",
        "compensation_takes_result",
        "compensation_timeout",
        "defaults",
        "fn",
        "has_defaults",
        "is_method",
        "name",
        "plain_compensation",
        "retry",
        "signature",
        "timeout",
    )

    name: str
    fn: Callable[..., Coroutine[Any, Any, Any]]
    timeout: float
    retry: Retry
    compensation: Callable[..., Coroutine[Any, Any, Any]] | None
    compensation_takes_result: bool
    compensation_retry: Retry | None
    compensation_timeout: float  # the step's timeout unless given
    # By a call's positional argument count: the step's trailing defaults to add for
    # ``compensation(*args, *tail)``, or None (or past its end) where the compensation is
    # called through StepCall.compensation_call(); empty unless ``plain_compensation``.
    compensation_tails: tuple[tuple[Any, ...] | None, ...]
    compensate_on_timeout: bool
    compensate_on_failure: bool
    signature: inspect.Signature
    is_method: bool
    plain_compensation: bool  # callable as compensation(*args) once args are complete
    has_defaults: bool
    arity: int  # positional parameters, when they are all the parameters; else -1
    defaults: tuple[Any, ...]  # the defaults of the trailing positional parameters
    call_shapes: set[tuple[Any, ...]]  # (positional count, *keyword names) known to bind
    class_methods: weakref.WeakKeyDictionary[type, bool]  # classes: is it a classmethod there


__all__ = ["StepSpec"]
