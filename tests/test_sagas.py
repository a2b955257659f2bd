"""Issue 2, points 3 and 5: saga definitions (generator, list, builder), ids and misuse."""

from __future__ import annotations

import asyncio
import gc
import inspect
import pickle
from collections.abc import Generator
from typing import Any

import pytest

from sagakit import (
    CompensationFailed,
    Retry,
    SagaAlreadyExecuting,
    SagaAlreadyFailed,
    SagaDefinition,
    SagaDefinitionError,
    SagaFunction,
    SagaOrchestrator,
    SagaStatus,
    StepCall,
    StepFailed,
    saga,
    step,
)

calls: list[tuple[str, Any]] = []


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    calls.clear()


@step
async def debit(account: str, amount: float) -> list[tuple[str, str, float]]:
    calls.append(("debit", account))
    return [("debited", account, amount)]


@debit.compensate
async def undo_debit(account: str, amount: float) -> tuple[str, str, float]:
    calls.append(("undo_debit", account))
    return ("refunded", account, amount)


@step
async def credit(account: str, amount: float) -> list[tuple[str, str, float]]:
    calls.append(("credit", account))
    return [("credited", account, amount)]


@step
async def fail(reason: str) -> None:
    calls.append(("fail", reason))
    raise RuntimeError(reason)


@saga(name="sagas.transfer")
def transfer(src: str, dst: str, amount: float) -> Generator[StepCall[Any], Any, None]:
    """Move money."""
    yield debit(src, amount)
    yield credit(dst, amount)


@saga(name="sagas.transfer_list")
def transfer_list(src: str, dst: str, amount: float) -> list[StepCall[Any]]:
    return [debit(src, amount), credit(dst, amount)]


# ------------------------------------------------------------------ the three forms


@pytest.mark.asyncio
async def test_generator_form_feeds_each_result_to_the_next_step() -> None:
    @step
    async def open_order(customer: str) -> str:
        return f"order-of-{customer}"

    @step
    async def bill(order_id: str) -> dict[str, str]:
        return {"billed": order_id}

    @saga
    def checkout(customer: str) -> Generator[StepCall[Any], Any, None]:
        order_id = yield open_order(customer)
        bill_result = yield bill(order_id)
        calls.append(("saw", bill_result))

    events = await SagaOrchestrator().execute(checkout("ann"))

    assert events == ["order-of-ann", {"billed": "order-of-ann"}]
    assert calls == [("saw", {"billed": "order-of-ann"})]


@pytest.mark.asyncio
async def test_the_three_forms_give_the_same_events() -> None:
    orchestrator = SagaOrchestrator()
    expected = [("debited", "A", 5.0), ("credited", "B", 5.0)]
    builder = SagaDefinition().add_step(debit("A", 5.0)).add_step(credit("B", 5.0))

    assert await orchestrator.execute(transfer("A", "B", 5.0)) == expected
    assert await orchestrator.execute(transfer_list("A", "B", 5.0)) == expected
    assert await orchestrator.execute(builder) == expected
    assert calls == [("debit", "A"), ("credit", "B")] * 3


def test_calling_a_saga_runs_nothing() -> None:
    definition = transfer("A", "B", 1.0)
    listed = transfer_list("A", "B", 1.0)

    assert isinstance(definition, SagaDefinition)
    assert isinstance(listed, SagaDefinition)
    assert calls == []


def test_saga_function_keeps_name_doc_and_signature() -> None:
    assert isinstance(transfer, SagaFunction)
    assert transfer.__name__ == "transfer"
    assert transfer.__doc__ == "Move money."
    assert list(inspect.signature(transfer).parameters) == ["src", "dst", "amount"]
    assert repr(transfer) == "<saga sagas.transfer>"


def test_saga_options_name_the_definition() -> None:
    @saga(name="money-move")
    def move() -> list[StepCall[Any]]:
        return [debit("A", 1.0)]

    assert move().name == "money-move"
    with pytest.raises(SagaDefinitionError, match="not both"):
        saga(move.__wrapped__, name="x")  # type: ignore[call-overload]


