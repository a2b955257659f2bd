"""sagakit.testing: the fault matrix over list, builder and generator sagas."""

from __future__ import annotations

from typing import Any

import pytest

from sagakit import (
    CompensationFailed,
    Retry,
    SagaDefinition,
    SagaDefinitionError,
    SagaOrchestrator,
    SagaStatus,
    StepFailed,
    saga,
    step,
)
from sagakit.testing import FaultInjector, InstantSleep, SagaRecorder, run_fault_matrix

ran: list[str] = []


@step
async def reserve(item: str) -> str:
    ran.append("reserve")
    return f"reserved {item}"


@reserve.compensate
async def release(item: str) -> None:
    ran.append("release")


@step(compensate_on_failure=True, retry=Retry(attempts=2, backoff=0.5))
async def charge(item: str) -> str:
    ran.append("charge")
    return "card"


@charge.compensate
async def refund(item: str) -> None:
    ran.append("refund")


@step(compensate_on_timeout=False)
async def label(item: str) -> str:
    return "label"


@label.compensate
async def void_label(item: str) -> None:
    ran.append("void_label")


@step
async def notify(item: str) -> None:
    return None


@saga(name="testing_matrix.order")
def order(item: str) -> list[Any]:
    return [reserve(item), charge(item), label(item), notify(item)]


@pytest.fixture(autouse=True)
def _clear() -> None:
    ran.clear()


@pytest.mark.asyncio
async def test_every_step_fails_and_times_out_once() -> None:
    report = await run_fault_matrix(order("book"))
    assert report.ok
    assert report.steps == ("reserve", "charge", "label", "notify")
    got = {(c.index, c.mode): c.compensations for c in report.cases}
    assert got == {
        (0, "fail"): (),
        (0, "timeout"): ("reserve",),  # a timed-out step is undone (compensate_on_timeout)
        (1, "fail"): ("charge", "reserve"),  # compensate_on_failure=True
        (1, "timeout"): ("charge", "reserve"),
        (2, "fail"): ("charge", "reserve"),
        (2, "timeout"): ("charge", "reserve"),  # label: compensate_on_timeout=False
        (3, "fail"): ("label", "charge", "reserve"),
        (3, "timeout"): ("label", "charge", "reserve"),
    }
    assert all(c.status is SagaStatus.COMPENSATED for c in report.cases)
    assert all(c.expected_compensations == c.compensations for c in report.cases)
    assert "8 cases" in str(report)
    assert "ok   step 2 'label' times out: ended compensated, undid charge, reserve" in str(report)


@pytest.mark.asyncio
async def test_generator_saga_steps_are_discovered_by_running_it() -> None:
    @saga
    def branching(item: str) -> Any:
        reservation = yield reserve(item)
        if reservation.startswith("reserved"):
            yield charge(item)
        yield notify(item)

    definition = branching("pen")
    assert definition.total_steps is None
    report = await run_fault_matrix(definition, timeouts=False)
    assert report.steps == ("reserve", "charge", "notify")
    assert [(c.index, c.mode) for c in report.cases] == [(0, "fail"), (1, "fail"), (2, "fail")]
    assert report.cases[2].compensations == ("charge", "reserve")


@pytest.mark.asyncio
async def test_builder_saga_with_an_explicit_id_and_a_step_used_twice() -> None:
    definition = SagaDefinition("fixed-id").add_step(reserve("a")).add_step(reserve("b"))
    report = await run_fault_matrix(definition, failures=False)
    assert [c.mode for c in report.cases] == ["timeout", "timeout"]
    assert report.cases[1].compensations == ("reserve", "reserve")


