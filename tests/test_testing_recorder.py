"""sagakit.testing: the recorder and its assertion helpers."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    LeaseLost,
    Retry,
    SagaDefinition,
    SagaDefinitionError,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StepFailed,
    Transition,
    TransitionKind,
    saga,
    step,
)
from sagakit._runs import SagaRun
from sagakit.testing import (
    FaultInjector,
    InstantSleep,
    RecordedRun,
    SagaRecorder,
    SimulatedCrash,
    simulate_restart,
)


@step
async def debit(account: str) -> str:
    return f"debited {account}"


@debit.compensate
async def undo_debit(account: str) -> None:
    return None


@step(retry=Retry(attempts=2, backoff=0))
async def credit(account: str) -> str:
    return f"credited {account}"


@credit.compensate
async def undo_credit(account: str) -> None:
    return None


@step
async def notify(account: str) -> None:
    return None


@saga(name="testing_recorder.transfer")
def transfer(source: str, target: str) -> Any:
    yield debit(source)
    yield credit(target)
    yield notify(target)


async def _run(recorder: SagaRecorder, faults: FaultInjector, saga_id: str) -> None:
    orchestrator = SagaOrchestrator(listeners=[recorder], sleep=InstantSleep())
    with faults, contextlib.suppress(StepFailed):
        await orchestrator.execute(transfer("A", "B"), saga_id=saga_id)


@pytest.mark.asyncio
async def test_trail_of_a_run_with_a_retry_and_compensations() -> None:
    recorder = SagaRecorder()
    await _run(recorder, FaultInjector().fail("credit", times=1).fail("notify"), "t-1")
    run = recorder.run("t-1")
    assert run.trail() == [
        "saga_started",
        "step_started debit",
        "step_completed debit",
        "step_started credit",
        "step_retrying credit",
        "step_started credit",
        "step_completed credit",
        "step_started notify",
        "step_failed notify",
        "compensation_started credit",
        "compensation_completed credit",
        "compensation_started debit",
        "compensation_completed debit",
        "saga_finished compensated",
    ]
    assert run.completed == ["debit", "credit"]
    assert run.compensated == ["credit", "debit"]
    assert run.status is SagaStatus.COMPENSATED
    assert run.finished
    assert "step_failed notify (step 2, attempt 1): InjectedFault: injected" in run.describe()
    run.assert_trail(*run.trail())
    run.assert_completed("debit", "credit")
    recorder.assert_compensated("credit", "debit", saga_id="t-1")
    recorder.assert_status("compensated")


@pytest.mark.asyncio
async def test_wrong_compensation_order_gives_a_diff() -> None:
    recorder = SagaRecorder()
    await _run(recorder, FaultInjector().fail("notify"), "t-2")
    with pytest.raises(AssertionError) as caught:
        recorder.assert_compensated("debit", "credit")
    message = str(caught.value)
    expected = "saga 'testing_recorder.transfer' (id t-2): compensations differ"
    assert f"{expected} (- expected, + actual)" in message
    assert "\n  + credit\n    debit\n  - credit\n" in message
    assert "trail:\n  saga_started" in message


@pytest.mark.asyncio
async def test_wrong_status_and_missing_steps_are_reported() -> None:
    recorder = SagaRecorder()
    await _run(recorder, FaultInjector().fail("debit"), "t-3")
    with pytest.raises(AssertionError, match="ended compensated, expected completed"):
        recorder.assert_status(SagaStatus.COMPLETED)
    with pytest.raises(AssertionError, match=r"- debit"):
        recorder.assert_completed("debit")
    with pytest.raises(AssertionError, match=r"\+ saga_finished compensated"):
        recorder.assert_trail("saga_started")
    recorder.assert_compensated()  # nothing completed, nothing compensated
    # A misspelt status is a mistake in the test, not a mismatch of the run.
    with pytest.raises(SagaDefinitionError, match="'compensate', which is not a saga status"):
        recorder.assert_status("compensate")
    recorder.assert_status("compensated")  # a status's text is fine


@pytest.mark.asyncio
async def test_steps_are_named_as_faults_name_them() -> None:
    recorder = SagaRecorder()
    await _run(recorder, FaultInjector().fail(notify), "t-4")
    recorder.assert_compensated(credit, "debit")
    recorder.assert_completed(debit, credit)
    with pytest.raises(AssertionError, match=r"\n  \+ debit\n"):
        recorder.assert_compensated(credit)
    with pytest.raises(SagaDefinitionError, match=r"got the list \['debit'\]; unpack it"):
        recorder.assert_completed(["debit"])  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_step_no_run_could_match_is_named_under_the_diff() -> None:
    # A misspelt step showed only as "- crdit" in the diff, the fault injector's "did you
    # mean" not said; a step without a compensation, expected compensated, as "- notify".
    recorder = SagaRecorder()
    await _run(recorder, FaultInjector().fail(notify), "t-5")
    with pytest.raises(AssertionError) as caught:
        recorder.assert_compensated("crdit", "debit")
    assert "\nno step is named 'crdit' (did you mean 'credit'?)\ntrail:" in str(caught.value)
    with pytest.raises(AssertionError) as caught:
        recorder.assert_completed("debit", "credit", "notfy")
    assert "no step is named 'notfy' (did you mean 'notify'?)" in str(caught.value)
    with pytest.raises(AssertionError) as caught:  # this notify: another module's has one
        recorder.assert_compensated(notify, credit, debit, saga_id="t-5")
    assert "step 'notify' has no compensation, so it is never compensated" in str(caught.value)
    with pytest.raises(AssertionError) as caught:
        recorder.assert_compensated(credit, saga_id="t-5")  # a plain mismatch: no hint
    assert "no step is named" not in str(caught.value)
    assert "has no compensation" not in str(caught.value)


@pytest.mark.asyncio
async def test_a_trail_given_as_a_list_or_not_as_lines_is_a_mistake_in_the_test() -> None:
    # Regression: assert_trail(["saga_started", ...]) failed with a bare "TypeError:
    # unhashable type: 'list'" from the diff, assert_trail(5) with "object of type 'int'
    # has no len()"; a list of steps to assert_compensated() was told only to name a step.
    recorder = SagaRecorder()
    await _run(recorder, FaultInjector().fail("debit"), "t-lines")
    trail = recorder.last.trail()
    fix = r"takes the lines one per argument, got the list \[.*\]; unpack it: assert_trail\(\*"
    with pytest.raises(SagaDefinitionError, match=fix):
        recorder.assert_trail(trail)  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match=fix):
        recorder.last.assert_trail(trail)  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match=r"lines of the trail .*'saga_started'.*got 5"):
        recorder.assert_trail(5)  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match=r"assert_compensated\(\) takes the steps one"):
        recorder.assert_compensated(("debit",))  # type: ignore[arg-type]
    recorder.assert_trail(*trail)


@pytest.mark.asyncio
async def test_runs_are_kept_apart_and_the_last_is_the_default() -> None:
    recorder = SagaRecorder()
    await _run(recorder, FaultInjector(), "ok-run")
    await _run(recorder, FaultInjector().fail("notify"), "bad-run")
    assert [run.saga_id for run in recorder.runs] == ["ok-run", "bad-run"]
    recorder.assert_status("completed", saga_id="ok-run")
    recorder.assert_status("compensated")
    assert recorder.last.saga_id == "bad-run"
    assert len(recorder.transitions) == sum(len(r.transitions) for r in recorder.runs)
    with pytest.raises(AssertionError, match=r"no run of saga id 'nope' .*ok-run, bad-run"):
        recorder.run("nope")
    assert repr(recorder).startswith("<SagaRecorder 2 runs,")
    recorder.clear()
    with pytest.raises(AssertionError, match="no saga run was recorded"):
        recorder.assert_status("completed")


@pytest.mark.asyncio
async def test_an_unfinished_run_is_not_a_status_match() -> None:
    recorder = SagaRecorder()
    seen: list[str] = []

    @step
    async def look(name: str) -> None:
        seen.append(str(recorder.last.status))
        with pytest.raises(AssertionError, match="has not finished"):
            recorder.assert_status("executing")

    @saga
    def peek() -> Any:
        yield look("x")

    await SagaOrchestrator(listeners=[recorder]).execute(peek())
    assert seen == ["executing"]
    recorder.assert_status("completed")


@pytest.mark.asyncio
async def test_a_reused_id_starts_a_fresh_recorded_run() -> None:
    recorder = SagaRecorder()
    orchestrator = SagaOrchestrator(listeners=[recorder], history_limit=0)
    await orchestrator.execute(transfer("A", "B"), saga_id="same")
    await orchestrator.execute(transfer("A", "B"), saga_id="same")
    assert len(recorder.runs) == 1
    assert recorder.last.trail().count("saga_started") == 1


@pytest.mark.asyncio
async def test_names_takes_a_transition_kind_or_its_text() -> None:
    # Regression: names() compared kinds by identity, so the text the trail shows
    # ("step_retrying") silently matched nothing and a test asserting on it saw [].
    recorder = SagaRecorder()
    await _run(recorder, FaultInjector().fail("credit", times=1).fail("notify"), "t-names")
    run = recorder.run("t-names")
    assert run.names(TransitionKind.STEP_RETRYING) == ["credit"]
    assert run.names("step_retrying") == ["credit"]
    assert run.names("compensation_completed") == ["credit", "debit"]
    with pytest.raises(SagaDefinitionError, match="'step_retried', which is not a transition"):
        run.names("step_retried")
    # A saga-level kind has no step names: it gave ['None'] (the text of no name).
    for kind in ("saga_started", TransitionKind.SAGA_FINISHED, "saga_stopped"):
        with pytest.raises(SagaDefinitionError, match="a saga transition, which names no step"):
            run.names(kind)


@step
async def rec_reserve(item: str) -> None:
    return None


@rec_reserve.compensate
async def rec_unreserve(item: str) -> None:
    return None


@step
async def rec_charge(item: str) -> None:
    raise ValueError("declined")


@saga(name="testing_recorder.order")
def rec_order(item: str) -> Any:
    yield rec_reserve(item)
    yield rec_charge(item)


@pytest.mark.asyncio
async def test_a_recovery_after_a_simulated_crash_is_a_run_of_its_own(tmp_path: Path) -> None:
    # Regression: the recovery's transitions were added to the crashed run (a trail with
    # two saga_started), which kept its place among the runs, so `last` was the run
    # started before the recovery and the assert_* helpers checked the wrong run.
    recorder = SagaRecorder()
    store = SQLiteStore(tmp_path / "log.db")
    with FaultInjector().crash(notify), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store, listeners=[recorder]).execute(
            transfer("A", "B"), saga_id="crashed"
        )
    await simulate_restart(store)
    await store.close()  # the "dead process's" connections (Python 3.13 warns of unclosed ones)
    restarted = SagaOrchestrator(SQLiteStore(tmp_path / "log.db"), listeners=[recorder])
    await restarted.execute(transfer("C", "D"), saga_id="other")
    await restarted.recover()
    assert [run.saga_id for run in recorder.runs] == ["other", "crashed"]
    assert recorder.last.saga_id == "crashed"
    recorder.assert_trail(
        "saga_started", "step_started notify", "step_completed notify", "saga_finished completed"
    )
    recorder.assert_completed(notify)
    await restarted.close()


@pytest.mark.asyncio
async def test_a_recovery_compensating_after_a_crash_is_a_run_of_its_own(
    tmp_path: Path,
) -> None:
    # A recovery that compensates tells no saga_started: the crash ended the run before.
    recorder = SagaRecorder()
    store = SQLiteStore(tmp_path / "log.db")
    with FaultInjector().crash(rec_reserve, compensation=True), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store, listeners=[recorder]).execute(
            rec_order("book"), saga_id="o-1"
        )
    assert recorder.last.trail()[-1] == "compensation_started rec_reserve"
    await simulate_restart(store)
    await store.close()
    restarted = SagaOrchestrator(SQLiteStore(tmp_path / "log.db"), listeners=[recorder])
    await restarted.recover()
    assert len(recorder.runs) == 1
    recorder.assert_trail(
        "compensation_started rec_reserve",
        "compensation_completed rec_reserve",
        "saga_finished compensated",
    )
    await restarted.close()


class _FencedAtCompensation(SQLiteStore):
    """Another worker takes the saga over as its compensation starts: from then on, the
    log refuses this worker's writes."""

    fenced = False

    async def record(self, run: SagaRun, transition: Transition) -> None:
        if self.fenced or transition.kind is TransitionKind.COMPENSATION_STARTED:
            self.fenced = True
            raise LeaseLost(transition.saga_id)
        await super().record(run, transition)

    async def finish(self, run: SagaRun) -> None:
        if self.fenced:
            raise LeaseLost(run.id)
        await super().finish(run)


