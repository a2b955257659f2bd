"""sagakit.testing: the fault injector, its scoping, and instant sleep."""

from __future__ import annotations

import asyncio
from types import MethodType
from typing import Any

import pytest

from sagakit import (
    CompensationFailed,
    Retry,
    SagaDefinitionError,
    SagaOrchestrator,
    SagaStatus,
    StepFailed,
    StepTimeout,
    TransitionKind,
    saga,
    step,
)
from sagakit.testing import (
    SIMULATED_TIMEOUT,
    FaultInjector,
    InjectedFault,
    InstantSleep,
    SagaRecorder,
)

calls: list[str] = []


@step
async def reserve(item: str) -> str:
    calls.append(f"reserve {item}")
    return f"reserved {item}"


@reserve.compensate
async def release(item: str) -> str:
    calls.append(f"release {item}")
    return f"released {item}"


@step(retry=Retry(attempts=3, backoff=1.0, jitter=0))
async def charge(item: str) -> str:
    calls.append(f"charge {item}")
    return f"charged {item}"


@charge.compensate
async def refund(item: str) -> str:
    calls.append(f"refund {item}")
    return f"refunded {item}"


@step(timeout=60)
async def ship(item: str) -> str:
    calls.append(f"ship {item}")
    return f"shipped {item}"


@saga(name="testing_faults.order")
def order(item: str) -> Any:
    yield reserve(item)
    yield charge(item)
    yield ship(item)


@saga
def double_reserve() -> Any:
    yield reserve("a")
    yield reserve("b")


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    calls.clear()


def _orchestrator(recorder: SagaRecorder, sleep: InstantSleep | None = None) -> SagaOrchestrator:
    return SagaOrchestrator(listeners=[recorder], sleep=sleep or InstantSleep())


@pytest.mark.asyncio
async def test_failing_step_is_not_called_and_raises_the_given_exception() -> None:
    recorder = SagaRecorder()
    boom = RuntimeError("carrier down")
    with FaultInjector().fail("ship", boom) as faults, pytest.raises(StepFailed) as caught:
        await _orchestrator(recorder).execute(order("book"))
    assert caught.value.error is boom
    assert caught.value.step_name == "ship"
    assert "ship book" not in calls
    assert calls == ["reserve book", "charge book", "refund book", "release book"]
    assert [(f.step_name, f.attempt, f.compensation) for f in faults.fired] == [("ship", 1, False)]
    recorder.assert_compensated("charge", "reserve")
    recorder.assert_status(SagaStatus.COMPENSATED)


@pytest.mark.asyncio
async def test_fault_by_step_object_and_exception_class() -> None:
    with FaultInjector().fail(reserve, ValueError), pytest.raises(StepFailed) as caught:
        await SagaOrchestrator().execute(order("pen"))
    assert isinstance(caught.value.error, ValueError)
    assert "injected into step 'reserve', attempt 1" in str(caught.value.error)
    assert calls == []


@pytest.mark.asyncio
async def test_default_fault_is_injected_fault() -> None:
    with FaultInjector().fail("reserve"), pytest.raises(StepFailed) as caught:
        await SagaOrchestrator().execute(order("pen"))
    assert isinstance(caught.value.error, InjectedFault)


@pytest.mark.asyncio
async def test_first_n_attempts_fail_then_the_retry_succeeds_without_waiting() -> None:
    recorder = SagaRecorder()
    sleep = InstantSleep()
    with FaultInjector().fail(charge, ConnectionError("flaky"), times=2):
        events = await _orchestrator(recorder, sleep).execute(order("cup"))
    assert events == ["reserved cup", "charged cup", "shipped cup"]
    assert calls.count("charge cup") == 1  # the first two attempts never reached the step
    assert sleep.delays == [1.0, 2.0]
    assert sleep.total == 3.0
    assert recorder.last.names(TransitionKind.STEP_RETRYING) == ["charge", "charge"]
    recorder.assert_status("completed")


@pytest.mark.asyncio
async def test_fault_on_every_attempt_exhausts_retries() -> None:
    sleep = InstantSleep()
    with FaultInjector().fail("charge") as faults, pytest.raises(StepFailed):
        await SagaOrchestrator(sleep=sleep).execute(order("cup"))
    assert [f.attempt for f in faults.fired] == [1, 2, 3]
    assert len(sleep.delays) == 2


