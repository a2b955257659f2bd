"""Compensations of steps taking **kwargs, as mypy --strict sees them (read by mypy, never
run).

As in test_mistakes.py, each expected error carries its code (warn_unused_ignores makes every
ignore a check) and a comment quotes the message as mypy 2.4 words it.
"""

from __future__ import annotations

from typing import Any, assert_type

from sagakit import StepCall, step


# A step taking **kwargs passes any other keyword on to its compensation, so a result
# parameter it could also name must be positional-only (tag(..., tag_id="x") would give it
# twice); the runtime refuses the same compensations when they are declared.
@step
async def tag(item: str, **labels: str) -> int:
    return 7


@tag.compensate
async def untag(tag_id: int | None, /, item: str, **labels: str) -> None:
    return None


assert_type(tag("book", tag_id="x"), StepCall[int])


@step
async def label(item: str, **labels: str) -> int:
    return 7


# 'Argument 1 to "compensate" of "Step" has incompatible type "def unlabel(tag_id: int |
# None, item: str, **labels: str) -> Coroutine[Any, Any, None]"; expected "def (item: str,
# **labels: str) -> Awaitable[None]"'.
@label.compensate  # type: ignore[arg-type]
async def unlabel(tag_id: int | None, item: str, **labels: str) -> None:
    return None


@step
async def mark(item: str, **labels: str) -> int:
    return 7


# The arguments form naming a step argument differently: mark(..., thing="x") would give
# thing twice.
@mark.compensate  # type: ignore[arg-type]
async def unmark(thing: str, **labels: str) -> None:
    return None


class Shelf:
    # A method step's: self, then the positional-only result.
    @step
    async def put(self, item: str, **labels: str) -> int:
        return 1

    @put.compensate
    async def take(self, slot: int | None, /, item: str, **labels: str) -> None:
        return None

    @step
    async def stack(self, item: str, **labels: str) -> int:
        return 1

    @stack.compensate  # type: ignore[arg-type]
    async def unstack(self, slot: int | None, item: str, **labels: str) -> None:
        return None


# With the step's *args too, any positional parameter of the compensation may be given a
# value positionally, so one it adds with a default is hit twice by a keyword of its name
# (call_api(1, note="x")). mypy refuses it when the step's *args and **kwargs have types:
# 'Argument 1 to "compensate" of "Step" has incompatible type "def undo_call(note: str |
# None = ..., *args: int, **kwargs: str) -> Coroutine[Any, Any, None]"; expected "def
# (*args: int, **kwargs: str) -> Awaitable[None]"'.
@step
async def call_api(*args: int, **kwargs: str) -> int:
    return 1


@call_api.compensate  # type: ignore[arg-type]
async def undo_call(note: str | None = None, *args: int, **kwargs: str) -> None:
    return None


@step
async def call_typed(*args: int, **kwargs: str) -> int:
    return 1


@call_typed.compensate
async def undo_typed(note: int | None = None, /, *args: int, **kwargs: str) -> None:
    return None


# Known limit: mypy reads a step's (*args: Any, **kwargs: Any) as "...", any arguments, and
# accepts any compensation of it, this one too; the declaration refuses it at run time
# (SagaDefinitionError: ... would get 'note' twice ...; make it positional-only).
@step
async def call_any(*args: Any, **kwargs: Any) -> int:
    return 1


@call_any.compensate
async def undo_any(note: str | None = None, *args: Any, **kwargs: Any) -> None:
    return None