@pytest.mark.asyncio
async def test_a_recovery_after_saga_stopped_is_a_run_of_its_own(tmp_path: Path) -> None:
    recorder = SagaRecorder()
    store = _FencedAtCompensation(tmp_path / "log.db")
    with pytest.raises(LeaseLost):
        await SagaOrchestrator(store, listeners=[recorder]).execute(
            rec_order("book"), saga_id="o-2"
        )
    assert recorder.last.trail()[-1] == "saga_stopped"
    store.fenced = False
    await simulate_restart(store)
    await store.close()
    async with SagaOrchestrator(
        SQLiteStore(tmp_path / "log.db"), listeners=[recorder]
    ) as restarted:
        await restarted.recover()
    assert len(recorder.runs) == 1
    recorder.assert_trail(
        "compensation_started rec_reserve",
        "compensation_completed rec_reserve",
        "saga_finished compensated",
    )


@step
async def inner_step(x: str) -> str:
    return f"inner {x}"


@step
async def runs_inner(x: str) -> str:
    # A nested saga, run by the same (recorded) orchestrator.
    [event] = await _inner["orchestrator"].execute(
        SagaDefinition(steps=[inner_step(x)]), saga_id=f"inner-{x}"
    )
    return str(event)


@step
async def runs_inner_in_a_task(x: str) -> str:
    task = asyncio.create_task(
        _inner["orchestrator"].execute(SagaDefinition(steps=[inner_step(x)]), saga_id=f"task-{x}")
    )
    [event] = await task
    return str(event)


