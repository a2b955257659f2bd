"""Saga definitions: ``@saga`` on a generator or list function, and the builder."""

from __future__ import annotations

import inspect
import logging
import reprlib
import sys
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from types import MethodType
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Concatenate,
    Generic,
    Literal,
    TypeAlias,
    TypeVar,
    overload,
)

from typing_extensions import ParamSpec

from ._checks import check_not_method_object, check_options
from ._discards import check_discarded_calls
from ._names import by_reference, check_storable, declared_name, qualname_of, unencodable
from ._step_checks import _POSITIONAL, _shown
from ._steps import Step, StepCall
from ._tracebacks import hide_from_pytest
from .exceptions import ReturnValueIgnored, SagaDefinitionError
from .records import SagaMetadata, one_line
from .status import SagaStatus

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest


P = ParamSpec("P")
Q = ParamSpec("Q")
S = TypeVar("S")
T = TypeVar("T")

RecoveryPolicy: TypeAlias = Literal["resume", "compensate"]
# A generator function may be annotated ``Iterator[StepCall[Any]]`` or
# ``Iterable[StepCall[Any]]`` when it uses no step's result (both are usual for a
# generator); it is still driven with ``send()``.
SagaBody: TypeAlias = (
    Generator[StepCall[Any], Any, Any]
    | Iterator[StepCall[Any]]
    | Iterable[StepCall[Any]]
    | Sequence[StepCall[Any]]
)
StepDriver: TypeAlias = Generator[StepCall[Any], Any, Any]

_registry: dict[str, SagaFunction[...]] = {}


