"""Issue 2, point 7: step retries, backoff, compensation retries and CompensationFailed."""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

import pytest

from sagakit import (
    CompensationFailed,
    Retry,
    SagaAlreadyExecuting,
    SagaDefinition,
    SagaDefinitionError,
    SagaError,
    SagaOrchestrator,
    SagaRunError,
    SagaStatus,
    Step,
    StepFailed,
    StepStatus,
    StepTimeout,
    Transition,
    TransitionKind,
    step,
)

if TYPE_CHECKING:
    from conftest import RecordingSleep

log: list[str] = []


@pytest.fixture(autouse=True)
def _clear_log() -> None:
    log.clear()


def failing_times(
    name: str, failures: int, error: type[Exception], **options: Any
) -> Step[[], str]:
    """A step that raises ``error`` on its first ``failures`` attempts, then succeeds."""
    attempts = 0

    async def run() -> str:
        nonlocal attempts
        attempts += 1
        log.append(f"{name} #{attempts}")
        if attempts <= failures:
            raise error(f"{name} attempt {attempts}")
        return name

    run.__name__ = run.__qualname__ = name
    return step(**options)(run)


@step
async def boom() -> None:
    raise ValueError("trigger")


def undoable(name: str, failures: int = 0, **options: Any) -> Step[[], str]:
    """A step whose compensation fails ``failures`` times before succeeding."""
    attempts = 0

    async def run() -> str:
        log.append(name)
        return name

    run.__name__ = run.__qualname__ = name
    the_step = step(**options)(run)

    @the_step.compensate
    async def undo() -> str:
        nonlocal attempts
        attempts += 1
        log.append(f"undo {name} #{attempts}")
        if attempts <= failures:
            raise ConnectionError(f"undo {name} failed {attempts}")
        return f"undid {name}"

    return the_step


# ------------------------------------------------------------------ the policy object


def test_delays_grow_exponentially_and_are_capped() -> None:
    policy = Retry(attempts=6, backoff=0.5, multiplier=3, max_backoff=10, jitter=0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]


@pytest.mark.parametrize(
    ("options", "attempt"),
    [
        ({"multiplier": 2.0}, 1025),  # 2.0 ** 1024 overflows a float
        ({"multiplier": 10}, 400),  # an int multiplier: 10 ** 399 is no float
        ({"multiplier": 2.0}, 10**9),
    ],
)
def test_delays_stay_capped_however_many_attempts(options: dict[str, Any], attempt: int) -> None:
    policy = Retry(attempts=attempt + 1, max_backoff=5.0, jitter=0, **options)
    assert policy.delay(attempt) == 5.0
    assert Retry(attempts=attempt + 1, backoff=0, **options).delay(attempt) == 0.0


@pytest.mark.asyncio
async def test_a_step_retried_past_a_thousand_attempts_goes_on_waiting_the_cap(
    sleep: RecordingSleep,
) -> None:
    flaky = failing_times(
        "flaky", 1100, ConnectionError, retry=Retry(attempts=1200, backoff=0.01, max_backoff=1)
    )
    orchestrator = SagaOrchestrator(sleep=sleep)

    assert await orchestrator.execute(SagaDefinition("many").add_step(flaky())) == ["flaky"]

    assert len(sleep.delays) == 1100
    assert max(sleep.delays) <= 1.1
    meta = await orchestrator.get_saga("many")
    assert meta is not None
    assert meta.steps[0].attempts == 1101


def test_jitter_spreads_delays_within_its_fraction() -> None:
    random.seed(1234)
    policy = Retry(backoff=1.0, multiplier=2, jitter=0.25)
    delays = [policy.delay(2) for _ in range(200)]
    assert all(1.5 <= d <= 2.5 for d in delays)
    assert len(set(delays)) > 100  # really spread, not a constant


def test_full_jitter_is_accepted_and_never_gives_a_negative_delay() -> None:
    random.seed(1234)
    policy = Retry(backoff=1.0, multiplier=2, jitter=1)  # the fraction's upper bound
    delays = [policy.delay(1) for _ in range(200)]
    assert all(0.0 <= d <= 2.0 for d in delays)


