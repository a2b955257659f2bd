"""What mypy --strict says about common mistakes (read by mypy, never run).

Each mistake carries the error code mypy reports (warn_unused_ignores makes every ignore a
check), and a comment quotes the message as mypy 2.4 words it. When an overloaded
function matches no variant, mypy words the error against the first variant whose erased
signature fits, or else lists every variant: the overload order of ``@step`` and
``.compensate`` is chosen for those messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterable, Sequence
from typing import Any

from sagakit import Retry, SagaDefinition, StepCall, saga, step


@step
async def reserve(sku: str) -> int:
    return 1


async def not_a_step(sku: str) -> int:
    return 1


# A wrongly typed option: no variant matches, so mypy lists both forms of @step
# ("No overload variant of "step" matches argument type "str"", then the signatures, which
# show "timeout: float"); the decorated function becomes Any, hence untyped-decorator.
# No overload order helps: a str never fits a float, even erased.
@step(timeout="10")  # type: ignore[call-overload, untyped-decorator]
async def slow(sku: str) -> int:
    return 1


@step(retry="3")  # type: ignore[call-overload, untyped-decorator]
async def flaky(sku: str) -> int:
    return 1


# A misspelt option is named, with the fix: 'Unexpected keyword argument "timout" for
# overloaded function "step"; did you mean "timeout"?'
@step(timout=10)  # type: ignore[call-overload, untyped-decorator]
async def typo(sku: str) -> int:
    return 1


# A function and options together (a SagaDefinitionError at run time): no variant matches.
step(reserve.__wrapped__, timeout=5)  # type: ignore[call-overload]

# Retry's own arguments are checked: 'Argument "attempts" to "Retry" has incompatible type
# "str"; expected "int"'.
Retry(attempts="3")  # type: ignore[arg-type]


# A plain def: 'Argument 1 to "step" has incompatible type "Callable[[str], int]"; expected
# "Callable[[str], Coroutine[Any, Any, Never]]"' (the Coroutine says it must be async).
@step  # type: ignore[arg-type]
def not_async(sku: str) -> int:
    return 1


# Wrong arguments to a step call are checked against the function's own parameters:
# 'Argument 1 to "__call__" of "Step" has incompatible type "int"; expected "str"',
# 'Too many arguments for "__call__" of "Step"', 'Unexpected keyword argument "qty" ...'.
reserve(1)  # type: ignore[arg-type]
reserve("a", 2)  # type: ignore[call-arg]
reserve(sku="a", qty=2)  # type: ignore[call-arg]


# A compensation that is not async, worded against the arguments form (the first variant):
# 'Argument 1 to "compensate" of "Step" has incompatible type "Callable[[str], None]";
# expected "Callable[[str], Awaitable[Never]]"'.
@reserve.compensate  # type: ignore[arg-type]
def sync_release(sku: str) -> None:
    return None


@step
async def hold(sku: str) -> int:
    return 1


# The result form without None (a timed-out step is compensated without a result) is
# refused too, but worded against the arguments form: 'expected "Callable[[str],
# Awaitable[None]]"'. (With the result form first, every arguments-form mistake said
# 'expected "Callable[[int | None, str], ...]"' with a note to make parameters
# positional-only, and a method step's added a spurious '"self" parameter missing'.)
@hold.compensate  # type: ignore[arg-type]
async def release_hold(held: int, sku: str) -> None:
    return None


# Yielding something that is not a step call is flagged in a saga annotated as a
# Generator (or Iterator) of StepCall: 'Incompatible types in "yield" (actual type
# "Coroutine[Any, Any, int]", expected type "StepCall[Any]")' for a plain coroutine, and
# '(actual type "Step[[str], int]", ...)' for a step that was not called.
@saga
def order(sku: str) -> Generator[StepCall[Any], Any, None]:
    yield not_a_step(sku)  # type: ignore[misc]
    yield reserve  # type: ignore[misc]
    yield reserve(1)  # type: ignore[arg-type]


# A step's result taken with `yield from` is typed as the step returns it: 'Incompatible
# types in assignment (expression has type "int", variable has type "str")'.
@saga
def mistyped_result(sku: str) -> Generator[StepCall[Any], Any, None]:
    held: str = yield from reserve(sku)  # type: ignore[assignment]
    yield reserve(held)


# Only there: an unannotated saga is not checked inside (under --strict it is itself an
# error, no-untyped-def), so its yields are not either.
@saga
def untyped_order(sku):  # type: ignore[no-untyped-def]
    yield not_a_step(sku)


# The list form and add_step check their items: 'List item 0 has incompatible type
# "Coroutine[Any, Any, int]"; expected "StepCall[Any]"'.
@saga
def listed(sku: str) -> list[StepCall[Any]]:
    return [not_a_step(sku)]  # type: ignore[list-item]


SagaDefinition("o-1").add_step(reserve)  # type: ignore[arg-type]


# A list saga returning one step call instead of a list of them (SagaDefinitionError when
# it is called) is flagged when annotated as a list, tuple or Sequence: 'Incompatible
# return value type (got "StepCall[int]", expected "list[StepCall[Any]]")'.
@saga
def one_listed(sku: str) -> list[StepCall[Any]]:
    return reserve(sku)  # type: ignore[return-value]


@saga
def one_tupled(sku: str) -> tuple[StepCall[Any], ...]:
    return reserve(sku)  # type: ignore[return-value]


@saga
def one_in_sequence(sku: str) -> Sequence[StepCall[Any]]:
    return reserve(sku)  # type: ignore[return-value]


# Not when annotated as an Iterable (nor unannotated: Any): a step call is itself an
# Iterable of step calls (what types `yield from call`), and @saga must take a function
# returning an Iterable for a generator annotated so. (A first overload for a function
# annotated as returning a StepCall would catch only that rare annotation, and would make
# every unannotated saga Any, as it and the next would both match.) A known limit, told in
# docs/concepts/sagas.md.
@saga
def one_iterable(sku: str) -> Iterable[StepCall[Any]]:
    return reserve(sku)


# An async generator is not a saga: 'Argument 1 to "saga" has incompatible type
# "Callable[[str], AsyncIterator[StepCall[Any]]]"; expected "Callable[[str], Generator[...] |
# Iterator[...] | Iterable[...] | Sequence[...]]"'.
@saga  # type: ignore[arg-type]
async def async_order(sku: str) -> AsyncIterator[StepCall[Any]]:
    yield reserve(sku)