@pytest.mark.asyncio
async def test_timeout_is_simulated_at_once_and_compensates_the_step() -> None:
    recorder = SagaRecorder()
    with FaultInjector().timeout("ship") as faults, pytest.raises(StepTimeout) as caught:
        await _orchestrator(recorder).execute(order("mug"))
    assert caught.value.timeout == 60
    # What fired is told by a public marker a test can compare with.
    assert [f.fault for f in faults.fired] == [SIMULATED_TIMEOUT]
    assert repr(SIMULATED_TIMEOUT) == str(SIMULATED_TIMEOUT) == f"{SIMULATED_TIMEOUT}"
    assert str(SIMULATED_TIMEOUT) == "SIMULATED_TIMEOUT"  # no private class name in messages
    assert "ship mug" not in calls
    # ship has no compensation; the completed steps are undone in reverse order
    recorder.assert_compensated("charge", "reserve")
    assert recorder.last.names(TransitionKind.STEP_TIMED_OUT) == ["ship"]


@pytest.mark.asyncio
async def test_timed_out_step_with_compensation_is_compensated_itself() -> None:
    recorder = SagaRecorder()
    with FaultInjector().timeout(charge, times=3), pytest.raises(StepTimeout):
        await _orchestrator(recorder).execute(order("mug"))
    recorder.assert_compensated("charge", "reserve")
    assert "charge mug" not in calls


@pytest.mark.asyncio
async def test_compensation_failure_and_timeout() -> None:
    recorder = SagaRecorder()
    faults = FaultInjector().fail("ship").fail_compensation("charge", OSError("ledger"))
    with faults, pytest.raises(CompensationFailed) as caught:
        await _orchestrator(recorder).execute(order("hat"))
    assert isinstance(caught.value.error, OSError)
    assert caught.value.uncompensated == ("charge", "reserve")
    assert recorder.last.compensation_failures == ["charge"]
    recorder.assert_status(SagaStatus.FAILED)
    # three compensation attempts (the default compensation retry), all injected
    assert [f.attempt for f in faults.fired if f.compensation] == [1, 2, 3]

    recorder.clear()
    faults = FaultInjector().fail("ship").timeout_compensation("charge", times=1)
    with faults, pytest.raises(StepFailed):
        await _orchestrator(recorder).execute(order("cap"))
    recorder.assert_compensated("charge", "reserve")  # the retry succeeded
    assert calls.count("refund cap") == 1


@pytest.mark.asyncio
async def test_index_targets_one_occurrence_of_a_step_used_twice() -> None:
    recorder = SagaRecorder()
    with FaultInjector().fail("reserve", index=1) as faults, pytest.raises(StepFailed) as caught:
        await _orchestrator(recorder).execute(double_reserve())
    assert caught.value.step_index == 1
    assert faults.fired[0].step_index == 1
    assert calls == ["reserve a", "release a"]


@pytest.mark.asyncio
async def test_faults_outside_the_scope_do_not_apply() -> None:
    faults = FaultInjector().fail("reserve")
    with faults:
        pass
    assert await SagaOrchestrator().execute(order("x")) == ["reserved x", "charged x", "shipped x"]
    assert faults.fired == []


@pytest.mark.asyncio
async def test_concurrent_tasks_see_only_their_own_faults() -> None:
    orchestrator = SagaOrchestrator(sleep=InstantSleep())
    both_running = asyncio.Barrier(3)

    async def with_fault(name: str) -> BaseException | list[Any]:
        with FaultInjector().fail(name, RuntimeError(f"no {name}")):
            await both_running.wait()
            try:
                return await orchestrator.execute(order(name))
            except StepFailed as error:
                return error

    async def clean() -> BaseException | list[Any]:
        await both_running.wait()
        return await orchestrator.execute(order("clean"))

    ship_failed, charge_failed, ok = await asyncio.gather(
        with_fault("ship"), with_fault("charge"), clean()
    )
    assert isinstance(ship_failed, StepFailed)
    assert ship_failed.step_name == "ship"
    assert isinstance(charge_failed, StepFailed)
    assert charge_failed.step_name == "charge"
    assert ok == ["reserved clean", "charged clean", "shipped clean"]