class SagaDefinition:
    """An immutable description of one saga: what to run, not a run.

    Build one by calling a ``@saga`` function or with the builder
    ``SagaDefinition("transfer-1").add_step(debit("A", 10)).add_step(...)``.
    Every execution creates fresh per-run state; a definition can be executed many times.
    """

    # All its values in one tuple, set once: each slot set past the immutable
    # __setattr__ costs a call, and a generator saga makes a definition per run.
    __slots__ = ("_state",)

    _state: _State

    def __init__(
        self,
        saga_id: str | None = None,
        *,
        name: str | None = None,
        steps: Iterable[StepCall[Any]] = (),
        recovery: RecoveryPolicy = "resume",
    ) -> None:
        if saga_id is not None:
            saga_id = _check_id(saga_id)
        if name is not None and (not isinstance(name, str) or not name):
            raise SagaDefinitionError(
                f"SagaDefinition(name=...) must be a non-empty string, got {name!r}"
            )
        if name is not None:
            check_storable(name, "SagaDefinition(name=...)")
        if isinstance(steps, StepCall | SagaDefinition) or not isinstance(steps, Iterable):
            hint = " (put a single step call in a list)" if isinstance(steps, StepCall) else ""
            raise SagaDefinitionError(
                f"SagaDefinition(steps=...) must be an iterable of step calls, got {steps!r}{hint}"
            )
        calls = tuple(steps)
        for index, call in enumerate(calls):
            _check_call(call, name or saga_id or "saga", index)
        recovery = _check_recovery(recovery, "recovery")
        _set_state(self, (saga_id, name or saga_id or "saga", calls, None, (), {}, recovery))

    def add_step(self, call: StepCall[Any]) -> SagaDefinition:
        """Return a new definition with ``call`` appended (builder form)."""
        saga_id, name, calls, _, args, kwargs, recovery = self._state
        if calls is None:
            raise SagaDefinitionError(
                f"saga {name!r} is a generator saga; its steps come from the generator, "
                "so add_step() cannot extend it — yield the step from the generator instead"
            )
        _check_call(call, name, len(calls))
        # No longer what its @saga function builds (no factory): recovery must not
        # rebuild it from that.
        return _made(type(self), (saga_id, name, (*calls, call), None, args, kwargs, recovery))

    def with_id(self, saga_id: str) -> SagaDefinition:
        """Return a copy with ``saga_id`` set; the id makes executions idempotent."""
        return _made(type(self), (_check_id(saga_id), *self._state[1:]))

    @property
    def name(self) -> str:
        """The saga's name (the decorated function's name, or the builder's id)."""
        return self._state[1]

    @property
    def saga_id(self) -> str | None:
        """The explicit saga id, or ``None`` for a fresh id per execution."""
        return self._state[0]

    @property
    def steps(self) -> tuple[StepCall[Any], ...] | None:
        """The ordered step calls, or ``None`` for a generator saga (known only by running)."""
        return self._state[2]

    @property
    def total_steps(self) -> int | None:
        """How many steps the saga has, when known before running."""
        calls = self._state[2]
        return None if calls is None else len(calls)

    @property
    def factory(self) -> SagaFunction[...] | None:
        """The ``@saga`` function this definition came from, if any."""
        return self._state[3]

    @property
    def args(self) -> tuple[Any, ...]:
        """Positional arguments the ``@saga`` function was called with."""
        return self._state[4]

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments the ``@saga`` function was called with."""
        return dict(self._state[5])

    @property
    def recovery(self) -> RecoveryPolicy:
        """What recovery does with a run interrupted going forward: resume or compensate."""
        return self._state[6]

    def metadata(self) -> SagaMetadata:
        """Metadata of this definition before any run: status ``NOT_STARTED``."""
        return SagaMetadata(
            id=self.saga_id,
            name=self.name,
            status=SagaStatus.NOT_STARTED,
            steps_executed=0,
            total_steps=self.total_steps,
        )

    def _driver(self) -> StepDriver:
        """A fresh generator of the saga's step calls, fed each step's result."""
        _, _, calls, factory, args, kwargs, _ = self._state
        if calls is not None:
            return _iterate(calls)
        assert factory is not None
        return factory.__wrapped__(*args, **kwargs)  # type: ignore[return-value]

    def to_mermaid(self) -> str:
        """A Mermaid flowchart of the forward steps and their compensations."""
        from ._mermaid import definition_mermaid

        return definition_mermaid(self)

    def _repr_html_(self) -> str:
        from ._display import definition_html

        return definition_html(self)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"SagaDefinition is immutable; use with_id()/add_step() ({name})")

    def __copy__(self) -> SagaDefinition:
        return self  # immutable

    def __reduce__(self) -> tuple[Any, ...]:
        # For pickle and deepcopy: the state is set past the immutable __setattr__.
        return _restore, (type(self), *self._state)

    def __repr__(self) -> str:
        saga_id, name, calls = self._state[:3]
        steps = "?" if calls is None else len(calls)
        ident = f" id={saga_id!r}" if saga_id else ""
        return f"<SagaDefinition {one_line(name)}{ident} steps={steps}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SagaDefinition):
            return NotImplemented
        return self._state == other._state

    __hash__: ClassVar[None] = None  # type: ignore[assignment]

    if not TYPE_CHECKING:  # not iterable to type checkers, which flag the `yield from`

        def __iter__(self):
            """``yield from inner(...)`` in a generator saga: say how to nest a saga."""
            calls, factory = self._state[2:4]
            made = "definition" if factory is None else f"{factory.__name__}(...)"
            if calls is None and factory is not None:
                inline = f"`yield from {factory.__name__}.__wrapped__(...)`"
            else:
                inline = f"`for call in {made}.steps: yield call`"
            raise SagaDefinitionError(
                f"`yield from` a saga, {self!r}: a saga is not a step; run it as a nested "
                f"saga from a step: an @step that awaits orchestrator.execute({made}), or "
                f"yield its steps as this saga's own: {inline}"
            )


_State: TypeAlias = tuple[
    str | None,  # saga id
    str,  # name
    tuple[StepCall[Any], ...] | None,  # step calls (None: a generator saga)
    "SagaFunction[...] | None",  # the @saga function it came from
    tuple[Any, ...],  # that function's positional arguments
    dict[str, Any],  # and keyword arguments
    RecoveryPolicy,
]
_new_definition = object.__new__
# The slot's own descriptor, past the __setattr__ that keeps definitions immutable.
_set_state: Callable[[SagaDefinition, _State], None] = vars(SagaDefinition)["_state"].__set__


def _made(cls: type[SagaDefinition], state: _State) -> SagaDefinition:
    """A definition of ``cls`` holding ``state``, made without checks."""
    definition = _new_definition(cls)
    _set_state(definition, state)
    return definition


def _restore(cls: type[SagaDefinition], *values: Any) -> SagaDefinition:
    """A pickled or deep-copied definition, made again from its values."""
    return _made(cls, values)


def close_driver(driver: StepDriver | None, name: str, saga_id: str) -> None:
    """Close a saga's generator; whatever its body does then is logged, never raised
    (it must not stop the undo or the end of the run). ``None``: a run without one."""
    if driver is None:
        return
    try:
        driver.close()
    except Exception:
        logging.getLogger("sagakit").exception(
            "sagakit: saga %s (%s): its generator raised or yielded while being closed "
            "(a yield or raise in a finally block?); the saga is ended regardless",
            name,
            saga_id,
            extra={"saga_id": saga_id, "saga_name": name},
        )


def returned_error(value: object, name: str) -> SagaDefinitionError | None:
    """The definition error for saga ``name``'s generator returning ``value`` when that is
    a step call, a saga definition, or a list or tuple holding one: a generator's return
    value is never run. ``None`` for anything else (a value for ``yield from``)."""
    items = value if isinstance(value, list | tuple) else (value,)
    calls = [item for item in items if isinstance(item, StepCall | SagaDefinition)]
    if not calls:
        return None
    first = calls[0]
    if isinstance(first, SagaDefinition):
        fix = "run it as a nested saga from a step: an @step that awaits orchestrator.execute(...)"
    else:
        fix = f"yield {'each' if len(calls) > 1 else 'it'}: `yield {first._spec.name}(...)`"
    skipped = "them" if len(calls) > 1 else "it"
    return SagaDefinitionError(
        f"saga {name!r} returned {reprlib.repr(value)} from its generator: a generator saga "
        f"runs only the step calls it yields, so the saga would skip {skipped}; {fix}"
    )


_returned: dict[Any, Any] = {}
"""The warnings registry of :func:`warn_returned`: each saga's warning given once (as
Python's own registries do, each reset when the warning filters change)."""


