"""Retry policies: how many attempts a step gets and how long to wait between them."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from ._checks import as_float, check_seconds, is_number
from ._tracebacks import hide_from_pytest
from .exceptions import (
    CompensationFailed,
    SagaDefinitionError,
    SagaRunError,
    StepFailed,
    StepTimeout,
)

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest


_FAILED_FOR_GOOD = (StepFailed, SagaRunError, CompensationFailed)
"""What ``execute()`` raises once a step or compensation failed for good (its last attempt's
error wrapped): never what an attempt raises, which ``Retry(on=...)`` is matched against."""


@dataclass(frozen=True, slots=True)
class Retry:
    """A retry policy: up to ``attempts`` tries with exponential backoff and jitter.

    The delay before attempt ``n + 1`` is ``backoff * multiplier ** (n - 1)``, capped
    at ``max_backoff``, then spread by up to ``jitter`` (a fraction) either way.
    Only exceptions that are instances of ``on`` are retried, matched against what each
    attempt raised (the step's own exception; a timeout as a ``StepTimeout``, a
    ``TimeoutError``): never ``StepFailed``, ``SagaRunError`` or ``CompensationFailed``,
    which wrap the last attempt's error once it failed for good (refused in ``on``).
    Every attempt gets a fresh timeout.

    >>> Retry(attempts=3, backoff=0.5, on=(ConnectionError, TimeoutError))
    Retry(attempts=3, backoff=0.5, multiplier=2.0, max_backoff=30.0, jitter=0.1, on=(...))
    """

    attempts: int = 3
    backoff: float = 0.1
    multiplier: float = 2.0
    max_backoff: float = 30.0
    jitter: float = 0.1
    # One class is taken too, and made a tuple of one (the type says what you may pass).
    on: type[BaseException] | tuple[type[BaseException], ...] = field(default=(Exception,))

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise SagaDefinitionError(f"Retry(attempts=...) must be an int, got {self.attempts!r}")
        if self.attempts < 1:
            raise SagaDefinitionError(
                f"Retry(attempts=...) must be at least 1 (1 means no retry), got {self.attempts}"
            )
        check_seconds(self.backoff, "Retry(backoff=...)", allow_zero=True)
        check_seconds(self.max_backoff, "Retry(max_backoff=...)", allow_zero=True)
        if not (
            is_number(self.multiplier)
            and self.multiplier >= 1
            and math.isfinite(as_float(self.multiplier))
        ):
            raise SagaDefinitionError(
                f"Retry(multiplier=...) must be a finite number >= 1, got {self.multiplier!r}"
            )
        if not (is_number(self.jitter) and 0 <= self.jitter <= 1):
            raise SagaDefinitionError(
                f"Retry(jitter=...) must be a fraction between 0 and 1, got {self.jitter!r}"
            )
        on = self.on
        if isinstance(on, type):
            on = (on,)
            object.__setattr__(self, "on", on)
        if (
            not isinstance(on, tuple)  # isinstance() takes no list: it failed mid-saga
            or not on
            or not all(isinstance(t, type) and issubclass(t, BaseException) for t in on)
        ):
            raise SagaDefinitionError(
                f"Retry(on=...) must be an exception class or a tuple of them, got {self.on!r}"
            )
        for kind in on:
            # A KeyboardInterrupt, SystemExit or cancellation stops the saga: never retried.
            if not issubclass(kind, Exception) and not issubclass(ExceptionGroup, kind):
                raise SagaDefinitionError(
                    f"Retry(on=...) lists {kind.__name__}, which is not an Exception and is "
                    "never retried (it stops the saga); list Exception subclasses only"
                )
            if kind in _FAILED_FOR_GOOD:
                retried = (
                    "timeouts only" if issubclass(StepTimeout, kind) else "none of its failures"
                )
                raise SagaDefinitionError(
                    f"Retry(on=...) lists {kind.__name__}, which execute() raises once a step "
                    "or compensation has failed for good, wrapping its last attempt's error; "
                    "on= is matched against what each attempt raised (a timeout as a "
                    f"StepTimeout), so it would retry {retried}. Use on=Exception (the "
                    "default) to retry every failure, on=TimeoutError for timeouts only, or "
                    "the exception classes the step raises (an inner saga's error, raised "
                    "by a step that executes it: catch it there and raise your own)"
                )

    def retries(self, error: BaseException) -> bool:
        """Whether ``error`` is one this policy retries (never a KeyboardInterrupt,
        SystemExit or cancellation, which stop the saga, even with ``on=BaseException``)."""
        return isinstance(error, Exception) and isinstance(error, self.on)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based): a whole
        number >= 1, else a :class:`SagaDefinitionError` (``0``, ``-1`` or ``1.5`` gave a
        delay shorter than the first one, and text a bare ``TypeError``)."""
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise SagaDefinitionError(
                "Retry.delay(attempt) takes the number of the attempt that failed, a whole "
                f"number >= 1 (1 for the first), got {attempt!r}"
            )
        if not self.backoff:
            return 0.0
        try:
            growth = float(self.multiplier) ** (attempt - 1)
        except OverflowError:  # past ~1e308 (attempt 1025 at 2.0): long past the cap
            growth = math.inf
        base = min(self.backoff * growth, self.max_backoff)
        if self.jitter and base:
            base *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(base, 0.0)


NO_RETRY = Retry(attempts=1)
DEFAULT_COMPENSATION_RETRY = Retry(attempts=3, backoff=0.1, max_backoff=5.0)

__all__ = ["DEFAULT_COMPENSATION_RETRY", "NO_RETRY", "Retry"]
