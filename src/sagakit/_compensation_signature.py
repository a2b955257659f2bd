"""Which form a compensation has (the step's arguments, or its result first), checked
against the step's signature when ``@<step>.compensate`` declares it."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._names import qualname_of
from ._step_checks import _POSITIONAL, _shown
from ._tracebacks import hide_from_pytest
from .exceptions import SagaDefinitionError

if TYPE_CHECKING:
    from ._steps import Step

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest

_BY_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_RESULT = object()


def _parameters_of(fn: Callable[..., Any]) -> str:
    """``fn``'s parameters as errors show a compensation."""
    return _shown(inspect.signature(fn))


def _takes_result(step: Step[Any, Any], fn: Callable[..., Any], is_method: bool) -> bool:
    """Decide which form ``fn`` has, or raise when it cannot take the step's arguments."""
    spec = step._self_spec
    params = list(spec.signature.parameters.values())
    kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
    for variadic, written in ((inspect.Parameter.VAR_POSITIONAL, "*args"),
                              (inspect.Parameter.VAR_KEYWORD, "**kwargs")):  # fmt: skip
        if any(p.kind is variadic for p in params) and variadic not in kinds:
            raise SagaDefinitionError(
                f"compensation {qualname_of(fn)}{_parameters_of(fn)} cannot take the "
                f"{written} of step {step.name!r} {_shown(spec.signature)}; give it {written} too"
            )
    positional = [p.name for p in params if p.kind in _POSITIONAL]
    keywords = {p.name: p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    if is_method and positional:
        with_result = [positional[0], _RESULT, *positional[1:]]
    else:
        with_result = [_RESULT, *positional]
    signature = inspect.signature(fn)
    args_form = _binds(signature, positional, keywords)
    result_form = _binds(signature, with_result, keywords)
    if args_form and result_form:
        # Both fit (defaults or *args): take the form whose parameter names line up.
        by_result = _same_names(signature, with_result)
        by_args = _same_names(signature, positional)
        if by_result == by_args and not _untold(params, signature, with_result):
            raise _neither_told(step, fn, positional, with_result, keywords)
        takes_result = by_result > by_args
    elif args_form or result_form:
        takes_result = result_form
    else:
        takes_result = None
    if takes_result is not None:
        _check_names_line_up(step, fn, positional, with_result, keywords, takes_result)
        return takes_result
    step_params = _shown(spec.signature)
    raise SagaDefinitionError(
        f"compensation {qualname_of(fn)}{_parameters_of(fn)} cannot take the arguments of step "
        f"{step.name!r} {step_params}; give it the step's parameters "
        f"{step_params} or the step's result first, then those parameters"
    )


def _check_no_keyword_twice(
    step: Step[Any, Any], fn: Callable[..., Any], takes_result: bool
) -> None:
    """Refuse a compensation a keyword passed on by the step's ``**kwargs`` would hit twice.

    A step taking ``**kwargs`` takes any keyword that names none of its own parameters, and
    its compensation gets those keywords too. One that names a parameter the compensation
    is given positionally (the result, or a step argument under another name) would fail
    with "got multiple values" on exactly the path it exists for, so it must be
    positional-only there, as mypy requires.
    """
    spec = step._self_spec
    params = spec.signature.parameters.values()
    catch_all = next((p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD), None)
    if catch_all is None:
        return
    named = {p.name for p in params if p.kind in _BY_KEYWORD}
    signature = inspect.signature(fn)
    positional = [p for p in signature.parameters.values() if p.kind in _POSITIONAL]
    if not any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        # Only so many are given positionally (with the step's *args, any of them may be).
        positional = positional[: sum(1 for p in params if p.kind in _POSITIONAL) + takes_result]
    twice = [
        p.name
        for p in positional
        if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.name not in named
    ]
    if not twice:
        return
    # The fix: every parameter up to the last of those made positional-only.
    parameters = list(signature.parameters.values())
    last = [p.name for p in parameters].index(twice[-1])
    fixed = _shown(
        signature.replace(
            parameters=[
                p.replace(kind=inspect.Parameter.POSITIONAL_ONLY) if i <= last else p
                for i, p in enumerate(parameters)
            ]
        )
    )
    what = qualname_of(fn)
    names = ", ".join(repr(name) for name in twice)
    raise SagaDefinitionError(
        f"compensation {what}{_shown(signature)} of step {step.name!r} would get {names} twice "
        f"when the step is called with {twice[0]}=... (its **{catch_all.name} takes any "
        f"keyword); make {'it' if len(twice) == 1 else 'them'} positional-only: {what}{fixed}"
    )


def _untold(
    params: list[inspect.Parameter], signature: inspect.Signature, with_result: list[Any]
) -> bool:
    """Whether a tie of the two forms is left to the arguments form: the step takes
    ``*args`` (no names to line up), or the result would land on no parameter the
    compensation names (it passes everything on in its own ``*args``)."""
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    named = [p for p in signature.parameters.values() if p.kind in _POSITIONAL]
    return len(named) <= with_result.index(_RESULT)


def _reading(fn: Callable[..., Any], args: list[Any], keywords: dict[str, str]) -> str:
    """How ``fn`` would be called in one form: ``undo(payment_id=result, order=order)``."""
    bound = inspect.signature(fn).bind(*args, **keywords)
    shown = []
    for name, value in bound.arguments.items():
        if isinstance(value, dict):  # its **kwargs: what the step's pass on
            continue
        if isinstance(value, tuple):  # its *args
            value = f"({', '.join(_as_named(v) for v in value)})"
        shown.append(f"{name}={_as_named(value)}")
    return f"{getattr(fn, '__name__', qualname_of(fn))}({', '.join(shown)})"


def _as_named(value: Any) -> str:
    return "result" if value is _RESULT else str(value)


def _fixes(step: Step[Any, Any], with_result: list[Any]) -> str:
    """The two ways to declare a compensation of ``step`` with its names lined up."""
    signature = step._self_spec.signature
    plain = [p.replace(annotation=p.empty) for p in signature.parameters.values()]
    at = with_result.index(_RESULT)
    positional_only = any(
        p.kind is inspect.Parameter.VAR_KEYWORD or p.kind is inspect.Parameter.POSITIONAL_ONLY
        for p in plain
    )
    kind = (
        inspect.Parameter.POSITIONAL_ONLY
        if positional_only
        else inspect.Parameter.POSITIONAL_OR_KEYWORD
    )
    before = [
        p.replace(kind=kind) if kind is inspect.Parameter.POSITIONAL_ONLY else p for p in plain[:at]
    ]
    result = inspect.Parameter("result", kind)
    shown_args = str(inspect.Signature(plain))
    shown_result = str(inspect.Signature([*before, result, *plain[at:]]))
    return f"{shown_args} for its arguments, {shown_result} for its result first"


def _neither_told(
    step: Step[Any, Any],
    fn: Callable[..., Any],
    positional: list[str],
    with_result: list[Any],
    keywords: dict[str, str],
) -> SagaDefinitionError:
    """The error of a compensation both forms fit and its parameter names tell neither."""
    return SagaDefinitionError(
        f"compensation {qualname_of(fn)}{_parameters_of(fn)} of step {step.name!r} "
        f"{_shown(step._self_spec.signature)} fits both forms and its parameter names tell "
        f"neither: as the step's arguments, {_reading(fn, positional, keywords)}; as its "
        f"result first, {_reading(fn, with_result, keywords)}; name its parameters as the "
        f"step's to say which — {_fixes(step, with_result)} — or make the parameters it "
        "adds keyword-only (after a *)"
    )


def _check_names_line_up(
    step: Step[Any, Any],
    fn: Callable[..., Any],
    positional: list[str],
    with_result: list[Any],
    keywords: dict[str, str],
    takes_result: bool,
) -> None:
    """Refuse a compensation a parameter of which is named as one of the step's but would
    get another value (another argument of the step, or its result): ``undo(r, a)`` of a
    step ``(a, b=1)`` fits only the arguments form, which gives its ``a`` the step's ``b``."""
    args = with_result if takes_result else positional
    names = set(positional)
    for parameter, value in zip(
        (p for p in inspect.signature(fn).parameters.values() if p.kind in _POSITIONAL),
        args,
        strict=False,
    ):
        if parameter.name not in names or value == parameter.name:
            continue
        got = "the result" if value is _RESULT else f"the step's {value}"
        form = "the step's result first" if takes_result else "the step's arguments"
        raise SagaDefinitionError(
            f"compensation {qualname_of(fn)}{_parameters_of(fn)} of step {step.name!r} "
            f"{_shown(step._self_spec.signature)} would get {got} as its {parameter.name!r} "
            f"(read as taking {form}: {_reading(fn, args, keywords)}); name its "
            f"parameters as the step's, in its order — {_fixes(step, with_result)}"
        )


def _same_names(signature: inspect.Signature, args: list[Any]) -> int:
    """How many of ``args`` (step parameter names) land on a parameter of that name."""
    names = [p.name for p in signature.parameters.values() if p.kind in _POSITIONAL]
    return sum(1 for name, arg in zip(names, args, strict=False) if name == arg)


def _binds(signature: inspect.Signature, args: list[Any], kwargs: dict[str, Any]) -> bool:
    try:
        signature.bind(*args, **kwargs)
    except TypeError:
        return False
    return True
