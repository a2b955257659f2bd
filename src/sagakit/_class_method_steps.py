"""A step under ``@classmethod``, which Python 3.13+ calls with the class first."""

from __future__ import annotations

import sys
from types import MethodType
from typing import TYPE_CHECKING, Any

from ._step_calls import StepCall

if TYPE_CHECKING:
    from ._steps import Step

CLASSMETHOD_CALLS_PLAINLY = sys.version_info >= (3, 13)
"""Whether ``classmethod`` calls the step with the class first instead of binding it."""


def _class_method_of(step: Step[Any, Any], owner: object) -> bool:
    """Whether ``step`` is a class method of ``owner``: ``classmethod(step)`` in its MRO.

    From Python 3.13 ``classmethod`` no longer binds through the step's ``__get__``: it
    calls the step with the class as its first argument, as a plain call with a class as
    its first argument would. Told apart here by the class itself, once per class.
    """
    if not isinstance(owner, type):
        return False
    known = step._self_spec.class_methods
    found = known.get(owner)
    if found is None:
        found = any(
            isinstance(value, classmethod) and value.__func__ is step
            for klass in owner.__mro__
            for value in vars(klass).values()
        )
        known[owner] = found
    return found


def _bound_to_class(
    step: Step[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> StepCall[Any]:
    """The call ``classmethod`` makes on Python 3.11 and 3.12: bound to the class (``args[0]``)."""
    owner = args[0]
    return StepCall(step, MethodType(step._self_spec.fn, owner), owner, args[1:], kwargs)


__all__ = ["CLASSMETHOD_CALLS_PLAINLY"]