@step
async def outer_fails(x: str) -> None:
    raise LookupError(x)


_inner = {"orchestrator": SagaOrchestrator()}  # the one the steps above run the inner saga on


@pytest.mark.asyncio
@pytest.mark.parametrize("durable", [False, True])
@pytest.mark.parametrize("nesting", [runs_inner, runs_inner_in_a_task])
async def test_the_last_run_is_the_outer_saga_not_the_nested_one(
    nesting: Any, durable: bool, tmp_path: Path
) -> None:
    # Regression: `last` (and the assert_* helpers without a saga id) was the run started
    # most recently: the inner saga, started inside the outer saga's step.
    recorder = SagaRecorder()
    store = SQLiteStore(tmp_path / "nested.db") if durable else None
    _inner["orchestrator"] = orchestrator = SagaOrchestrator(store, listeners=[recorder])
    with pytest.raises(StepFailed):
        await orchestrator.execute(
            SagaDefinition(steps=[nesting("x"), outer_fails("x")]), saga_id="outer"
        )
    assert recorder.last.saga_id == "outer"
    assert recorder.run().saga_id == "outer"
    recorder.assert_status(SagaStatus.COMPENSATED)
    recorder.assert_completed(nesting)
    inner_id = "inner-x" if nesting is runs_inner else "task-x"
    recorder.assert_status(SagaStatus.COMPLETED, saga_id=inner_id)  # by id: unchanged
    recorder.assert_completed(inner_step, saga_id=inner_id)
    assert [run.saga_id for run in recorder.runs] == ["outer", inner_id]
    # A top-level run started after both is the last one, nested or not.
    await orchestrator.execute(SagaDefinition(steps=[inner_step("y")]), saga_id="after")
    assert recorder.last.saga_id == "after"
    await orchestrator.close()


