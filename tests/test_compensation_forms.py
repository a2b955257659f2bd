"""A compensation whose form (the step's arguments, or its result first) its parameters
leave open, or whose parameter names contradict the form it is read as, is refused when
declared, saying how to tell the form: before, it was read as the arguments form and
called with the wrong values."""

from __future__ import annotations

from typing import Any

import pytest

from sagakit import SagaDefinitionError, step


def _declare(step_source: str, compensation_source: str) -> tuple[Any, Any]:
    namespace: dict[str, Any] = {}
    exec(f"{step_source}\n{compensation_source}", namespace)
    return step(namespace["f"]), namespace["g"]


def _refused(step_source: str, compensation_source: str) -> str:
    """The message declaring ``g`` as ``f``'s compensation is refused with; nothing is
    registered (a fixed one can be)."""
    declared, fn = _declare(step_source, compensation_source)
    with pytest.raises(SagaDefinitionError) as info:
        declared.compensate(fn)
    assert declared.compensation is None
    return str(info.value)


@pytest.mark.parametrize(
    ("step_source", "compensation_source", "readings"),
    [
        # Regression: read as the arguments form (x=a, y=b), however meant.
        (
            "async def f(a, b): ...",
            "async def g(x, y, z=None): ...",
            "as the step's arguments, g(x=a, y=b); as its result first, g(x=result, y=a, z=b)",
        ),
        (
            "async def f(who): ...",
            "async def g(x, *rest): ...",
            "as the step's arguments, g(x=who); as its result first, g(x=result, rest=(who))",
        ),
    ],
)
def test_a_compensation_fitting_both_forms_alike_is_refused(
    step_source: str, compensation_source: str, readings: str
) -> None:
    message = _refused(step_source, compensation_source)
    assert "of step 'f' " in message
    assert "fits both forms" in message
    assert readings in message, message
    assert "name its parameters as the step's" in message


def test_the_refusal_names_the_fixes_of_a_method_step() -> None:
    with pytest.raises(SagaDefinitionError) as info:

        class CfShelf:
            @step
            async def put(self, item: str) -> int:
                return 1

            @put.compensate
            async def take(self, x: str, y: str | None = None) -> None: ...

    message = str(info.value)
    assert "take(self=self, x=item)" in message
    assert "take(self=self, x=result, y=item)" in message
    assert "(self, item) for its arguments" in message
    assert "(self, result, item) for its result first" in message


@pytest.mark.parametrize(
    ("step_source", "compensation_source", "wrong"),
    [
        # Regression: the brief's case: 'a' was given the step's b, 'r' its a.
        ("async def f(a, b=1): ...", "async def g(r, a): ...", "the step's b as its 'a'"),
        ("async def f(a, b): ...", "async def g(b, a): ...", "the step's a as its 'b'"),
        ("async def f(a, b): ...", "async def g(b, a, c=None): ...", "the result as its 'b'"),
    ],
)
def test_a_compensation_whose_names_contradict_its_form_is_refused(
    step_source: str, compensation_source: str, wrong: str
) -> None:
    message = _refused(step_source, compensation_source)
    assert f"would get {wrong}" in message, message
    assert "name its parameters as the step's" in message


@pytest.mark.parametrize(
    ("step_source", "compensation_source", "takes_result"),
    [
        # The ways out the refusals name: the step's names, or extras keyword-only.
        ("async def f(a, b): ...", "async def g(a, b, z=None): ...", False),
        ("async def f(a, b): ...", "async def g(result, a, b): ...", True),
        ("async def f(a, b): ...", "async def g(x, y, *, z=None): ...", False),
        ("async def f(a, b=1): ...", "async def g(r, a, b=1): ...", True),
        # Renamed all through, in one form only: the names cannot mislead.
        ("async def f(a, b): ...", "async def g(x, y): ...", False),
        ("async def f(a, b): ...", "async def g(r, x, y): ...", True),
        # Everything passed on in *args: no parameter the result could land on.
        ("async def f(who): ...", "async def g(*args): ...", False),
        # A step taking *args has no names to line up: a tie is the arguments form.
        ("async def f(*args, **kw): ...", "async def g(note=None, /, *args, **kw): ...", False),
    ],
)
def test_compensations_whose_form_is_clear_are_accepted(
    step_source: str, compensation_source: str, takes_result: bool
) -> None:
    declared, fn = _declare(step_source, compensation_source)
    declared.compensate(fn)
    assert declared.compensation_takes_result is takes_result