def test_on_accepts_one_class_or_a_tuple() -> None:
    assert Retry(on=KeyError).on == (KeyError,)
    assert Retry(on=(KeyError, OSError)).retries(ConnectionError())
    assert not Retry(on=KeyError).retries(ValueError())


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"attempts": 0}, "at least 1"),
        ({"attempts": 2.0}, "must be an int"),
        ({"attempts": True}, "must be an int"),
        ({"backoff": -1}, "zero or more"),
        ({"backoff": float("nan")}, "finite"),
        ({"max_backoff": float("inf")}, "finite"),
        ({"multiplier": 0.5}, ">= 1"),
        ({"multiplier": float("inf")}, "finite"),  # its delays came out as nan
        # Too large for a float: each raised a bare OverflowError.
        ({"backoff": 10**400}, "finite"),
        ({"max_backoff": 10**400}, "finite"),
        ({"multiplier": 10**400}, "finite"),
        ({"multiplier": True}, ">= 1"),
        ({"jitter": 2}, "between 0 and 1"),
        ({"jitter": True}, "between 0 and 1"),
        ({"on": ()}, "exception class"),
        ({"on": (ValueError, "x")}, "exception class"),
        ({"on": int}, "exception class"),
        ({"on": [ValueError]}, "exception class"),  # a list broke the saga at its first error
        ({"on": 1}, "exception class"),
        # Never retried (they stop the saga): accepted, they silently retried nothing.
        ({"on": KeyboardInterrupt}, "KeyboardInterrupt, which is not an Exception"),
        ({"on": (ValueError, asyncio.CancelledError)}, "CancelledError, which is not an"),
    ],
)
def test_bad_retry_policies_are_refused(options: dict[str, Any], complaint: str) -> None:
    with pytest.raises(SagaDefinitionError, match=complaint):
        Retry(**options)


def test_retry_on_a_base_class_of_exceptions_is_accepted() -> None:
    assert Retry(on=BaseException).retries(ValueError())
    assert Retry(on=BaseExceptionGroup).retries(ExceptionGroup("g", [ValueError()]))


def test_retries_says_no_for_what_is_never_retried() -> None:
    # Regression: Retry(on=BaseException).retries(KeyboardInterrupt()) was True, while
    # the orchestrator never retries a KeyboardInterrupt, SystemExit or cancellation
    # (they stop the saga); the docs say retries() tells whether an error is retried.
    policy = Retry(on=BaseException)
    for never in (
        KeyboardInterrupt(),
        SystemExit(1),
        asyncio.CancelledError(),
        BaseExceptionGroup("g", [KeyboardInterrupt()]),
    ):
        assert not policy.retries(never), never
    assert policy.retries(ValueError())
    assert Retry(on=BaseExceptionGroup).retries(ExceptionGroup("g", [ValueError()]))


def test_orchestrator_refuses_a_bad_compensation_retry() -> None:
    with pytest.raises(SagaDefinitionError, match="compensation_retry"):
        SagaOrchestrator(compensation_retry=3)  # type: ignore[arg-type]


# ------------------------------------------------------------------ step retries


@pytest.mark.asyncio
async def test_a_step_is_retried_until_it_succeeds(sleep: RecordingSleep) -> None:
    flaky = failing_times(
        "flaky", 2, ConnectionError, retry=Retry(attempts=3, backoff=0.2, jitter=0)
    )
    orchestrator = SagaOrchestrator(sleep=sleep)

    events = await orchestrator.execute(SagaDefinition("r").add_step(flaky()))

    assert events == ["flaky"]
    assert log == ["flaky #1", "flaky #2", "flaky #3"]
    assert sleep.delays == [0.2, 0.4]
    meta = await orchestrator.get_saga("r")
    assert meta is not None
    assert meta.status is SagaStatus.COMPLETED
    assert meta.steps[0].attempts == 3
    assert meta.steps[0].status is StepStatus.COMPLETED


@pytest.mark.asyncio
async def test_backoff_delays_go_to_the_injected_sleep(sleep: RecordingSleep) -> None:
    policy = Retry(attempts=5, backoff=1.0, multiplier=3, max_backoff=20, jitter=0)
    broken = failing_times("broken", 99, ConnectionError, retry=policy)
    orchestrator = SagaOrchestrator(sleep=sleep)

    with pytest.raises(StepFailed) as info:
        await orchestrator.execute(SagaDefinition("b").add_step(broken()))

    assert sleep.delays == [1.0, 3.0, 9.0, 20.0]  # no sleep after the last attempt
    assert len(log) == 5
    assert str(info.value.error) == "broken attempt 5"  # the last attempt's error
    meta = await orchestrator.get_saga("b")
    assert meta is not None
    assert meta.steps[0].attempts == 5
    assert meta.steps[0].error == "ConnectionError: broken attempt 5"


