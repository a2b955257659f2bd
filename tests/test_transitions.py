"""The orchestrator's fast Transition builder makes the same frozen record as the class."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest

from sagakit import SagaStatus, Transition, TransitionKind
from sagakit.transitions import make_transition


def test_make_transition_sets_every_field_like_the_dataclass() -> None:
    error = ValueError("boom")
    values: dict[str, Any] = {
        "kind": TransitionKind.STEP_FAILED,
        "saga_id": "s-1",
        "saga_name": "order",
        "status": SagaStatus.EXECUTING,
        "step_index": 2,
        "step_name": "ship",
        "attempt": 3,
        "result": {"x": 1},
        "events": ("e",),
        "error": error,
        "duration": 0.5,
        "run_number": 7,
    }
    assert [f.name for f in dataclasses.fields(Transition)] == list(values)
    run: Any = SimpleNamespace(id="s-1", name="order", number=7)
    step: Any = SimpleNamespace(index=2, name="ship")
    fast = make_transition(
        values["kind"],
        run,
        values["status"],
        step,
        values["attempt"],
        values["result"],
        values["events"],
        error,
        values["duration"],
    )
    assert fast == Transition(**values)
    assert fast.idempotency_key == "s-1:2"
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.attempt = 4  # type: ignore[misc]


def test_make_transition_of_the_saga_has_no_step() -> None:
    run: Any = SimpleNamespace(id="s-1", name="order", number=7)
    fast = make_transition(
        TransitionKind.SAGA_STOPPED, run, SagaStatus.EXECUTING, None, 0, None, (), None, None
    )
    assert fast == Transition(
        TransitionKind.SAGA_STOPPED, "s-1", "order", SagaStatus.EXECUTING, run_number=7
    )
    assert fast.idempotency_key is None


def test_a_transitions_repr_shortens_a_huge_result_events_and_error() -> None:
    # Regression: the dataclass repr showed the whole result and events — 1.4 MB for a
    # step that returned a list of 100,000 numbers, as a notebook cell's value or printed
    # by a listener — and raised when one's repr() raised.
    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    huge = list(range(100_000))
    transition = Transition(
        TransitionKind.STEP_COMPLETED, "t-1", "order", SagaStatus.EXECUTING, 0, "reserve", 1,
        huge, tuple(huge), ValueError("x" * 100_000), 0.5, 1,
    )  # fmt: skip
    text = repr(transition)
    assert len(text) < 1_000
    assert text.startswith(
        "Transition(kind=<TransitionKind.STEP_COMPLETED: 'step_completed'>, saga_id='t-1', "
        "saga_name='order', status=<SagaStatus.EXECUTING: 'executing'>, step_index=0, "
        "step_name='reserve', attempt=1, result=[0, 1, 2, 3, 4, 5, ...], "
        "events=(0, 1, 2, 3, 4, 5, ...), error=ValueError("
    )
    assert text.endswith(", duration=0.5, run_number=1)")
    odd = Transition(TransitionKind.STEP_COMPLETED, "t-1", "o", SagaStatus.EXECUTING)
    assert "Unprintable" in repr(dataclasses.replace(odd, result=Unprintable()))
    small = Transition(TransitionKind.SAGA_FINISHED, "t-1", "order", SagaStatus.COMPLETED)
    assert repr(small) == (
        "Transition(kind=<TransitionKind.SAGA_FINISHED: 'saga_finished'>, saga_id='t-1', "
        "saga_name='order', status=<SagaStatus.COMPLETED: 'completed'>, step_index=None, "
        "step_name=None, attempt=0, result=None, events=(), error=None, duration=None, "
        "run_number=0)"
    )  # as the dataclass repr, for what is small


def test_the_first_steps_idempotency_key_names_index_zero() -> None:
    first = Transition(
        TransitionKind.STEP_STARTED, "s-1", "order", SagaStatus.EXECUTING, step_index=0
    )
    saga = Transition(TransitionKind.SAGA_STARTED, "s-1", "order", SagaStatus.EXECUTING)
    assert first.idempotency_key == "s-1:0"
    assert saga.idempotency_key is None
