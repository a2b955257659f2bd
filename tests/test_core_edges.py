"""Edge cases of the core found uncovered by branch coverage: each asserts what a user sees."""

from __future__ import annotations

import asyncio
import enum
import json
from dataclasses import dataclass, field
from datetime import time
from typing import Any

import pytest

from sagakit import (
    JsonSerializer,
    SagaDefinition,
    SagaDefinitionError,
    SagaOrchestrator,
    SerializationError,
    StepFailed,
    register_codec,
    step,
)


class Plain:
    pass


class Shade(enum.Enum):
    DARK = 1


@dataclass
class Basket:
    owner: str
    items: list[str] = field(default_factory=lambda: ["apple"])


def test_a_codec_without_callable_encode_or_decode_is_refused() -> None:
    with pytest.raises(SerializationError, match="needs callable encode= and decode="):
        register_codec(Plain, encode="not callable", decode=lambda v: Plain())  # type: ignore[arg-type]


def test_a_dataclass_field_missing_from_the_log_gets_its_default_factory() -> None:
    # Stored by an older version of the class, before the field was added.
    stored = json.dumps({"__sk__": "dataclass", "t": f"{__name__}:Basket", "v": {"owner": "ann"}})
    assert JsonSerializer().loads(stored) == Basket("ann", ["apple"])


def test_a_malformed_stored_value_is_a_serialization_error_naming_its_tag() -> None:
    with pytest.raises(SerializationError, match="cannot read stored timedelta value"):
        JsonSerializer().loads('{"__sk__":"timedelta","v":"not a list"}')


def test_a_stored_enum_whose_type_is_no_enum_is_refused() -> None:
    with pytest.raises(SerializationError, match="is not an Enum"):
        JsonSerializer().loads(json.dumps({"__sk__": "enum", "t": f"{__name__}:Plain", "v": 1}))


def test_an_enum_round_trips() -> None:
    serializer = JsonSerializer()
    assert serializer.loads(serializer.dumps(Shade.DARK)) is Shade.DARK


def test_a_stored_time_in_an_unknown_zone_is_read_naive() -> None:
    value = JsonSerializer().loads('{"__sk__":"time","v":"10:00:00","z":"Nowhere/Atlantis"}')
    assert value == time(10, 0)
    assert value.tzinfo is None


def test_the_serializer_repr_names_its_limit_and_pickle_opt_in() -> None:
    assert repr(JsonSerializer(max_size=10)) == "<JsonSerializer max_size=10>"
    assert repr(JsonSerializer(max_size=10, allow_pickle=True)) == (
        "<JsonSerializer max_size=10 allow_pickle>"
    )


@step
async def noop(value: int) -> int:
    return value


def test_a_saga_definition_is_not_equal_to_something_else() -> None:
    call = noop(1)
    definition = SagaDefinition("s-1", steps=[call])
    assert definition == SagaDefinition("s-1", steps=[call])
    assert definition != [call]
    assert definition != SagaDefinition("s-2", steps=[call])


def test_a_non_callable_listener_is_refused_when_added() -> None:
    with pytest.raises(SagaDefinitionError, match="a listener must be callable, got 42"):
        SagaOrchestrator().add_listener(42)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_step_returning_a_task_is_refused_naming_the_task() -> None:
    async def work() -> None:
        await asyncio.sleep(0)

    started: list[asyncio.Task[None]] = []

    @step
    async def launches() -> Any:
        task = asyncio.create_task(work(), name="background-work")
        started.append(task)
        return task

    with pytest.raises(SagaDefinitionError, match=r"returned a task \(background-work\)"):
        await SagaOrchestrator().execute(SagaDefinition(steps=[launches()]))
    await started[0]


@pytest.mark.asyncio
async def test_an_error_text_with_a_nul_or_a_bare_cr_is_stored_escaped_on_one_line() -> None:
    @step
    async def nul() -> None:
        raise ValueError("before\x00after")

    @step
    async def carriage() -> None:
        raise ValueError("first\rsecond")

    orchestrator = SagaOrchestrator()
    for saga_id, call in (("nul-1", nul()), ("cr-1", carriage())):
        with pytest.raises(StepFailed):
            await orchestrator.execute(SagaDefinition(saga_id, steps=[call]))
    nul_meta = await orchestrator.get_saga("nul-1")
    cr_meta = await orchestrator.get_saga("cr-1")
    assert nul_meta is not None
    assert cr_meta is not None
    assert nul_meta.steps[0].error == "ValueError: before\\x00after"
    assert cr_meta.steps[0].error == "ValueError: first second"
    assert cr_meta.error is not None
    assert "first second" in cr_meta.error


class Events(list[str]):
    """A list subclass: a step's events, copied when the step returns it as any list is."""


@pytest.mark.asyncio
async def test_events_returned_as_a_list_subclass_are_copied_when_the_step_returns() -> None:
    returned = Events(["reserved"])

    @step
    async def reserve() -> Events:
        return returned

    orchestrator = SagaOrchestrator()
    events = await orchestrator.execute(SagaDefinition("ev-1", steps=[reserve()]))
    returned.append("changed later")
    meta = await orchestrator.get_saga("ev-1")
    assert meta is not None
    assert events == ["reserved"]
    assert list(meta.steps[0].events) == ["reserved"]


@pytest.mark.asyncio
async def test_executing_something_that_is_no_definition_says_to_call_the_saga_function() -> None:
    with pytest.raises(SagaDefinitionError, match=r"got 42; call your @saga function first"):
        await SagaOrchestrator().execute(42)  # type: ignore[arg-type]
