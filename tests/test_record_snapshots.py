"""Records read back from a log: what their duration and repr say."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sagakit import SagaMetadata, SagaStatus, StepRecord, StepStatus

START = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_finished_saga_lasted_until_it_finished_not_until_its_last_update() -> None:
    # A saga resolved by an operator long after it failed is updated then; it still
    # ran for as long as it ran.
    resolved = SagaMetadata(
        id="s",
        name="order",
        status=SagaStatus.FAILED,
        started_at=START,
        finished_at=START + timedelta(seconds=10),
        updated_at=START + timedelta(hours=5),
    )
    assert resolved.duration == 10.0
    running = SagaMetadata(
        id="r",
        name="order",
        status=SagaStatus.EXECUTING,
        started_at=START,
        updated_at=START + timedelta(seconds=3),
    )
    assert running.duration == 3.0


def test_a_step_record_names_its_attempts_only_when_it_was_retried() -> None:
    once = StepRecord(0, "pay", StepStatus.COMPLETED, attempts=1)
    twice = StepRecord(0, "pay", StepStatus.COMPLETED, attempts=2)
    assert repr(once) == "<step 0 pay: completed>"
    assert repr(twice) == "<step 0 pay: completed after 2 attempts>"


def test_an_error_is_cut_in_a_repr_only_past_its_shown_length() -> None:
    fits, longer = "e" * 200, "e" * 201
    assert repr(StepRecord(0, "pay", StepStatus.FAILED, error=fits)).endswith(f"({fits})>")
    assert repr(StepRecord(0, "pay", StepStatus.FAILED, error=longer)).endswith(f"({'e' * 199}…)>")


def test_a_saga_snapshot_answers_to_saga_id_as_every_other_record_does() -> None:
    # RecoveryOutcome, Transition, StepContext, StepFailed and the definition all say
    # saga_id: a snapshot read from get_history() must answer to it too.
    snapshot = SagaMetadata(id="o-1", name="order", status=SagaStatus.COMPLETED)
    assert snapshot.saga_id == "o-1"
    assert SagaMetadata(id=None, name="order", status=SagaStatus.NOT_STARTED).saga_id is None
