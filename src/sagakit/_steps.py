"""Steps: ``@step`` turns an ``async def`` into a :class:`Step`; ``@<step>.compensate`` pairs it."""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    Self,
    SupportsIndex,
    TypeVar,
    cast,
    overload,
)

import wrapt
from typing_extensions import ParamSpec

from ._checks import (
    check_flag,
    check_not_method_object,
    check_options,
    check_seconds,
    meant_option,
)
from ._class_method_steps import CLASSMETHOD_CALLS_PLAINLY, _bound_to_class, _class_method_of
from ._compensation_signature import _check_no_keyword_twice, _takes_result
from ._display import short_repr, step_html
from ._names import by_reference, declared_name, qualname_of, written_name
from ._retry import NO_RETRY, Retry
from ._seconds import timeout_text
from ._step_calls import StepCall
from ._step_calls import _call_again as _call_again  # pickles made before it moved name it here
from ._step_checks import (
    _POSITIONAL,
    _as_retry,
    _declared_again,
    _how_to_declare,
    _in_class_body,
    _shown,
    check_arguments,
)
from ._step_spec import StepSpec
from ._tracebacks import hide_from_pytest
from .exceptions import CompensationAlreadySetError, SagaDefinitionError
from .records import one_line

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest


P = ParamSpec("P")
Q = ParamSpec("Q")
R = TypeVar("R")
S = TypeVar("S")
T = TypeVar("T")
C = TypeVar("C", bound=Callable[..., Awaitable[Any]])

DEFAULT_TIMEOUT = 30.0
_new_call = object.__new__
# Said to a step declared with timeout=None or infinity, meant as "no timeout".
_NO_UNLIMITED_TIMEOUT = (
    "every step runs under a timeout; for one that may take very long, give a large "
    "number of seconds, e.g. 86400 for a day"
)

DEFINED_NAMES: set[str] = set()
"""The name of every step defined in this process (fault injection tells a misspelt one)."""
COMPENSATED_NAMES: set[str] = set()
"""The name of every step given a compensation in this process (fault injection tells a
fault aimed at a compensation no step of that name has)."""
COMPENSATION_OF: weakref.WeakKeyDictionary[Callable[..., Any], tuple[str, str]] = (
    weakref.WeakKeyDictionary()
)
"""Each compensation function's step: its name, and how code names it (``Bank.debit``), for
fault injection to tell a test that passes the compensation where a step is wanted."""
_NO_FUNCTION: Any = object()  # .compensate() called without one: with parentheses


class _BoundStep(wrapt.BoundFunctionWrapper[P, StepCall[R]]):
    """A step looked up on a class or an instance, which shows as the step it binds."""

    def __repr__(self) -> str:
        shown = repr(self._self_parent)
        if self._self_instance is None:
            return shown
        return f"<bound {shown[1:-1]} of {short_repr(self._self_instance)}>"

    def __str__(self) -> str:
        return self.__repr__()

    def __format__(self, format_spec: str) -> str:
        return format(self.__repr__(), format_spec)