@pytest.mark.asyncio
async def test_a_saga_nested_in_one_run_elsewhere_is_the_last_run() -> None:
    # The outer saga's orchestrator is not recorded: to this recorder the nested run is
    # a top-level one.
    recorder = SagaRecorder()
    _inner["orchestrator"] = SagaOrchestrator(listeners=[recorder])
    outer = SagaDefinition(steps=[runs_inner("z")])
    await SagaOrchestrator().execute(outer, saga_id="unrecorded")
    assert recorder.last.saga_id == "inner-z"


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str() for you")


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        # pydantic's ValidationError, say: a message of several lines.
        (
            ValueError("2 validation errors\namount\n  must be > 0"),
            "ValueError: 2 validation errors amount must be > 0",
        ),
        (_Unprintable(), "_Unprintable: <str() raised RuntimeError>"),
    ],
)
@pytest.mark.asyncio
async def test_a_failed_assertion_describes_any_error_on_one_line(
    error: Exception, shown: str
) -> None:
    # Regression: describe() (the trail in every failed assert_* and fault matrix case)
    # printed str(error) as is: a message of several lines broke the one line per
    # transition, and an exception whose str() raises replaced the assertion's message.
    recorder = SagaRecorder()
    await _run(recorder, FaultInjector().fail("notify", error), "t-err")
    lines = recorder.run("t-err").describe().splitlines()
    assert f"step_failed notify (step 2, attempt 1): {shown}" in lines
    assert len(lines) == len(recorder.run("t-err").transitions)
    with pytest.raises(AssertionError, match="ended compensated, expected completed") as caught:
        recorder.assert_status("completed")
    assert f"\n  step_failed notify (step 2, attempt 1): {shown}\n" in str(caught.value)


