"""OpenTelemetry tracing for sagas (the optional ``sagakit[otel]`` extra).

A span per saga run, with a child span per step and per compensation; failures set
the span status to ERROR and record the exception, retries are span events. The step
span is the current span while the step runs, so spans a step starts nest under it.

>>> from sagakit.otel import instrument
>>> instrument(orchestrator)            # or SagaOrchestrator(listeners=[SagaTracer()])

``import sagakit`` never imports OpenTelemetry; only importing this module does.
"""

from __future__ import annotations

import asyncio
from contextvars import Token
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import context, trace
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
except ModuleNotFoundError as _missing:  # pragma: no cover - tested in a subprocess
    raise ModuleNotFoundError(
        f"sagakit.otel needs OpenTelemetry's API ({_missing}): pip install 'sagakit[otel]'",
        name=_missing.name,
    ) from _missing

from ._checks import not_the_class
from ._counted import counted
from ._notify import logger
from ._runs import ABANDONED, describe_error
from .exceptions import SagaDefinitionError, StepTimeout
from .status import SagaStatus
from .transitions import Transition, TransitionKind

if TYPE_CHECKING:
    from ._orchestrator import SagaOrchestrator

_K = TransitionKind
_STARTS = {_K.STEP_STARTED: "step", _K.COMPENSATION_STARTED: "compensation"}
_ENDS = {
    _K.STEP_COMPLETED: "step",
    _K.STEP_FAILED: "step",
    _K.STEP_TIMED_OUT: "step",
    _K.COMPENSATION_COMPLETED: "compensation",
    _K.COMPENSATION_FAILED: "compensation",
}
_RETRIES = {_K.STEP_RETRYING: "step", _K.COMPENSATION_RETRYING: "compensation"}
CRASHED = "process crashed (simulated)"


@dataclass(slots=True)
class _Open:
    """A span that is open, and the token making it current in the task that started it."""

    span: Span
    token: Token[Context] | None = None
    task: asyncio.Task[Any] | None = None

    def detach(self) -> None:
        if self.token is not None and _task() is self.task:
            context.detach(self.token)
        self.token = None


@dataclass(slots=True)
class _Saga:
    span: _Open
    children: dict[tuple[str, int], _Open] = field(default_factory=dict)


def _task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