def test_saga_given_more_than_one_function_says_to_decorate_each() -> None:
    # Regression: saga(f, g) failed with Python's bare "saga() takes from 0 to 1
    # positional arguments but 2 were given", as step(f, g) did.
    def sagas_extra_a() -> list[StepCall[Any]]:
        return [debit("A", 1.0)]

    def sagas_extra_b() -> list[StepCall[Any]]:
        return [debit("B", 1.0)]

    with pytest.raises(SagaDefinitionError) as refused:
        saga(sagas_extra_a, sagas_extra_b)  # type: ignore[call-overload]
    message = str(refused.value)
    assert "@saga takes one function (got 2 positional arguments)" in message
    assert "decorate each function with its own @saga" in message
    assert "options are keyword-only: @saga(name=...)" in message


@pytest.mark.parametrize("name", ["", 3])
def test_a_bad_saga_name_is_refused_naming_the_function(name: Any) -> None:
    def move() -> list[StepCall[Any]]:
        return [debit("A", 1.0)]

    with pytest.raises(SagaDefinitionError, match="non-empty string") as info:
        saga(name=name)(move)
    assert str(info.value).startswith("@saga(name=...) of 'move' must be"), info.value


# ------------------------------------------------------------------ definitions


def test_definition_metadata_before_running() -> None:
    listed = transfer_list("A", "B", 1.0).metadata()
    generated = transfer("A", "B", 1.0).metadata()
    built = SagaDefinition("t-1").add_step(debit("A", 1.0)).metadata()

    assert listed.status is SagaStatus.NOT_STARTED
    assert (listed.name, listed.id, listed.total_steps, listed.steps_executed) == (
        "sagas.transfer_list",
        None,
        2,
        0,
    )
    assert generated.total_steps is None
    assert generated.name == "sagas.transfer"
    assert (built.id, built.name, built.total_steps) == ("t-1", "t-1", 1)
    assert listed.started_at is None
    assert listed.finished_at is None


def test_total_steps_and_steps() -> None:
    listed = transfer_list("A", "B", 1.0)
    assert listed.total_steps == 2
    assert listed.steps is not None
    assert [c.name for c in listed.steps] == ["debit", "credit"]
    assert transfer("A", "B", 1.0).total_steps is None
    assert transfer("A", "B", 1.0).steps is None


def test_definitions_are_immutable() -> None:
    definition = SagaDefinition("t-1").add_step(debit("A", 1.0))

    with pytest.raises(AttributeError, match="immutable"):
        definition.foo = 1  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="immutable"):
        definition._saga_id = "other"
    with pytest.raises(AttributeError):
        definition.saga_id = "other"  # type: ignore[misc]


def test_a_saga_functions_options_are_read_only() -> None:
    # Regression: settable. A renamed saga was still registered under its old name, so
    # recovery dead-lettered its runs ("no @saga named ... is registered; import the
    # module"), and recovery="bogus" went unchecked into every definition and the log.
    @saga(name="read-only-options", recovery="compensate")
    def move() -> list[StepCall[Any]]:
        return [debit("A", 1.0)]

    for attribute, value in [("name", "other"), ("recovery", "bogus"), ("is_generator", True)]:
        with pytest.raises(AttributeError):
            setattr(move, attribute, value)
    assert (move.name, move.recovery, move.is_generator) == (
        "read-only-options",
        "compensate",
        False,
    )
    assert (move().name, move().recovery) == ("read-only-options", "compensate")
    assert transfer.is_generator
    move.__doc__ = "Other decorators may still set a function's usual attributes."