@pytest.mark.asyncio
async def test_nested_scopes_ask_the_inner_injector_first() -> None:
    outer = FaultInjector().fail("ship", KeyError("outer"))
    inner = FaultInjector().fail("ship", ValueError("inner"))
    with outer:
        with inner, pytest.raises(StepFailed) as caught:
            await SagaOrchestrator().execute(order("a"))
        assert isinstance(caught.value.error, ValueError)
        with FaultInjector().fail("reserve", index=5), pytest.raises(StepFailed) as caught:
            await SagaOrchestrator().execute(order("b"))  # inner matches nothing: outer fires
        assert isinstance(caught.value.error, KeyError)
    assert await SagaOrchestrator().execute(order("c")) == ["reserved c", "charged c", "shipped c"]


@pytest.mark.asyncio
async def test_activate_context_manager_and_clear() -> None:
    faults = FaultInjector().fail("reserve")
    with faults.activate(), pytest.raises(StepFailed):
        await SagaOrchestrator().execute(order("a"))
    assert len(faults.fired) == 1
    faults.clear()
    assert faults.fired == []
    with faults.activate():
        await SagaOrchestrator().execute(order("b"))
    assert repr(faults) == "<FaultInjector 0 faults, 0 fired>"


def test_exiting_in_a_context_that_did_not_enter_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="did not enter it"):
        FaultInjector().__exit__(None, None, None)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f: f.fail(""), "by name"),
        (lambda f: f.fail(42), "by name"),
        (lambda f: f.fail("x", "boom"), "exception instance or class"),
        (lambda f: f.fail("x", times=-1), "times"),
        (lambda f: f.fail("x", times=0), "never fires"),  # it was accepted, and tested nothing
        (lambda f: f.timeout("x", times=0), "never fires"),
        (lambda f: f.timeout("x", index=True), "index"),
    ],
)
def test_bad_faults_are_clear_errors(call: Any, message: str) -> None:
    with pytest.raises(SagaDefinitionError, match=message):
        call(FaultInjector())


@pytest.mark.asyncio
async def test_instant_sleep_scale_and_validation() -> None:
    sleep = InstantSleep(scale=0.001)
    await sleep(1.0)
    assert sleep.delays == [1.0]
    assert repr(sleep) == "<InstantSleep 1 sleeps, 1 s skipped>"
    with pytest.raises(SagaDefinitionError, match="scale"):
        InstantSleep(scale=-1)
    with pytest.raises(SagaDefinitionError, match="finite number >= 0, got inf"):
        InstantSleep(scale=float("inf"))  # every retry would wait forever
    with pytest.raises(SagaDefinitionError, match="finite number >= 0, got 1000"):
        InstantSleep(scale=10**400)  # too large for a float: a bare OverflowError


class Bank:
    def __init__(self) -> None:
        self.moves: list[str] = []

    @step
    async def debit(self, account: str) -> str:
        self.moves.append(f"debit {account}")
        return account

    @debit.compensate
    async def undo_debit(self, account: str) -> None:
        self.moves.append(f"undo {account}")

    @step
    async def credit(self, account: str) -> None:
        self.moves.append(f"credit {account}")


@pytest.mark.asyncio
@pytest.mark.parametrize("target", ["class", "instance"])
async def test_method_steps_are_targeted_through_the_class_or_an_instance(target: str) -> None:
    bank = Bank()

    @saga
    def move() -> Any:
        yield bank.debit("A")
        yield bank.credit("B")

    step_object = Bank.credit if target == "class" else bank.credit
    with FaultInjector().fail(step_object), pytest.raises(StepFailed):
        await SagaOrchestrator().execute(move())
    assert bank.moves == ["debit A", "undo A"]


class Shelves:
    @step
    async def _stock(cls: type[Shelves], item: str) -> str:
        calls.append(f"stock {item}")
        return item

    @classmethod
    @_stock.compensate
    async def unstock(cls, item: str) -> None:
        calls.append(f"unstock {item}")

    stock = classmethod(_stock)