def warn_returned(definition: SagaDefinition, value: object) -> None:
    """Warn (:class:`ReturnValueIgnored`, once per saga) that ``definition``'s generator
    returned ``value``, which ``execute()`` does not return; pointed at the saga's code."""
    factory = definition.factory
    fn: Any = definition if factory is None else factory.__wrapped__
    code = getattr(fn, "__code__", None)
    warnings.warn_explicit(
        f"saga {definition.name!r} returned a {type(value).__name__} from its generator, "
        "which sagakit ignores: execute() returns the saga's events (what its steps "
        "return), not the generator's return value; return the result from a step "
        "instead, as one of its events, or return nothing",
        ReturnValueIgnored,
        filename=__file__ if code is None else code.co_filename,
        lineno=0 if code is None else code.co_firstlineno,
        module=getattr(fn, "__module__", None) or __name__,
        registry=_returned,
    )


def delegation_error(error: BaseException, name: str) -> SagaDefinitionError | None:
    """The definition error for ``error`` when saga ``name``'s generator delegated with
    ``yield from`` to an iterator that is no generator (a list): sagakit sends each step's
    result into the saga, and such an iterator has no ``send()``. ``None`` for any other
    error, found only once the body raised it (nothing is checked per step)."""
    if not isinstance(error, AttributeError) or error.name != "send":
        return None
    target = getattr(error, "obj", None)
    if not isinstance(target, Iterator) or hasattr(target, "send"):
        return None
    traceback = error.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    if traceback is None or not traceback.tb_frame.f_code.co_flags & inspect.CO_GENERATOR:
        return None  # not raised by a generator's ``yield from``
    return SagaDefinitionError(
        f"saga {name!r} delegated with `yield from` to a {type(target).__name__}, which "
        "cannot take the step results sagakit sends back into the saga; yield the step "
        "calls one at a time: `for call in calls: yield call`"
    )


def _iterate(calls: tuple[StepCall[Any], ...]) -> StepDriver:
    # Not ``yield from``: the orchestrator send()s results, which a tuple iterator refuses.
    for call in calls:  # noqa: UP028
        yield call


