"""Bad input found before anything runs: clear, typed errors."""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import Any

import pytest

from sagakit import (
    MemoryStore,
    SagaDefinition,
    SagaDefinitionError,
    SagaOrchestrator,
    StepTimeout,
    StoreConfigError,
    StoreError,
    saga,
    step,
)


async def _noop(x: int) -> int:
    return x


def test_function_and_options_together_is_refused_even_with_default_values() -> None:
    with pytest.raises(SagaDefinitionError, match="either a function or options"):
        step(_noop, timeout=30)  # type: ignore[call-overload]


def test_unknown_step_option_names_the_known_ones() -> None:
    with pytest.raises(SagaDefinitionError, match=r"unknown option.*timout.*timeout"):
        step(timout=5)  # type: ignore[call-overload]


def test_unknown_saga_option_names_the_known_ones() -> None:
    # It was Python's own "saga() got an unexpected keyword argument 'nmae'", without the
    # options, where @step names them.
    with pytest.raises(SagaDefinitionError) as info:
        saga(nmae="order")  # type: ignore[call-overload]
    assert str(info.value) == (
        "@saga got unknown option(s) nmae (did you mean name?); the options are name, recovery"
    )


@pytest.mark.parametrize(
    ("given", "meant"),
    [
        ("retries", "retry"),
        ("timeout_seconds", "timeout"),
        ("compensation_retries", "compensation_retry"),
        ("compensate_on_error", "compensate_on_failure"),
        ("max_attempts", "retry"),
        ("compensation_attempts", "compensation_retry"),
    ],
)
def test_unknown_step_option_suggests_the_one_meant(given: str, meant: str) -> None:
    # Regression: @step(retries=3) listed the options without saying which was meant.
    with pytest.raises(SagaDefinitionError, match=rf"{given} \(did you mean {meant}\?\)"):
        step(**{given: 3})


@pytest.mark.parametrize("given", ["colour", "compensation", "compensate"])
def test_an_unknown_option_like_none_suggests_nothing(given: str) -> None:
    # compensation=undo is spelt like compensation_retry, but is not it.
    with pytest.raises(SagaDefinitionError) as info:
        step(**{given: "red"})
    assert "did you mean" not in str(info.value)
    assert "the options are name, timeout, retry" in str(info.value)


def test_unknown_saga_option_suggests_the_one_meant() -> None:
    with pytest.raises(SagaDefinitionError, match=r"recover \(did you mean recovery\?\)"):
        saga(recover="compensate")  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("given", "meant"),
    [
        ("retry", "compensation_retry"),
        ("timeout", "compensation_timeout"),
        ("retries", "compensation_retry"),
        ("compensation_timeout", "compensation_timeout"),
        ("colour", None),
    ],
)
def test_an_option_given_to_compensate_suggests_the_steps_option(
    given: str, meant: str | None
) -> None:
    # Regression: @debit.compensate(retry=3) named both compensation options of @step,
    # not the one meant.
    @step
    async def hold_for_suggestion(x: int) -> int:
        return x

    with pytest.raises(SagaDefinitionError) as info:
        hold_for_suggestion.compensate(**{given: 3})  # type: ignore[call-overload]
    said = str(info.value)
    if meant is None:
        assert f"(got {given}); give" in said
    else:
        assert f"(got {given}: did you mean @step({meant}=...)?); give" in said


@pytest.mark.parametrize("store", [None, MemoryStore()], ids=["default", "memory"])
def test_recover_on_start_without_a_durable_store_is_refused(store: MemoryStore | None) -> None:
    # Regression: with the in-memory store recover_on_start=True silently did nothing
    # (recover() returns [] there), while run_worker() refused with a StoreError.
    with pytest.raises(StoreConfigError, match=r"recover_on_start=True .*SQLiteStore") as info:
        SagaOrchestrator(store, recover_on_start=True)
    assert isinstance(info.value, SagaDefinitionError)
    assert isinstance(info.value, StoreError)  # as run_worker() refuses such a store


@pytest.mark.parametrize("listeners", [print, None, 5, "recorder", b"x"])
def test_one_listener_instead_of_a_list_is_refused(listeners: object) -> None:
    # Regression: listeners=recorder (one listener) failed with "TypeError: 'SagaRecorder'
    # object is not iterable", naming neither the argument nor the fix; a string was
    # taken as a list of its characters ("a listener must be callable, got 'r'").
    with pytest.raises(SagaDefinitionError, match=r"listeners must be a list .*listeners=\["):
        SagaOrchestrator(listeners=listeners)  # type: ignore[arg-type]