class SagaTracer:
    """A listener creating OpenTelemetry spans for saga runs, steps and compensations.

    ``tracer_provider`` defaults to the global one. Register it with
    ``SagaOrchestrator(listeners=[SagaTracer()])`` or :func:`instrument`.
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        from . import __version__

        _check_provider(tracer_provider)
        self._provider = tracer_provider  # as given: instrument() compares it
        self._tracer = trace.get_tracer("sagakit", __version__, tracer_provider=tracer_provider)
        # By saga id and run number: orchestrators with stores of their own may run one id
        # at the same time, and each run has spans of its own.
        self._sagas: dict[tuple[str, int], _Saga] = {}

    def __call__(self, transition: Transition) -> None:
        kind = transition.kind
        saga = self._sagas.get((transition.saga_id, transition.run_number))
        if saga is None:
            if kind is _K.SAGA_FINISHED or kind is _K.SAGA_STOPPED:
                return
            saga = self._start_saga(transition)
        if kind in _STARTS:
            self._start_child(saga, _STARTS[kind], transition)
        elif kind in _ENDS:
            self._end_child(saga, _ENDS[kind], transition)
        elif kind in _RETRIES:
            self._retry(saga, _RETRIES[kind], transition)
        elif kind is _K.SAGA_FINISHED:
            self._finish_saga(saga, transition)
        elif kind is _K.SAGA_STOPPED:
            self._stop_saga(saga, transition)

    def _attributes(self, transition: Transition, *, step: bool) -> dict[str, str | int]:
        attributes: dict[str, str | int] = {
            "sagakit.saga.id": transition.saga_id,
            "sagakit.saga.name": transition.saga_name,
        }
        if step and transition.step_name is not None and transition.step_index is not None:
            attributes["sagakit.step.name"] = transition.step_name
            attributes["sagakit.step.index"] = transition.step_index
        return attributes

    def _start(self, name: str, attributes: dict[str, str | int], parent: Span | None) -> _Open:
        ctx = None if parent is None else trace.set_span_in_context(parent)
        span = self._tracer.start_span(
            name, context=ctx, kind=SpanKind.INTERNAL, attributes=attributes
        )
        return _Open(span, context.attach(trace.set_span_in_context(span)), _task())

    def _start_saga(self, transition: Transition) -> _Saga:
        # The saga's attributes only, even when a step's transition starts it (a recovery
        # that only compensates begins with its first compensation).
        attributes = self._attributes(transition, step=False)
        opened = self._start(f"saga {transition.saga_name}", attributes, None)
        saga = self._sagas[transition.saga_id, transition.run_number] = _Saga(opened)
        return saga

    def _start_child(self, saga: _Saga, role: str, transition: Transition) -> None:
        key = (role, _index(transition))
        opened = saga.children.get(key)
        if opened is not None:  # a further attempt of the same step: one span for all
            opened.span.set_attribute("sagakit.step.attempts", transition.attempt)
            return
        if role == "compensation":
            self._end_steps(saga)
        name = f"{'compensate' if role == 'compensation' else 'step'} {transition.step_name}"
        opened = self._start(name, self._attributes(transition, step=True), saga.span.span)
        opened.span.set_attribute("sagakit.step.attempts", max(transition.attempt, 1))
        opened.span.set_attribute("sagakit.compensation", role == "compensation")
        saga.children[key] = opened

    def _end_steps(self, saga: _Saga) -> None:
        """End the step spans still open when compensating begins, ``"interrupted"``: a
        step whose end no transition tells (cancelled before its function was called,
        after its start was told; its failure not recorded) is over once its
        compensations start, and its span must not run on over theirs."""
        for key in [key for key in saga.children if key[0] == "step"]:
            opened = saga.children.pop(key)
            opened.span.set_status(Status(StatusCode.ERROR, "interrupted"))
            opened.detach()
            opened.span.end()

    def _end_child(self, saga: _Saga, role: str, transition: Transition) -> None:
        opened = saga.children.pop((role, _index(transition)), None)
        if opened is None:
            return
        span = opened.span
        span.set_attribute("sagakit.step.attempts", max(transition.attempt, 1))
        if transition.error is None:
            span.set_status(Status(StatusCode.OK))
        else:
            _record_exception(span, transition.error)
            span.set_status(Status(StatusCode.ERROR, describe_error(transition.error)))
            if transition.kind is _K.STEP_TIMED_OUT or (
                transition.kind is _K.COMPENSATION_FAILED
                and isinstance(transition.error, StepTimeout)  # not a TimeoutError it raised
            ):
                span.set_attribute("sagakit.step.timed_out", True)
        opened.detach()
        span.end()

    def _retry(self, saga: _Saga, role: str, transition: Transition) -> None:
        opened = saga.children.get((role, _index(transition)))
        if opened is None or transition.error is None:
            return
        _record_exception(
            opened.span, transition.error, {"sagakit.step.attempt": transition.attempt}
        )
        opened.span.add_event(
            "sagakit.retry",
            {"sagakit.step.attempt": transition.attempt, "error": describe_error(transition.error)},
        )

    def _end_children(self, saga: _Saga, why: str = "interrupted") -> None:
        for opened in reversed(saga.children.values()):  # interrupted (cancelled) ones
            opened.span.set_status(Status(StatusCode.ERROR, why))
            opened.token = None  # resetting the saga's token below restores the context
            opened.span.end()

    def _stop_saga(self, saga: _Saga, transition: Transition) -> None:
        """The run stopped here without finishing (fenced out, handed back, its end not
        recorded): end its spans, as no SAGA_FINISHED will come."""
        del self._sagas[transition.saga_id, transition.run_number]
        self._end_children(saga)
        reason = "" if transition.error is None else f": {describe_error(transition.error)}"
        saga.span.span.set_status(Status(StatusCode.ERROR, f"saga stopped{reason}"))
        saga.span.detach()
        saga.span.span.end()

    def _sagakit_crashed(self, saga_id: str, crash: BaseException, run_number: int) -> None:
        """A simulated crash stopped the run (the orchestrator tells nothing more): end
        its spans, ``ERROR`` ``"process crashed (simulated)"``, and restore the context
        they were current in, rather than hold them open for good."""
        self._end_run(saga_id, run_number, CRASHED, crash)

    def _sagakit_abandoned(self, saga_id: str, end: Transition, run_number: int) -> None:
        """The run's task was destroyed with its closed event loop, and it stopped where
        it waited (the orchestrator tells nothing more; ``end`` is its end as the store
        left it): end its spans, ``ERROR`` ``"abandoned: its event loop was closed while
        it ran"``, as after a crash. No exception is recorded: none was raised (the
        ``GeneratorExit`` closing its coroutine is the garbage collector's)."""
        self._end_run(saga_id, run_number, ABANDONED, None)

    def _end_run(
        self, saga_id: str, run_number: int, why: str, error: BaseException | None
    ) -> None:
        """End the spans of a run that stopped untold, ``ERROR`` ``why`` (``error``
        recorded on the saga span, if given), and restore the context they were current
        in, where that is the context here."""
        saga = self._sagas.pop((saga_id, run_number), None)
        if saga is None:
            return
        self._end_children(saga, why)
        span = saga.span.span
        if error is not None:
            span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, why))
        saga.span.detach()
        span.end()

    def _finish_saga(self, saga: _Saga, transition: Transition) -> None:
        del self._sagas[transition.saga_id, transition.run_number]
        self._end_children(saga)
        span = saga.span.span
        span.set_attribute("sagakit.saga.status", str(transition.status))
        if transition.status is SagaStatus.COMPLETED:
            span.set_status(Status(StatusCode.OK))
        else:
            span.set_status(Status(StatusCode.ERROR, f"saga ended {transition.status}"))
        saga.span.detach()
        span.end()

    def __repr__(self) -> str:
        return f"<SagaTracer {counted(len(self._sagas), 'open saga')}>"


