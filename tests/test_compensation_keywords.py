"""A step taking **kwargs passes any other keyword on to its compensation.

A compensation that is also given a parameter of that name positionally (the result, or a
step argument it names differently) was accepted when declared (mypy refused it), then
failed with "got multiple values" when the step had been called with that keyword, leaving
the step uncompensated: now refused when declared, with the positional-only fix.
"""

from __future__ import annotations

from typing import Any

import pytest

from sagakit import (
    CompensationFailed,
    SagaDefinitionError,
    SagaOrchestrator,
    StepFailed,
    saga,
    step,
)


@step
async def ck_tag(item: str, **labels: str) -> int:
    return 7


undone: list[tuple[int | None, str, dict[str, str]]] = []


@ck_tag.compensate
async def ck_untag(tag_id: int | None, /, item: str, **labels: str) -> None:
    undone.append((tag_id, item, labels))


@step
async def ck_fail() -> None:
    raise ValueError("boom")


@saga
def ck_order(item: str, labels: dict[str, str]):  # type: ignore[no-untyped-def]
    yield ck_tag(item, **labels)
    yield ck_fail()


@pytest.mark.asyncio
async def test_a_positional_only_result_takes_a_keyword_of_its_name() -> None:
    undone.clear()
    with pytest.raises(StepFailed):
        await SagaOrchestrator().execute(ck_order("book", {"tag_id": "x", "item_no": "1"}))
    assert undone == [(7, "book", {"tag_id": "x", "item_no": "1"})]


def test_a_result_that_a_keyword_would_give_twice_is_refused() -> None:
    @step
    async def ck_label(item: str, **labels: str) -> int:
        return 7

    with pytest.raises(SagaDefinitionError) as info:

        @ck_label.compensate  # type: ignore[arg-type]  # mypy refuses it too
        async def ck_unlabel(tag_id: int | None, item: str, **labels: str) -> None:
            return None

    message = str(info.value)
    assert "compensation " in message
    assert "ck_unlabel(tag_id: int | None, item: str, **labels: str)" in message
    assert "of step 'ck_label' would get 'tag_id' twice" in message
    assert "called with tag_id=... (its **labels takes any keyword)" in message
    assert "make it positional-only: " in message
    assert message.endswith("ck_unlabel(tag_id: int | None, /, item: str, **labels: str)")
    assert ck_label.compensation is None  # nothing registered: a fixed one can be
    assert not ck_label.compensation_takes_result

    @ck_label.compensate
    async def ck_unlabel_fixed(tag_id: int | None, /, item: str, **labels: str) -> None:
        return None

    assert ck_label.compensation is ck_unlabel_fixed
    assert ck_label.compensation_takes_result


@pytest.mark.asyncio
async def test_what_the_refused_compensation_did_when_run() -> None:
    # The same compensation declared without the check: it fails on the very path it
    # exists for. (Registered by hand, as the declaration refuses it now.)
    @step
    async def ck_mark(item: str, **labels: str) -> int:
        return 7

    async def ck_unmark(tag_id: int | None, item: str, **labels: str) -> None:
        return None

    spec = ck_mark._self_spec
    spec.compensation, spec.compensation_takes_result = ck_unmark, True

    @saga
    def ck_marking():  # type: ignore[no-untyped-def]
        yield ck_mark("book", tag_id="x")
        yield ck_fail()

    with pytest.raises(CompensationFailed, match="multiple values for argument 'tag_id'"):
        await SagaOrchestrator().execute(ck_marking())


class CkShelf:
    @step
    async def put(self, item: str, **labels: str) -> int:
        return 1

    @put.compensate
    async def take(self, slot: int | None, /, item: str, **labels: str) -> None:
        return None