def _check_id(saga_id: object) -> str:
    """``saga_id`` as plain text, or a ``SagaDefinitionError`` for what is no id. A ``str``
    subclass (a ``(str, Enum)`` member) gives the text it holds, which is what the logs
    store: formatted as itself (``"Key.ORDER"`` on Python 3.11), it made the step's
    idempotency key differ from the one recovery then derived from the log."""
    if not isinstance(saga_id, str) or not saga_id:
        raise SagaDefinitionError(f"a saga id must be a non-empty string, got {saga_id!r}")
    reason = unencodable(saga_id)
    if reason is not None:  # a lone surrogate: no log can store it
        raise SagaDefinitionError(
            f"a saga id must be valid Unicode text, got {saga_id!r} ({reason}); "
            "decode it from bytes with errors='replace', or use another id"
        )
    return saga_id if type(saga_id) is str else str.__str__(saga_id)


def _check_recovery(recovery: object, option: str) -> RecoveryPolicy:
    """``recovery`` in lower case, as it is recorded: any case is taken, as store options
    and ``list_sagas(status=...)`` take theirs; anything else is refused with the choices."""
    given = recovery.lower() if isinstance(recovery, str) else None
    if given == "resume":
        return "resume"
    if given == "compensate":
        return "compensate"
    raise SagaDefinitionError(
        f"{option} must be 'resume' or 'compensate' (in any case), got {recovery!r}"
    )


def _check_call(call: object, saga_name: str, index: int) -> None:
    if not isinstance(call, StepCall):
        raise SagaDefinitionError(
            f"saga {saga_name!r} step {index} must be a step call such as debit('A', 10), "
            f"got {call!r}{_not_a_call_hint(call)}"
        )


def _not_a_call_hint(call: object) -> str:
    """How to turn what a saga gave instead of a step call into one, named after it."""
    if inspect.iscoroutine(call):
        call.close()
        name = call.__name__
        return f" (a coroutine of {name}: decorate {name} with @step)"
    if isinstance(call, Step):
        return f" (call the step with its arguments: {call.name}(...), not {call.name})"
    nest = "run it as a nested saga from a step: an @step that awaits orchestrator.execute("
    if isinstance(call, SagaDefinition):
        factory = call.factory
        made = "definition" if factory is None else f"{factory.__name__}(...)"
        return f" (a saga, not a step: {nest}{made}))"
    if isinstance(call, SagaFunction):
        return f" (a @saga function, not a step: {nest}{call.__name__}(...)))"
    if inspect.iscoroutinefunction(call):
        name = getattr(call, "__name__", "it")
        return f" (decorate {name} with @step, then call it with its arguments: {name}(...))"
    if callable(call):
        return " (call the step with its arguments: debit('A', 10), not debit)"
    if isinstance(call, list | tuple) and any(isinstance(item, StepCall) for item in call):
        return " (steps run one at a time: give each step call on its own)"
    return ""


