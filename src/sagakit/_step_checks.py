"""Declaration checks of ``@step`` and ``.compensate``, and how their errors show parameters."""

from __future__ import annotations

import inspect
import sys
from typing import Any

from ._checks import not_the_class
from ._retry import Retry
from ._step_spec import StepSpec
from ._tracebacks import hide_from_pytest
from .exceptions import SagaDefinitionError

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _declared_again(earlier: object, fn: object) -> bool:
    """Whether ``fn`` is ``earlier``'s declaration run again — the same module and
    qualified name: a notebook cell re-run, a module reloaded (``importlib.reload``,
    IPython's ``%autoreload``) that compensates a step of another module. It replaces
    ``earlier``, as running a ``def`` again replaces a function."""
    qualname = getattr(fn, "__qualname__", None)
    return (
        isinstance(qualname, str)
        and qualname == getattr(earlier, "__qualname__", None)
        and getattr(fn, "__module__", None) == getattr(earlier, "__module__", None)
    )


def _how_to_declare(fn: object) -> str:
    """The fix for ``fn``, not a coroutine function: an object whose ``__call__`` is
    async is wrapped in one (the decorators need a function to keep and introspect)."""
    from ._sagas import SagaFunction  # which imports this module

    if isinstance(fn, SagaFunction):
        return (
            "it is a @saga function: run it as a nested saga from a step: an @step that "
            f"awaits orchestrator.execute({fn.__name__}(...))"
        )
    if (
        callable(fn)
        and not inspect.isroutine(fn)
        and inspect.iscoroutinefunction(type(fn).__call__)
    ):
        return (
            "it is an object with an async __call__: declare a function that awaits it, "
            "'async def name(...): return await obj(...)'"
        )
    try:
        unwrapped = inspect.unwrap(fn) if callable(fn) else fn
    except ValueError:  # a __wrapped__ cycle
        unwrapped = fn
    if unwrapped is not fn and inspect.iscoroutinefunction(unwrapped):
        mark = " (or mark it with inspect.markcoroutinefunction())" if _CAN_MARK else ""
        return (
            "it is an 'async def' wrapped by a decorator whose wrapper is a plain 'def'; "
            f"make that wrapper an 'async def' that awaits the function{mark}"
        )
    return "declare it with 'async def'"


_CAN_MARK = sys.version_info >= (3, 12)
"""Whether ``inspect.markcoroutinefunction`` exists."""

_MAX_CALL_SHAPES = 64  # a step taking **kwargs may be called with ever new keywords


def check_arguments(spec: StepSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Raise a clear definition error when the step's function cannot take these arguments.

    Whether arguments bind depends only on how many are positional and which keywords are
    given, so each such shape is bound once and remembered.
    """
    shape = (len(args), *kwargs)
    if shape in spec.call_shapes:
        return
    try:
        spec.signature.bind(*args, **kwargs)
    except TypeError as error:
        raise SagaDefinitionError(
            f"step {spec.name!r} cannot be called with these arguments: {error}; "
            f"its parameters are {_shown(spec.signature)}"
        ) from None
    if len(spec.call_shapes) < _MAX_CALL_SHAPES:
        spec.call_shapes.add(shape)


def _as_retry(value: Retry | int | None, what: str) -> Retry | None:
    if value is None or isinstance(value, Retry):
        return value
    if isinstance(value, type) and issubclass(value, Retry):
        raise not_the_class(value, what)
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:  # Retry's own message would name Retry(attempts=...), not this option
            raise SagaDefinitionError(
                f"{what} must be at least 1 attempt (1 means no retry), got {value!r}"
            )
        return Retry(attempts=value)
    raise SagaDefinitionError(
        f"{what} must be a sagakit.Retry or a number of attempts, got {value!r}"
    )


def _in_class_body(fn: object) -> bool:
    """Whether ``fn`` was defined in a class body, by its qualified name (``Bank.withdraw``)."""
    parts = str(getattr(fn, "__qualname__", "")).split(".")
    return len(parts) > 1 and parts[-2] != "<locals>"


class _Written:
    """An annotation shown as written: a string one (``from __future__ import annotations``)
    would otherwise be shown quoted, ``(account: 'str')``."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _shown(signature: inspect.Signature) -> str:
    """How errors show parameters: as written, without the return annotation."""
    parameters = [
        p.replace(annotation=_Written(p.annotation)) if isinstance(p.annotation, str) else p
        for p in signature.parameters.values()
    ]
    return str(signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty))


__all__ = ["check_arguments"]
