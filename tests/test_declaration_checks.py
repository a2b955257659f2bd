"""Declaration-time checks found missing in review (each a regression test).

- A generator saga called with arguments its function cannot take was built silently and
  then left its run EXECUTING: now a SagaDefinitionError when the definition is built.
- A compensation that cannot take its step's *args / **kwargs was accepted and failed at
  run time: now refused when declared.
- compensate_on_timeout / compensate_on_failure took any value through bool(): now only
  True or False.
- A step call made as a statement in a saga (a forgotten ``yield``, a call left out of a
  list saga's list) was dropped silently: now refused, naming the line. So is a call of
  a ``@saga`` function made as a statement (its definition built and dropped).
- That check refused valid sagas whose statement calls something else than the step its
  name held: a name declared ``global`` or ``nonlocal`` and rebound, a class-private
  ``__name`` (mangled), a line added to the source file since it was compiled.
- A generator saga *returning* a step call (``return credit(...)`` for ``yield
  credit(...)``) completed one step short, silently: now refused when declared, or, where
  its source cannot be read, when the generator returns it (the completed steps undone).
"""

from __future__ import annotations

import contextlib
import functools
import linecache
import os
import time
import types
from collections.abc import Callable
from typing import Any

import pytest

from sagakit import (
    CompensationAlreadySetError,
    JsonSerializer,
    MemoryStore,
    PostgresStore,
    Retry,
    ReturnValueIgnored,
    SagaDefinition,
    SagaDefinitionError,
    SagaOrchestrator,
    SQLiteStore,
    StepCall,
    StoreConfigError,
    saga,
    step,
)
from sagakit import _sagas as sagakit_sagas
from sagakit.testing import SagaRecorder


@step
async def dc_ga_step(x: int) -> int:
    return x


@saga
def dc_ga_saga(x: int, y: int):  # type: ignore[no-untyped-def]
    yield dc_ga_step(x + y)


@pytest.mark.asyncio
async def test_bad_generator_args_leave_no_run_executing() -> None:
    orchestrator = SagaOrchestrator()
    # TypeError covers SagaDefinitionError too: refusing at build time is a fix as well.
    with pytest.raises(TypeError):
        await orchestrator.execute(dc_ga_saga(1), saga_id="dc-ga-1")  # type: ignore[call-arg]
    # "A run is never left EXECUTING or COMPENSATING once execute has returned or raised"
    assert await orchestrator.running_count() == 0
    assert await orchestrator.get_running_sagas() == []
    # The id is not blocked: a correct execution with that id runs.
    assert await orchestrator.execute(dc_ga_saga(1, 2), saga_id="dc-ga-1") == [3]


def test_bad_generator_args_are_refused_when_the_definition_is_built() -> None:
    with pytest.raises(SagaDefinitionError, match="cannot be called with these arguments"):
        dc_ga_saga(1)  # type: ignore[call-arg]


def test_bad_arguments_are_refused_alike_for_list_and_generator_sagas() -> None:
    # A list saga called with arguments it cannot take raised the bare TypeError of the call,
    # and a generator saga showed its parameters quoted, with any return annotation.
    @saga
    def dc_list_saga(x: int, y: int) -> list[StepCall[Any]]:
        return [dc_ga_step(x + y)]

    for bad in (dc_list_saga, dc_ga_saga):
        with pytest.raises(SagaDefinitionError) as refused:
            bad(1)  # type: ignore[call-arg]
        assert str(refused.value) == (
            f"saga {bad.name!r} cannot be called with these arguments: missing a required "
            "argument: 'y'; its parameters are (x: int, y: int)"
        )


def test_a_type_error_inside_a_list_saga_is_its_own() -> None:
    @saga
    def dc_broken_list_saga(x: int) -> list[StepCall[Any]]:
        return [dc_ga_step(x + "1")]  # type: ignore[operator]

    with pytest.raises(TypeError, match="unsupported operand") as raised:
        dc_broken_list_saga(1)
    assert not isinstance(raised.value, SagaDefinitionError)


@saga
def dc_defaults_saga(x: int, y: int = 2, /) -> Any:
    yield dc_ga_step(x + y)


@saga
def dc_keyword_only_saga(x: int, *, y: int) -> Any:
    yield dc_ga_step(x + y)


@pytest.mark.parametrize(
    ("build", "fits"),
    [
        (lambda: dc_defaults_saga(1), True),
        (lambda: dc_defaults_saga(1, 5), True),
        (lambda: dc_defaults_saga(), False),
        (lambda: dc_defaults_saga(1, 2, 3), False),
        (lambda: dc_defaults_saga(x=1), False),  # positional-only
        (lambda: dc_ga_saga(1, y=2), True),
        (lambda: dc_ga_saga(1, z=2), False),
        (lambda: dc_keyword_only_saga(1, y=2), True),
        (lambda: dc_keyword_only_saga(1, 2), False),
        (lambda: dc_keyword_only_saga(1), False),
    ],
)
def test_generator_saga_arguments_are_checked_in_every_shape(
    build: Callable[[], SagaDefinition], fits: bool
) -> None:
    # Plain positional calls that fit skip binding; every other shape is bound.
    if fits:
        assert isinstance(build(), SagaDefinition)
    else:
        with pytest.raises(SagaDefinitionError, match="cannot be called with these arguments"):
            build()