def test_definitions_compare_by_their_parts_and_are_unhashable() -> None:
    # As docs/api.md says: equal when all parts are equal; step calls compare by identity.
    assert transfer("A", "B", 1.0) == transfer("A", "B", 1.0)
    assert transfer("A", "B", 1.0) != transfer("A", "B", 2.0)
    assert transfer("A", "B", 1.0) != transfer("A", "B", 1.0).with_id("t-1")
    assert transfer_list("A", "B", 1.0) != transfer_list("A", "B", 1.0)
    call = debit("A", 1.0)
    assert SagaDefinition("t-1", steps=[call]) == SagaDefinition("t-1", steps=[call])
    assert SagaDefinition("t-1", steps=[call]) != SagaDefinition("t-2", steps=[call])
    with pytest.raises(TypeError, match="unhashable"):
        hash(transfer("A", "B", 1.0))


def test_builder_and_with_id_return_new_definitions() -> None:
    empty = SagaDefinition("t-1")
    one = empty.add_step(debit("A", 1.0))
    two = one.add_step(credit("B", 1.0))
    renamed = two.with_id("t-2")

    assert empty.total_steps == 0
    assert one.total_steps == 1
    assert two.total_steps == 2
    assert (two.saga_id, renamed.saga_id) == ("t-1", "t-2")
    assert renamed.total_steps == 2
    assert "t-2" in repr(renamed)

    generated = transfer("A", "B", 1.0)
    with_id = generated.with_id("g-1")
    assert (generated.saga_id, with_id.saga_id) == (None, "g-1")


def test_builder_rejects_non_step_calls() -> None:
    with pytest.raises(SagaDefinitionError, match="step call"):
        SagaDefinition("t-1").add_step(debit)  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match="step call"):
        SagaDefinition("t-1", steps=[debit("A", 1.0), "x"])  # type: ignore[list-item]


def test_generator_definitions_cannot_be_extended() -> None:
    with pytest.raises(SagaDefinitionError, match="generator saga"):
        transfer("A", "B", 1.0).add_step(debit("C", 1.0))


@pytest.mark.parametrize("bad_id", ["", 5, None])
def test_bad_saga_ids_are_refused(bad_id: Any) -> None:
    with pytest.raises(SagaDefinitionError, match="non-empty string"):
        transfer("A", "B", 1.0).with_id(bad_id)


@pytest.mark.asyncio
async def test_empty_builder_saga_is_refused_when_executed_before_any_run() -> None:
    seen: list[Any] = []
    orchestrator = SagaOrchestrator(listeners=[seen.append])
    with pytest.raises(SagaDefinitionError, match=r"'nothing' has no steps.*\.add_step"):
        await orchestrator.execute(SagaDefinition("nothing"))
    # Refused before it began: no run in the history, nothing told to listeners.
    assert await orchestrator.history_count() == 0
    assert seen == []


# ------------------------------------------------------------------ misuse found before running


def test_list_saga_with_a_non_step_is_refused_when_called() -> None:
    @saga
    def bad() -> list[Any]:
        return [debit("A", 1.0), "not a step"]

    with pytest.raises(SagaDefinitionError, match=r"step 1 must be a step call.*'not a step'"):
        bad()


def test_list_saga_with_an_uncalled_step_is_refused_with_a_hint() -> None:
    @saga
    def bad() -> list[Any]:
        return [debit]

    with pytest.raises(SagaDefinitionError, match=r"call the step with its arguments"):
        bad()


def test_list_saga_with_a_coroutine_is_refused_and_the_coroutine_closed() -> None:
    async def plain(account: str) -> None:
        calls.append(("plain", account))

    @saga
    def bad() -> list[Any]:
        return [plain("A")]

    with pytest.raises(
        SagaDefinitionError, match=r"a coroutine of plain: decorate plain with @step"
    ):
        bad()
    gc.collect()  # an unclosed coroutine would warn "never awaited" (an error here)
    assert calls == []


def test_empty_list_saga_is_refused() -> None:
    @saga
    def nothing() -> list[StepCall[Any]]:
        return []

    with pytest.raises(SagaDefinitionError, match="at least one step"):
        nothing()


def test_saga_returning_something_else_is_refused() -> None:
    @saga
    def odd() -> Any:
        return debit("A", 1.0)

    with pytest.raises(SagaDefinitionError, match="must return a list or tuple") as refused:
        odd()
    assert "decorator" not in str(refused.value)


