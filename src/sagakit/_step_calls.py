"""A step call: a step with its arguments, yielded by a saga or awaited on its own."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Callable, Coroutine, Generator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._checks import asyncio_loop
from ._deadlines import timeout_error
from ._display import describe_args
from ._hooks import SIMULATED_TIMEOUT, CrashAfter, FaultPlan, active_faults, raised_by_step
from ._runs import (
    alone_in,
    awaitable_returned_by,
    current_run,
    definition_returned_alone,
    is_definition,
)
from ._tracebacks import hide_from_pytest
from .exceptions import StepTimeout
from .records import one_line

if TYPE_CHECKING:
    from ._steps import Step

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest

R_co = TypeVar("R_co", covariant=True)


class StepCall(Generic[R_co]):
    """A step together with the arguments it was called with; nothing has run yet.

    Yield it from a saga (or list it) to run it as part of the saga, or ``await`` it to
    run the step on its own, under its timeout and retry policy.
    """

    # The keyword arguments are kept in a dict of their own (``**`` made it for this call)
    # that only sagakit reads, fast; ``kwargs`` shows it read-only, as a call in an
    # immutable definition must not change.
    __slots__ = ("_args", "_fn", "_instance", "_kwargs", "_spec", "_step")

    def __init__(
        self,
        step: Step[Any, Any],
        fn: Callable[..., Coroutine[Any, Any, Any]],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self._step = step
        self._spec = step._self_spec
        self._fn = fn
        self._instance = instance
        self._args = args
        self._kwargs = kwargs

    # Read-only, as a call in an immutable definition must not change (sagakit reads
    # the slots themselves, fast).
    @property
    def step(self) -> Step[Any, Any]:
        """The :class:`Step` called."""
        return self._step

    @property
    def spec(self) -> Step[Any, Any]:
        """The step's options, read-only: the :class:`Step` called, whose properties
        (``name``, ``timeout``, ``retry``, ``compensation``, ...) hold them. (What the
        orchestrator reads, a plain slotted copy of them, stays internal: it is shared by
        every call of the step, so setting one of its fields changed them all.)"""
        return self._step

    @property
    def fn(self) -> Callable[..., Coroutine[Any, Any, Any]]:
        """The step's function (bound to its instance for a method step)."""
        return self._fn

    @property
    def instance(self) -> Any:
        """The instance of a method step, else ``None``."""
        return self._instance

    @property
    def args(self) -> tuple[Any, ...]:
        """The positional arguments of the call."""
        return self._args

    @property
    def name(self) -> str:
        """The step's name."""
        return self._spec.name

    @property
    def kwargs(self) -> Mapping[str, Any]:
        """The keyword arguments of the call, read-only."""
        return MappingProxyType(self._kwargs)

    def compensation_call(self, result: Any) -> Coroutine[Any, Any, Any] | None:
        """Start the compensation of this call (``None`` when the step has none)."""
        spec = self._spec
        compensation = spec.compensation
        if compensation is None:
            return None
        args, kwargs = self._args, self._kwargs
        if self._instance is not None and spec.is_method:
            args = (self._instance, *args)
        arity = spec.arity
        if kwargs or (spec.has_defaults and len(args) != arity):
            defaults = spec.defaults
            if not kwargs and arity >= 0 and arity - len(defaults) <= len(args) < arity:
                # Only trailing defaults left out: add them (cheaper than binding).
                args = (*args, *defaults[len(args) - arity :])
            else:
                # Normalise: the compensation may name its parameters differently, and
                # gets the step's defaults for the arguments the call left out.
                bound = spec.signature.bind(*args, **kwargs)
                bound.apply_defaults()
                args, kwargs = bound.args, bound.kwargs
        if spec.compensation_takes_result:
            if args and spec.is_method:
                undo = compensation(args[0], result, *args[1:], **kwargs)
            else:
                undo = compensation(result, *args, **kwargs)
        else:
            undo = compensation(*args, **kwargs)
        if isinstance(undo, StepCall):  # a step declared as the compensation: it is that
            return undo._run_alone(alone=False)  # compensation, which current_step() tells
        return undo

    def __await__(self) -> Generator[Any, None, R_co]:
        return self._run_alone().__await__()

    async def _call_alone(self, alone: bool) -> Any:
        """The step's function, as a step awaited on its own: inside a saga's step too,
        :func:`current_step` is ``None`` in it, not that step's (whose idempotency key two
        charges awaited by the step would otherwise share) — unless not ``alone``: the
        step was declared as the compensation running."""
        if not alone:
            return await self._fn(*self._args, **self._kwargs)
        token = alone_in.set(current_run.get())
        try:
            return await self._fn(*self._args, **self._kwargs)
        finally:
            # Closed by the garbage collector, its loop gone: in another context, which
            # this never changed.
            with contextlib.suppress(ValueError):
                alone_in.reset(token)

    def __iter__(self) -> Generator[StepCall[R_co], Any, R_co]:
        """``result = yield from call`` in a generator saga: yields the call and returns
        the step's result, typed as the step returns it (a bare ``yield`` gives ``Any``)."""
        return (yield self)  # type: ignore[no-any-return]

    async def _run_alone(self, *, alone: bool = True) -> R_co:
        step = self._step
        policy = step.retry
        loop = asyncio_loop("a step call")
        task = asyncio.current_task(loop)
        assert task is not None, "a step call is awaited inside an asyncio task"
        cancelling = task.cancelling()  # more later: the caller's task was cancelled too
        faults = active_faults.get()  # sagakit.testing's fault injection, if any
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            deadline = asyncio.timeout(step.timeout)
            if faults is not None:
                injected = await self._injected(faults, attempt, alone)
                if injected is not None:
                    if attempt >= policy.attempts or not policy.retries(injected):
                        raise injected
                    await asyncio.sleep(policy.delay(attempt))
                    continue
            try:
                async with deadline:
                    result = await self._call_alone(alone)
                # It swallowed its cancellation, or blocked past the deadline without awaiting.
                when = deadline.when()
                if deadline.expired() or (when is not None and loop.time() >= when):
                    if task.cancelling() > cancelling:  # and the caller's: that one wins
                        raise asyncio.CancelledError
                    raise timeout_error(-1, step.name, time.monotonic() - started, step.timeout)
            except Exception as error:
                failure: Exception = error
                if deadline.expired() and not isinstance(error, StepTimeout):
                    # Timed out, whether the step let the cancellation through or turned
                    # it into another error (and the caller's cancellation too: it wins).
                    if task.cancelling() > cancelling:
                        raise asyncio.CancelledError from error
                    failure = timeout_error(-1, step.name, time.monotonic() - started, step.timeout)
                elif task.cancelling() > cancelling:
                    # It turned the caller's cancellation into an error: interrupted by
                    # that cancellation, not retried (as in a saga).
                    raise asyncio.CancelledError from error
                if attempt >= policy.attempts or not policy.retries(failure):
                    if failure is error:
                        raise
                    raise failure from error
            else:
                # Not retried: a forgotten ``await`` is a mistake in the step, as in a saga,
                # and so is a saga definition it returned instead of executing it (a step
                # run as a compensation, not alone: the saga's check names that compensation).
                if result.__class__ is not list:
                    if inspect.isawaitable(result):
                        raise awaitable_returned_by(f"step {step.name!r}", result)
                    if (
                        alone
                        and result.__class__.__name__ == "SagaDefinition"
                        and is_definition(result)
                    ):
                        raise definition_returned_alone(f"step {step.name!r}", result)
                return result  # type: ignore[no-any-return]
            await asyncio.sleep(policy.delay(attempt))

    async def _injected(self, faults: FaultPlan, attempt: int, alone: bool) -> Exception | None:
        """The failure a fault plan injects into this attempt of the step awaited on its
        own, if any (a crash or an injected ``BaseException`` is raised here).

        Asked with no saga running: the step has no position in one, even when awaited
        inside another saga's step, so faults restricted to an ``index`` leave it alone.
        """
        step = self._step
        token = current_run.set(None)
        try:
            fault = faults.fault_for(step, attempt, compensation=False)
        finally:
            current_run.reset(token)
        if fault is None:
            return None
        if fault is SIMULATED_TIMEOUT:
            return StepTimeout(-1, step.name, step.timeout, step.timeout)
        if isinstance(fault, CrashAfter):  # the step acts, then "the process dies"
            with contextlib.suppress(Exception):
                async with asyncio.timeout(step.timeout):
                    await self._call_alone(alone)
            raise fault.crash
        if not isinstance(fault, Exception):  # a crash, KeyboardInterrupt, CancelledError...
            raise fault
        return raised_by_step(fault)  # as the step's own raise

    def __reduce__(self) -> tuple[Any, ...]:
        # Made again by calling the step: the spec and function are the step's own.
        return _call_again, (self._step, self._instance, self._args, self._kwargs)

    def __repr__(self) -> str:
        # Each argument shortened, as in a definition's notebook table: a list of a
        # million rows, or an argument whose repr() raises, still shows in one line.
        name = one_line(self._step.name)
        return f"<StepCall {name}({describe_args(self._args, self._kwargs)})>"


def _call_again(
    step: Step[Any, Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> StepCall[Any]:
    """A pickled :class:`StepCall`, made again (bound to its instance for a method step)."""
    if instance is None:
        return step(*args, **kwargs)
    bound: Callable[..., StepCall[Any]] = step.__get__(instance, type(instance))
    return bound(*args, **kwargs)


__all__ = ["StepCall"]