def test_compensation_without_kwargs_for_a_step_with_kwargs_is_refused() -> None:
    @step
    async def dc_tag(order_id: str, **labels: str) -> None:
        return None

    with pytest.raises(SagaDefinitionError, match=r"give it \*\*kwargs too"):

        @dc_tag.compensate
        async def dc_untag(order_id: str) -> None:  # cannot take **labels
            return None


def test_compensation_without_varargs_for_a_step_with_varargs_is_refused() -> None:
    @step
    async def dc_reserve_all(*skus: str) -> None:
        return None

    with pytest.raises(SagaDefinitionError, match=r"give it \*args too"):

        @dc_reserve_all.compensate
        async def dc_release_one(sku: str) -> None:  # cannot take *skus
            return None


@pytest.mark.parametrize("option", ["compensate_on_timeout", "compensate_on_failure"])
def test_non_bool_compensate_option_is_refused(option: str) -> None:
    async def dc_flagged(x: int) -> int:
        return x

    with pytest.raises(SagaDefinitionError, match="must be True or False"):
        step(**{option: "false"})(dc_flagged)


async def dc_fetch(client: str, key: str) -> str:
    return f"{client}:{key}"


async def dc_forget(client: str, key: str) -> None:
    return None


def test_a_step_from_a_partial_without_a_name_is_told_to_give_one() -> None:
    # functools.partial has no __name__: this was a bare AttributeError.
    with pytest.raises(SagaDefinitionError, match=r"give the step a name: @step\(name="):
        step(functools.partial(dc_fetch, "c1"))
    with pytest.raises(SagaDefinitionError, match=r"give the step a name"):
        step(timeout=5)(functools.partial(dc_fetch, "c1"))
    named = step(name="fetch")(functools.partial(dc_fetch, "c1"))
    assert named.name == "fetch"


def test_errors_about_a_partial_compensation_name_it() -> None:
    @step
    async def dc_get(key: str) -> str:
        return key

    with pytest.raises(SagaDefinitionError, match="cannot take the arguments of step 'dc_get'"):
        dc_get.compensate(functools.partial(dc_forget, "c1", "k"))  # takes nothing more
    dc_get.compensate(functools.partial(dc_forget, "c1"))
    with pytest.raises(CompensationAlreadySetError, match="dc_forget") as raised:
        dc_get.compensate(dc_forget)
    # A compensation renamed in a notebook is refused too: the message says what to do.
    assert "in a notebook, after renaming a compensation, run the step's cell again" in str(
        raised.value
    )


def dc_partial_body(order: int):  # type: ignore[no-untyped-def]
    yield dc_ga_step(order)


@pytest.mark.asyncio
async def test_a_saga_from_a_partial_needs_a_name_and_then_runs() -> None:
    with pytest.raises(SagaDefinitionError, match=r"give the saga a name"):
        saga(functools.partial(dc_partial_body, 7))
    named = saga(name="dc_partial_saga")(functools.partial(dc_partial_body, 7))
    assert await SagaOrchestrator().execute(named()) == [7]


@pytest.mark.parametrize("name", [5, ""])
def test_a_builder_definition_refuses_a_bad_name(name: object) -> None:
    # 5 became the saga's name; "" fell back to the id without a word.
    with pytest.raises(SagaDefinitionError, match=r"SagaDefinition\(name=...\)"):
        SagaDefinition("dc-id", name=name)  # type: ignore[arg-type]


def test_an_orchestrator_refuses_a_sleep_that_cannot_be_called() -> None:
    # It was accepted, then the first retry failed with a TypeError.
    with pytest.raises(SagaDefinitionError, match="sleep must be an async function"):
        SagaOrchestrator(sleep=1)  # type: ignore[arg-type]


def test_an_orchestrator_refuses_a_blocking_sleep() -> None:
    # time.sleep was accepted; the first retry then blocked the loop and failed the step
    # with "object NoneType can't be used in 'await' expression".
    with pytest.raises(SagaDefinitionError, match="sleep must be an async function"):
        SagaOrchestrator(sleep=time.sleep)  # type: ignore[arg-type]