@pytest.mark.asyncio
async def test_a_compensation_that_fails_for_real_fails_the_matrix() -> None:
    @step
    async def book(item: str) -> None:
        return None

    @book.compensate
    async def cancel_booking(item: str) -> None:
        raise RuntimeError("cannot cancel")

    @saga
    def trip(item: str) -> list[Any]:
        return [book(item), notify(item)]

    with pytest.raises(AssertionError) as caught:
        await run_fault_matrix(trip("x"), orchestrator=SagaOrchestrator(sleep=InstantSleep()))
    message = str(caught.value)
    assert "FAIL step 1 'notify' fails: a compensation failed" in message
    assert "cannot cancel" in message
    assert "status failed, expected compensated" in message
    assert "ok   step 0 'book' fails" in message

    report = await run_fault_matrix(trip("x"), check=False, timeouts=False)
    assert not report.ok
    assert [(c.index, c.ok) for c in report.cases] == [(0, True), (1, False)]
    assert report.failures == (report.cases[1],)
    assert report.failures[0].status is SagaStatus.FAILED
    # Short reprs (a report was kilobytes as a notebook cell's value: every case's whole
    # error); IPython shows every case, as str() does.
    assert repr(report) == "<FaultMatrixReport saga 'trip': 2 cases, 1 failed>"
    assert repr(report.cases[0]) == (
        "<FaultCase ok: step 0 'book' fails: ended compensated, undid nothing>"
    )
    assert repr(report.cases[1]).startswith("<FaultCase FAIL: step 1 'notify' fails: ")
    shown: list[str] = []

    class Printer:
        def text(self, text: str) -> None:
            shown.append(text)

    report._repr_pretty_(Printer(), False)
    assert shown == [str(report)]


@pytest.mark.asyncio
async def test_a_saga_that_fails_without_faults_cannot_be_discovered() -> None:
    @step
    async def broken(item: str) -> None:
        raise ValueError("always")

    @saga
    def doomed(item: str) -> list[Any]:
        return [reserve(item), broken(item)]

    with pytest.raises(AssertionError, match="once without faults of its own to discover") as info:
        await run_fault_matrix(doomed("x"))
    assert "active around the call" not in str(info.value)


@pytest.mark.asyncio
async def test_a_fault_around_the_matrix_that_stops_its_discovery_is_named() -> None:
    # Regression: the message said the saga ran "without faults", when one active around
    # the call (saga_faults, a `with injector:` block) had fired in it and stopped it.
    outer = FaultInjector().fail(reserve, ConnectionError("down"))
    with outer, FaultInjector(), pytest.raises(AssertionError) as info:  # the outer one fired
        await run_fault_matrix(order("x"))
    assert str(info.value).endswith(
        "but that run failed: StepFailed(\"step 0 ('reserve') failed: ConnectionError: down\"); "
        "a fault active around the call fired in it (at step 'reserve'): run the matrix "
        "without that fault, outside its `with injector:` block or before adding it to "
        "saga_faults"
    )


@pytest.mark.asyncio
async def test_a_crash_around_the_matrix_that_stops_its_discovery_is_named() -> None:
    # Regression: the crash (a BaseException) came out raw, without the explanation.
    outer = FaultInjector().crash(reserve, after=True)
    with outer, pytest.raises(AssertionError) as info:
        await run_fault_matrix(order("x"))
    [crash] = outer.fired
    assert info.value.__cause__ is crash.fault
    assert "but that run failed: SimulatedCrash(\"simulated crash at step 'reserve' after it " in (
        str(info.value)
    )
    assert "a fault active around the call fired in it (at step 'reserve')" in str(info.value)


@pytest.mark.asyncio
async def test_a_base_exception_no_fault_raised_in_discovery_passes_through() -> None:
    class Stop(BaseException):
        pass

    @step
    async def halt(item: str) -> None:
        raise Stop

    @saga
    def halted(item: str) -> list[Any]:
        return [reserve(item), halt(item)]

    with FaultInjector(), pytest.raises(Stop):  # no fault around raised it
        await run_fault_matrix(halted("x"))


@pytest.mark.asyncio
async def test_a_crash_around_the_matrix_in_one_of_its_cases_is_named() -> None:
    # Regression: a crash from a fault active around the matrix that fired in one of its
    # faulty runs (not its discovery) came out raw, without the explanation.
    outer = FaultInjector().crash(reserve, compensation=True)
    with outer, pytest.raises(AssertionError) as info:
        await run_fault_matrix(order("x"))
    [crash] = outer.fired
    assert info.value.__cause__ is crash.fault
    assert str(info.value) == (
        "the fault matrix runs saga 'testing_matrix.order' with step 0 'reserve' timing "
        "out (its case \"step 0 'reserve' times out\"), but that run failed: SimulatedCrash("
        "\"simulated crash at the compensation of step 'reserve'\"); a fault active around "
        "the call fired in it (at the compensation of step 'reserve'): run the matrix without "
        "that fault, outside its `with injector:` block or before adding it to saga_faults"
    )