@pytest.mark.asyncio
@pytest.mark.parametrize("lookup", ["class", "instance", "python-3.13"])
async def test_class_method_steps_are_targeted_as_looked_up(lookup: str) -> None:
    # From Python 3.13 classmethod binds the step as a method (a MethodType): that was
    # refused ("name a step by name ... got <bound method ...>"), as mypy refused the
    # lookup on any Python (typed as a plain callable).
    calls.clear()
    found = {
        "class": Shelves.stock,
        "instance": Shelves().stock,
        "python-3.13": MethodType(vars(Shelves)["_stock"], Shelves),
    }[lookup]

    @saga
    def restock() -> Any:
        yield Shelves.stock("pen")
        yield reserve("pen")

    recorder = SagaRecorder()
    with FaultInjector().fail(reserve).fail_compensation(found), pytest.raises(CompensationFailed):
        await SagaOrchestrator(listeners=[recorder], sleep=InstantSleep()).execute(restock())
    assert calls == ["stock pen"]  # its compensation failed instead of running
    recorder.assert_completed(found)


@pytest.mark.asyncio
async def test_a_misspelt_step_name_is_an_error_at_the_end_of_the_block() -> None:
    # It was accepted and never fired: the saga completed and the test tested nothing.
    with (
        pytest.raises(SagaDefinitionError, match=r"no step is named 'shpi' \(did you mean 'ship'"),
        FaultInjector().fail("shpi"),
    ):
        await SagaOrchestrator().execute(order("a"))
    with pytest.raises(SagaDefinitionError, match="'nowhere'"), FaultInjector().activate() as f:
        f.timeout_compensation("nowhere")


@pytest.mark.asyncio
async def test_a_misspelt_step_name_is_noted_on_the_error_the_block_raised() -> None:
    with (
        pytest.raises(pytest.fail.Exception) as info,
        FaultInjector().fail("chrage"),
        pytest.raises(StepFailed),  # DID NOT RAISE: the fault never fired
    ):
        await SagaOrchestrator().execute(order("a"))
    assert info.value.__notes__ == [
        "FaultInjector: no step is named 'chrage' (did you mean 'charge'?), so its fault "
        "never fired; use the name the step is recorded under (its function's, or "
        "@step(name=...)), or pass the @step object itself"
    ]


@step(name="testing_faults.never_compensated")
async def never_compensated() -> None: ...


@pytest.mark.asyncio
async def test_a_compensation_fault_on_a_step_without_one_is_an_error_at_the_end_of_the_block() -> (
    None
):
    # It was accepted and never fired (there is no compensation to fail): the test tested
    # nothing. By object or by name, whichever compensation fault.
    faults = [
        FaultInjector().fail_compensation(ship),
        FaultInjector().timeout_compensation("testing_faults.never_compensated"),
        FaultInjector().crash(ship, compensation=True),
    ]
    for injector in faults:
        with (
            pytest.raises(SagaDefinitionError, match=r"step '[\w.]+' has no compensation") as info,
            injector,
        ):
            await SagaOrchestrator().execute(order("a"))
        assert "at a step with a @<step>.compensate function" in str(info.value)
    # Noted on the error the block raised (DID NOT RAISE: the fault never fired).
    with (
        pytest.raises(pytest.fail.Exception) as failed,
        FaultInjector().fail_compensation(ship),
        pytest.raises(StepFailed),
    ):
        await SagaOrchestrator().execute(order("a"))
    assert "step 'ship' has no compensation" in failed.value.__notes__[0]
    # A compensation registered in the block counts, as a step defined there does.
    with FaultInjector().fail_compensation("testing_faults.compensated_in_the_block"):

        @step(name="testing_faults.compensated_in_the_block")
        async def later() -> None: ...

        @later.compensate
        async def undo_later() -> None: ...


@pytest.mark.asyncio
async def test_a_fault_on_a_step_defined_later_or_not_reached_is_no_error() -> None:
    with FaultInjector().fail("defined_in_the_block").fail("ship") as faults:

        @step(name="defined_in_the_block")
        async def later() -> None: ...

        with pytest.raises(StepFailed):
            await SagaOrchestrator().execute(order("a"), saga_id="o")
    # ship was never reached (charge failed), but it is a step: the fault may be meant so.
    faults.fail("reserve").fail("ship")
    with faults, pytest.raises(StepFailed):
        await SagaOrchestrator().execute(order("a"))