def test_a_list_saga_returning_one_step_call_none_or_a_saga_is_told_the_fix() -> None:
    # Regression: each said only "must return a list or tuple of step calls ..., got
    # StepCall" (or NoneType, or SagaDefinition), naming neither the value nor the fix.
    @saga
    def single(account: str) -> Any:
        return debit(account, 1.0)

    with pytest.raises(SagaDefinitionError) as refused:
        single("A")
    assert str(refused.value).endswith(
        "got a single step call, <StepCall debit('A', 1.0)>: return it in a list, "
        "`return [debit(...)]`"
    )

    @saga
    def forgot(account: str) -> Any:
        calls = [debit(account, 1.0)]  # noqa: F841  # the mistake: no `return calls`

    with pytest.raises(SagaDefinitionError) as refused:
        forgot("A")
    assert str(refused.value).endswith(
        "got None: end the function with `return [...]` of its step calls, or `yield` each one"
    )

    @saga
    def refund_list(account: str) -> list[StepCall[Any]]:
        return [credit(account, 1.0)]

    @saga
    def refund_gen(account: str) -> Generator[StepCall[Any], Any, None]:
        yield credit(account, 1.0)

    @saga
    def returns_list_saga(account: str) -> Any:
        return refund_list(account)

    with pytest.raises(SagaDefinitionError) as refused:
        returns_list_saga("A")
    message = str(refused.value)
    assert "got the definition of saga 'refund_list', which this saga cannot run" in message
    assert "take its steps as this saga's own: `return [*refund_list(...).steps]`" in message
    assert "orchestrator.execute(refund_list(...))" in message

    @saga
    def returns_generator_saga(account: str) -> Any:
        return refund_gen(account)

    with pytest.raises(SagaDefinitionError) as refused:
        returns_generator_saga("A")
    message = str(refused.value)
    assert "got the definition of saga 'refund_gen'" in message
    assert "make this saga a generator, `yield from refund_gen.__wrapped__(...)`" in message
    assert "orchestrator.execute(refund_gen(...))" in message