def test_a_listener_class_is_refused_naming_an_instance() -> None:
    # The class was accepted, then called with every transition (a TypeError, logged).
    fix = r"^a listener must be an instance, not the class SagaRecorder; pass an instance: Saga"
    with pytest.raises(SagaDefinitionError, match=fix):
        SagaOrchestrator(listeners=[SagaRecorder])  # type: ignore[list-item]
    with pytest.raises(SagaDefinitionError, match=fix):
        SagaOrchestrator().add_listener(SagaRecorder)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_lowering_a_memory_store_history_limit_trims_the_history() -> None:
    store = MemoryStore(history_limit=10)
    orchestrator = SagaOrchestrator(store)
    for n in range(6):
        await orchestrator.execute(SagaDefinition(f"dc-h{n}").add_step(dc_ga_step(n)))
    store.history_limit = 2
    await orchestrator.execute(SagaDefinition("dc-h6").add_step(dc_ga_step(6)))
    assert [m.id for m in await orchestrator.get_history()] == ["dc-h5", "dc-h6"]
    store.history_limit = 0
    await orchestrator.execute(SagaDefinition("dc-h7").add_step(dc_ga_step(7)))
    assert await orchestrator.history_count() == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("limit", [-1, None, "5", 1.5, True])
async def test_a_memory_store_history_limit_set_to_no_whole_number_is_refused(
    limit: Any,
) -> None:
    # Regression: the attribute took it, and the next saga's end failed after its steps
    # had run: execute() raised a bare TypeError (None, "5") or KeyError (-1, which also
    # emptied the history, that saga included); 1.5 kept one run.
    store = MemoryStore(history_limit=10)
    orchestrator = SagaOrchestrator(store)
    await orchestrator.execute(SagaDefinition("dc-l0").add_step(dc_ga_step(0)))
    with pytest.raises(StoreConfigError, match="history_limit must be a whole number >= 0"):
        store.history_limit = limit
    assert store.history_limit == 10
    await orchestrator.execute(SagaDefinition("dc-l1").add_step(dc_ga_step(1)))
    assert [m.id for m in await orchestrator.get_history()] == ["dc-l0", "dc-l1"]


@pytest.mark.parametrize("steps", [dc_ga_step(1), 5, None])
def test_a_builder_definition_refuses_steps_that_are_not_a_collection(steps: object) -> None:
    # A single step call (or any non-iterable) was a bare "'StepCall' object is not iterable".
    with pytest.raises(
        SagaDefinitionError, match=r"steps=\.\.\.\) must be an iterable of step calls"
    ) as refused:
        SagaDefinition("dc-steps", steps=steps)  # type: ignore[arg-type]
    hinted = "(put a single step call in a list)" in str(refused.value)
    assert hinted is isinstance(steps, StepCall)  # only a single step call is hinted so


async def _plain() -> None:
    pass


@pytest.mark.parametrize(
    ("make", "what", "cls", "error"),
    [
        (lambda: SagaOrchestrator(MemoryStore), "store", "MemoryStore", SagaDefinitionError),
        (lambda: SagaOrchestrator(SQLiteStore), "store", "SQLiteStore", SagaDefinitionError),
        (
            lambda: SagaOrchestrator(listeners=[SagaRecorder]),
            "a listener",
            "SagaRecorder",
            SagaDefinitionError,
        ),
        (
            lambda: SagaOrchestrator().add_listener(SagaRecorder),
            "a listener",
            "SagaRecorder",
            SagaDefinitionError,
        ),
        # The next four named no instance: "must be a sagakit.Retry, got <class ...>" and
        # "must be a JsonSerializer (dumps and loads), got <class ...>".
        (
            lambda: SagaOrchestrator(compensation_retry=Retry),
            "compensation_retry",
            "Retry",
            SagaDefinitionError,
        ),
        (
            lambda: step(retry=Retry)(_plain),
            "@step(retry=...) of '_plain'",
            "Retry",
            SagaDefinitionError,
        ),
        (
            lambda: SQLiteStore("x.db", serializer=JsonSerializer),
            "serializer",
            "JsonSerializer",
            StoreConfigError,
        ),
        (
            lambda: PostgresStore("postgresql://nowhere", serializer=JsonSerializer),
            "serializer",
            "JsonSerializer",
            StoreConfigError,
        ),
    ],
    ids=[
        "memory-store",
        "sqlite-store",
        "listeners",
        "add_listener",
        "compensation_retry",
        "step-retry",
        "sqlite-serializer",
        "postgres-serializer",
    ],
)
def test_a_class_given_for_an_instance_is_refused_in_one_wording(
    make: Callable[[], object], what: str, cls: str, error: type[SagaDefinitionError]
) -> None:
    # Four checks said it four ways ("store must be a store, not the class ...", "a listener
    # must be a callable, not the class ...", "tracer_provider must be a tracer provider
    # instance, not the class ...", "serializer must be ..., got <class ...>; pass an
    # instance, ..."), and Retry given as a class named no instance at all.
    with pytest.raises(error) as info:
        make()
    assert str(info.value) == (
        f"{what} must be an instance, not the class {cls}; pass an instance: {cls}(...)"
    )