@pytest.mark.parametrize(
    ("step_source", "compensation_source", "twice", "fixed"),
    [
        # The arguments form, naming a step argument differently.
        (
            "async def f(item, **labels): ...",
            "async def g(thing, **labels): ...",
            "'thing'",
            "g(thing, /, **labels)",
        ),
        # A positional-only step argument: a keyword of its name goes on in **labels.
        (
            "async def f(item, /, **labels): ...",
            "async def g(item, **labels): ...",
            "'item'",
            "g(item, /, **labels)",
        ),
        (
            "async def f(item, /, **labels): ...",
            "async def g(result, /, item, **labels): ...",
            "'item'",
            "g(result, item, /, **labels)",
        ),
        (
            "async def f(**labels): ...",
            "async def g(result, **labels): ...",
            "'result'",
            "g(result, /, **labels)",
        ),
        # With the step's *args, any positional parameter may be given a value positionally.
        (
            "async def f(item, *rest, **labels): ...",
            "async def g(item, note=None, *rest, **labels): ...",
            "'note'",
            "g(item, note=None, /, *rest, **labels)",
        ),
        (
            "async def f(item, **labels): ...",
            "async def g(result, thing, **labels): ...",
            "'result', 'thing'",
            "g(result, thing, /, **labels)",
        ),
        # A step taking only (*args, **kwargs) (which mypy reads as "...": it accepts any
        # compensation), and a compensation adding a defaulted positional parameter.
        (
            "async def f(*args, **kwargs): ...",
            "async def g(note=None, *args, **kwargs): ...",
            "'note'",
            "g(note=None, /, *args, **kwargs)",
        ),
    ],
)
def test_every_parameter_a_keyword_would_give_twice_is_named(
    step_source: str, compensation_source: str, twice: str, fixed: str
) -> None:
    namespace: dict[str, Any] = {}
    exec(f"{step_source}\n{compensation_source}", namespace)
    declared = step(namespace["f"])
    with pytest.raises(SagaDefinitionError) as info:
        declared.compensate(namespace["g"])
    message = str(info.value)
    assert f"would get {twice} twice" in message, message
    assert message.endswith(f"positional-only: {fixed}"), message


@pytest.mark.parametrize(
    ("step_source", "compensation_source", "takes_result"),
    [
        # Parameters named like the step's: a keyword of that name is the step's argument.
        ("async def f(item, **labels): ...", "async def g(item, **labels): ...", False),
        ("async def f(item, **labels): ...", "async def g(r, /, item, **labels): ...", True),
        ("async def f(item, **labels): ...", "async def g(item, note='', **labels): ...", False),
        ("async def f(*, n=1, **labels): ...", "async def g(r, /, *, n=1, **labels): ...", True),
        ("async def f(item, *rest, **labels): ...", "async def g(*args, **labels): ...", False),
        ("async def f(*args, **kw): ...", "async def g(note=None, /, *args, **kw): ...", False),
        ("async def f(*args, **kw): ...", "async def g(*args, note=None, **kw): ...", False),
        # Without **kwargs, every keyword names one of the step's parameters.
        ("async def f(item): ...", "async def g(result, item): ...", True),
    ],
)
def test_compensations_no_keyword_can_hit_twice_are_accepted(
    step_source: str, compensation_source: str, takes_result: bool
) -> None:
    namespace: dict[str, Any] = {}
    exec(f"{step_source}\n{compensation_source}", namespace)
    declared = step(namespace["f"])
    declared.compensate(namespace["g"])
    assert declared.compensation_takes_result is takes_result


def test_a_method_step_result_after_self() -> None:
    assert CkShelf.put.compensation_takes_result
    with pytest.raises(SagaDefinitionError, match="would get 'slot' twice"):

        class CkRack:
            @step
            async def put(self, item: str, **labels: str) -> int:
                return 1

            @put.compensate  # type: ignore[arg-type]  # mypy refuses it too
            async def take(self, slot: int | None, item: str, **labels: str) -> None:
                return None


@pytest.mark.asyncio
async def test_a_defaulted_positional_only_parameter_of_an_args_kwargs_step() -> None:
    # The fix the refusal names: a keyword of that name goes on in **kwargs.
    @step
    async def ck_call(*args: Any, **kwargs: Any) -> int:
        return 1

    got: list[tuple[Any, ...]] = []

    @ck_call.compensate
    async def ck_uncall(note: Any = None, /, *args: Any, **kwargs: Any) -> None:
        got.append((note, args, kwargs))

    @saga
    def ck_calls():  # type: ignore[no-untyped-def]
        yield ck_call(note="n")
        yield ck_call(1, 2, note="m")
        yield ck_fail()

    with pytest.raises(StepFailed):
        await SagaOrchestrator().execute(ck_calls())
    assert got == [(1, (2,), {"note": "m"}), (None, (), {"note": "n"})]