@pytest.mark.asyncio
async def test_a_base_exception_no_fault_raised_in_a_case_passes_through() -> None:
    class Stop(BaseException):
        pass

    @step
    async def hold(item: str) -> str:
        return "held"

    @hold.compensate
    async def unhold(item: str) -> None:
        raise Stop  # only a faulty run compensates

    @saga
    def held(item: str) -> list[Any]:
        return [hold(item), reserve(item)]

    with FaultInjector(), pytest.raises(Stop):  # no fault around raised it
        await run_fault_matrix(held("x"))


@pytest.mark.asyncio
async def test_a_given_orchestrator_is_used_and_its_listeners_left_as_they_were() -> None:
    recorder = SagaRecorder()
    sleep = InstantSleep()
    orchestrator = SagaOrchestrator(listeners=[recorder], sleep=sleep)
    await run_fault_matrix(order("x"), orchestrator=orchestrator, timeouts=False)
    assert len(recorder.runs) == 5  # the discovery run and four faulty runs
    assert [r.status for r in recorder.runs[1:]] == [SagaStatus.COMPENSATED] * 4
    assert sleep.delays  # charge retried under the injected fault, without waiting
    assert orchestrator._listeners == (recorder,)


@pytest.mark.asyncio
async def test_outer_faults_still_apply() -> None:
    # charge retries, so failing its first attempt everywhere still lets every run go on
    with FaultInjector().fail("charge", times=1) as flaky:
        report = await run_fault_matrix(order("x"), timeouts=False)
    assert report.ok
    assert flaky.fired


@pytest.mark.asyncio
async def test_what_is_not_a_definition_is_told_how_to_make_one() -> None:
    # Regression: the message always said "call your @saga function: transfer('A', 'B',
    # 10)", naming a saga the user's code does not have, whatever it was given; execute()
    # names the fix for what it got.
    with pytest.raises(
        SagaDefinitionError,
        match=r"^run_fault_matrix\(\) takes a SagaDefinition, got <saga testing_matrix\.order>; "
        r"call the @saga function with its arguments first: order\(\.\.\.\)$",
    ):
        await run_fault_matrix(order)  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match=r"got <StepCall reserve\('x'\)>; await the"):
        await run_fault_matrix(reserve("x"))  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_bad_arguments() -> None:
    with pytest.raises(SagaDefinitionError, match="takes a SagaDefinition"):
        await run_fault_matrix(order)  # type: ignore[arg-type]
    with pytest.raises(
        SagaDefinitionError,
        match=r"^run_fault_matrix\(error=\.\.\.\) must be an exception instance",
    ):
        await run_fault_matrix(order("x"), error="boom")  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match="would run no case"):
        await run_fault_matrix(order("x"), failures=False, timeouts=False)
    with pytest.raises(SagaDefinitionError, match=r"timeouts=\.\.\.\) must be True or False"):
        await run_fault_matrix(order("x"), timeouts="no")  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match=r"failures=\.\.\.\) must be True or False"):
        await run_fault_matrix(order("x"), failures=0)
    with pytest.raises(SagaDefinitionError, match=r"check=\.\.\.\) must be True or False"):
        await run_fault_matrix(order("x"), check=None)  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match=r"orchestrator=\.\.\.\) must be a Saga"):
        await run_fault_matrix(order("x"), orchestrator="memory")  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_saga_that_runs_differently_after_discovery_is_reported() -> None:
    runs: list[int] = []

    @step
    async def flaky(item: str) -> None:
        raise ValueError("only fails after the first run")

    @saga
    def shifting(item: str) -> Any:
        runs.append(1)
        yield reserve(item)
        if len(runs) == 1:
            yield charge(item)
        else:
            yield flaky(item)

    report = await run_fault_matrix(shifting("x"), check=False, timeouts=False)
    assert report.steps == ("reserve", "charge")
    first, second = report.cases
    assert first.ok  # reserve fails before anything differs
    assert not second.ok
    assert any(
        "compensated ['0:reserve'], expected exactly ['1:charge', '0:reserve']" in p
        for p in second.problems
    )

    runs.clear()

    @saga
    def shrinking(item: str) -> Any:
        runs.append(1)
        yield reserve(item)
        if len(runs) == 1:
            yield notify(item)

    report = await run_fault_matrix(shrinking("x"), check=False, failures=False)
    assert report.cases[0].ok
    assert report.cases[1].problems[0] == (
        "the saga completed, but the fault should have stopped it"
    )
    assert "forward steps started: [0], expected steps 0 to 1" in report.cases[1].problems