# A step call made as a statement (a forgotten ``yield``, or a call left out of a list
# saga's list) only builds the step: the saga skipped it silently. Now refused.


@step
async def dc_credit(account: str, amount: int) -> int:
    return amount


dc_bank = types.SimpleNamespace(credit=dc_credit)


class DcAccount:
    @step
    async def dc_deposit(self, amount: int) -> int:
        return amount


dc_account = DcAccount()


def _line(marker: str) -> str:
    """``file:line`` of the line of this file ending with the comment ``# marker``."""
    with open(__file__, encoding="utf-8") as source:
        for number, text in enumerate(source, start=1):
            if text.rstrip().endswith(f"# {marker}"):
                return f"{os.path.basename(__file__)}:{number}"
    raise AssertionError(marker)


def test_a_generator_saga_calling_a_step_without_yield_is_refused_when_declared() -> None:
    def dc_transfer(src: str, dst: str, amount: int) -> Any:
        yield dc_credit(src, -amount)
        dc_credit(dst, amount)  # forgotten-yield

    with pytest.raises(SagaDefinitionError) as refused:
        saga(dc_transfer)
    message = str(refused.value)
    assert "saga 'dc_transfer'" in message
    assert "step 'dc_credit'" in message
    assert _line("forgotten-yield") in message
    assert "yield it: `yield dc_credit(...)`" in message


def test_a_list_saga_with_a_step_call_left_out_of_its_list_is_refused() -> None:
    def dc_transfer_list(src: str, dst: str, amount: int) -> list[StepCall[Any]]:
        dc_credit(dst, amount)  # left-out
        return [dc_credit(src, -amount)]

    with pytest.raises(SagaDefinitionError) as refused:
        saga(name="dc_transfer_list")(dc_transfer_list)
    message = str(refused.value)
    assert "saga 'dc_transfer_list'" in message
    assert _line("left-out") in message
    assert "put it in the returned list" in message


def _dc_in_a_branch(flag: bool) -> Any:
    if flag:
        dc_credit("A", 1)  # in-a-branch
    yield dc_credit("B", 1)


def _dc_in_a_loop(accounts: list[str]) -> Any:
    for account in accounts:
        with contextlib.suppress(KeyError):
            try:
                yield dc_credit(account, 1)
            finally:
                dc_credit(account, 2)  # in-a-loop


def _dc_through_a_namespace() -> Any:
    dc_bank.credit("A", 1)  # through-a-namespace
    yield dc_credit("B", 1)


def _dc_through_an_instance() -> Any:
    dc_account.dc_deposit(1)  # through-an-instance
    yield dc_account.dc_deposit(2)


dc_deposit_bound = dc_account.dc_deposit  # a step bound to its instance, held in a global


def _dc_through_a_bound_step() -> Any:
    dc_deposit_bound(1)  # through-a-bound-step
    yield dc_credit("B", 1)


class DcShop:
    @staticmethod
    @step
    async def dc_price(sku: str) -> int:
        return 1

    @classmethod
    @step
    async def dc_stock(cls, sku: str) -> int:
        return 2


def _dc_through_a_staticmethod() -> Any:
    DcShop.dc_price("a")  # through-a-staticmethod
    yield dc_credit("B", 1)


def _dc_through_a_classmethod() -> Any:
    DcShop.dc_stock("a")  # through-a-classmethod
    yield dc_credit("B", 1)


def _dc_in_an_except_clause() -> Any:
    try:
        yield dc_credit("A", 1)
    except KeyError:
        dc_credit("A", 2)  # in-an-except-clause


def _dc_in_a_match_case(kind: str) -> Any:
    match kind:
        case "refund":
            dc_credit("A", 2)  # in-a-match-case
    yield dc_credit("B", 1)


def _dc_in_parentheses() -> Any:
    (  # in-parentheses
        dc_credit("A", 2)
    )
    yield dc_credit("B", 1)


def _dc_list_in_a_loop(accounts: list[str]) -> list[StepCall[Any]]:
    calls = []
    for account in accounts:
        dc_credit(account, 1)  # list-in-a-loop
    return calls


@pytest.mark.parametrize(
    ("fn", "marker"),
    [
        (_dc_in_a_branch, "in-a-branch"),
        (_dc_in_a_loop, "in-a-loop"),
        (_dc_through_a_namespace, "through-a-namespace"),
        (_dc_through_an_instance, "through-an-instance"),
        (_dc_list_in_a_loop, "list-in-a-loop"),
        (_dc_through_a_bound_step, "through-a-bound-step"),
        (_dc_through_a_staticmethod, "through-a-staticmethod"),
        (_dc_through_a_classmethod, "through-a-classmethod"),
        (_dc_in_an_except_clause, "in-an-except-clause"),
        (_dc_in_a_match_case, "in-a-match-case"),
        (_dc_in_parentheses, "in-parentheses"),
    ],
)
def test_a_discarded_step_call_is_found_in_any_statement(
    fn: Callable[..., Any], marker: str
) -> None:
    with pytest.raises(
        SagaDefinitionError, match=r"step 'dc_(credit|deposit|price|stock)'"
    ) as refused:
        saga(fn)
    assert _line(marker) in str(refused.value)