def _positional_counts(fn: Callable[..., Any]) -> tuple[int, ...]:
    """How many positional arguments ``fn`` may be called with, when it takes only those
    (a tuple's ``in`` is cheaper than comparing with its bounds); else none."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read: bind every call
        return ()
    if any(p.kind not in _POSITIONAL for p in parameters):
        return ()
    required = sum(1 for p in parameters if p.default is p.empty)
    return tuple(range(required, len(parameters) + 1))


def _register(function: SagaFunction[...]) -> None:
    """Register ``function`` under its name for recovery, refusing a name another
    module-level saga holds: recovery would rebuild the wrong saga from its log.

    A saga declared inside a function replaces the entry (it is declared again on every
    call), as does a module-level saga whose module no longer holds it (reloaded, or
    unloaded as pytest's ``pytester`` does).
    """
    earlier = _registry.get(function.name)
    if (
        earlier is not None
        and _module_level(function)
        and _origin(earlier) != _origin(function)
        and _live(earlier)
    ):
        raise SagaDefinitionError(
            f"saga name {function.name!r} is already taken by {_origin(earlier)}; "
            f"recovery finds a saga by its name, so give {_origin(function)} a name "
            f"of its own: @saga(name='{_origin(function)}')"
        )
    _registry[function.name] = function


def _origin(function: SagaFunction[...]) -> str:
    return f"{function.__module__}.{function.__qualname__}"


def _module_level(function: SagaFunction[...]) -> bool:
    return "<locals>" not in function.__qualname__


def _live(function: SagaFunction[...]) -> bool:
    """Whether ``function`` is a module-level saga its module still holds."""
    if not _module_level(function):
        return False
    holder: object = sys.modules.get(function.__module__)
    for part in function.__qualname__.split("."):
        holder = getattr(holder, part, None)
    # A class method saga is looked up bound to its class.
    return holder is function or getattr(holder, "__func__", None) is function


class SagaFunction(Generic[P]):
    """A function declared with ``@saga``: calling it returns a :class:`SagaDefinition`."""

    __name__: str
    __qualname__: str

    def __init__(
        self,
        fn: Callable[P, SagaBody],
        *,
        name: str | None = None,
        recovery: RecoveryPolicy = "resume",
    ) -> None:
        check_not_method_object(fn, "saga")
        if not callable(fn):
            fix = ""
            if isinstance(fn, list | tuple):
                fix = (
                    "; for a fixed list of step calls use SagaDefinition(steps=[...]), "
                    "or decorate a function that returns the list"
                )
            raise SagaDefinitionError(f"@saga takes a function, got {fn!r}{fix}")
        if isinstance(fn, type):  # callable, but calling it makes an instance, not steps
            raise SagaDefinitionError(
                f"@saga takes a function, got the class {qualname_of(fn)}; decorate a "
                "generator function that yields step calls, or a function that returns a "
                "list of them"
            )
        if isinstance(fn, SagaFunction):
            # Its options would be lost, and calling it gives a definition, not steps.
            raise SagaDefinitionError(
                f"{fn.name!r} is already a saga; give all its options in one @saga(...), or "
                "declare another saga from the same function: "
                f"saga(name=...)({fn.__name__}.__wrapped__)"
            )
        if isinstance(fn, Step):
            written = getattr(fn.__wrapped__, "__name__", fn.name)  # as code calls it
            raise SagaDefinitionError(
                "@saga needs a plain generator function (yield each step call) or a function "
                f"returning a list of step calls; {written} is a step, which a saga runs: "
                f"yield {written}(...) from a saga, or list it"
            )
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            raise SagaDefinitionError(
                f"@saga needs a plain generator function (yield each step call) or a function "
                f"returning a list of step calls; {qualname_of(fn)} is async — drop 'async'"
            )
        if name is None and getattr(fn, "__name__", None) == "<lambda>":
            # Every lambda is named so: one would replace another in the registry.
            raise SagaDefinitionError(
                "@saga cannot name a lambda: every lambda is named '<lambda>', and recovery "
                "finds a saga by its name; declare the saga with 'def', or give it a name: "
                "saga(name=...)(lambda ...)"
            )
        name = declared_name(fn, name, what="saga", fix="saga(name=...)(...)")
        recovery = _check_recovery(recovery, "@saga(recovery=...)")
        self.__wrapped__ = fn
        # Read-only (properties below): the saga is registered for recovery under its
        # name, and its options were checked here.
        self._name = name
        self._recovery: RecoveryPolicy = recovery
        self._is_generator = inspect.isgeneratorfunction(fn)
        # Step or saga calls made as statements: refused now, or at the first call for
        # names not declared yet (one falsy attribute read per call after that).
        self._unchecked = check_discarded_calls(fn, name, saga_type=SagaFunction)
        # The positional argument counts that bind without a check (none: always checked).
        self._counts: tuple[int, ...] = _positional_counts(fn) if self._is_generator else ()
        self.__name__ = getattr(fn, "__name__", name)
        self.__qualname__ = getattr(fn, "__qualname__", name)
        self.__doc__ = fn.__doc__
        self.__module__ = getattr(fn, "__module__", None) or __name__
        _register(self)

    @property
    def name(self) -> str:
        """The saga's name: what its runs record, and what recovery finds it by."""
        return self._name

    @property
    def recovery(self) -> RecoveryPolicy:
        """What crash recovery does with a run interrupted going forward."""
        return self._recovery

    @property
    def is_generator(self) -> bool:
        """Whether the function is a generator function (else it returns a list)."""
        return self._is_generator

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.__wrapped__)

    # A @saga in a class body is a method, as a function there is: looked up on an
    # instance, it is bound to it (the instance comes first, as for the class's steps).
    # Typed as Step.__get__ is: mypy applies these whatever @staticmethod or @classmethod
    # is stacked above @saga, so a first parameter taking the class (``cls: type[T]``) is
    # bound to the class or instance it is looked up on, one taking an instance to the
    # instance. (mypy also applies __get__ to what a property returns, with the property's
    # owner as the instance: SagaDefinition.factory is the saga function itself.)
    @overload
    def __get__(  # type: ignore[misc]  # a callable self type, as Step's
        self: Callable[Concatenate[type[T], Q], SagaDefinition], instance: None, owner: type[T], /
    ) -> Callable[Q, SagaDefinition]: ...
    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None, /) -> SagaFunction[P]: ...
    @overload
    def __get__(
        self, instance: SagaDefinition, owner: type[Any] | None = None, /
    ) -> SagaFunction[P]: ...
    @overload
    def __get__(
        self: Callable[Concatenate[S, Q], SagaDefinition],
        instance: S,
        owner: type[Any] | None = None,
        /,
    ) -> Callable[Q, SagaDefinition]: ...
    @overload
    def __get__(  # type: ignore[misc]  # a callable self type, as Step's
        self: Callable[Concatenate[type[T], Q], SagaDefinition],
        instance: T,
        owner: type[Any] | None = None,
        /,
    ) -> Callable[Q, SagaDefinition]: ...
    @overload  # under @staticmethod
    def __get__(self, instance: object, owner: type[Any] | None = None, /) -> SagaFunction[P]: ...
    def __get__(self, instance: object, owner: type[Any] | None = None, /) -> Any:
        if instance is None:
            return self
        return MethodType(self, instance)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> SagaDefinition:
        if self._unchecked:
            check_discarded_calls(
                self.__wrapped__, self._name, self._unchecked, saga_type=SagaFunction
            )
            self._unchecked = ()  # still undeclared: no step or saga this saga could run
        calls: tuple[StepCall[Any], ...] | None = None
        if self._is_generator:
            # Plain positional arguments that fit need no binding.
            if kwargs or len(args) not in self._counts:
                self._check_arguments(args, kwargs)
        else:
            try:
                body = self.__wrapped__(*args, **kwargs)
            except TypeError:
                self._check_arguments(args, kwargs)  # the call, rather than the body, failed?
                raise
            if not isinstance(body, list | tuple):
                raise SagaDefinitionError(
                    f"saga {self.name!r} must return a list or tuple of step calls "
                    f"(or be a generator that yields them), got {_not_a_list(body)}"
                )
            for index, call in enumerate(body):
                _check_call(call, self.name, index)
            if not body:
                raise SagaDefinitionError(
                    f"saga {self.name!r} returned no steps; a saga needs at least one step"
                )
            calls = tuple(body)
        # No checks: a generator saga makes a definition per run, and the factory's
        # options were checked when it was declared.
        definition = _new_definition(SagaDefinition)
        _set_state(definition, (None, self._name, calls, self, args, kwargs, self._recovery))
        return definition

    def _check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise a clear definition error when the function cannot take these arguments."""
        try:
            signature = inspect.signature(self.__wrapped__)
        except (TypeError, ValueError):  # no signature to read: nothing to check
            return
        try:
            signature.bind(*args, **kwargs)
        except TypeError as error:
            raise SagaDefinitionError(
                f"saga {self.name!r} cannot be called with these arguments: {error}; "
                f"its parameters are {_shown(signature)}"
            ) from None

    # Like a function: copied as itself, pickled by reference.
    def __copy__(self) -> SagaFunction[P]:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> SagaFunction[P]:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return by_reference(self, f"saga {self.name!r}")

    def __repr__(self) -> str:
        return f"<saga {self.name}>"


def _not_a_list(body: object) -> str:
    """What a list saga's function returned instead of a list, with the fix."""
    if body is None:
        return "None: end the function with `return [...]` of its step calls, or `yield` each one"
    if inspect.isgenerator(body):
        return (
            "generator; it returned a generator: a decorator between @saga and the generator "
            "function hides that it is one, so put @saga directly above the function"
        )
    if isinstance(body, StepCall):
        written = getattr(body.step.__wrapped__, "__name__", body.step.name)
        return f"a single step call, {body!r}: return it in a list, `return [{written}(...)]`"
    if isinstance(body, SagaDefinition) and body.factory is not None:
        inner = body.factory
        written = getattr(inner, "__name__", inner.name)
        steps = (
            f"make this saga a generator, `yield from {written}.__wrapped__(...)`"
            if inner.is_generator
            else f"`return [*{written}(...).steps]`"
        )
        return (
            f"the definition of saga {inner.name!r}, which this saga cannot run as a step: "
            f"take its steps as this saga's own: {steps}; or run it as a nested saga from "
            f"a step: an @step that awaits orchestrator.execute({written}(...))"
        )
    return type(body).__name__