def test_a_generator_saga_behind_another_decorator_is_told_where_to_put_saga() -> None:
    # The error said only "got generator": a decorator without functools.wraps-like
    # generator detection hides that the function is a generator function.
    def logged(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        return wrapper

    @saga
    @logged
    def wrapped(account: str) -> Any:
        yield debit(account, 1.0)

    with pytest.raises(
        SagaDefinitionError, match="got generator; it returned a generator"
    ) as refused:
        wrapped("A")
    assert "put @saga directly above the function" in str(refused.value)


def test_async_saga_function_is_refused() -> None:
    async def flow() -> list[StepCall[Any]]:
        return [debit("A", 1.0)]

    with pytest.raises(SagaDefinitionError, match="drop 'async'"):
        saga(flow)  # type: ignore[arg-type]

    async def agen() -> Any:
        yield debit("A", 1.0)

    with pytest.raises(SagaDefinitionError, match="drop 'async'"):
        saga(agen)


def test_saga_on_a_class_is_refused_when_declared() -> None:
    # It was taken for a list saga (and registered for recovery under the class's name):
    # only calling it said "must return a list or tuple of step calls ..., got Flow".
    class Flow:
        def __init__(self, account: str) -> None:
            self.account = account

    with pytest.raises(SagaDefinitionError) as info:
        saga(Flow)  # type: ignore[arg-type]  # mypy refuses it too
    assert str(info.value) == (
        "@saga takes a function, got the class "
        "test_saga_on_a_class_is_refused_when_declared.<locals>.Flow; decorate a generator "
        "function that yields step calls, or a function that returns a list of them"
    )
    with pytest.raises(SagaDefinitionError, match="got the class"):
        saga(name="flow")(Flow)  # type: ignore[arg-type]


def test_a_saga_decorated_again_is_refused() -> None:
    # The outer saga called the inner one, which gave a definition, not a list: only calling
    # it said "must return a list or tuple of step calls ..., got SagaDefinition", and the
    # inner one's options were lost. As for a step decorated again, the fix is named.
    def refund(account: str) -> Generator[StepCall[Any], Any, None]:
        yield credit(account, 1.0)

    inner = saga(name="sagas.refund")(refund)
    with pytest.raises(SagaDefinitionError) as info:
        saga(name="sagas.refund-again")(inner)  # type: ignore[arg-type]  # mypy too
    assert str(info.value) == (
        "'sagas.refund' is already a saga; give all its options in one @saga(...), or "
        "declare another saga from the same function: saga(name=...)(refund.__wrapped__)"
    )
    with pytest.raises(SagaDefinitionError, match="already a saga"):
        saga(inner)  # type: ignore[arg-type]
    again = saga(name="sagas.refund-fast")(inner.__wrapped__)
    assert again("A").name == "sagas.refund-fast"


def test_saga_on_a_step_says_a_saga_yields_step_calls() -> None:
    # It said "debit is async — drop 'async'", of a step. (mypy takes it: a step call is
    # itself an iterable of step calls, what types `result = yield from call`.)
    with pytest.raises(SagaDefinitionError) as info:
        saga(debit)
    assert str(info.value) == (
        "@saga needs a plain generator function (yield each step call) or a function "
        "returning a list of step calls; debit is a step, which a saga runs: "
        "yield debit(...) from a saga, or list it"
    )


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("first", "hint"),
    [
        pytest.param(lambda: "not a step", "got 'not a step'", id="string"),
        pytest.param(lambda: debit, "call the step with its arguments", id="uncalled-step"),
        pytest.param(lambda: None, "got None", id="none"),
    ],
)
async def test_generator_yielding_a_non_step_first_runs_nothing(first: Any, hint: str) -> None:
    @saga
    def bad() -> Generator[Any, Any, None]:
        yield first()
        yield debit("A", 1.0)

    orchestrator = SagaOrchestrator()
    with pytest.raises(SagaDefinitionError, match=hint):
        await orchestrator.execute(bad())
    assert calls == []
    assert await orchestrator.running_count() == 0


@pytest.mark.asyncio
async def test_generator_yielding_a_coroutine_is_refused_and_it_never_runs() -> None:
    async def plain() -> None:
        calls.append(("plain", None))

    @saga
    def bad() -> Generator[Any, Any, None]:
        yield plain()

    with pytest.raises(
        SagaDefinitionError, match=r"a coroutine of plain: decorate plain with @step"
    ):
        await SagaOrchestrator().execute(bad())
    gc.collect()
    assert calls == []


@pytest.mark.asyncio
async def test_generator_yielding_a_non_step_later_compensates_what_ran() -> None:
    @saga
    def bad() -> Generator[Any, Any, None]:
        yield debit("A", 1.0)
        yield 42

    orchestrator = SagaOrchestrator()
    with pytest.raises(SagaDefinitionError, match="step 1 must be a step call"):
        await orchestrator.execute(bad())
    assert calls == [("debit", "A"), ("undo_debit", "A")]
    (meta,) = await orchestrator.get_history()
    assert meta.status is SagaStatus.COMPENSATED


@pytest.mark.asyncio
async def test_empty_generator_saga_is_refused_when_run() -> None:
    @saga
    def nothing() -> Generator[StepCall[Any], Any, None]:
        return
        yield

    orchestrator = SagaOrchestrator()
    with pytest.raises(SagaDefinitionError, match="yielded no steps"):
        await orchestrator.execute(nothing())
    assert await orchestrator.running_count() == 0