@pytest.mark.asyncio
async def test_a_run_shows_its_status_and_in_ipython_its_trail() -> None:
    # Regression: a run's repr said only how many transitions it had, and as a notebook
    # cell's value that was all it showed: print(run.describe()) was needed to see it.
    recorder = SagaRecorder()
    await _run(recorder, FaultInjector().fail("notify"), "bad-run")
    run = recorder.last
    assert repr(run) == f"<RecordedRun {run.saga_name} id='bad-run' compensated, 12 transitions>"
    shown: list[str] = []

    class Printer:
        def text(self, text: str) -> None:
            shown.append(text)

    run._repr_pretty_(Printer(), False)
    assert shown == [f"{run.label}: compensated, 12 transitions\n{run.describe(indent='  ')}"]
    unfinished = RecordedRun("s-1", "order", run.transitions[:2])
    assert repr(unfinished) == "<RecordedRun order id='s-1' executing (unfinished), 2 transitions>"
    assert repr(RecordedRun("s-2", "order")) == "<RecordedRun order id='s-2' no transitions>"


@pytest.mark.asyncio
async def test_a_run_a_simulated_crash_ended_says_so() -> None:
    # Regression: its trail just stopped, and assert_status said only "has not finished
    # (status executing)": nothing told the test a crash had ended it.
    recorder = SagaRecorder()
    orchestrator = SagaOrchestrator(listeners=[recorder])
    with FaultInjector().crash("credit", after=True), pytest.raises(SimulatedCrash) as crash:
        await orchestrator.execute(transfer("A", "B"), saga_id="c-1")
    run = recorder.run("c-1")
    assert run.crash is crash.value
    assert repr(run).startswith(
        "<RecordedRun testing_recorder.transfer id='c-1' executing (crashed),"
    )
    with pytest.raises(AssertionError) as failed:
        recorder.assert_status("failed")
    assert str(failed.value).startswith(
        f"{run.label} has not finished (status executing: simulated crash at step 'credit' "
        "after it acted), expected failed\ntrail:\n"
    )
    await _run(recorder, FaultInjector(), "c-2")  # a run not crashed has none
    assert recorder.run("c-2").crash is None


