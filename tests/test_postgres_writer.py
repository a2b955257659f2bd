"""The PostgreSQL store's group writer and write building, without a server."""

from __future__ import annotations

import asyncio
import json

import pytest

from sagakit import LeaseLost, SagaStatus, SerializationError, StoreError
from sagakit._serialization import JsonSerializer
from sagakit.stores._pg_writer import (
    WRITTEN,
    GroupWriter,
    Rejected,
    Write,
    batch_params,
    write_for,
)
from sagakit.transitions import Transition, TransitionKind


def _write(saga_id: str) -> Write:
    return Write(saga_id, "s", 1, "executing", index=0, step_name="a", step_status="running")


@pytest.mark.asyncio
async def test_writes_queued_while_a_batch_is_in_flight_go_out_together() -> None:
    batches: list[list[str]] = []
    release = asyncio.Event()

    async def send(writes: list[Write]) -> dict[str, str]:
        batches.append([w.saga_id for w in writes])
        if len(batches) == 1:
            await release.wait()
        refused = {"lost": "fenced", "taken": "exists"}
        return {w.saga_id: refused[w.saga_id] for w in writes if w.saga_id in refused}

    writer = GroupWriter(send)
    first = asyncio.create_task(writer.submit([_write("first")]))
    await asyncio.sleep(0)
    ids = ("a", "b", "lost", "taken")
    rest = [asyncio.create_task(writer.submit([_write(i)])) for i in ids]
    await asyncio.sleep(0)
    release.set()
    await first
    done = await asyncio.gather(*rest, return_exceptions=True)
    assert batches == [["first"], ["a", "b", "lost", "taken"]]
    assert done[:2] == [None, None]
    assert isinstance(done[2], LeaseLost)
    assert done[2].saga_id == "lost"
    # A generated id already in the log: a StoreError, not a lost lease.
    assert isinstance(done[3], StoreError)
    assert not isinstance(done[3], LeaseLost)
    assert "already in the saga log" in str(done[3])


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("max_batch", "expected"),
    [
        (10, [["first"], ["a", "b", "c"], ["a"], ["a"]]),
        (2, [["first"], ["a", "b"], ["a", "c"], ["a"]]),
    ],
)
async def test_a_batch_holds_one_submission_per_saga_in_queue_order(
    max_batch: int, expected: list[list[str]]
) -> None:
    # A saga has two submissions queued when a cancelled caller's write waits behind a
    # batch in flight and the store queues its copy: they must not share a batch.
    batches: list[list[str]] = []
    release = asyncio.Event()

    async def send(writes: list[Write]) -> dict[str, str]:
        batches.append([w.saga_id for w in writes])
        if len(batches) == 1:
            await release.wait()
        return {}

    writer = GroupWriter(send, max_batch=max_batch)
    first = asyncio.create_task(writer.submit([_write("first")]))
    await asyncio.sleep(0)
    ids = ("a", "b", "a", "c", "a")
    rest = [asyncio.create_task(writer.submit([_write(i)])) for i in ids]
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, *rest)
    assert batches == expected


@pytest.mark.asyncio
async def test_a_failed_batch_fails_each_of_its_writes_with_a_store_error() -> None:
    async def send(writes: list[Write]) -> dict[str, str]:
        raise ConnectionError("server went away")

    writer = GroupWriter(send)
    with pytest.raises(StoreError, match="ConnectionError: server went away"):
        await writer.submit([_write("x")])
    # The writer keeps working for later writes.
    with pytest.raises(StoreError):
        await writer.submit([_write("y")])


@pytest.mark.asyncio
async def test_a_batch_the_server_rejects_is_sent_again_saga_by_saga() -> None:
    # One saga's unstorable write must not fail its batch-mates: the server rolled the
    # whole statement back, so each saga's writes go out again on their own.
    batches: list[list[str]] = []
    release = asyncio.Event()

    async def send(writes: list[Write]) -> dict[str, str]:
        batches.append([w.saga_id for w in writes])
        if len(batches) == 1:
            await release.wait()
        if "poison" in batches[-1]:
            raise Rejected("the server refused the statement")
        return {"lost": "fenced"} if "lost" in batches[-1] else {}

    writer = GroupWriter(send)
    first = asyncio.create_task(writer.submit([_write("first")]))
    await asyncio.sleep(0)
    ids = ("a", "poison", "lost", "b")
    rest = [asyncio.create_task(writer.submit([_write(i)])) for i in ids]
    await asyncio.sleep(0)
    release.set()
    await first
    done = await asyncio.gather(*rest, return_exceptions=True)
    assert batches == [["first"], ["a", "poison", "lost", "b"], ["a"], ["poison"], ["lost"], ["b"]]
    assert done[0] is None
    assert done[3] is None
    assert isinstance(done[1], StoreError)
    assert not isinstance(done[1], LeaseLost)
    assert "refused the statement" in str(done[1])
    assert isinstance(done[2], LeaseLost)