@saga
def dc_late_saga(amount: int) -> Any:
    dc_late_step(amount)  # late-step
    yield dc_credit("A", amount)


@step
async def dc_late_step(amount: int) -> int:
    return amount


def test_a_step_declared_after_its_saga_is_checked_when_the_saga_is_first_called() -> None:
    for _ in range(2):  # refused every time, not only the first
        with pytest.raises(SagaDefinitionError, match="step 'dc_late_step'") as refused:
            dc_late_saga(1)
        assert _line("late-step") in str(refused.value)


def test_a_sagas_body_is_checked_at_its_first_call_not_at_every_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checks: list[object] = []
    check = sagakit_sagas.check_discarded_calls

    def counted(*args: Any, **kwargs: Any) -> Any:
        checks.append(args[0])
        return check(*args, **kwargs)

    monkeypatch.setattr(sagakit_sagas, "check_discarded_calls", counted)

    @saga
    def dc_checked_once() -> Any:
        dc_later()  # declared below: checked at the first call
        yield dc_credit("A", 1)

    def dc_later() -> None:
        pass

    for _ in range(3):
        dc_checked_once()
    assert len(checks) == 2  # declared, then first called; never per call after that


def test_a_step_from_the_enclosing_function_declared_after_the_saga_is_checked() -> None:
    @saga
    def dc_closure_saga() -> list[StepCall[Any]]:
        dc_later("A", 1)  # later-in-closure
        return [dc_credit("A", 1)]

    @step
    async def dc_later(account: str, amount: int) -> int:
        return amount

    with pytest.raises(SagaDefinitionError, match="step 'dc_later'") as refused:
        dc_closure_saga()
    assert _line("later-in-closure") in str(refused.value)
    assert "put it in the returned list" in str(refused.value)


@saga
def dc_inner(account: str) -> Any:
    yield dc_credit(account, 1)


@saga
def dc_inner_list(account: str) -> list[StepCall[Any]]:
    return [dc_credit(account, 1)]


def test_a_saga_called_as_a_statement_in_a_generator_saga_is_refused() -> None:
    # Calling a @saga function only builds its definition: dropped, like a step call.
    def dc_outer(account: str) -> Any:
        yield dc_credit(account, 2)
        dc_inner(account)  # saga-statement

    with pytest.raises(SagaDefinitionError) as refused:
        saga(dc_outer)
    message = str(refused.value)
    assert message == (
        f"saga 'dc_outer' calls saga 'dc_inner' as a statement at "
        f"{__file__}:{_line('saga-statement').rpartition(':')[2]}: calling a saga only "
        "builds its definition, so this saga would skip it; run it as a nested saga from a "
        "step: an @step that awaits orchestrator.execute(dc_inner(...)), or yield its steps "
        "as this saga's own: `yield from dc_inner.__wrapped__(...)`"
    )


def test_a_list_saga_called_as_a_statement_is_refused_with_the_fitting_fix() -> None:
    def dc_outer_of_list(account: str) -> Any:
        dc_inner_list(account)  # list-saga-statement
        yield dc_credit(account, 2)

    def dc_list_outer(account: str) -> list[StepCall[Any]]:
        dc_inner_list(account)
        return [dc_credit(account, 2)]

    def dc_list_outer_of_generator(account: str) -> list[StepCall[Any]]:
        dc_inner(account)
        return [dc_credit(account, 2)]

    with pytest.raises(SagaDefinitionError, match="saga 'dc_inner_list'") as refused:
        saga(dc_outer_of_list)
    assert _line("list-saga-statement") in str(refused.value)
    assert str(refused.value).endswith(
        "yield its steps as this saga's own: `for call in dc_inner_list(...).steps: yield call`"
    )
    with pytest.raises(SagaDefinitionError) as refused:
        saga(dc_list_outer)
    assert str(refused.value).endswith(
        "or put its steps in the returned list: `return [..., *dc_inner_list(...).steps]`"
    )
    with pytest.raises(SagaDefinitionError) as refused:
        saga(dc_list_outer_of_generator)
    assert str(refused.value).endswith(
        "run it as a nested saga from a step: an @step that awaits "
        "orchestrator.execute(dc_inner(...))"
    )


@saga
def dc_late_outer() -> Any:
    dc_late_inner()  # late-saga
    yield dc_credit("A", 1)


@saga
def dc_late_inner() -> Any:
    yield dc_credit("B", 1)