@pytest.mark.asyncio
async def test_only_exceptions_in_on_are_retried(sleep: RecordingSleep) -> None:
    policy = Retry(attempts=4, backoff=0, on=ConnectionError)
    picky = failing_times("picky", 99, KeyError, retry=policy)

    with pytest.raises(StepFailed) as info:
        await SagaOrchestrator(sleep=sleep).execute(SagaDefinition("p").add_step(picky()))

    assert log == ["picky #1"]
    assert sleep.delays == []
    assert isinstance(info.value.error, KeyError)


@pytest.mark.asyncio
async def test_subclasses_of_on_are_retried(sleep: RecordingSleep) -> None:
    policy = Retry(attempts=2, backoff=0, on=OSError)
    flaky = failing_times("flaky", 1, ConnectionRefusedError, retry=policy)
    assert await SagaOrchestrator(sleep=sleep).execute(SagaDefinition("s").add_step(flaky())) == [
        "flaky"
    ]


@pytest.mark.asyncio
async def test_each_attempt_gets_a_fresh_timeout(sleep: RecordingSleep) -> None:
    attempts = 0

    @step(timeout=0.1, retry=Retry(attempts=2, backoff=0, on=TimeoutError))
    async def slow_then_ok() -> str:
        nonlocal attempts
        attempts += 1
        # The first attempt times out; the second needs more than what a shared deadline
        # would have left, but less than a whole timeout of its own.
        await asyncio.sleep(10 if attempts == 1 else 0.06)
        return "ok"

    orchestrator = SagaOrchestrator(sleep=sleep)
    assert await orchestrator.execute(SagaDefinition("f").add_step(slow_then_ok())) == ["ok"]
    assert attempts == 2
    meta = await orchestrator.get_saga("f")
    assert meta is not None
    assert meta.steps[0].attempts == 2


@pytest.mark.asyncio
async def test_timeouts_are_not_retried_unless_on_includes_them(sleep: RecordingSleep) -> None:
    attempts = 0

    @step(timeout=0.01, retry=Retry(attempts=3, backoff=0, on=ConnectionError))
    async def slow() -> None:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(10)

    with pytest.raises(StepTimeout):
        await SagaOrchestrator(sleep=sleep).execute(SagaDefinition("t").add_step(slow()))
    assert attempts == 1


@pytest.mark.asyncio
async def test_retries_are_announced_to_listeners(sleep: RecordingSleep) -> None:
    seen: list[Transition] = []
    flaky = failing_times("flaky", 1, ConnectionError, retry=Retry(attempts=2, backoff=0))
    orchestrator = SagaOrchestrator(sleep=sleep, listeners=[seen.append])

    await orchestrator.execute(SagaDefinition("l").add_step(flaky()))

    kinds = [t.kind for t in seen]
    assert kinds == [
        TransitionKind.SAGA_STARTED,
        TransitionKind.STEP_STARTED,
        TransitionKind.STEP_RETRYING,
        TransitionKind.STEP_STARTED,
        TransitionKind.STEP_COMPLETED,
        TransitionKind.SAGA_FINISHED,
    ]
    retrying = seen[2]
    assert retrying.attempt == 1
    # The exception the attempt raised, as STEP_FAILED and COMPENSATION_RETRYING carry it
    assert isinstance(retrying.error, ConnectionError)
    assert seen[3].attempt == 2


# ------------------------------------------------------------------ compensation retries


@pytest.mark.asyncio
async def test_compensations_are_retried_by_default(sleep: RecordingSleep) -> None:
    shaky = undoable("shaky", failures=2)
    orchestrator = SagaOrchestrator(sleep=sleep)

    with pytest.raises(StepFailed) as info:
        await orchestrator.execute(SagaDefinition("c").add_step(shaky()).add_step(boom()))

    assert log == ["shaky", "undo shaky #1", "undo shaky #2", "undo shaky #3"]
    assert len(sleep.delays) == 2
    assert info.value.compensation_events == ["undid shaky"]
    meta = await orchestrator.get_saga("c")
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert meta.compensations[0].attempts == 3
    assert meta.compensations[0].status is StepStatus.COMPLETED