# A step running a saga of its own: the inner saga's steps are not the outer saga's.
inner_runner = SagaOrchestrator()


@step
async def book(item: str) -> str:
    return item


@book.compensate
async def unbook(item: str) -> None:
    ran.append("unbook")


@step
async def audit(item: str) -> None:
    ran.append("audit")


@saga(name="testing_matrix.payment")
def payment(item: str) -> list[Any]:
    return [audit(item), audit(item), audit(item), audit(item)]  # audit at 2, as outside


@step
async def pay(item: str) -> None:
    await inner_runner.execute(payment(item))


@saga
def booking(item: str) -> list[Any]:
    return [book(item), pay(item), audit(item)]


@pytest.mark.asyncio
async def test_the_steps_of_a_saga_run_by_a_step_are_not_the_matrix_cases() -> None:
    # Discovery took the inner saga's step 3 for a fourth step of the outer saga, and
    # the fault on the outer step 2 (audit) hit the inner saga's step 2 first.
    report = await run_fault_matrix(booking("x"))
    assert report.steps == ("book", "pay", "audit")
    case = next(c for c in report.cases if c.index == 2 and c.mode == "fail")
    assert case.error is not None
    assert case.error.step_index == 2  # type: ignore[attr-defined]
    # Discovery ran all five audits; each of the two cases faulting the outer audit, the
    # inner four (the pay cases fault pay itself, so its saga never runs).
    assert ran.count("audit") == 5 + 4 + 4


@pytest.mark.asyncio
async def test_a_failure_no_fault_explains_is_the_cause_pytest_shows_above_the_report() -> None:
    # The report gave a failing compensation's message, not where it raised: a
    # compensation's code has many lines, and the matrix ran it in memory, out of sight.
    @step
    async def hold(item: str) -> str:
        return f"held {item}"

    @hold.compensate
    async def unhold(held: str | None, item: str) -> None:
        if held is None:  # the timeout case: nothing to undo by id
            raise LookupError(f"no hold of {item} to undo")

    @saga
    def holding(item: str) -> list[Any]:
        return [hold(item), notify(item)]

    with pytest.raises(AssertionError, match="FAIL step 0 'hold' times out") as caught:
        await run_fault_matrix(holding("x"), failures=False)
    cause = caught.value.__cause__
    assert isinstance(cause, CompensationFailed)
    assert 'raise LookupError(f"no hold of {item} to undo")' in "".join(cause.__notes__)

    # Another step raising for real (the fault on step 1 never fired: flaky took its place).
    runs: list[int] = []

    @step
    async def flaky(item: str) -> None:
        raise ValueError("only fails after the first run")

    @saga
    def shifting(item: str) -> Any:
        runs.append(1)
        yield reserve(item)
        yield charge(item) if len(runs) == 1 else flaky(item)

    with pytest.raises(AssertionError) as caught:
        await run_fault_matrix(shifting("x"), timeouts=False)
    cause = caught.value.__cause__
    assert isinstance(cause, StepFailed)
    assert isinstance(cause.error, ValueError)

    # A failing case whose error is its own fault's has no cause: the report says it all.
    runs.clear()

    @saga
    def shrinking(item: str) -> Any:
        runs.append(1)
        yield reserve(item)
        if len(runs) == 1:
            yield notify(item)

    with pytest.raises(AssertionError, match="the saga completed") as caught:
        await run_fault_matrix(shrinking("x"), failures=False)
    assert caught.value.__cause__ is None