def test_a_saga_declared_after_the_saga_calling_it_is_checked_at_the_first_call() -> None:
    with pytest.raises(SagaDefinitionError, match="calls saga 'dc_late_inner'") as refused:
        dc_late_outer()
    assert _line("late-saga") in str(refused.value)


@pytest.mark.asyncio
async def test_sagas_that_keep_every_step_call_are_not_refused() -> None:
    log: list[str] = []

    @saga
    def dc_good_generator(accounts: list[str]) -> Any:
        print("start")  # a call that is no step
        log.append("start")
        first = dc_credit(accounts[0], 1)
        yield first
        total = yield from dc_credit(accounts[1], 2)
        if total:
            yield dc_bank.credit(accounts[0], 3)
        else:
            yield dc_credit(accounts[0], 4)

        def not_the_saga_body() -> None:
            dc_credit("X", 9)  # a nested function's statement is its own

        class NotTheSagaBody:
            dc_credit("X", 9)  # nor a class body's

    @saga
    def dc_good_list(accounts: list[str]) -> list[StepCall[Any]]:
        calls = []
        for account in accounts:
            calls.append(dc_credit(account, 1))
        (lambda: dc_credit("X", 9))()
        return calls if accounts else [dc_credit("A", 1)]

    @saga
    def dc_shadowing(dc_credit: Callable[..., Any] = log.append) -> Any:
        dc_credit("a parameter named as a step is not the step")
        yield dc_bank.credit("A", 1)

    orchestrator = SagaOrchestrator()
    assert await orchestrator.execute(dc_shadowing()) == [1]
    assert await orchestrator.execute(dc_good_generator(["A", "B"])) == [1, 2, 3]
    assert await orchestrator.execute(dc_good_list(["A", "B"])) == [1, 1]


@pytest.mark.asyncio
async def test_a_local_named_as_a_step_and_used_by_a_nested_function_is_not_the_step() -> None:
    heard: list[str] = []

    @saga
    def dc_cell_shadowing() -> Any:
        dc_credit = heard.append  # a local (a cell: the lambda below reads it)
        dc_credit("not the step")
        (lambda: dc_credit)()
        yield dc_bank.credit("A", 1)

    assert await SagaOrchestrator().execute(dc_cell_shadowing()) == [1]
    assert heard == ["not the step"]


def test_a_comprehension_variable_named_as_a_step_does_not_hide_a_discarded_call() -> None:
    # Regression (Python 3.12+ only; 3.11 found it already): PEP 709 inlines a list, set
    # or dict comprehension, so its variable is among the function's co_varnames, and the
    # step of that name, called as a statement, was taken for a local and let through.
    def dc_labels(accounts: list[str]) -> Any:
        yield dc_credit(accounts[0], 1)
        labels = [dc_credit for dc_credit in accounts]
        dc_credit(labels[0], 2)  # comprehension-named

    with pytest.raises(SagaDefinitionError, match="calls step 'dc_credit'") as refused:
        saga(dc_labels)
    assert _line("comprehension-named") in str(refused.value)


@pytest.mark.asyncio
async def test_a_local_also_named_by_a_comprehension_variable_is_not_the_step() -> None:
    heard: list[str] = []

    @saga
    def dc_assigned_local(accounts: list[str]) -> Any:
        dc_credit = heard.append
        dc_credit(str([dc_credit for dc_credit in accounts]))
        yield dc_bank.credit("A", 1)

    @saga
    def dc_walrus_local(accounts: list[str]) -> Any:
        # An assignment expression in a comprehension binds in the saga's own scope.
        [(dc_credit := heard.append) for _ in accounts[:1]]
        dc_credit(str({dc_credit: 0 for dc_credit in accounts}))
        yield dc_bank.credit("A", 2)

    @saga
    def dc_parameter(dc_credit: Callable[..., Any] = heard.append) -> Any:
        dc_credit(str({dc_credit for dc_credit in "B"}))
        yield dc_bank.credit("A", 3)

    orchestrator = SagaOrchestrator()
    assert await orchestrator.execute(dc_assigned_local(["B"])) == [1]
    assert await orchestrator.execute(dc_walrus_local(["B"])) == [2]
    assert await orchestrator.execute(dc_parameter()) == [3]
    assert heard == ["['B']", "{'B': 0}", "{'B'}"]


dc_handler = dc_credit  # a module default that a saga below rebinds before calling it