@pytest.mark.asyncio
async def test_orchestrator_compensation_retry_applies(sleep: RecordingSleep) -> None:
    shaky = undoable("shaky", failures=4)
    policy = Retry(attempts=5, backoff=1, multiplier=1, jitter=0)
    orchestrator = SagaOrchestrator(sleep=sleep, compensation_retry=policy)

    with pytest.raises(StepFailed):
        await orchestrator.execute(SagaDefinition("c").add_step(shaky()).add_step(boom()))
    assert sleep.delays == [1, 1, 1, 1]


@pytest.mark.asyncio
async def test_a_steps_compensation_retry_overrides_the_orchestrators(
    sleep: RecordingSleep,
) -> None:
    stubborn = undoable(
        "stubborn", failures=5, compensation_retry=Retry(attempts=6, backoff=0, jitter=0)
    )
    fragile = undoable("fragile", failures=1, compensation_retry=1)
    orchestrator = SagaOrchestrator(sleep=sleep, compensation_retry=Retry(attempts=2))

    with pytest.raises(CompensationFailed) as info:
        await orchestrator.execute(
            SagaDefinition("c").add_step(stubborn()).add_step(fragile()).add_step(boom())
        )

    # fragile gets one attempt only and fails; compensation stops there.
    assert log == ["stubborn", "fragile", "undo fragile #1"]
    assert info.value.step_name == "fragile"

    log.clear()
    with pytest.raises(StepFailed):
        await orchestrator.execute(SagaDefinition("d").add_step(stubborn()).add_step(boom()))
    assert log[-1] == "undo stubborn #6"  # six attempts although the orchestrator allows two


@pytest.mark.asyncio
async def test_compensation_failed_stops_and_names_what_is_left(sleep: RecordingSleep) -> None:
    a = undoable("a")
    b = undoable("b")
    no_undo = failing_times("no_undo", 0, ValueError)
    c = undoable("c", failures=99)
    orchestrator = SagaOrchestrator(sleep=sleep, compensation_retry=Retry(attempts=2, backoff=0))
    definition = (
        SagaDefinition("cf")
        .add_step(a())
        .add_step(b())
        .add_step(no_undo())
        .add_step(c())
        .add_step(boom())
    )

    with pytest.raises(CompensationFailed) as info:
        await orchestrator.execute(definition)

    error = info.value
    assert log == ["a", "b", "no_undo #1", "c", "undo c #1", "undo c #2"]  # stopped at c
    assert (error.step_index, error.step_name) == (3, "c")
    assert isinstance(error.error, ConnectionError)
    assert error.uncompensated == ("c", "b", "a")  # no_undo has nothing to undo
    assert isinstance(error.trigger, StepFailed)
    assert error.trigger.step_name == "boom"
    assert error.__cause__ is error.trigger
    assert len(error.errors) == 1
    assert error.events == ["a", "b", "no_undo", "c"]
    assert error.saga_id == "cf"
    assert "left uncompensated: c, b, a" in str(error)

    meta = await orchestrator.get_saga("cf")
    assert meta is not None
    assert meta.status is SagaStatus.FAILED
    assert meta.compensations[0].status is StepStatus.FAILED
    assert meta.compensations[0].attempts == 2
    assert meta.compensations[0].error == "ConnectionError: undo c failed 2"
    assert meta.finished_at is not None
    assert await orchestrator.running_count() == 0


@pytest.mark.asyncio
async def test_continue_on_compensation_failure_reports_every_error(
    sleep: RecordingSleep,
) -> None:
    a = undoable("a", failures=99)
    b = undoable("b")
    c = undoable("c", failures=99)
    orchestrator = SagaOrchestrator(
        sleep=sleep,
        compensation_retry=Retry(attempts=1),
        continue_on_compensation_failure=True,
    )

    with pytest.raises(CompensationFailed) as info:
        await orchestrator.execute(
            SagaDefinition("all").add_step(a()).add_step(b()).add_step(c()).add_step(boom())
        )

    error = info.value
    assert log == ["a", "b", "c", "undo c #1", "undo b #1", "undo a #1"]
    assert [(i, n) for i, n, _ in error.errors] == [(2, "c"), (0, "a")]
    assert all(isinstance(e, ConnectionError) for _, _, e in error.errors)
    assert error.uncompensated == ("c", "a")
    assert (error.step_index, error.step_name) == (2, "c")
    assert error.compensation_events == ["undid b"]
    meta = await orchestrator.get_saga("all")
    assert meta is not None
    assert meta.status is SagaStatus.FAILED
    assert [r.status for r in meta.compensations] == [
        StepStatus.FAILED,
        StepStatus.COMPLETED,
        StepStatus.FAILED,
    ]


