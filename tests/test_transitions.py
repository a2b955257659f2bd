"""The orchestrator's fast Transition builder makes the same frozen record as the class."""

from __future__ import annotations

import dataclasses
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
    fast = make_transition(*values.values())
    assert fast == Transition(**values)
    assert fast.idempotency_key == "s-1:2"
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.attempt = 4  # type: ignore[misc]