@pytest.mark.asyncio
async def test_cancelling_the_writer_fails_queued_writes_instead_of_hanging() -> None:
    started = asyncio.Event()

    async def send(writes: list[Write]) -> dict[str, str]:
        started.set()
        await asyncio.Event().wait()
        return {}

    writer = GroupWriter(send)
    first = asyncio.create_task(writer.submit([_write("first")]))
    await started.wait()
    queued = asyncio.create_task(writer.submit([_write("queued")]))
    await asyncio.sleep(0)
    assert writer._task is not None
    writer._task.cancel()
    outcomes = await asyncio.gather(first, queued, return_exceptions=True)
    assert all(isinstance(outcome, StoreError) for outcome in outcomes)


def test_retries_are_not_written_and_completions_carry_results_and_events() -> None:
    assert TransitionKind.STEP_RETRYING not in WRITTEN
    assert TransitionKind.COMPENSATION_RETRYING not in WRITTEN
    serializer = JsonSerializer()
    done = Transition(
        TransitionKind.STEP_COMPLETED, "id", "s", SagaStatus.EXECUTING, 2, "pay",
        attempt=3, result=("ok", 1), events=("ok", 1), duration=0.5,
    )  # fmt: skip
    write = write_for(done, 7, serializer.dumps, run_error=None, total=None, step_error=None)
    assert (write.fence, write.index, write.attempts, write.step_status) == (7, 2, 3, "completed")
    assert serializer.loads(write.result or "") == ("ok", 1)
    writes_json, events_json, new_json = batch_params([write, _write("other")])
    rows, events = json.loads(writes_json), json.loads(events_json)
    assert json.loads(new_json) == []  # no generated id's first write among them
    assert [row["saga_id"] for row in rows] == ["id", "other"]
    assert [row["fence"] for row in rows] == [7, 1]
    # The step row's events, as one JSON array; none for a write without a completion.
    assert [row["events"] for row in rows] == ['["ok",1]', None]
    assert serializer.loads(rows[0]["events"]) == ["ok", 1]
    assert serializer.loads(rows[0]["result"]) == ("ok", 1)
    # One events-table row per event, in order.
    assert [(e["saga_id"], e["idx"], e["data"]) for e in events] == [
        ("id", 2, '"ok"'),
        ("id", 2, "1"),
    ]


def test_an_unserializable_result_is_a_serialization_error() -> None:
    done = Transition(
        TransitionKind.STEP_COMPLETED, "id", "s", SagaStatus.EXECUTING, 0, "pay",
        result=object(),
    )  # fmt: skip
    with pytest.raises(SerializationError, match=r"result of step 0 \('pay'\): "):
        write_for(done, 1, JsonSerializer().dumps, run_error=None, total=None, step_error=None)


def test_each_start_says_which_of_its_sagas_starts_in_the_batch_it_is() -> None:
    def write(saga_id: str, index: int, status: str, *, compensation: bool = False) -> Write:
        return Write(
            saga_id, "s", 1, "compensating", index=index, compensation=compensation,
            step_name="a", step_status=status,
        )  # fmt: skip

    writes = [
        write("a", 2, "running", compensation=True),
        write("b", 0, "running"),
        write("a", 2, "completed", compensation=True),  # the record started above
        write("a", 1, "running", compensation=True),
        write("a", 0, "completed"),  # started in an earlier batch
        Write("a", "s", 1, "compensating"),  # no record
    ]
    rows = json.loads(batch_params(writes)[0])
    assert [(row["saga_id"], row["idx"], row["start"]) for row in rows] == [
        ("a", 2, 1),
        ("b", 0, 1),
        ("a", 2, 1),
        ("a", 1, 2),
        ("a", 0, None),
        ("a", None, None),
    ]