@pytest.mark.asyncio
async def test_compensation_failure_after_a_timeout_keeps_the_timeout_as_trigger(
    sleep: RecordingSleep,
) -> None:
    @step(timeout=0.01)
    async def slow() -> None:
        await asyncio.sleep(10)

    @slow.compensate
    async def undo_slow() -> None:
        raise ConnectionError("cannot undo")

    orchestrator = SagaOrchestrator(sleep=sleep, compensation_retry=Retry(attempts=1))
    with pytest.raises(CompensationFailed) as info:
        await orchestrator.execute(SagaDefinition("t").add_step(slow()))
    assert isinstance(info.value.trigger, StepTimeout)
    assert info.value.uncompensated == ("slow",)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("compensate_on_timeout", "compensate_on_failure", "compensated"),
    [(True, False, True), (False, False, False), (False, True, True), (True, True, True)],
)
async def test_a_step_that_timed_out_then_failed_is_compensated_itself(
    sleep: RecordingSleep,
    compensate_on_timeout: bool,
    compensate_on_failure: bool,
    compensated: bool,
) -> None:
    # Its first attempt timed out, so it may have acted (charged the card, only too slowly
    # to say so); the retry then raised ("duplicate charge"). It was not compensated, as a
    # step that only raised is not, and the saga ended COMPENSATED with the charge standing.
    attempts = 0
    refunds: list[str | None] = []

    @step(
        timeout=0.05,
        retry=Retry(attempts=2, backoff=0),
        compensate_on_timeout=compensate_on_timeout,
        compensate_on_failure=compensate_on_failure,
    )
    async def charge(order_id: str) -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await asyncio.sleep(10)
        raise ValueError("duplicate charge")

    @charge.compensate
    async def refund(payment_id: str | None, order_id: str) -> None:
        refunds.append(payment_id)

    orchestrator = SagaOrchestrator(sleep=sleep)
    with pytest.raises(StepFailed, match="duplicate charge") as info:
        await orchestrator.execute(SagaDefinition("tf").add_step(charge("o-1")))
    assert not isinstance(info.value, StepTimeout)
    meta = await orchestrator.get_saga("tf")
    assert meta is not None
    assert meta.status is SagaStatus.COMPENSATED
    assert meta.steps[0].status is StepStatus.FAILED
    assert meta.steps[0].attempts == 2
    if compensated:
        assert refunds == [None]
        assert [(c.index, c.status) for c in meta.compensations] == [(0, StepStatus.COMPLETED)]
    else:
        assert refunds == []
        assert meta.compensations == ()


@pytest.mark.parametrize("attempt", [0, -1, 1.5, True, "2", None])
def test_delay_refuses_what_is_not_an_attempt_number(attempt: Any) -> None:
    # delay(0) and delay(-1) gave a wait shorter than the first one, delay(1.5) one between
    # two attempts, and delay("2") a bare TypeError from inside the arithmetic.
    with pytest.raises(SagaDefinitionError, match=r"Retry\.delay\(attempt\) .* whole number >= 1"):
        Retry(backoff=1.0, jitter=0).delay(attempt)


@pytest.mark.asyncio
async def test_a_retried_steps_record_drops_the_last_error_when_the_next_attempt_starts(
    sleep: RecordingSleep,
) -> None:
    orchestrator = SagaOrchestrator(sleep=sleep)
    seen: list[str | None] = []

    @step(retry=Retry(attempts=2, backoff=0))
    async def flaky() -> str:
        meta = await orchestrator.get_saga("r")
        assert meta is not None
        seen.append(meta.steps[0].error)
        if len(seen) == 1:
            raise ConnectionError("reset")
        return "ok"

    await orchestrator.execute(SagaDefinition("r").add_step(flaky()))

    # The second attempt runs with no error on its record (the first's is gone).
    assert seen == [None, None]
    meta = await orchestrator.get_saga("r")
    assert meta is not None
    assert meta.steps[0].error is None
    assert meta.steps[0].attempts == 2