_SAGA_OPTIONS: dict[str, Any] = {"name": None, "recovery": "resume"}  # and their defaults


@overload
def saga(fn: Callable[P, SagaBody], /) -> SagaFunction[P]: ...
@overload
def saga(
    fn: None = None, /, *, name: str | None = None, recovery: RecoveryPolicy = "resume"
) -> Callable[[Callable[P, SagaBody]], SagaFunction[P]]: ...
def saga(
    fn: Callable[P, SagaBody] | None = None, /, *more: Any, **options: Any
) -> SagaFunction[P] | Callable[[Callable[P, SagaBody]], SagaFunction[P]]:
    """Declare a saga from a generator function (yielding step calls) or a list function.

    ``recovery`` says what crash recovery does with a run interrupted going forward:
    ``"resume"`` (default) continues with the first unfinished step, ``"compensate"``
    undoes the completed ones.
    """
    if more:  # saga(f, g): Python's own error names no fix
        raise SagaDefinitionError(
            f"@saga takes one function (got {1 + len(more)} positional arguments); "
            "decorate each function with its own @saga, and note options are "
            "keyword-only: @saga(name=...)"
        )
    check_options("@saga", options, _SAGA_OPTIONS)  # as @step (Python's own error would not)
    name: str | None = options.get("name", _SAGA_OPTIONS["name"])
    recovery: RecoveryPolicy = options.get("recovery", _SAGA_OPTIONS["recovery"])
    if fn is None:

        def decorate(fn: Callable[P, SagaBody]) -> SagaFunction[P]:
            return SagaFunction(fn, name=name, recovery=recovery)

        return decorate
    if name is not None or recovery != "resume":
        raise SagaDefinitionError(
            "pass either a function or options to saga(), not both: write @saga(name=...)"
        )
    return SagaFunction(fn)