def test_a_huge_run_shows_in_ipython_its_first_and_last_transitions_errors_cut() -> None:
    # Regression: as a notebook cell's value a run showed its whole trail — 10,000 lines
    # for a saga of 5,000 steps — and each error whole (up to 64 kB a line, once per
    # retry), where a saga's own display shows its first and last rows and 200 characters
    # of an error. describe() still gives it all.
    executing, failed = SagaStatus.EXECUTING, SagaStatus.FAILED
    transitions = [Transition(TransitionKind.SAGA_STARTED, "h-1", "huge", executing)]
    for index in range(5_000):
        transitions.append(
            Transition(TransitionKind.STEP_COMPLETED, "h-1", "huge", executing, index, "debit", 1)
        )
    error = ValueError("x" * 5_000)
    transitions.append(
        Transition(TransitionKind.STEP_FAILED, "h-1", "huge", failed, 5_000, "credit", 1,
                   error=error)
    )  # fmt: skip
    transitions.append(Transition(TransitionKind.SAGA_FINISHED, "h-1", "huge", failed))
    run = RecordedRun("h-1", "huge", transitions)
    shown: list[str] = []

    class Printer:
        def text(self, text: str) -> None:
            shown.append(text)

    run._repr_pretty_(Printer(), False)
    lines = "".join(shown).splitlines()
    assert lines[0] == "saga 'huge' (id h-1): failed, 5003 transitions"
    assert lines[1:3] == ["  saga_started", "  step_completed debit (step 0, attempt 1)"]
    assert lines[41] == "  … 4,923 more transitions (describe() gives them all)"
    assert lines[-2].startswith("  step_failed credit (step 5000, attempt 1): ValueError: xxx")
    assert lines[-2].endswith("x…")
    assert len(lines[-2]) < 300
    assert lines[-1] == "  saga_finished failed"
    assert len(lines) == 1 + 40 + 1 + 40
    assert len(run.describe().splitlines()) == 5_003  # all of it, errors whole
    assert "x" * 5_000 in run.describe()


@step
async def rec_nh_hold(x: str) -> str:
    return f"held {x}"


@rec_nh_hold.compensate
async def rec_nh_release(result: str, x: str) -> None:
    return None


@step
async def rec_nh_fails(x: str) -> None:
    raise LookupError(x)


@step
async def rec_nh_runs_inner(x: str) -> str:
    inner = SagaDefinition(steps=[rec_nh_hold(x), rec_nh_fails(x)])
    with pytest.raises(StepFailed):  # the inner saga compensates rec_nh_hold
        await _inner["orchestrator"].execute(inner, saga_id=f"nh-inner-{x}")
    return "inner compensated"


@pytest.mark.asyncio
async def test_a_step_expected_of_the_outer_run_but_run_by_a_nested_saga_is_pointed_to() -> None:
    # Regression: the diff said only `- rec_nh_hold`, as if the step had not run, when it
    # ran (and was compensated) in the saga a step of this run ran: a run of its own.
    recorder = SagaRecorder()
    _inner["orchestrator"] = orchestrator = SagaOrchestrator(listeners=[recorder])
    await orchestrator.execute(SagaDefinition(steps=[rec_nh_runs_inner("n")]), saga_id="nh-outer")
    hint = (
        "step 'rec_nh_hold' was {} in saga 'saga' (id nh-inner-n), a nested saga "
        "that a step of this run ran: check that run with saga_id='nh-inner-n'"
    )
    with pytest.raises(AssertionError) as compensated:
        recorder.assert_compensated(rec_nh_hold)
    assert hint.format("compensated") in str(compensated.value)
    with pytest.raises(AssertionError) as completed:
        recorder.assert_completed(rec_nh_runs_inner, "rec_nh_hold")
    assert hint.format("completed") in str(completed.value)
    recorder.assert_compensated(rec_nh_hold, saga_id="nh-inner-n")  # as said
    # A step no nested saga did either: nothing to point to.
    with pytest.raises(AssertionError) as nowhere:
        recorder.assert_completed(rec_nh_runs_inner, rec_nh_fails)
    assert "nested saga" not in str(nowhere.value)
    await orchestrator.close()


def test_a_run_made_by_hand_with_no_transitions_has_not_started() -> None:
    # Regression: its status and finished raised a bare IndexError (from transitions[-1]),
    # and so did assert_status(), naming neither the run nor the problem.
    run = RecordedRun("s-3", "order")
    assert run.status is SagaStatus.NOT_STARTED
    assert not run.finished
    assert run.trail() == []
    with pytest.raises(AssertionError, match=r"has not started \(no transitions recorded\)"):
        run.assert_status("completed")
    with pytest.raises(AssertionError, match="expected completed"):
        run.assert_status("completed")