@pytest.mark.asyncio
async def test_execute_refuses_things_that_are_not_definitions() -> None:
    with pytest.raises(
        SagaDefinitionError,
        match=r"call the @saga function with its arguments first: transfer\(\.\.\.\)",
    ):
        await SagaOrchestrator().execute(transfer)  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match="non-empty string"):
        await SagaOrchestrator().execute(transfer("A", "B", 1.0), saga_id="")
    # A lone surrogate (text decoded with errors="surrogateescape"): no store can hold it,
    # so every store refuses it alike, before anything runs.
    with pytest.raises(SagaDefinitionError, match=r"valid Unicode text, got '\\udc80x'"):
        await SagaOrchestrator().execute(transfer("A", "B", 1.0), saga_id="\udc80x")
    with pytest.raises(SagaDefinitionError, match="valid Unicode text"):
        transfer("A", "B", 1.0).with_id("\ud800")
    assert transfer("A", "B", 1.0).with_id("zahlung-\u00e4\U0001f600").saga_id == (
        "zahlung-\u00e4\U0001f600"
    )


# ------------------------------------------------------------------ ids and idempotency


@pytest.mark.asyncio
async def test_every_execution_of_an_id_less_definition_runs_again() -> None:
    orchestrator = SagaOrchestrator()
    definition = transfer("A", "B", 1.0)

    first = await orchestrator.execute(definition)
    second = await orchestrator.execute(definition)

    assert first == second
    assert calls == [("debit", "A"), ("credit", "B")] * 2
    history = await orchestrator.get_history()
    assert len(history) == 2
    assert history[0].id != history[1].id
    assert definition.saga_id is None  # the run's id never lands on the definition


def _with_builder_id(saga_id: str) -> tuple[SagaDefinition, dict[str, str]]:
    return SagaDefinition(saga_id).add_step(debit("A", 2.0)).add_step(credit("B", 2.0)), {}


def _with_with_id(saga_id: str) -> tuple[SagaDefinition, dict[str, str]]:
    return transfer("A", "B", 2.0).with_id(saga_id), {}


def _with_execute_id(saga_id: str) -> tuple[SagaDefinition, dict[str, str]]:
    return transfer("A", "B", 2.0), {"saga_id": saga_id}