def registered_saga(name: str) -> SagaFunction[...] | None:
    """The ``@saga`` function registered under ``name`` (used by crash recovery)."""
    return _registry.get(name)


def registered_sagas() -> Iterator[SagaFunction[...]]:
    """Every ``@saga`` function registered so far."""
    return iter(list(_registry.values()))


def saga_registry() -> dict[str, SagaFunction[...]]:
    """A copy of the registry, for :func:`forget_local_sagas`."""
    return dict(_registry)


def forget_local_sagas(
    before: dict[str, SagaFunction[...]], after: dict[str, SagaFunction[...]] | None = None
) -> None:
    """Give the names that sagas declared inside a function took since ``before`` (a
    copy of the registry) back to the sagas that held them then, or to none; module-level
    declarations stay. The pytest plugin does so after each test, so that a saga a test
    declares for itself is not what recovery rebuilds in the tests after it, and at the
    teardown of each fixture: given ``after`` (a copy made once the fixture was set up),
    only the names whose sagas it declared, and that still hold them."""
    for name, function in list(_registry.items()):
        earlier = before.get(name)
        if function is earlier or _module_level(function):
            continue
        if after is not None and after.get(name) is not function:
            continue  # declared since, by someone else: theirs to give back
        if earlier is None:
            del _registry[name]
        else:
            _registry[name] = earlier


__all__ = [
    "close_driver",
    "delegation_error",
    "forget_local_sagas",
    "RecoveryPolicy",
    "SagaDefinition",
    "SagaFunction",
    "registered_saga",
    "registered_sagas",
    "saga",
    "saga_registry",
]
