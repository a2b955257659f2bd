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
