"""Issue 2, points 1, 2 and 5: declaring steps and compensations, and their misuse."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sagakit import (
    DEFAULT_TIMEOUT,
    CompensationAlreadySetError,
    Retry,
    SagaDefinition,
    SagaDefinitionError,
    SagaError,
    SagaOrchestrator,
    Step,
    StepCall,
    StepFailed,
    StepTimeout,
    saga,
    step,
)

# ------------------------------------------------------------------ declaring


def test_bare_decorator_keeps_the_function_and_default_timeout() -> None:
    async def debit(account: str, amount: float) -> list[str]:
        """Take money from an account."""
        return [account]

    decorated = step(debit)

    assert isinstance(decorated, Step)
    assert decorated.__name__ == "debit"
    assert decorated.__qualname__ == debit.__qualname__
    assert decorated.__doc__ == "Take money from an account."
    assert decorated.__wrapped__ is debit
    assert inspect.signature(decorated) == inspect.signature(debit)
    assert inspect.iscoroutinefunction(decorated)
    assert decorated.name == "debit"
    assert decorated.timeout == DEFAULT_TIMEOUT == 30.0
    assert decorated.retry.attempts == 1
    assert decorated.compensation is None


def test_decorator_with_options() -> None:
    policy = Retry(attempts=4, backoff=0.5)

    @step(timeout=2.5, retry=policy, name="take-money")
    async def debit(account: str) -> None:
        """Docstring kept."""

    assert debit.name == "take-money"
    assert debit.__name__ == "debit"
    assert debit.__doc__ == "Docstring kept."
    assert debit.timeout == 2.5
    assert debit.retry is policy
    assert list(inspect.signature(debit).parameters) == ["account"]
    assert repr(debit) == "<Step take-money timeout=2.5s>"


def test_integer_retry_means_that_many_attempts() -> None:
    @step(retry=5)
    async def flaky() -> None: ...

    assert flaky.retry.attempts == 5


def test_a_step_prints_as_its_repr() -> None:
    @step(timeout=5)
    async def debit(account: str) -> None: ...

    assert repr(debit) == "<Step debit timeout=5s>"
    assert str(debit) == f"{debit}" == format(debit) == repr(debit)
    assert f"{debit:>30}" == f"{debit!r:>30}"


def test_calling_a_step_runs_nothing_and_returns_a_step_call() -> None:
    ran: list[str] = []

    @step
    async def debit(account: str, amount: float) -> str:
        ran.append(account)
        return account

    call = debit("A", amount=10.0)

    assert isinstance(call, StepCall)
    assert call.step is debit
    assert call.name == "debit"
    assert call.args == ("A",)
    assert call.kwargs == {"amount": 10.0}
    assert repr(call) == "<StepCall debit('A', amount=10.0)>"
    assert ran == []


@pytest.mark.asyncio
async def test_awaiting_a_step_call_runs_the_step_alone() -> None:
    @step
    async def debit(account: str, amount: float) -> list[tuple[str, float]]:
        await asyncio.sleep(0)
        return [(account, amount)]

    assert await debit("A", 2.0) == [("A", 2.0)]
    assert await debit(account="B", amount=3.0) == [("B", 3.0)]


@pytest.mark.asyncio
async def test_awaiting_a_step_call_applies_its_timeout() -> None:
    @step(timeout=0.01)
    async def slow() -> str:
        await asyncio.sleep(10)
        return "never"

    with pytest.raises(StepTimeout) as info:
        await slow()
    assert info.value.step_name == "slow"
    assert info.value.timeout == 0.01
    assert info.value.duration >= 0.01
    assert isinstance(info.value, TimeoutError)


@pytest.mark.asyncio
async def test_awaited_step_that_swallows_cancellation_still_times_out() -> None:
    @step(timeout=0.01)
    async def stubborn() -> str:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)
        return "late"

    with pytest.raises(StepTimeout) as info:
        await stubborn()
    # Regression: the error used to be its own __cause__.
    assert info.value.__cause__ is not info.value
    # One timeout error, not a second one wrapping the first.
    assert not isinstance(info.value.__cause__, StepTimeout)


@pytest.mark.asyncio
async def test_awaited_step_that_blocks_past_its_deadline_times_out() -> None:
    # Regression: a step that never awaited escaped asyncio.timeout and "succeeded".
    @step(timeout=0.01)
    async def blocking() -> str:
        time.sleep(0.03)  # noqa: ASYNC251 - blocking the loop is the point
        return "late"

    with pytest.raises(StepTimeout):
        await blocking()


@pytest.mark.asyncio
async def test_awaiting_a_step_call_retries_with_its_policy() -> None:
    attempts: list[int] = []

    @step(retry=Retry(attempts=3, backoff=0, on=ConnectionError))
    async def flaky() -> str:
        attempts.append(len(attempts) + 1)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return "ok"

    assert await flaky() == "ok"
    assert attempts == [1, 2, 3]


@pytest.mark.asyncio
async def test_awaited_step_gives_up_after_its_attempts_and_raises_the_original() -> None:
    calls = 0

    @step(retry=Retry(attempts=2, backoff=0))
    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise ValueError(f"bad {calls}")

    with pytest.raises(ValueError, match="bad 2"):
        await broken()
    assert calls == 2


@pytest.mark.asyncio
async def test_awaited_step_does_not_retry_exceptions_outside_on() -> None:
    calls = 0

    @step(retry=Retry(attempts=5, backoff=0, on=ConnectionError))
    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("not retried")

    with pytest.raises(KeyError):
        await broken()
    assert calls == 1


@pytest.mark.asyncio
async def test_awaited_step_gets_a_fresh_timeout_per_attempt() -> None:
    calls = 0

    @step(timeout=0.02, retry=Retry(attempts=2, backoff=0, on=TimeoutError))
    async def slow_then_fast() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(10)
        return "second"

    assert await slow_then_fast() == "second"
    assert calls == 2


# ------------------------------------------------------------------ methods


class Bank:
    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []

    @step(timeout=3)
    async def debit(self, account: str, amount: float) -> str:
        self.log.append(("debit", account, amount))
        return f"tx-{account}"

    @debit.compensate
    async def undo_debit(self, tx: str, account: str, amount: float) -> str:
        self.log.append(("undo_debit", tx, account, amount))
        return f"undone-{tx}"

    @step
    async def credit(self, account: str, amount: float) -> None:
        self.log.append(("credit", account, amount))

    @credit.compensate
    async def undo_credit(self, account: str, amount: float) -> None:
        self.log.append(("undo_credit", account, amount))


@step
async def explode() -> None:
    raise RuntimeError("explode")


def test_a_method_step_binds_to_its_instance() -> None:
    bank = Bank()
    call = bank.debit("A", 1.0)

    assert isinstance(call, StepCall)
    assert call.instance is bank
    assert call.args == ("A", 1.0)
    assert list(inspect.signature(bank.debit).parameters) == ["account", "amount"]
    assert list(inspect.signature(Bank.debit).parameters) == ["self", "account", "amount"]
    assert inspect.iscoroutinefunction(Bank.debit)


@pytest.mark.asyncio
async def test_awaiting_a_method_step_runs_it_on_its_instance() -> None:
    bank = Bank()
    assert await bank.debit("A", 1.0) == "tx-A"
    assert bank.log == [("debit", "A", 1.0)]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "make_calls",
    [
        pytest.param(lambda b: [b.debit("A", 5.0), b.credit("B", 5.0)], id="positional"),
        # Regression: keyword arguments to a method step broke its compensation.
        pytest.param(
            lambda b: [b.debit("A", amount=5.0), b.credit(account="B", amount=5.0)],
            id="keywords",
        ),
    ],
)
async def test_method_step_compensations_get_the_instance_and_arguments(make_calls: Any) -> None:
    bank = Bank()

    @saga
    def transfer() -> list[StepCall[Any]]:
        return [*make_calls(bank), explode()]

    with pytest.raises(StepFailed) as info:
        await SagaOrchestrator().execute(transfer())

    assert bank.log == [
        ("debit", "A", 5.0),
        ("credit", "B", 5.0),
        ("undo_credit", "B", 5.0),
        ("undo_debit", "tx-A", "A", 5.0),
    ]
    assert info.value.compensation_events == ["undone-tx-A"]


# ------------------------------------------------------------------ compensations


def test_compensate_returns_the_function_unchanged_in_both_forms() -> None:
    @step
    async def charge(order: str, amount: float) -> str:
        return "pay-1"

    async def refund(payment_id: str, order: str, amount: float) -> None: ...

    assert charge.compensate(refund) is refund
    assert charge.compensation is refund
    assert charge.compensation_takes_result is True

    @step
    async def reserve(sku: str) -> None: ...

    async def release(sku: str) -> None: ...

    assert reserve.compensate(release) is release
    assert reserve.compensation_takes_result is False


@pytest.mark.asyncio
async def test_both_compensation_forms_are_called_correctly_at_run_time() -> None:
    log: list[tuple[Any, ...]] = []

    @step
    async def charge(order: str, amount: float) -> str:
        return f"pay-{order}"

    @charge.compensate
    async def refund(payment_id: str, order: str, amount: float) -> str:
        log.append(("refund", payment_id, order, amount))
        return "refunded"

    @step
    async def reserve(sku: str, *, count: int = 1) -> list[str]:
        return [sku] * count

    @reserve.compensate
    async def release(sku: str, *, count: int = 1) -> None:
        log.append(("release", sku, count))

    @saga
    def order() -> list[StepCall[Any]]:
        return [reserve("sku-1", count=2), charge("o-1", 9.5), explode()]

    with pytest.raises(StepFailed) as info:
        await SagaOrchestrator().execute(order())

    assert log == [("refund", "pay-o-1", "o-1", 9.5), ("release", "sku-1", 2)]
    assert info.value.events == ["sku-1", "sku-1", "pay-o-1"]
    assert info.value.compensation_events == ["refunded"]


@pytest.mark.asyncio
async def test_keyword_call_arguments_are_normalised_for_the_compensation() -> None:
    seen: list[tuple[Any, ...]] = []

    @step
    async def debit(account: str, amount: float) -> str:
        return "tx"

    @debit.compensate
    async def undo(tx: str, acct: str, amt: float) -> None:  # other parameter names
        seen.append((tx, acct, amt))

    @saga
    def transfer() -> list[StepCall[Any]]:
        return [debit(amount=3.0, account="A"), explode()]

    with pytest.raises(StepFailed):
        await SagaOrchestrator().execute(transfer())
    assert seen == [("tx", "A", 3.0)]


@pytest.mark.asyncio
async def test_a_step_without_compensation_is_allowed() -> None:
    ran: list[str] = []

    @step
    async def notify(who: str) -> str:
        ran.append(who)
        return who

    @saga
    def flow() -> list[StepCall[Any]]:
        return [notify("x"), explode()]

    with pytest.raises(StepFailed) as info:
        await SagaOrchestrator().execute(flow())
    assert ran == ["x"]
    assert info.value.compensation_events == []


def test_second_compensation_is_refused() -> None:
    @step
    async def debit(account: str) -> None: ...

    @debit.compensate
    async def undo(account: str) -> None: ...

    async def undo_again(account: str) -> None: ...

    with pytest.raises(CompensationAlreadySetError, match="already has the compensation") as info:
        debit.compensate(undo_again)
    assert isinstance(info.value, SagaDefinitionError)
    assert debit.compensation is undo


def test_the_same_compensation_declared_again_replaces_it(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: running a compensation's declaration again raised
    # CompensationAlreadySetError ("remove one of the @debit.compensate declarations", of
    # which there is one): a notebook cell re-run after fixing the compensation, or a
    # module reloaded (importlib.reload, IPython's %autoreload) that compensates a step
    # of another module.
    (tmp_path / "redeclared_steps.py").write_text(
        "from sagakit import step\n\n@step\nasync def debit(account: str) -> None: ...\n"
    )
    source = (
        "from redeclared_steps import debit\n\n"
        "@debit.compensate\nasync def refund(account: str) -> str:\n    return {version!r}\n"
    )
    (tmp_path / "redeclared_undo.py").write_text(source.format(version="v1"))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys

    for name in ("redeclared_steps", "redeclared_undo"):  # both unloaded afterwards
        monkeypatch.delitem(sys.modules, name, raising=False)
    undo_module = importlib.import_module("redeclared_undo")
    # Not the same size: a cached bytecode of the same size and second would be reused.
    (tmp_path / "redeclared_undo.py").write_text(source.format(version="version 2"))
    importlib.invalidate_caches()
    reloaded = importlib.reload(undo_module)
    debit = sys.modules["redeclared_steps"].debit
    assert debit.compensation is reloaded.refund
    assert asyncio.run(debit.compensation("A")) == "version 2"

    # Another function is still a second compensation.
    async def refund(account: str) -> None: ...

    with pytest.raises(CompensationAlreadySetError, match="already has the compensation"):
        debit.compensate(refund)
    assert debit.compensation is reloaded.refund

    # A notebook cell declaring a compensation, run twice.
    @step
    async def credit(account: str) -> None: ...

    for _ in range(2):

        @credit.compensate
        async def take_back(account: str) -> None: ...

    assert credit.compensation is take_back


@pytest.mark.parametrize(
    "source",
    [
        "async def undo(a, b, c, d): ...",  # too many parameters
        "async def undo(): ...",  # none at all
        "async def undo(*, other): ...",  # a keyword the step does not give
        "async def undo(account, *, other): ...",
    ],
)
def test_incompatible_compensation_signature_is_refused_with_a_hint(source: str) -> None:
    @step
    async def debit(account: str, amount: float) -> None: ...

    namespace: dict[str, Any] = {}
    exec(source, namespace)

    with pytest.raises(SagaDefinitionError) as info:
        debit.compensate(namespace["undo"])
    message = str(info.value)
    assert "cannot take the arguments of step 'debit'" in message
    assert "give it the step's parameters (account" in message
    assert "amount" in message
    assert "result first" in message
    assert debit.compensation is None


def test_refused_signatures_are_shown_as_written() -> None:
    # This module uses `from __future__ import annotations`. The errors read
    # "undo(account: 'str') -> None cannot take ... (account: 'str', amount: 'float')", and
    # "of step 'tag' ((item: 'str', *labels: 'str') -> None)"; they now show the parameters
    # as written, without return annotations, as docs/concepts/compensation.md does.
    @step
    async def debit(account: str, amount: float) -> None: ...

    async def undo(account: str) -> None: ...

    async def undo_tag(item: str) -> None: ...

    @step
    async def tag(item: str, *labels: str) -> None: ...

    with pytest.raises(SagaDefinitionError) as refused:
        debit.compensate(undo)
    assert ".undo(account: str) cannot take the arguments of step 'debit' (account: str, " in (
        str(refused.value)
    )
    assert "give it the step's parameters (account: str, amount: float) or" in str(refused.value)
    with pytest.raises(SagaDefinitionError) as refused:
        tag.compensate(undo_tag)
    assert "of step 'tag' (item: str, *labels: str); give it *args too" in str(refused.value)
    with pytest.raises(SagaDefinitionError) as refused:
        debit("A")  # type: ignore[call-arg]
    assert str(refused.value).endswith("its parameters are (account: str, amount: float)")


def test_sync_compensation_is_refused() -> None:
    @step
    async def debit(account: str) -> None: ...

    def undo(account: str) -> None: ...

    with pytest.raises(SagaDefinitionError, match="must be an 'async def'"):
        debit.compensate(undo)  # type: ignore[arg-type]
    assert debit.compensation is None


# ------------------------------------------------------------------ misuse


def test_sync_function_is_refused() -> None:
    def debit(account: str) -> None: ...

    with pytest.raises(SagaDefinitionError, match="async def") as info:
        step(debit)  # type: ignore[arg-type]
    assert isinstance(info.value, SagaError)
    assert isinstance(info.value, TypeError)
    with pytest.raises(SagaDefinitionError, match="async def"):
        step(timeout=3)(debit)  # type: ignore[arg-type]


def test_an_async_generator_is_refused_as_such() -> None:
    # It is an 'async def', so "declare it with 'async def'" would be no help.
    async def debit(account: str) -> AsyncIterator[str]:
        yield account

    with pytest.raises(SagaDefinitionError, match="is an async generator") as info:
        step(debit)  # type: ignore[arg-type]
    assert "declare it with 'async def'" not in str(info.value)

    @step
    async def credit(account: str) -> None: ...

    async def undo(account: str) -> AsyncIterator[str]:
        yield account

    with pytest.raises(SagaDefinitionError, match="is an async generator"):
        credit.compensate(undo)  # type: ignore[arg-type]
    assert credit.compensation is None


def test_function_and_options_together_are_refused() -> None:
    async def debit() -> None: ...

    with pytest.raises(SagaDefinitionError, match="not both"):
        step(debit, timeout=1)  # type: ignore[call-overload]


def test_non_callable_is_refused() -> None:
    with pytest.raises(SagaDefinitionError):
        step(42)  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("timeout", "complaint"),
    [
        (0, "greater than zero"),
        (-1, "greater than zero"),
        (-0.5, "greater than zero"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        (-math.inf, "finite"),
        # Too large for a float: it raised a bare OverflowError.
        pytest.param(10**400, "finite", id="10**400"),
        ("x", "number of seconds"),
        (None, "number of seconds"),
        (True, "number of seconds"),
    ],
)
def test_bad_timeouts_are_refused(timeout: Any, complaint: str) -> None:
    async def debit() -> None: ...

    with pytest.raises(SagaDefinitionError, match=complaint) as info:
        step(timeout=timeout)(debit)
    assert "'debit'" in str(info.value)


@pytest.mark.parametrize("option", ["timeout", "compensation_timeout"])
@pytest.mark.parametrize("value", [None, math.inf, pytest.param(10**400, id="10**400")])
def test_no_timeout_meant_by_none_or_infinity_is_refused_saying_what_to_give(
    option: str, value: Any
) -> None:
    # Regression: "must be a finite number of seconds, got inf" (or "a number of seconds,
    # got None") named the problem, not the fix for one who meant "no timeout".
    async def debit() -> None: ...

    if option == "compensation_timeout" and value is None:
        assert step(compensation_timeout=None)(debit).compensation_timeout == DEFAULT_TIMEOUT
        return  # None is the step's timeout there
    with pytest.raises(SagaDefinitionError) as info:
        step(**{option: value})(debit)
    message = str(info.value)
    assert message.startswith(f"@step({option}=...) of 'debit' must be"), message
    assert "every step runs under a timeout" in message
    assert "give a large number of seconds" in message


@pytest.mark.parametrize("timeout", [0, -1, math.nan, -math.inf, "x"])
def test_other_bad_timeouts_say_no_more_than_the_problem(timeout: Any) -> None:
    async def debit() -> None: ...

    with pytest.raises(SagaDefinitionError) as info:
        step(timeout=timeout)(debit)
    assert "every step runs under a timeout" not in str(info.value)


@pytest.mark.parametrize("name", ["", 3])
def test_bad_names_are_refused(name: Any) -> None:
    async def debit() -> None: ...

    with pytest.raises(SagaDefinitionError, match="non-empty string") as info:
        step(name=name)(debit)
    assert str(info.value).startswith("@step(name=...) of 'debit' must be"), info.value


@pytest.mark.parametrize("retry", ["3", 2.5, True, object()])
def test_bad_retry_options_are_refused(retry: Any) -> None:
    async def debit() -> None: ...

    with pytest.raises(SagaDefinitionError, match="Retry"):
        step(retry=retry)(debit)


@pytest.mark.parametrize("option", ["retry", "compensation_retry"])
@pytest.mark.parametrize("attempts", [0, -2])
def test_fewer_than_one_attempt_is_refused_naming_the_option(option: str, attempts: int) -> None:
    async def debit() -> None: ...

    with pytest.raises(SagaDefinitionError, match="at least 1 attempt") as info:
        step(**{option: attempts})(debit)
    assert f"@step({option}=...) of 'debit'" in str(info.value)


def test_bad_compensation_timeout_is_refused() -> None:
    async def debit() -> None: ...

    with pytest.raises(SagaDefinitionError, match="compensation_timeout"):
        step(compensation_timeout=0)(debit)


def test_compensation_timeout_defaults_to_the_step_timeout() -> None:
    @step(timeout=4)
    async def a() -> None: ...

    @step(timeout=4, compensation_timeout=9)
    async def b() -> None: ...

    assert a.compensation_timeout == 4.0
    assert b.compensation_timeout == 9.0


def test_step_options_do_not_leak_between_steps() -> None:
    @step(timeout=1, compensate_on_timeout=False, compensate_on_failure=True)
    async def a() -> None: ...

    @step
    async def b() -> None: ...

    assert (a.compensate_on_timeout, a.compensate_on_failure) == (False, True)
    assert (b.compensate_on_timeout, b.compensate_on_failure) == (True, False)


def test_calls_of_two_steps_carry_their_own_step_and_options() -> None:
    @step(timeout=1)
    async def a(x: int) -> int:
        return x

    @step(timeout=2)
    async def b(x: int) -> int:
        return x

    call_a, call_b = a(1), b(2)
    assert (call_a.step, call_a.spec.timeout, call_a.fn, call_a.args) == (a, 1, a.__wrapped__, (1,))
    assert (call_b.step, call_b.spec.timeout, call_b.fn, call_b.args) == (b, 2, b.__wrapped__, (2,))
    assert isinstance(a, Step)
    assert isinstance(b, Step)
    assert a.__class__ is b.__class__  # still the function's class, through the proxy


def test_a_step_subclass_keeps_its_own_call() -> None:
    class TracedStep(Step[Any, Any]):
        def __call__(self, *args: Any, **kwargs: Any) -> StepCall[Any]:
            return super().__call__(*args, traced=True, **kwargs)

    async def fn(traced: bool = False) -> bool:
        return traced

    traced = TracedStep(fn)
    assert traced().kwargs == {"traced": True}
    assert isinstance(traced, TracedStep)
    by_keyword = Step(fn=fn, timeout=3)  # the function may be passed by keyword, as before
    assert (by_keyword.timeout, by_keyword().args) == (3, ())


@pytest.mark.asyncio
async def test_a_compensation_gets_the_steps_defaults_for_omitted_arguments() -> None:
    # Regression: release(sku, count) was called as release("sku-1") and failed.
    seen: list[tuple[Any, ...]] = []

    @step
    async def reserve(sku: str, count: int = 1, *, hold: str = "default") -> None: ...

    @reserve.compensate
    async def release(sku: str, count: int, *, hold: str) -> None:
        seen.append((sku, count, hold))

    @saga
    def flow() -> list[StepCall[Any]]:
        return [reserve("sku-1"), reserve("sku-2", 3), explode()]

    with pytest.raises(StepFailed):
        await SagaOrchestrator().execute(flow())
    assert seen == [("sku-2", 3, "default"), ("sku-1", 1, "default")]


@pytest.mark.asyncio
async def test_a_compensation_gets_the_steps_trailing_positional_defaults() -> None:
    # All-positional signatures take the orchestrator's fast path: it must still pass
    # the step's defaults for the trailing arguments a call left out.
    seen: list[tuple[Any, ...]] = []

    @step
    async def reserve(sku: str, count: int = 1, hold: str = "default") -> None: ...

    @reserve.compensate
    async def release(sku: str, count: int, hold: str) -> None:
        seen.append((sku, count, hold))

    @saga
    def flow() -> list[StepCall[Any]]:
        return [reserve("a"), reserve("b", 3), reserve("c", 4, "kept"), explode()]

    with pytest.raises(StepFailed):
        await SagaOrchestrator().execute(flow())
    assert seen == [("c", 4, "kept"), ("b", 3, "default"), ("a", 1, "default")]


@pytest.mark.asyncio
async def test_a_positional_compensation_called_by_keyword_gets_the_steps_defaults() -> None:
    # A call with keywords takes the compensation's general path (StepCall's
    # compensation_call), beside the direct call of the test above: the same arguments.
    seen: list[tuple[Any, ...]] = []

    @step
    async def reserve_by_name(sku: str, count: int = 1, hold: str = "default") -> None: ...

    @reserve_by_name.compensate
    async def release(sku: str, count: int, hold: str) -> None:
        seen.append((sku, count, hold))

    @saga
    def flow_by_name() -> list[StepCall[Any]]:
        return [reserve_by_name("a", count=2), reserve_by_name(sku="b"), explode()]

    with pytest.raises(StepFailed):
        await SagaOrchestrator().execute(flow_by_name())
    assert seen == [("b", 1, "default"), ("a", 2, "default")]


def test_a_compensation_fitting_both_forms_is_read_by_its_parameter_names() -> None:
    # Regression: refund(payment_id, order, amount=None) fitted the arguments form
    # (payment_id=order, order=amount) and was called with the wrong values.
    @step
    async def charge(order: str, amount: float) -> str:
        return "pay-1"

    @charge.compensate
    async def refund(payment_id: str, order: str, amount: float | None = None) -> None: ...

    assert charge.compensation_takes_result is True

    @step
    async def debit(account: str, amount: float) -> None: ...

    @debit.compensate
    async def undo(account: str, amount: float, note: str = "") -> None: ...

    assert debit.compensation_takes_result is False

    @step
    async def notify(who: str) -> None: ...

    @notify.compensate
    async def unnotify(*args: Any) -> None: ...  # a tie: the arguments form

    assert notify.compensation_takes_result is False


@pytest.mark.asyncio
async def test_a_compensation_fitting_both_forms_gets_the_result_at_run_time() -> None:
    seen: list[tuple[Any, ...]] = []

    @step
    async def charge(order: str, amount: float) -> str:
        return f"pay-{order}"

    @charge.compensate
    async def refund(payment_id: str, order: str, amount: float | None = None) -> None:
        seen.append((payment_id, order, amount))

    @saga
    def flow() -> list[StepCall[Any]]:
        return [charge("o-1", 5.0), explode()]

    with pytest.raises(StepFailed):
        await SagaOrchestrator().execute(flow())
    assert seen == [("pay-o-1", "o-1", 5.0)]


@pytest.mark.asyncio
async def test_awaited_step_that_turns_its_timeout_into_an_error_is_a_timeout() -> None:
    @step(timeout=0.01)
    async def converts() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ConnectionError("cleanup failed") from None

    with pytest.raises(StepTimeout) as info:
        await converts()
    assert isinstance(info.value.__cause__, ConnectionError)


@pytest.mark.asyncio
async def test_awaited_step_raising_its_own_timeout_error_is_not_a_step_timeout() -> None:
    @step(timeout=5)
    async def remote() -> None:
        raise TimeoutError("the remote side timed out")

    with pytest.raises(TimeoutError, match="remote side") as info:
        await remote()
    assert not isinstance(info.value, StepTimeout)


class _Vault:
    def __init__(self) -> None:
        self.undone: list[str] = []

    @step
    async def lock(self, item: str) -> None:
        return None

    @lock.compensate
    async def unlock(self, item: str) -> None:
        self.undone.append(f"vault {item}")


class _SubVault(_Vault):
    async def unlock(self, item: str) -> None:  # not what compensates lock: see the docs
        self.undone.append(f"sub {item}")


@pytest.mark.asyncio
async def test_a_method_steps_compensation_is_the_declared_function() -> None:
    # As docs/concepts/steps.md says: a subclass overriding the compensation's name does
    # not change it (the compensation is not looked up on the instance's class).
    vault = _SubVault()

    @step
    async def fail() -> None:
        raise ValueError("no")

    with pytest.raises(StepFailed):
        await SagaOrchestrator().execute(SagaDefinition(steps=[vault.lock("gold"), fail()]))
    assert vault.undone == ["vault gold"]
