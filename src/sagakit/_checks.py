"""Checks of option values, each raising a :class:`SagaDefinitionError` that names the
option, the value and what it must be."""

from __future__ import annotations

import asyncio
import difflib
import math
from collections.abc import Collection, Iterable
from typing import TypeGuard

from ._names import qualname_of
from ._tracebacks import hide_from_pytest
from .exceptions import SagaDefinitionError

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest

MAX_COUNT = 2**63 - 1
"""The largest count sagakit passes to a database (a 64-bit integer): attempts, a limit."""


def no_asyncio_loop(what: str) -> RuntimeError:
    """The error for ``what`` awaited with no asyncio loop running: by trio (IPython's
    ``%autoawait trio``, say), where asyncio says only "no running event loop"."""
    return RuntimeError(
        f"{what} was awaited with no asyncio event loop running: sagakit runs on "
        "asyncio (under trio or another event loop, run it in asyncio; in IPython or "
        "Jupyter, %autoawait asyncio)"
    )


def asyncio_loop(what: str) -> asyncio.AbstractEventLoop:
    """The running asyncio loop, or :func:`no_asyncio_loop`'s error for ``what``."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise no_asyncio_loop(what) from None


def is_number(value: object) -> TypeGuard[int | float]:
    """An int or float, not a bool (``True`` is an int to Python, never meant as 1)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def as_float(value: int | float) -> float:
    """``value`` as a float; an int too large for one (``10**400``) is infinity, which
    the checks refuse as not finite (``float()`` raised a bare ``OverflowError``)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def check_seconds(
    value: object,
    what: str,
    *,
    allow_zero: bool = False,
    error: type[SagaDefinitionError] = SagaDefinitionError,
    unlimited: str = "",
) -> float:
    """Return ``value`` as a finite positive float, or raise a clear definition error
    (``error``: a store's settings raise ``StoreConfigError``). ``unlimited``: what to
    give instead of ``None`` or infinity (meant as "no limit"), said when either is."""
    if not is_number(value):
        fix = f" ({unlimited})" if unlimited and value is None else ""
        raise error(f"{what} must be a number of seconds, got {value!r}{fix}")
    seconds = as_float(value)
    if math.isnan(seconds) or math.isinf(seconds):
        fix = f" ({unlimited})" if unlimited and seconds > 0 else ""
        raise error(f"{what} must be a finite number of seconds, got {value!r}{fix}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "greater than zero"
        raise error(f"{what} must be {bound} seconds, got {value!r}")
    return seconds


def check_count(value: object, what: str) -> int:
    """Return ``value`` as a whole number from 1 to :data:`MAX_COUNT`, or raise a clear
    definition error (a larger one fails every statement it goes into)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SagaDefinitionError(f"{what} must be a whole number >= 1, got {value!r}")
    if value > MAX_COUNT:
        raise SagaDefinitionError(f"{what} must be at most {MAX_COUNT}, got {value!r}")
    return value


def check_flag(
    value: object, what: str, *, error: type[SagaDefinitionError] = SagaDefinitionError
) -> bool:
    """Return ``value`` if it is ``True`` or ``False`` (``bool("no")`` is ``True``: a
    string read from a configuration file would turn the option on), else raise."""
    if not isinstance(value, bool):
        raise error(f"{what} must be True or False, got {value!r}")
    return value


def not_the_class(
    cls: type, what: str, *, error: type[SagaDefinitionError] = SagaDefinitionError
) -> SagaDefinitionError:
    """The error for the class ``cls`` given as ``what`` where an instance of it is wanted
    (``SagaOrchestrator(MemoryStore)``), in the one wording every such check uses: a
    class has its instances' methods, unbound, so it passed looser checks and failed
    later, naming neither the option nor the fix."""
    name = cls.__name__
    return error(f"{what} must be an instance, not the class {name}; pass an instance: {name}(...)")


# Options written from memory of another library (or of sagakit's own names), with the
# one meant where spelling alone would not find it (difflib finds "timout" -> "timeout"),
# or None where spelling would find a wrong one (compensation=undo is no
# compensation_retry: a compensation is declared with @<step>.compensate).
_MEANT: dict[str, str | None] = {
    "retries": "retry",
    "max_retries": "retry",
    "attempts": "retry",
    "max_attempts": "retry",
    "retry_policy": "retry",
    "backoff": "retry",
    "deadline": "timeout",
    "on_timeout": "compensate_on_timeout",
    "compensation": None,
    "compensate": None,
    "compensation_attempts": "compensation_retry",
    "timeout_seconds": "timeout",
    "timeout_s": "timeout",
    "seconds": "timeout",
    "compensation_retries": "compensation_retry",
    "compensate_retry": "compensation_retry",
    "compensate_timeout": "compensation_timeout",
    "compensation_timeout_seconds": "compensation_timeout",
    "compensate_on_error": "compensate_on_failure",
    "compensate_on_exception": "compensate_on_failure",
    "recovery_policy": "recovery",
}


def meant_option(given: str, known: Collection[str]) -> str | None:
    """The option of ``known`` that ``given`` (not one of them) was most likely meant as."""
    if given in _MEANT:
        meant = _MEANT[given]
        if meant is None or meant in known:
            return meant
    close = difflib.get_close_matches(given, known, n=1)
    return close[0] if close else None


def check_options(decorator: str, given: Iterable[str], known: Collection[str]) -> None:
    """Refuse the options of ``given`` that ``@decorator`` does not take, naming the one
    each was likely meant as and every option it takes."""
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return
    named = []
    for option in unknown:
        meant = meant_option(option, known)
        named.append(option if meant is None else f"{option} (did you mean {meant}?)")
    raise SagaDefinitionError(
        f"{decorator} got unknown option(s) {', '.join(named)}; the options are {', '.join(known)}"
    )


def check_not_method_object(fn: object, decorator: str) -> None:
    """Refuse a ``staticmethod`` or ``classmethod`` given to ``@decorator``: it goes below them."""
    if isinstance(fn, staticmethod | classmethod):
        kind = type(fn).__name__
        raise SagaDefinitionError(
            f"@{decorator} needs the function itself, but got the {kind} "
            f"{qualname_of(fn.__func__)}; put @{decorator} below @{kind}"
        )


__all__ = [
    "MAX_COUNT",
    "as_float",
    "check_count",
    "check_flag",
    "check_not_method_object",
    "check_options",
    "check_seconds",
    "is_number",
    "meant_option",
    "not_the_class",
]