def test_history_limit_with_an_explicit_store_is_refused() -> None:
    with pytest.raises(SagaDefinitionError, match=r"MemoryStore\(history_limit=100\)"):
        SagaOrchestrator(MemoryStore(), history_limit=5)


@pytest.mark.parametrize(
    ("value", "fix"),
    [
        (3, r"Retry\(attempts=3\)"),
        (5, r"Retry\(attempts=5\)"),
        (0, r"Retry\(attempts=3\)"),  # not attempts=0, which Retry refuses
        (None, r"e\.g\. Retry\(attempts=3\)"),
        ("3", r"e\.g\. Retry"),
    ],
)
def test_an_orchestrator_compensation_retry_that_is_no_retry_names_the_fix(
    value: object, fix: str
) -> None:
    # Regression: "compensation_retry must be a sagakit.Retry, got 3", without the fix,
    # where @step(compensation_retry=3) takes a number of attempts.
    problem = "compensation_retry must be a sagakit.Retry"
    with pytest.raises(SagaDefinitionError, match=f"{problem}.*{fix}"):
        SagaOrchestrator(compensation_retry=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("option", ["continue_on_compensation_failure", "recover_on_start"])
@pytest.mark.parametrize("value", ["no", "false", 0, 1, None])
def test_a_yes_or_no_orchestrator_option_must_be_a_bool(option: str, value: object) -> None:
    # bool("false") is True: such a value silently turned the option on.
    with pytest.raises(SagaDefinitionError, match=f"{option} must be True or False"):
        SagaOrchestrator(**{option: value})  # type: ignore[arg-type]


@pytest.mark.asyncio
@pytest.mark.parametrize("limit", [-1, 1.5, True])
async def test_get_history_with_a_bad_limit_is_refused(limit: object) -> None:
    with pytest.raises(SagaDefinitionError, match="limit"):
        await SagaOrchestrator().get_history(limit)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_step_awaited_alone_reports_its_name_without_an_index() -> None:
    @step(timeout=0.01)
    async def slow() -> None:
        await asyncio.sleep(1)

    with pytest.raises(StepTimeout) as caught:
        await slow()
    assert caught.value.step_index == -1
    assert str(caught.value).startswith("step 'slow' timed out after")


@pytest.mark.asyncio
@pytest.mark.parametrize("retried", ["step", "compensation"])
async def test_a_sleep_returning_no_awaitable_is_named_when_a_retry_waits(retried: str) -> None:
    # Regression: sleep=lambda seconds: None ("do not wait" in a test) failed at the first
    # retry with a bare "TypeError: object NoneType can't be used in 'await' expression"
    # from execute(), naming neither the option nor the fix.
    from sagakit import Retry, SagaDefinition

    @step(retry=Retry(attempts=2), compensation_retry=Retry(attempts=2))
    async def flaky() -> None:
        if retried == "step":
            raise ConnectionError("try again")

    @flaky.compensate
    async def undo() -> None:
        raise ConnectionError("try again")

    @step
    async def fail() -> None:
        raise ValueError("no")

    orchestrator = SagaOrchestrator(sleep=lambda seconds: None)
    with pytest.raises(SagaDefinitionError, match=r"sleep=\.\.\.\) must return an awaitable"):
        await orchestrator.execute(SagaDefinition(steps=[flaky(), fail()]))


def test_a_sleep_class_instead_of_an_instance_is_refused_when_the_orchestrator_is_made() -> None:
    # Regression: sleep=InstantSleep (the class) was taken, and the first retry failed in
    # execute(), the call InstantSleep(seconds) having made an InstantSleep, not a wait.
    from sagakit.testing import InstantSleep

    with pytest.raises(SagaDefinitionError, match=r"not the class InstantSleep.*InstantSleep\("):
        SagaOrchestrator(sleep=InstantSleep)  # type: ignore[arg-type]


class _AsyncCallable:
    async def __call__(self, item: str) -> str:
        return item


def test_an_object_with_an_async_call_is_told_to_wrap_it_in_a_function() -> None:
    # It said only "is not a coroutine function; declare it with 'async def'", which its
    # async __call__ already is.
    fix = "object with an async __call__: declare a function that awaits it"
    with pytest.raises(SagaDefinitionError, match=fix):
        step(_AsyncCallable())

    @step
    async def ship(item: str) -> str:
        return item

    with pytest.raises(SagaDefinitionError, match=fix):
        ship.compensate(_AsyncCallable())
    with pytest.raises(SagaDefinitionError, match="declare it with 'async def'"):
        step(lambda item: item)


def _plain_wrapper(fn: Any) -> Any:
    """A decorator whose wrapper is a plain def returning the coroutine (functools.wraps)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


def test_an_async_def_behind_a_plain_wrapper_is_told_to_make_the_wrapper_async() -> None:
    # It said "debit is not a coroutine function; declare it with 'async def'" of a
    # function declared with 'async def', only wrapped by a decorator.
    async def debit(account: str) -> None:
        return None

    fix = (
        "it is an 'async def' wrapped by a decorator whose wrapper is a plain 'def'; "
        "make that wrapper an 'async def' that awaits the function"
    )
    with pytest.raises(SagaDefinitionError, match=re.escape(fix)):
        step(_plain_wrapper(debit))

    @step
    async def credit(account: str) -> None:
        return None

    with pytest.raises(SagaDefinitionError, match=re.escape(fix)):
        credit.compensate(_plain_wrapper(debit))


@step
async def _reserve(item: str) -> str:
    return item


async def _undecorated(item: str) -> str:
    return item


def _list_saga_of(*items: object) -> object:
    @saga
    def order(item: str) -> list[Any]:
        return list(items)

    return order


def test_a_step_not_called_is_named_in_the_fix() -> None:
    # It said "call the step with its arguments: debit('A', 10), not debit" for any step.
    with pytest.raises(SagaDefinitionError, match=r"_reserve\(\.\.\.\), not _reserve\)"):
        SagaDefinition("o", steps=[_reserve])  # type: ignore[list-item]


def test_an_undecorated_async_function_is_told_to_be_decorated() -> None:
    with pytest.raises(SagaDefinitionError, match=r"decorate _undecorated with @step, then"):
        SagaDefinition("o", steps=[_undecorated])  # type: ignore[list-item]
    coroutine = _undecorated("pen")
    with pytest.raises(SagaDefinitionError, match=r"coroutine of _undecorated: decorate _undec"):
        SagaDefinition("o", steps=[coroutine])  # type: ignore[list-item]


@pytest.mark.asyncio
async def test_a_generator_saga_yielding_a_list_is_told_steps_run_one_at_a_time() -> None:
    @saga
    def both(item: str) -> Generator[Any, Any, None]:
        yield [_reserve(item), _reserve(item)]

    with pytest.raises(SagaDefinitionError, match="steps run one at a time: give each step call"):
        await SagaOrchestrator().execute(both("pen"))


@pytest.mark.asyncio
@pytest.mark.parametrize("calls", [list, tuple, iter, lambda calls: map(lambda c: c, calls)])
async def test_a_generator_saga_yielding_from_a_list_is_told_to_yield_each_call(
    calls: Callable[[list[Any]], Any],
) -> None:
    # Regression: `yield from [reserve(a), reserve(b)]` ran the first step, then failed with
    # a bare "AttributeError: 'list_iterator' object has no attribute 'send'": sagakit sends
    # each step's result into the saga, which only a generator takes.
    undone: list[str] = []

    @step
    async def reserve(item: str) -> str:
        return item

    @reserve.compensate
    async def release(item: str) -> None:
        undone.append(item)

    @saga
    def both(first: str, second: str) -> Generator[Any, Any, None]:
        yield reserve("box")
        yield from calls([reserve(first), reserve(second)])

    fix = r"`yield from` .*; yield the step calls one at a time: `for call in calls: yield call`"
    with pytest.raises(SagaDefinitionError, match=fix) as caught:
        await SagaOrchestrator().execute(both("pen", "ink"))
    assert isinstance(caught.value.__cause__, AttributeError)
    assert undone == ["pen", "box"]  # the steps that ran are compensated, as for any misuse


@saga
def _inner(item: str) -> Generator[Any, Any, None]:
    yield _reserve(item)


@pytest.mark.asyncio
async def test_a_saga_given_as_a_step_is_told_how_to_nest_it() -> None:
    # A definition was shown without a fix, and a @saga function was told "call the step
    # with its arguments: debit('A', 10), not debit".
    nest = "run it as a nested saga from a step: an @step that awaits orchestrator.execute("

    @saga
    def outer(item: str) -> Generator[Any, Any, None]:
        yield _inner(item)

    with pytest.raises(SagaDefinitionError, match=re.escape(f"(a saga, not a step: {nest}")):
        await SagaOrchestrator().execute(outer("pen"))
    with pytest.raises(SagaDefinitionError, match=re.escape(f"(a saga, not a step: {nest}")):
        SagaDefinition("o", steps=[_reserve("pen"), _inner("pen")])  # type: ignore[list-item]
    with pytest.raises(SagaDefinitionError) as info:
        SagaDefinition("o", steps=[_inner])  # type: ignore[list-item]
    assert str(info.value).endswith(
        f"got <saga _inner> (a @saga function, not a step: {nest}_inner(...)))"
    )


@pytest.mark.asyncio
async def test_a_saga_delegated_to_with_yield_from_is_told_how_to_nest_it() -> None:
    # `yield from` works for a step call; for a saga it raised a bare TypeError,
    # "'SagaDefinition' object is not iterable", from the saga's body.
    undone: list[str] = []

    @step
    async def reserve(item: str) -> str:
        return item

    @reserve.compensate
    async def release(item: str) -> None:
        undone.append(item)

    @saga
    def outer(item: str) -> Generator[Any, Any, None]:
        yield reserve("box")
        yield from _inner(item)  # type: ignore[misc]

    with pytest.raises(SagaDefinitionError) as info:
        await SagaOrchestrator().execute(outer("pen"))
    assert str(info.value) == (
        "`yield from` a saga, <SagaDefinition _inner steps=?>: a saga is not a step; run it "
        "as a nested saga from a step: an @step that awaits orchestrator.execute(_inner(...)), "
        "or yield its steps as this saga's own: `yield from _inner.__wrapped__(...)`"
    )
    assert undone == ["box"]
    with pytest.raises(SagaDefinitionError, match=r"must be an iterable of step calls, got <Saga"):
        SagaDefinition("o", steps=_inner("pen"))  # type: ignore[arg-type]


def test_saga_given_a_list_points_to_the_builder() -> None:
    with pytest.raises(SagaDefinitionError, match=r"takes a function.*SagaDefinition\(steps="):
        saga([_reserve("pen")])  # type: ignore[call-overload]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("given", "fix"),
    [
        (lambda: _reserve("pen"), r"await the step call to run that step on its own"),
        (lambda: [_reserve("pen")], r"build the saga from the step calls: SagaDefinition\("),
        (lambda: (x for x in [_reserve("pen")]), r"decorate the generator function with @saga"),
        (lambda: _list_saga_of(_reserve("pen")), r"call the @saga function .*: order\(\.\.\.\)"),
    ],
)
async def test_execute_given_something_else_names_the_fix_for_it(
    given: Callable[[], object], fix: str
) -> None:
    # Each said "call your @saga function first: transfer('A', 'B', 10)".
    with pytest.raises(
        SagaDefinitionError, match=r"execute\(\) takes a SagaDefinition, got .*; " + fix
    ):
        await SagaOrchestrator().execute(given())  # type: ignore[arg-type]


def _no_arguments() -> None:
    pass


def _two_required(transition: object, extra: object) -> None:
    pass


async def _async_no_arguments() -> None:
    pass


class _CallableTakingNothing:
    def __call__(self) -> None:
        pass


class _Listeners:
    def method(self, transition: object) -> None:
        pass

    def too_many(self, transition: object, extra: object) -> None:
        pass


def _adding_listener(how: str) -> Callable[[Any], object]:
    """How a test gives a listener: ``add_listener()`` or ``SagaOrchestrator(listeners=...)``."""
    if how == "add_listener":
        return SagaOrchestrator().add_listener
    return lambda listener: SagaOrchestrator(listeners=[listener])


@pytest.mark.parametrize(
    ("listener", "name"),
    [
        (_no_arguments, "_no_arguments()"),
        (_two_required, "_two_required(transition: 'object', extra: 'object')"),
        (_async_no_arguments, "_async_no_arguments()"),
        (_CallableTakingNothing(), "_CallableTakingNothing()"),
        (_Listeners().too_many, "_Listeners.too_many(transition: 'object', extra: 'object')"),
        (lambda: None, "<lambda>()"),
    ],
)
@pytest.mark.parametrize("how", ["add_listener", "listeners="])
def test_a_listener_that_cannot_take_the_transition_is_refused_when_added(
    listener: Any, name: str, how: str
) -> None:
    # Regression: it was accepted, and failed on every transition, each failure logged to
    # the "sagakit" logger, which shows nothing unless the application configured logging.
    with pytest.raises(SagaDefinitionError) as raised:
        _adding_listener(how)(listener)
    message = str(raised.value)
    assert f"called with one argument, the Transition, but {name} cannot take it" in message
    assert "def listener(transition)" in message


def _generator_listener(transition: object) -> Iterator[None]:
    yield


async def _async_generator_listener(transition: object) -> AsyncIterator[None]:
    yield


class _AsyncGeneratorCall:
    async def __call__(self, transition: object) -> AsyncIterator[None]:
        yield


class _GeneratorMethod:
    def method(self, transition: object) -> Iterator[None]:
        yield


@pytest.mark.parametrize(
    ("listener", "name", "kind"),
    [
        (_generator_listener, "_generator_listener", "a generator"),
        (_async_generator_listener, "_async_generator_listener", "an async generator"),
        (_AsyncGeneratorCall(), "_AsyncGeneratorCall.__call__", "an async generator"),
        (_GeneratorMethod().method, "_GeneratorMethod.method", "a generator"),
        (functools.partial(_generator_listener), "_generator_listener", "a generator"),
    ],
)
@pytest.mark.parametrize("how", ["add_listener", "listeners="])
def test_a_generator_listener_is_refused_when_added(
    listener: Any, name: str, kind: str, how: str
) -> None:
    # Regression: it was accepted, and each call only made a generator, never run, so the
    # listener heard nothing, silently (what a listener returns is ignored unless awaitable).
    with pytest.raises(SagaDefinitionError) as raised:
        _adding_listener(how)(listener)
    message = str(raised.value)
    assert f"a listener is called once per transition, but {name} is {kind} function" in message
    assert "remove the 'yield'" in message


def _with_defaults(transition: object, extra: object = None, *, more: object = None) -> None:
    pass


def _star_args(*args: object) -> None:
    pass


async def _async_listener(transition: object) -> None:
    pass


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "listener",
    [
        _with_defaults,
        _star_args,
        _async_listener,
        _Listeners().method,
        lambda transition: None,
        print,  # a builtin: its signature may be unknown; accepted
        [].append,
        functools.partial(_two_required, extra=1),
    ],
)
async def test_a_listener_taking_the_transition_is_accepted(listener: Any) -> None:
    orchestrator = SagaOrchestrator()
    orchestrator.add_listener(listener)
    assert await orchestrator.execute(SagaDefinition(steps=[_echo(1)])) == [1]


@step
async def _echo(x: int) -> int:
    return x


@step
async def misuse_noop(x: int) -> int:
    return x


@saga(name="misuse.one_step")
def misuse_one_step(x: int) -> list[Any]:
    return [misuse_noop(x)]


def test_awaited_outside_asyncio_says_sagakit_runs_on_asyncio() -> None:
    # Regression: awaited by another event loop — trio, say, as IPython's %autoawait trio
    # runs a notebook cell — sagakit raised asyncio's bare "no running event loop". A
    # coroutine driven by send(), with no asyncio loop running, is what such a loop does.
    orchestrator = SagaOrchestrator()
    awaited = {
        "execute()": orchestrator.execute(misuse_one_step(1)),
        "a step call": misuse_noop(1).__await__(),
        "recover()": orchestrator.recover(),
        "run_worker()": orchestrator.run_worker(handle_signals=False),
    }
    for what, coroutine in awaited.items():
        with pytest.raises(RuntimeError) as caught:
            coroutine.send(None)
        assert str(caught.value) == (
            f"{what} was awaited with no asyncio event loop running: sagakit runs on "
            "asyncio (under trio or another event loop, run it in asyncio; in IPython or "
            "Jupyter, %autoawait asyncio)"
        )