class Step(wrapt.FunctionWrapper[P, StepCall[R]], Generic[P, R]):
    """An ``async def`` declared with ``@step``: calling it gives a :class:`StepCall`.

    The signature, name, docstring and ``inspect`` introspection of the function are
    kept. Options live on the step; per-run state never does.
    """

    _self_spec: StepSpec
    # A step looked up on an instance showed wrapt's "<BoundFunctionWrapper at 0x...>".
    __bound_function_wrapper__ = _BoundStep  # type: ignore[assignment]  # P, R unbound here

    if TYPE_CHECKING:
        # The decorated ``async def`` itself (wrapt's stubs give it the StepCall result).
        __wrapped__: Callable[P, Coroutine[Any, Any, R]]  # type: ignore[assignment]

    def __new__(cls, *args: Any, **kwargs: Any) -> Step[P, R]:
        # Each step gets a subclass of its own, whose ``__call__`` (set by ``__init__``)
        # holds the step's options in a closure: reading them back through the proxy
        # (``self._self_spec``) would cost as much as the rest of building the call.
        own = cast(
            "type[Self]",  # a subclass of cls
            type(
                cls.__name__,
                (cls,),
                {"__slots__": (), "__module__": cls.__module__, "__qualname__": cls.__qualname__},
            ),
        )
        return super().__new__(own)  # cls is a real class here: no proxy in the way

    def __init__(
        self,
        fn: Callable[P, Coroutine[Any, Any, R]],
        *,
        name: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: Retry | int | None = None,
        compensation_retry: Retry | int | None = None,
        compensation_timeout: float | None = None,
        compensate_on_timeout: bool = True,
        compensate_on_failure: bool = False,
    ) -> None:
        check_not_method_object(fn, "step")
        if isinstance(fn, Step):
            # Its compensation and options would be ignored by sagas running this step.
            raise SagaDefinitionError(
                f"{fn.name!r} is already a step; give all its options in one @step(...), or "
                f"declare another step from the same function: step(...)({fn.name}.__wrapped__)"
            )
        if not inspect.iscoroutinefunction(fn):
            what = qualname_of(fn)
            if inspect.isasyncgenfunction(fn):
                raise SagaDefinitionError(
                    f"@step needs an 'async def' function that returns its result, but {what} "
                    "is an async generator (it uses 'yield'); return the result (or a list "
                    "of events) instead of yielding it"
                )
            raise SagaDefinitionError(
                f"@step needs an 'async def' function, but {what} is not a coroutine function; "
                f"{_how_to_declare(fn)}"
            )
        step_self = self

        def make_call(
            wrapped: Callable[..., Coroutine[Any, Any, Any]],
            instance: Any,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> StepCall[Any]:
            # Method steps (and plain ones reached through a class): a bound instance
            # fills the first parameter.
            full = args if instance is None else (instance, *args)
            check_arguments(step_self._self_spec, full, kwargs)
            return StepCall(step_self, wrapped, instance, args, kwargs)

        # The wrapper's result type is the StepCall (so bound method steps are typed).
        super(Step, self).__init__(fn, make_call)  # type: ignore[arg-type]  # noqa: UP008 - the proxy fakes __class__
        name = declared_name(fn, name, what="step", fix="@step(name=...)")
        spec = StepSpec()
        spec.name = name
        DEFINED_NAMES.add(name)
        spec.fn = fn
        spec.timeout = check_seconds(
            timeout, f"@step(timeout=...) of {name!r}", unlimited=_NO_UNLIMITED_TIMEOUT
        )
        spec.retry = _as_retry(retry, f"@step(retry=...) of {name!r}") or NO_RETRY
        spec.compensation_retry = _as_retry(
            compensation_retry, f"@step(compensation_retry=...) of {name!r}"
        )
        spec.compensation_timeout = (
            spec.timeout
            if compensation_timeout is None
            else check_seconds(
                compensation_timeout,
                f"@step(compensation_timeout=...) of {name!r}",
                unlimited=_NO_UNLIMITED_TIMEOUT,
            )
        )
        spec.compensate_on_timeout = check_flag(
            compensate_on_timeout, f"@step(compensate_on_timeout=...) of {name!r}"
        )
        spec.compensate_on_failure = check_flag(
            compensate_on_failure, f"@step(compensate_on_failure=...) of {name!r}"
        )
        spec.compensation = None
        spec.compensation_takes_result = False
        spec.plain_compensation = False
        spec.compensation_tails = ()
        spec.signature = inspect.signature(fn)
        first = next(iter(spec.signature.parameters), None)
        spec.is_method = first in ("self", "cls")
        parameters = spec.signature.parameters.values()
        spec.has_defaults = any(p.default is not p.empty for p in parameters)
        positional = sum(1 for p in parameters if p.kind in _POSITIONAL)
        spec.arity = positional if positional == len(parameters) else -1
        spec.defaults = tuple(
            p.default for p in parameters if p.kind in _POSITIONAL and p.default is not p.empty
        )
        spec.call_shapes = set()
        spec.class_methods = weakref.WeakKeyDictionary()
        self._self_spec = spec
        own = type(self)  # the real class: ``self.__class__`` is the function's
        if "__call__" not in own.__dict__ and own.__call__ is Step.__call__:
            own.__call__ = _call_maker(spec)  # type: ignore[method-assign]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> StepCall[R]:
        # Unbound calls build the StepCall directly (twice as fast as going through
        # the wrapper); bound method calls go through wrapt, which calls ``make_call``.
        spec = self._self_spec
        check_arguments(spec, args, kwargs)
        if CLASSMETHOD_CALLS_PLAINLY and args and _class_method_of(self, args[0]):
            return _bound_to_class(self, args, kwargs)
        call: StepCall[R] = _new_call(StepCall)  # no __init__ frame: this is per step
        call._step = self
        call._spec = spec
        call._fn = spec.fn
        call._instance = None
        call._args = args
        call._kwargs = kwargs
        return call

    @property
    def name(self) -> str:
        """The name the step is recorded under (the function name unless given)."""
        return self._self_spec.name

    @property
    def timeout(self) -> float:
        """Seconds each attempt may take."""
        return self._self_spec.timeout

    @property
    def retry(self) -> Retry:
        """The retry policy of the step (one attempt unless given)."""
        return self._self_spec.retry

    @property
    def compensation(self) -> Callable[..., Awaitable[Any]] | None:
        """The compensation registered with ``@<step>.compensate``, if any."""
        return self._self_spec.compensation

    @property
    def compensation_takes_result(self) -> bool:
        """Whether the compensation receives the step's result before its arguments."""
        return self._self_spec.compensation_takes_result

    @property
    def compensation_retry(self) -> Retry | None:
        """The step's own compensation retry policy (``None``: the orchestrator's)."""
        return self._self_spec.compensation_retry

    @property
    def compensation_timeout(self) -> float:
        """Seconds each compensation attempt may take (the step's timeout unless given)."""
        return self._self_spec.compensation_timeout

    @property
    def compensate_on_timeout(self) -> bool:
        """Whether a timed-out step is compensated itself (its effect is unknown)."""
        return self._self_spec.compensate_on_timeout

    @property
    def compensate_on_failure(self) -> bool:
        """Whether a step that raised is compensated itself."""
        return self._self_spec.compensate_on_failure

    # The arguments form first: the runtime's choice for the ties it decides, and mypy
    # words a mismatch against the first overload (tests/typing/test_mistakes.py). The
    # result form's first parameter must accept None: a step that timed out (or raised,
    # with compensate_on_failure) is compensated without a result. What it returns keeps
    # the function's result, as a coroutine (declaring a function that is not one raises),
    # but has the step's parameters: no type is both checked against them and the function's.
    @overload
    def compensate(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]: ...
    @overload
    def compensate(
        self, fn: Callable[Concatenate[R | None, P], Awaitable[T]]
    ) -> Callable[Concatenate[R | None, P], Coroutine[Any, Any, T]]: ...
    @overload
    def compensate(  # a method step's, result form: self, the result, then the arguments
        self: Step[Concatenate[S, Q], R],
        fn: Callable[Concatenate[S, R | None, Q], Awaitable[T]],
    ) -> Callable[Concatenate[S, R | None, Q], Coroutine[Any, Any, T]]: ...
    def compensate(
        self, fn: Callable[..., Awaitable[Any]] = _NO_FUNCTION, *more: Any, **options: Any
    ) -> Callable[..., Awaitable[Any]]:
        """Register ``fn`` as this step's compensation and return it unchanged.

        ``fn`` takes the step's arguments, or the step's result followed by them.
        """
        written = getattr(self.__wrapped__, "__name__", self.name)  # as in @debit.compensate
        if more:  # debit.compensate(unhold, release): Python's own error names no fix
            raise SagaDefinitionError(
                f"@{written}.compensate takes one function (got {1 + len(more)} positional "
                f"arguments); a step has at most one compensation: write @{written}.compensate "
                "above the one 'async def' that undoes it"
            )
        if options:  # @debit.compensate(retry=3), as @step takes options
            raise SagaDefinitionError(
                f"@{written}.compensate takes no options (got {', '.join(options)}"
                f"{_meant_for_compensation(options)}); give "
                f"the compensation's options in the step's @step(compensation_timeout=..., "
                f"compensation_retry=...), and write @{written}.compensate without "
                "parentheses above the compensation"
            )
        if fn is _NO_FUNCTION:  # @debit.compensate(): it takes no options
            raise SagaDefinitionError(
                f"@{written}.compensate() takes no arguments: write it without parentheses, "
                f"@{written}.compensate, above the compensation (the compensation's "
                f"options go in the step's @step(compensation_timeout=..., "
                f"compensation_retry=...))"
            )
        # Above @staticmethod or @classmethod: the function is in there, an 'async def'.
        check_not_method_object(fn, f"{written}.compensate")
        spec = self._self_spec
        if spec.compensation is not None and not _declared_again(spec.compensation, fn):
            raise CompensationAlreadySetError(
                f"step {self.name!r} already has the compensation "
                f"{qualname_of(spec.compensation)!r}; a step has at most one — "
                f"remove one of the @{self.name}.compensate declarations (in a notebook, "
                "after renaming a compensation, run the step's cell again: a new step "
                "starts with none)"
            )
        if not inspect.iscoroutinefunction(fn):
            what = qualname_of(fn)
            if inspect.isasyncgenfunction(fn):
                raise SagaDefinitionError(
                    f"the compensation of step {self.name!r} must be an 'async def' that "
                    f"returns its events, but {what} is an async generator (it uses 'yield'); "
                    "return them instead of yielding them"
                )
            raise SagaDefinitionError(
                f"the compensation of step {self.name!r} must be an 'async def', "
                f"but {what} is not a coroutine function; {_how_to_declare(fn)}"
            )
        # A method step is told by its first parameter's name (self, cls). A function
        # defined outside a class body whose compensation names that parameter otherwise
        # is a plain function that happens to use the name: the result comes first.
        first = next(iter(spec.signature.parameters), None)
        is_method = spec.is_method and (
            _in_class_body(spec.fn) or next(iter(inspect.signature(fn).parameters), None) == first
        )
        takes_result = _takes_result(self, fn, is_method)
        _check_no_keyword_twice(self, fn, takes_result)
        spec.compensation_takes_result = takes_result
        spec.is_method = is_method
        # A step declared as the compensation is run as it, by compensation_call().
        spec.plain_compensation = not (takes_result or is_method or isinstance(fn, Step))
        spec.compensation_tails = _compensation_tails(spec)
        spec.compensation = fn
        COMPENSATED_NAMES.add(spec.name)
        with contextlib.suppress(TypeError):  # a callable object without weak references
            COMPENSATION_OF[fn] = (spec.name, written_name(self, spec.name))
        return fn

    if TYPE_CHECKING:
        # Binding as type checkers should see it (wrapt binds at run time; nothing here
        # runs). mypy applies these whatever @staticmethod or @classmethod is stacked
        # above @step, so the step's own first parameter tells them apart: ``cls``
        # (``type[T]``) is bound to the class or instance it is looked up on, ``self`` to
        # the instance; through the class, or under @staticmethod, a step takes all its
        # parameters. The self types are callables: mypy does not check a Concatenate
        # prefix of ``Step[...]`` when choosing an overload.
        @overload
        def __get__(  # type: ignore[misc]  # a callable self type: see above
            self: Callable[Concatenate[type[T], Q], StepCall[R]], instance: None, owner: type[T], /
        ) -> wrapt.BoundFunctionWrapper[Q, StepCall[R]]: ...
        @overload
        def __get__(
            self, instance: None, owner: type[Any] | None = None, /
        ) -> wrapt.BoundFunctionWrapper[P, StepCall[R]]: ...
        @overload  # mypy runs __get__ on what a property returns: StepCall.step is the step
        def __get__(
            self, instance: StepCall[Any], owner: type[Any] | None = None, /
        ) -> Step[P, R]: ...
        @overload
        def __get__(
            self: Callable[Concatenate[S, Q], StepCall[R]],
            instance: S,
            owner: type[Any] | None = None,
            /,
        ) -> wrapt.BoundFunctionWrapper[Q, StepCall[R]]: ...
        @overload
        def __get__(  # type: ignore[misc]  # a callable self type: see above
            self: Callable[Concatenate[type[T], Q], StepCall[R]],
            instance: T,
            owner: type[Any] | None = None,
            /,
        ) -> wrapt.BoundFunctionWrapper[Q, StepCall[R]]: ...
        @overload
        def __get__(
            self, instance: object, owner: type[Any] | None = None, /
        ) -> wrapt.BoundFunctionWrapper[P, StepCall[R]]: ...
        # These replace wrapt's overloads on purpose (see above); pyright finds them not
        # covering wrapt's self-typed ones (FunctionWrapper[Concatenate[...]]).
        def __get__(  # pyright: ignore[reportIncompatibleMethodOverride]
            self, instance: object, owner: type[Any] | None = None, /
        ) -> Any: ...

    # Like a function: copied as itself, pickled by reference (wrapt's proxy refuses all).
    def __copy__(self) -> Step[P, R]:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Step[P, R]:
        return self

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, ...]:
        return by_reference(self, f"step {self.name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return by_reference(self, f"step {self.name!r}")

    def __repr__(self) -> str:
        return f"<Step {one_line(self.name)} timeout={timeout_text(self.timeout, '')}>"

    # As for a function, str() and format() give the repr (wrapt's proxy would give the
    # function's: "<function debit at 0x...>").
    def __str__(self) -> str:
        return self.__repr__()

    def __format__(self, format_spec: str) -> str:
        return format(self.__repr__(), format_spec)

    # IPython draws a step's text by the class its proxy claims, the function's (as
    # "<function debit(...)>"): in a notebook this table says it is a step, and how.
    def _repr_html_(self) -> str:
        return step_html(self, _shown(self._self_spec.signature))


def _compensation_tails(spec: StepSpec) -> tuple[tuple[Any, ...] | None, ...]:
    """``spec.compensation_tails``: by positional argument count, the trailing defaults a
    call that left only those out needs added (``()`` for a full call), or ``None``.

    Made once per compensation declared, so that running one reads its tail by the call's
    argument count instead of working it out each time.
    """
    arity = spec.arity
    if not spec.plain_compensation or arity < 0:
        return ()
    defaults = spec.defaults
    first = arity - len(defaults)  # the fewest arguments that bind
    return tuple(
        None if count < first else defaults[len(defaults) - (arity - count) :]
        for count in range(arity + 1)
    )


def _call_maker(spec: StepSpec) -> Callable[..., StepCall[Any]]:
    """``Step.__call__`` for one step, with its options at hand (see ``Step.__new__``)."""
    fn = spec.fn
    arity = spec.arity
    # The positional argument counts that bind without a check (none when arity is -1:
    # always checked); a tuple's ``in`` costs less than a chained comparison.
    counts = tuple(range(arity - len(spec.defaults), arity + 1)) if arity >= 0 else ()

    # From Python 3.13 ``classmethod`` calls the step with the class first; before, it
    # binds through the step's ``__get__``, so there is no class method to tell apart.
    plainly = CLASSMETHOD_CALLS_PLAINLY

    def __call__(self: Step[Any, Any], *args: Any, **kwargs: Any) -> StepCall[Any]:
        if kwargs or len(args) not in counts:
            check_arguments(spec, args, kwargs)
        if plainly and args and _class_method_of(self, args[0]):
            return _bound_to_class(self, args, kwargs)
        call: StepCall[Any] = _new_call(StepCall)  # no __init__ frame: this is per step
        call._step = self
        call._spec = spec
        call._fn = fn
        call._instance = None
        call._args = args
        call._kwargs = kwargs
        return call

    return __call__


def _meant_for_compensation(options: dict[str, Any]) -> str:
    """``": did you mean @step(compensation_retry=...)?"`` for ``.compensate(retry=3)``:
    the step's option that the one option given was likely meant as (else ``""``)."""
    if len(options) != 1:
        return ""
    (given,) = options
    for prefix in ("compensation_", "compensate_"):
        given = given.removeprefix(prefix)
    meant = meant_option(given, ("timeout", "retry"))  # unprefixed: "colour" is neither
    return "" if meant is None else f": did you mean @step(compensation_{meant}=...)?"


_DEFAULT_OPTIONS: dict[str, Any] = {
    "name": None,
    "timeout": DEFAULT_TIMEOUT,
    "retry": None,
    "compensation_retry": None,
    "compensation_timeout": None,
    "compensate_on_timeout": True,
    "compensate_on_failure": False,
}


@overload
def step(fn: Callable[P, Coroutine[Any, Any, R]], /) -> Step[P, R]: ...
@overload
def step(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    retry: Retry | int | None = None,
    compensation_retry: Retry | int | None = None,
    compensation_timeout: float | None = None,
    compensate_on_timeout: bool = True,
    compensate_on_failure: bool = False,
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Step[P, R]]: ...
def step(
    fn: Callable[P, Coroutine[Any, Any, R]] | None = None, /, *more: Any, **options: Any
) -> Step[P, R] | Callable[[Callable[P, Coroutine[Any, Any, R]]], Step[P, R]]:
    """Declare an ``async def`` as a saga step.

    Use it bare (``@step``, timeout 30 s) or with keyword options
    (``@step(timeout=10, retry=Retry(attempts=3))``).
    """
    if more:  # step(f, g): Python's own error names no fix
        raise SagaDefinitionError(
            f"@step takes one function (got {1 + len(more)} positional arguments); "
            "decorate each function with its own @step, and note options are "
            "keyword-only: @step(timeout=10)"
        )
    check_options("@step", options, _DEFAULT_OPTIONS)
    if fn is not None and options:
        raise SagaDefinitionError(
            "pass either a function or options to step(), not both: "
            "write @step(timeout=...) above the function"
        )
    if fn is None:

        def decorate(fn: Callable[P, Coroutine[Any, Any, R]]) -> Step[P, R]:
            return Step(fn, **options)

        return decorate
    if not callable(fn) and not isinstance(fn, staticmethod | classmethod):
        raise SagaDefinitionError(
            f"@step takes an async function, got {fn!r}; options are keyword-only: "
            "@step(timeout=10)"
        )
    return Step(fn)


__all__ = ["DEFAULT_TIMEOUT", "Step", "StepCall", "StepSpec", "step"]