@pytest.mark.asyncio
async def test_a_name_the_saga_declares_global_or_nonlocal_is_not_the_step_it_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Regression: the name was resolved to what it held when the saga was declared (a
    # step), though the saga rebinds it before the call: a valid saga was refused.
    monkeypatch.setitem(globals(), "dc_handler", dc_credit)  # restored after the test
    heard: list[str] = []
    dc_current = dc_credit

    @saga
    def dc_rebinds_a_global() -> Any:
        global dc_handler
        dc_handler = heard.append
        dc_handler("global")
        yield dc_bank.credit("A", 1)

    @saga
    def dc_rebinds_a_nonlocal() -> list[StepCall[Any]]:
        nonlocal dc_current
        dc_current = heard.append
        dc_current("nonlocal")
        return [dc_bank.credit("A", 2)]

    orchestrator = SagaOrchestrator()
    assert await orchestrator.execute(dc_rebinds_a_global()) == [1]
    assert await orchestrator.execute(dc_rebinds_a_nonlocal()) == [2]
    assert heard == ["global", "nonlocal"]


__dc_audit = dc_credit  # a step under the unmangled name of a class-private call below
_DcMangled__dc_audit = print  # what DcMangled's methods call as ``__dc_audit``


def test_a_class_private_name_called_in_a_method_saga_is_not_the_unmangled_global() -> None:
    # Regression: ``__dc_audit`` in a class is ``_DcMangled__dc_audit`` (Python mangles
    # it), but was looked up unmangled, found the step, and the saga was refused.
    class DcMangled:
        @saga
        def dc_order(self, account: str) -> Any:
            __dc_audit(account)
            yield dc_credit(account, 1)

    assert DcMangled.dc_order.name == "dc_order"


def test_a_saga_whose_source_gained_lines_since_it_was_compiled_is_not_refused_for_them() -> None:
    # The source read for it is the same function edited since (a call added on a new
    # line): not refused for a call the code it runs never makes.
    filename = "<dc-edited-body>"
    namespace = {"dc_credit": dc_credit}
    exec(
        compile("def dc_grown(amount):\n    yield dc_credit('B', amount)\n", filename, "exec"),
        namespace,
    )
    edited = [
        "def dc_grown(amount):\n",
        "    yield dc_credit('B', amount)\n",
        "    dc_credit('A', amount)\n",
    ]
    linecache.cache[filename] = (len("".join(edited)), None, edited, filename)
    try:
        assert saga(namespace["dc_grown"]).name == "dc_grown"
    finally:
        del linecache.cache[filename]


def test_a_saga_whose_source_changed_since_it_was_compiled_is_not_checked() -> None:
    # The source read for it is another function's (its file edited since): not checked
    # against code that is not the saga's, rather than refused for a call it never makes.
    filename = "<dc-edited-source>"
    namespace = {"dc_credit": dc_credit}
    exec(
        compile("def dc_now(amount):\n    yield dc_credit('B', amount)\n", filename, "exec"),
        namespace,
    )
    edited = ["def dc_before(amount):\n", "    dc_credit('A', amount)\n"]
    linecache.cache[filename] = (len("".join(edited)), None, edited, filename)
    try:
        saga(namespace["dc_now"])
    finally:
        del linecache.cache[filename]


def test_the_first_of_several_discarded_step_calls_is_named() -> None:
    def dc_two_dropped() -> Any:
        dc_credit("A", 1)  # first-dropped
        dc_credit("B", 1)
        yield dc_credit("C", 1)

    with pytest.raises(SagaDefinitionError) as refused:
        saga(dc_two_dropped)
    assert _line("first-dropped") in str(refused.value)


class _DcLazyProxy:
    """A lazy proxy (werkzeug's ``LocalProxy``): its ``__class__`` runs code, which fails
    outside the context it needs (here, while ``outside`` is set)."""

    outside = False

    @property  # type: ignore[misc]
    def __class__(self) -> type[Any]:  # type: ignore[override]
        if _DcLazyProxy.outside:
            raise RuntimeError("working outside of application context")
        return _DcLazyProxy

    def __call__(self) -> None:
        pass


dc_lazy = _DcLazyProxy()


class DcLazyHolder:
    lazy = dc_lazy


def test_a_call_of_a_lazy_proxy_as_a_statement_runs_none_of_its_code() -> None:
    # Regression: isinstance() read the proxy's __class__, so declaring the saga (at import)
    # raised the proxy's RuntimeError.
    def dc_through_a_proxy() -> Any:
        dc_lazy()
        yield dc_credit("A", 1)

    def dc_through_a_class_attribute_proxy() -> Any:
        DcLazyHolder.lazy()
        yield dc_credit("A", 1)

    _DcLazyProxy.outside = True
    try:
        assert saga(dc_through_a_proxy).name == "dc_through_a_proxy"
        assert saga(dc_through_a_class_attribute_proxy)() is not None
    finally:
        _DcLazyProxy.outside = False


def test_a_saga_function_whose_wrapped_chain_is_a_cycle_is_not_checked() -> None:
    def dc_cycle() -> Any:
        dc_credit("A", 1)
        yield dc_credit("B", 1)

    dc_cycle.__wrapped__ = dc_cycle  # type: ignore[attr-defined]
    assert saga(dc_cycle).name == "dc_cycle"


@pytest.mark.asyncio
async def test_a_saga_whose_source_cannot_be_read_is_not_checked() -> None:
    namespace = {"dc_credit": dc_credit, "saga": saga}
    exec(  # no source file: inspect.getsource fails
        "@saga\n"
        "def dc_exec_saga(amount):\n"
        "    dc_credit('A', amount)\n"
        "    yield dc_credit('B', amount)\n",
        namespace,
    )
    dc_exec_saga = namespace["dc_exec_saga"]
    assert await SagaOrchestrator().execute(dc_exec_saga(5)) == [5]


# A generator saga's return value is never run: ``return credit(...)`` in one drops the step
# just as a forgotten ``yield`` does (the saga completed one step short, silently).


def test_a_generator_saga_returning_a_step_call_is_refused_when_declared() -> None:
    def dc_returning(src: str, dst: str, amount: int) -> Any:
        yield dc_credit(src, -amount)
        return dc_credit(dst, amount)  # returned-call

    with pytest.raises(SagaDefinitionError) as refused:
        saga(dc_returning)
    assert str(refused.value) == (
        f"saga 'dc_returning' returns a call of step 'dc_credit' at "
        f"{__file__}:{_line('returned-call').rpartition(':')[2]}: a generator saga runs only "
        "the step calls it yields, so the saga would skip it; yield it: `yield dc_credit(...)`"
    )


def test_a_generator_saga_returning_a_list_of_step_calls_or_a_saga_call_is_refused() -> None:
    def dc_returning_list(account: str) -> Any:
        yield dc_credit(account, 1)
        return [dc_bank.credit(account, 2), dc_credit(account, 3)]  # returned-list

    def dc_returning_saga(account: str) -> Any:
        yield dc_credit(account, 1)
        if account:
            return dc_inner(account)  # returned-saga
        return None

    with pytest.raises(SagaDefinitionError, match="returns a call of step 'dc_credit'") as refused:
        saga(dc_returning_list)
    assert _line("returned-list") in str(refused.value)
    assert "`yield dc_bank.credit(...)`" in str(refused.value)
    with pytest.raises(SagaDefinitionError) as refused:
        saga(dc_returning_saga)
    message = str(refused.value)
    assert message.startswith("saga 'dc_returning_saga' returns a call of saga 'dc_inner' at ")
    assert _line("returned-saga") in message
    assert message.endswith(
        "a generator saga runs only the step calls it yields, so this saga would skip it; "
        "run it as a nested saga from a step: an @step that awaits "
        "orchestrator.execute(dc_inner(...)), or yield its steps as this saga's own: "
        "`yield from dc_inner.__wrapped__(...)`"
    )


@pytest.mark.asyncio
async def test_generator_sagas_returning_other_values_are_not_refused() -> None:
    @saga
    def dc_inner_total(account: str) -> Any:
        first = yield dc_credit(account, 1)
        return first + 1  # a value for `yield from`, not a step call

    @saga
    def dc_outer_total(account: str) -> Any:
        total = yield from dc_inner_total.__wrapped__(account)
        yield dc_credit(account, total)
        return [total, dc_credit]  # no call: nothing dropped

    @saga
    def dc_list_returning(account: str) -> list[StepCall[Any]]:
        return [dc_credit(account, 1)]  # a list saga returns its steps

    orchestrator = SagaOrchestrator()
    # Run, but said to be ignored by execute() (dc_inner_total's, for `yield from`, is not).
    with pytest.warns(ReturnValueIgnored, match="'dc_outer_total' returned a list") as said:
        assert await orchestrator.execute(dc_outer_total("A")) == [1, 2]
    assert len(said) == 1
    assert await orchestrator.execute(dc_list_returning("A")) == [1]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "returned",
    ["dc_credit('B', 2)", "(dc_credit('B', 2), 3)", "dc_inner('B')"],
)
async def test_a_generator_saga_returning_a_step_call_unseen_when_declared_fails_when_run(
    returned: str,
) -> None:
    # Without source (exec'd code) nothing is checked when declared: the returned value is
    # refused when the generator returns it, and the completed steps are compensated.
    undone: list[int] = []

    @step
    async def dc_undoable(amount: int) -> int:
        return amount

    @dc_undoable.compensate
    async def dc_undo(amount: int) -> None:
        undone.append(amount)

    namespace = {"dc_credit": dc_credit, "dc_inner": dc_inner, "dc_undoable": dc_undoable}
    exec(f"def dc_exec_returning():\n    yield dc_undoable(1)\n    return {returned}\n", namespace)
    dc_exec_returning = saga(namespace["dc_exec_returning"])
    orchestrator = SagaOrchestrator()
    with pytest.raises(SagaDefinitionError) as refused:
        await orchestrator.execute(dc_exec_returning())
    assert str(refused.value).startswith("saga 'dc_exec_returning' returned ")
    assert "a generator saga runs only the step calls it yields" in str(refused.value)
    assert undone == [1]
    (meta,) = await orchestrator.get_history()
    assert meta.status.name == "COMPENSATED"