@pytest.mark.asyncio
async def test_a_retried_compensations_record_drops_the_last_error_when_it_runs_again(
    sleep: RecordingSleep,
) -> None:
    orchestrator = SagaOrchestrator(sleep=sleep)
    seen: list[str | None] = []

    @step
    async def acts() -> None:
        pass

    @acts.compensate
    async def undo() -> None:
        meta = await orchestrator.get_saga("u")
        assert meta is not None
        seen.append(meta.compensations[0].error)
        if len(seen) == 1:
            raise ConnectionError("reset")

    with pytest.raises(StepFailed):
        await orchestrator.execute(SagaDefinition("u").add_step(acts()).add_step(boom()))

    assert seen == [None, None]
    meta = await orchestrator.get_saga("u")
    assert meta is not None
    assert meta.compensations[0].error is None
    assert meta.compensations[0].attempts == 2


@pytest.mark.asyncio
async def test_a_step_given_as_a_compensation_keeps_its_retry_inside_the_compensations(
    sleep: RecordingSleep,
) -> None:
    # As docs/concepts/compensation.md says: each of the compensation's attempts awaits the
    # step, which makes its own attempts, so the tries multiply (2 x 3 here).
    calls: list[str] = []

    @step
    async def charge(order: str) -> str:
        return order

    @step(retry=Retry(attempts=2, backoff=0, jitter=0))
    async def refund(order: str) -> None:
        calls.append(order)
        raise ConnectionError("refunds are down")

    charge.compensate(refund)

    @step
    async def boom() -> None:
        raise ValueError("boom")

    definition = SagaDefinition("r").add_step(charge("o")).add_step(boom())
    with pytest.raises(CompensationFailed):
        await SagaOrchestrator(sleep=sleep).execute(definition)
    assert len(calls) == 2 * 3  # the step's 2 attempts in each of the compensation's 3


# ------------------------------------------------------- on= naming sagakit errors


@pytest.mark.parametrize(
    ("on", "named"),
    [
        (StepFailed, "StepFailed"),
        (SagaRunError, "SagaRunError"),
        (CompensationFailed, "CompensationFailed"),
        ((ConnectionError, StepFailed), "StepFailed"),
    ],
)
def test_retry_on_the_error_a_failed_step_raises_is_refused(on: Any, named: str) -> None:
    # Regression: on= is matched against what an attempt raised (the step's own error;
    # a timeout as a StepTimeout). StepFailed (and its base SagaRunError) wraps that error
    # only once the step has failed for good, so Retry(on=StepFailed), read as "retry
    # when the step fails", retried timeouts only (a StepTimeout is a StepFailed) and
    # never a step that raised; CompensationFailed, nothing a compensation raises.
    with pytest.raises(SagaDefinitionError) as refused:

        @step(retry=Retry(attempts=3, on=on))
        async def charge() -> None:
            pass

    message = str(refused.value)
    assert f"Retry(on=...) lists {named}" in message
    assert "on=Exception" in message  # the fix: every failure
    assert "on=TimeoutError" in message  # timeouts only


@pytest.mark.asyncio
async def test_retry_on_step_timeout_retries_timeouts_and_not_errors(sleep: RecordingSleep) -> None:
    from sagakit.testing import FaultInjector

    policy = Retry(attempts=3, backoff=0, on=StepTimeout)
    slow = failing_times("slow", 0, KeyError, retry=policy)
    with FaultInjector().timeout(slow, times=1):  # the first attempt times out
        assert await SagaOrchestrator(sleep=sleep).execute(SagaDefinition("st").add_step(slow()))
    assert log == ["slow #1"]  # the timed-out attempt was faulted, not called
    log.clear()
    failing = failing_times("failing", 99, KeyError, retry=policy)
    with pytest.raises(StepFailed):
        await SagaOrchestrator(sleep=sleep).execute(SagaDefinition("sf").add_step(failing()))
    assert log == ["failing #1"]  # a step's own error is not a StepTimeout


@pytest.mark.asyncio
@pytest.mark.parametrize("on", [SagaAlreadyExecuting, SagaError])
async def test_retry_on_a_sagakit_error_the_step_raises_retries_it(
    sleep: RecordingSleep, on: type[SagaError]
) -> None:
    # What a step's own code raises (execute() of an inner saga another worker is
    # finishing: docs/durability.md) is matched as any exception is.
    busy = failing_times("busy", 2, SagaAlreadyExecuting, retry=Retry(attempts=3, backoff=0, on=on))
    assert await SagaOrchestrator(sleep=sleep).execute(SagaDefinition("sa").add_step(busy())) == [
        "busy"
    ]
    assert log == ["busy #1", "busy #2", "busy #3"]