ID_FORMS = [
    pytest.param(_with_builder_id, id="builder"),
    pytest.param(_with_with_id, id="with_id"),
    pytest.param(_with_execute_id, id="execute-saga_id"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("make", ID_FORMS)
async def test_completed_explicit_id_returns_recorded_events_without_running(make: Any) -> None:
    orchestrator = SagaOrchestrator()
    definition, options = make("transfer-7")

    first = await orchestrator.execute(definition, **options)
    assert calls == [("debit", "A"), ("credit", "B")]
    calls.clear()

    again = await orchestrator.execute(definition, **options)

    assert again == first == [("debited", "A", 2.0), ("credited", "B", 2.0)]
    assert again is not first
    assert calls == []
    assert await orchestrator.history_count() == 1
    meta = await orchestrator.get_saga("transfer-7")
    assert meta is not None
    assert meta.status is SagaStatus.COMPLETED


@pytest.mark.asyncio
async def test_execute_saga_id_overrides_the_definition_id() -> None:
    orchestrator = SagaOrchestrator()
    definition = transfer("A", "B", 1.0).with_id("one")
    await orchestrator.execute(definition, saga_id="two")

    assert await orchestrator.get_saga("one") is None
    assert await orchestrator.get_saga("two") is not None


@pytest.mark.asyncio
@pytest.mark.parametrize("make", ID_FORMS)
async def test_running_explicit_id_raises_saga_already_executing(make: Any) -> None:
    release = asyncio.Event()

    @step
    async def wait_here() -> str:
        await release.wait()
        return "done"

    orchestrator = SagaOrchestrator()
    definition, options = make("busy")
    blocked = SagaDefinition("busy").add_step(wait_here())
    first = asyncio.create_task(orchestrator.execute(blocked))
    await asyncio.sleep(0)
    assert await orchestrator.running_count() == 1

    with pytest.raises(SagaAlreadyExecuting) as info:
        await orchestrator.execute(definition, **options)
    assert info.value.saga_id == "busy"
    assert "already executing" in str(info.value)
    assert calls == []

    release.set()
    assert await first == ["done"]  # the running saga is not disturbed


@pytest.mark.asyncio
@pytest.mark.parametrize("make", ID_FORMS)
async def test_failed_uncompensated_id_raises_saga_already_failed(make: Any) -> None:
    @step
    async def charge() -> str:
        calls.append(("charge", None))
        return "pay-1"

    @charge.compensate
    async def refund() -> None:
        raise ConnectionError("refund service down")

    orchestrator = SagaOrchestrator(compensation_retry=Retry(attempts=1))
    broken = SagaDefinition("pay-1").add_step(charge()).add_step(fail("declined"))
    with pytest.raises(CompensationFailed):
        await orchestrator.execute(broken)
    calls.clear()

    definition, options = make("pay-1")
    with pytest.raises(SagaAlreadyFailed) as info:
        await orchestrator.execute(definition, **options)
    assert info.value.saga_id == "pay-1"
    assert calls == []


@pytest.mark.asyncio
async def test_saga_already_failed_of_the_memory_store_names_no_resolve_it_lacks() -> None:
    # Regression: the in-memory store's SagaAlreadyFailed told the user to run
    # `sagakit --db LOG resolve` or `await store.resolve(...)`, neither of which the
    # in-memory store has: its FAILED id can only be left for another one.
    @step
    async def charge() -> str:
        return "pay-1"

    @charge.compensate
    async def refund() -> None:
        raise ConnectionError("refund service down")

    orchestrator = SagaOrchestrator(compensation_retry=Retry(attempts=1))
    broken = SagaDefinition("mem-1").add_step(charge()).add_step(fail("declined"))
    with pytest.raises(CompensationFailed):
        await orchestrator.execute(broken)
    with pytest.raises(SagaAlreadyFailed) as info:
        await orchestrator.execute(broken)
    message = str(info.value)
    assert not hasattr(orchestrator.store, "resolve")
    assert "resolve(" not in message, message
    assert "sagakit" not in message, message
    assert "use another id" in message
    assert "in-memory store has no resolve" in message
    assert info.value.in_memory
    copy = pickle.loads(pickle.dumps(info.value))
    assert (str(copy), copy.saga_id, copy.in_memory) == (message, "mem-1", True)
    durable = SagaAlreadyFailed("mem-1")
    assert "`sagakit --db LOG resolve mem-1 --note ...`" in str(durable)
    assert not durable.in_memory


@pytest.mark.asyncio
async def test_compensated_explicit_id_may_run_again() -> None:
    orchestrator = SagaOrchestrator()
    definition = SagaDefinition("retry-me").add_step(debit("A", 1.0)).add_step(fail("no"))
    with pytest.raises(StepFailed):
        await orchestrator.execute(definition)
    assert (await orchestrator.get_saga("retry-me")).status is SagaStatus.COMPENSATED  # type: ignore[union-attr]

    calls.clear()
    assert await orchestrator.execute(transfer("A", "B", 1.0), saga_id="retry-me")
    assert calls == [("debit", "A"), ("credit", "B")]
    assert await orchestrator.history_count() == 1


@pytest.mark.asyncio
async def test_a_definition_runs_a_fresh_generator_every_time() -> None:
    seen: list[Any] = []

    @step
    async def number(n: int) -> int:
        return n

    @saga
    def counting() -> Generator[StepCall[Any], Any, None]:
        got = yield number(1)
        seen.append(got)
        got = yield number(2)
        seen.append(got)

    definition = counting()
    orchestrator = SagaOrchestrator()
    assert await orchestrator.execute(definition) == [1, 2]
    assert await orchestrator.execute(definition) == [1, 2]
    assert seen == [1, 2, 1, 2]


@pytest.mark.asyncio
async def test_a_generator_that_raises_compensates_and_reraises_its_own_error() -> None:
    @saga
    def flow() -> Generator[StepCall[Any], Any, None]:
        yield debit("A", 1.0)
        raise LookupError("no route to B")

    orchestrator = SagaOrchestrator()
    with pytest.raises(LookupError, match="no route to B"):
        await orchestrator.execute(flow(), saga_id="route")
    assert calls == [("debit", "A"), ("undo_debit", "A")]
    meta = await orchestrator.get_saga("route")
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert meta.compensation_events == ("refunded", "A", 1.0)  # a tuple result: its items
    assert meta.error == "LookupError: no route to B"


# ------------------------------------------------------------------ sagas on methods


class Shop:
    """Steps and the sagas that use them, on one class: a @saga in a class body is a
    method, like the steps (looked up on an instance, the instance comes first)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.log: list[str] = []

    @step
    async def hold(self, item: str) -> str:
        self.log.append(f"hold {item}")
        return f"{self.name}:{item}"

    @hold.compensate
    async def unhold(self, item: str) -> None:
        self.log.append(f"unhold {item}")

    @step
    async def charge(self, item: str) -> None:
        if item == "glass":
            raise ValueError("declined")

    @saga(name="test_sagas.Shop.buy")
    def buy(self, item: str) -> Generator[StepCall[Any], Any, None]:
        yield self.hold(item)
        yield self.charge(item)

    @saga(name="test_sagas.Shop.buy_listed")
    def buy_listed(self, item: str) -> list[StepCall[Any]]:
        return [self.hold(item), self.charge(item)]


@pytest.mark.asyncio
@pytest.mark.parametrize("form", ["buy", "buy_listed"])
async def test_a_saga_method_is_bound_to_its_instance(form: str) -> None:
    # It was not: shop.buy("pen") passed "pen" as self, and was refused with "missing a
    # required argument: 'item'" although the item was given.
    shop = Shop("corner")
    buy = getattr(shop, form)
    definition = buy("pen")
    assert definition.args == (shop, "pen")
    assert definition.factory is getattr(Shop, form)
    assert await SagaOrchestrator().execute(definition) == ["corner:pen"]
    with pytest.raises(StepFailed, match="declined"):
        await SagaOrchestrator().execute(buy("glass"))
    assert shop.log == ["hold pen", "hold glass", "unhold glass"]
    # Through the class, the instance is passed first, as for a function.
    assert getattr(Shop, form)(shop, "pen").args == (shop, "pen")
    assert isinstance(getattr(Shop, form), SagaFunction)


@pytest.mark.parametrize("kind", [staticmethod, classmethod])
def test_saga_above_staticmethod_or_classmethod_is_refused_naming_the_order(kind: Any) -> None:
    # @saga above @staticmethod took the staticmethod for a list saga, and calling it said
    # it "must return a list or tuple of step calls ... got generator"; above @classmethod
    # it said only "@saga takes a function". As for @step, the order is named.
    def flow() -> Generator[StepCall[Any], Any, None]:
        yield debit("A", 1.0)

    with pytest.raises(SagaDefinitionError) as info:
        saga(kind(flow))
    name = kind.__name__
    assert str(info.value) == (
        f"@saga needs the function itself, but got the {name} "
        f"test_saga_above_staticmethod_or_classmethod_is_refused_naming_the_order.<locals>.flow; "
        f"put @saga below @{name}"
    )


def test_recovery_takes_any_case_and_refuses_others_with_the_choices() -> None:
    # Regression: only lower case was taken, while store options (synchronous="full") and
    # list_sagas(status="FAILED") take any case. It is normalised: recorded in lower case.
    @saga(name="recovery-in-any-case", recovery="COMPENSATE")  # type: ignore[arg-type]
    def move() -> list[StepCall[Any]]:
        return [debit("A", 1.0)]

    assert move.recovery == "compensate"
    assert move().recovery == "compensate"
    listed = SagaDefinition("r-1", steps=[debit("A", 1.0)], recovery="Resume")  # type: ignore[arg-type]
    assert listed.recovery == "resume"
    for bad in ["retry", "", None, 1]:
        with pytest.raises(SagaDefinitionError, match=r"'resume' or 'compensate' \(in any case\)"):
            saga(name="recovery-bad", recovery=bad)(move.__wrapped__)  # type: ignore[arg-type]
        with pytest.raises(SagaDefinitionError, match=r"'resume' or 'compensate' \(in any case\)"):
            SagaDefinition("r-2", recovery=bad)  # type: ignore[arg-type]