def _record_exception(
    span: Span, error: BaseException, attributes: dict[str, str | int] | None = None
) -> None:
    """``span.record_exception(error)``, even for an error whose ``str()`` raises (the
    SDK's call of it would raise out of the tracer, leaving the span open for good)."""
    try:
        span.record_exception(error, attributes=attributes)
    except Exception:
        text = describe_error(error)  # "Name: <str() raised ...>"
        event = {
            "exception.type": type(error).__qualname__,
            "exception.message": text.partition(": ")[2],
            **(attributes or {}),
        }
        span.add_event("exception", event)


def _index(transition: Transition) -> int:
    return -1 if transition.step_index is None else transition.step_index


def _check_provider(provider: object) -> None:
    """Refuse what is not a tracer provider instance, naming the fix (the API's
    ``get_tracer`` took it and failed with an ``AttributeError`` naming neither)."""
    if provider is None:
        return
    if isinstance(provider, type):
        raise not_the_class(provider, "tracer_provider")
    if callable(getattr(provider, "get_tracer", None)):
        return
    if callable(getattr(provider, "start_span", None)):  # a Tracer, not its provider
        raise SagaDefinitionError(
            f"tracer_provider must be a tracer provider, got the tracer {provider!r}; pass "
            "the provider it came from (TracerProvider()), or None for the global one"
        )
    raise SagaDefinitionError(
        f"tracer_provider must be a tracer provider such as the SDK's TracerProvider(), "
        f"or None for the global one, got {provider!r}"
    )


def _provider_of(tracer_provider: trace.TracerProvider | None) -> trace.TracerProvider:
    """The provider a tracer given ``tracer_provider`` makes its spans with (``None``: the
    global one, as it is now)."""
    return trace.get_tracer_provider() if tracer_provider is None else tracer_provider


def instrument(
    orchestrator: SagaOrchestrator, tracer_provider: trace.TracerProvider | None = None
) -> SagaTracer:
    """Add a :class:`SagaTracer` to ``orchestrator`` and return it.

    Already instrumented (a tracer of the same ``tracer_provider`` among its listeners),
    it adds none and returns that one, with a warning, as OpenTelemetry's instrumentors
    do: a second tracer would make every span twice. One of another provider is refused
    (:class:`~sagakit.SagaDefinitionError`): remove it first."""
    from ._orchestrator import SagaOrchestrator

    if not isinstance(orchestrator, SagaOrchestrator):
        if isinstance(orchestrator, type) and issubclass(orchestrator, SagaOrchestrator):
            raise not_the_class(orchestrator, "instrument()'s orchestrator")
        fix = ""
        if callable(getattr(orchestrator, "get_tracer", None)):  # the arguments swapped
            fix = "; write instrument(orchestrator, tracer_provider=provider)"
        raise SagaDefinitionError(
            f"instrument() takes the SagaOrchestrator to trace first, got {orchestrator!r}{fix}"
        )
    _check_provider(tracer_provider)
    for listener in orchestrator._listeners:
        if not isinstance(listener, SagaTracer):
            continue
        if _provider_of(listener._provider) is not _provider_of(tracer_provider):
            raise SagaDefinitionError(
                f"{orchestrator!r} is already instrumented, by {listener!r} of another tracer "
                "provider; a second tracer would make every span twice: call "
                "orchestrator.remove_listener(tracer) with the one it has first"
            )
        logger.warning(
            "sagakit: %r is already instrumented; instrument() returns its tracer and adds "
            "no second one",
            orchestrator,
        )
        return listener
    tracer = SagaTracer(tracer_provider)
    orchestrator.add_listener(tracer)
    return tracer


__all__ = ["SagaTracer", "instrument"]
