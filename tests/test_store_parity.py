"""The three stores answer the monitoring API alike.

Every scenario runs once on a fresh ``MemoryStore`` (the reference) and once on the
store under test, and the normalised metadata must match: status, steps_executed,
total_steps, the step and compensation records (attempts, error, events), events,
compensation events and the error text. Timestamps and durations differ by nature;
they are checked for shape (UTC-aware, ordered, not negative) instead.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from pg_helpers.db import dsn_or_skip, fresh_schema
from sagakit import (
    CompensationFailed,
    MemoryStore,
    Retry,
    SagaAlreadyExecuting,
    SagaAlreadyFailed,
    SagaDefinition,
    SagaMetadata,
    SagaOrchestrator,
    SQLiteStore,
    StepFailed,
    StepRecord,
    Transition,
    TransitionKind,
    saga,
    step,
)
from sagakit._runs import ACTED_UNKNOWN
from sagakit.testing import FaultInjector

pytestmark = pytest.mark.asyncio

STORES = ["memory", "sqlite", "postgres"]


@dataclass(frozen=True)
class Deposited:
    account: str
    amount: int


CALLS: list[str] = []
FLAKY: dict[str, int] = {}
GATE: dict[str, asyncio.Event] = {}
ENTERED: set[str] = set()  # keys whose wait_gate is running (its start is recorded before)


@step
async def deposit(account: str, amount: int) -> Deposited:
    CALLS.append(f"deposit {account}")
    return Deposited(account, amount)


@deposit.compensate
async def withdraw(result: Deposited, account: str, amount: int) -> dict[str, Any]:
    CALLS.append(f"withdraw {account}")
    return {"undone": result.account, "amount": -amount}


@step
async def note(text: str) -> None:
    CALLS.append(f"note {text}")


@step
async def several(n: int) -> list[Any]:
    return [Deposited("x", n), {"n": n}, "text", None]


@several.compensate
async def unseveral(result: list[Any], n: int) -> None:
    return None


@step
async def refuse(reason: str) -> None:
    raise ValueError(reason)


@step
async def stuck_undo(n: int) -> str:
    return f"did {n}"


@stuck_undo.compensate
async def stuck_undo_back(result: str, n: int) -> None:
    raise RuntimeError(f"cannot undo {n}")


@step(retry=Retry(attempts=3, backoff=0.0, jitter=0.0))
async def flaky(key: str, failures: int) -> str:
    FLAKY[key] = FLAKY.get(key, 0) + 1
    if FLAKY[key] <= failures:
        raise ConnectionError(f"busy {FLAKY[key]}")
    return f"ok after {FLAKY[key]}"


@step(timeout=0.05)
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slow done"


@step
async def wait_gate(key: str) -> str:
    ENTERED.add(key)
    await GATE[key].wait()
    return key


@saga(name="store_parity.transfer")
def transfer(fail: bool = False):  # type: ignore[no-untyped-def]
    yield deposit("a", 10)
    yield note("hello")
    yield several(2)
    if fail:
        yield refuse("the bank refused")
    yield deposit("b", 20)


@saga
def grows(n: int):  # type: ignore[no-untyped-def]
    for i in range(n):
        yield deposit(f"acc{i}", i)


@saga
def badly():  # type: ignore[no-untyped-def]
    yield deposit("a", 1)
    yield stuck_undo(1)
    yield refuse("nope")


@saga
def retried(failures: int, key: str):  # type: ignore[no-untyped-def]
    yield deposit("a", 1)
    yield flaky(key, failures)


@saga
def timed(seconds: float):  # type: ignore[no-untyped-def]
    yield deposit("a", 1)
    yield slow(seconds)


@saga
def gated(key: str):  # type: ignore[no-untyped-def]
    yield deposit("a", 1)
    yield wait_gate(key)


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    CALLS.clear()
    FLAKY.clear()
    yield
    for gate in GATE.values():
        gate.set()
    GATE.clear()
    ENTERED.clear()


@pytest.fixture(params=STORES)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(kind: str, tmp_path: Path) -> Iterator[Callable[[], Any]]:
    """Opens an orchestrator on a fresh store of ``kind``."""
    schemas: Iterator[str] | None = None
    if kind == "postgres":
        dsn = dsn_or_skip()
        schemas = fresh_schema(dsn)
        schema = next(schemas)
    counter = iter(range(1000))

    @asynccontextmanager
    async def opened() -> AsyncIterator[SagaOrchestrator]:
        store: Any
        if kind == "memory":
            store = MemoryStore()
        elif kind == "sqlite":
            store = SQLiteStore(tmp_path / f"log{next(counter)}.db")
        else:
            from sagakit import PostgresStore

            store = PostgresStore(dsn, schema=schema)
            await store.open()
        async with SagaOrchestrator(store, sleep=_no_sleep) as orchestrator:
            yield orchestrator

    yield opened
    if schemas is not None:
        for _ in schemas:  # drops the schema
            pass


async def _no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


GENERATED = re.compile(r"[0-9a-f]{20}-[0-9]+")


def mask(error: str | None) -> str | None:
    """An error text without the measured seconds a timeout names."""
    return None if error is None else re.sub(r"after [0-9.]+ s", "after _ s", error)


def norm_record(record: StepRecord) -> dict[str, Any]:
    assert record.duration is None or record.duration >= 0
    return {
        "index": record.index,
        "name": record.name,
        "status": str(record.status),
        "attempts": record.attempts,
        "error": mask(record.error),
        "events": record.events,
        "compensation": record.compensation,
        "has_duration": record.duration is not None,
    }


def norm(meta: SagaMetadata | None) -> dict[str, Any] | None:
    if meta is None:
        return None
    assert meta.started_at is not None
    assert meta.started_at.tzinfo is not None
    assert meta.started_at.utcoffset() == UTC.utcoffset(None)
    assert meta.updated_at is not None
    assert meta.updated_at >= meta.started_at
    if meta.status.is_finished:
        assert meta.finished_at is not None
        assert meta.finished_at >= meta.started_at
    else:
        assert meta.finished_at is None
    return {
        "id": "<generated>" if meta.id and GENERATED.fullmatch(meta.id) else meta.id,
        "name": meta.name,
        "status": str(meta.status),
        "steps_executed": meta.steps_executed,
        "total_steps": meta.total_steps,
        "error": mask(meta.error),
        "steps": [norm_record(r) for r in meta.steps],
        "compensations": [norm_record(r) for r in meta.compensations],
        "events": meta.events,
        "compensation_events": meta.compensation_events,
    }


Scenario = Callable[[SagaOrchestrator], Awaitable[Any]]


async def observe(orchestrator: SagaOrchestrator, scenario: Scenario) -> dict[str, Any]:
    """Run ``scenario``; what it returned or raised, and everything monitoring says after."""
    try:
        outcome: Any = ("returned", await scenario(orchestrator))
    except Exception as error:
        outcome = ("raised", type(error).__name__, mask(str(error)))
    history = await orchestrator.get_history()
    return {
        "outcome": outcome,
        "history": [norm(m) for m in history],
        "last": [norm(m) for m in await orchestrator.get_history(limit=1)],
        "none": await orchestrator.get_history(limit=0),
        "sagas": [norm(await orchestrator.get_saga(m.id)) for m in history if m.id],
        "running": [norm(m) for m in await orchestrator.get_running_sagas()],
        "running_count": await orchestrator.running_count(),
        "history_count": await orchestrator.history_count(),
    }


async def same_as_memory(make: Callable[[], Any], scenario: Scenario) -> dict[str, Any]:
    async with SagaOrchestrator(MemoryStore(), sleep=_no_sleep) as reference:
        CALLS.clear()
        FLAKY.clear()
        expected = await observe(reference, scenario)
        expected_calls = list(CALLS)
    CALLS.clear()
    FLAKY.clear()
    async with make() as orchestrator:
        got = await observe(orchestrator, scenario)
    assert got == expected
    assert expected_calls == CALLS
    return got


async def test_success(make: Callable[[], Any]) -> None:
    got = await same_as_memory(make, lambda o: o.execute(transfer(), saga_id="t-1"))
    assert got["history"][0]["status"] == "completed"
    assert got["history"][0]["total_steps"] == 4


async def test_generated_id(make: Callable[[], Any]) -> None:
    async def scenario(o: SagaOrchestrator) -> Any:
        await o.execute(grows(2))
        meta = (await o.get_history())[0]
        return (meta.status, meta.steps_executed, meta.total_steps, meta.events)

    await same_as_memory(make, scenario)


async def test_builder_with_none_results(make: Callable[[], Any]) -> None:
    async def scenario(o: SagaOrchestrator) -> Any:
        definition = (
            SagaDefinition("built")
            .add_step(note("one"))
            .add_step(several(3))
            .add_step(deposit("z", 3))
        )
        return await o.execute(definition)

    await same_as_memory(make, scenario)


async def test_failure_compensated(make: Callable[[], Any]) -> None:
    got = await same_as_memory(make, lambda o: o.execute(transfer(fail=True), saga_id="t-2"))
    assert got["outcome"][1] == "StepFailed"
    assert got["history"][0]["status"] == "compensated"


async def test_compensation_fails(make: Callable[[], Any]) -> None:
    got = await same_as_memory(make, lambda o: o.execute(badly(), saga_id="t-3"))
    assert got["outcome"][1] == "CompensationFailed"
    assert got["history"][0]["status"] == "failed"


async def test_retries(make: Callable[[], Any]) -> None:
    got = await same_as_memory(make, lambda o: o.execute(retried(2, "r"), saga_id="t-4"))
    assert got["history"][0]["steps"][1]["attempts"] == 3


async def test_retries_exhausted(make: Callable[[], Any]) -> None:
    got = await same_as_memory(make, lambda o: o.execute(retried(5, "r"), saga_id="t-5"))
    assert got["history"][0]["steps"][1]["attempts"] == 3
    assert got["history"][0]["status"] == "compensated"


async def test_timeout(make: Callable[[], Any]) -> None:
    got = await same_as_memory(make, lambda o: o.execute(timed(5.0), saga_id="t-6"))
    assert got["history"][0]["steps"][1]["status"] == "timed_out"


async def test_generator_total_steps_on_failure(make: Callable[[], Any]) -> None:
    async def scenario(o: SagaOrchestrator) -> Any:
        await o.execute(grows(3), saga_id="g-1")
        with suppress(StepFailed):
            await o.execute(transfer(fail=True), saga_id="g-2")
        return [(m.id, m.total_steps) for m in await o.get_history()]

    await same_as_memory(make, scenario)


async def test_reexecute_completed(make: Callable[[], Any]) -> None:
    async def scenario(o: SagaOrchestrator) -> Any:
        first = await o.execute(transfer(), saga_id="x-1")
        again = await o.execute(transfer(), saga_id="x-1")
        return first, again

    got = await same_as_memory(make, scenario)
    first, again = got["outcome"][1]
    assert first == again
    assert got["history_count"] == 1


async def test_reexecute_compensated(make: Callable[[], Any]) -> None:
    async def scenario(o: SagaOrchestrator) -> Any:
        with pytest.raises(StepFailed):
            await o.execute(transfer(fail=True), saga_id="x-2")
        return await o.execute(transfer(), saga_id="x-2")

    got = await same_as_memory(make, scenario)
    assert got["history_count"] == 1
    assert got["history"][0]["status"] == "completed"


async def test_reexecute_compensated_then_fails_again(make: Callable[[], Any]) -> None:
    async def scenario(o: SagaOrchestrator) -> Any:
        with pytest.raises(StepFailed):
            await o.execute(transfer(fail=True), saga_id="x-3")
        with pytest.raises(StepFailed):
            await o.execute(transfer(fail=True), saga_id="x-3")
        return await o.get_saga("x-3") is not None

    await same_as_memory(make, scenario)


async def test_reexecute_failed(make: Callable[[], Any]) -> None:
    async def scenario(o: SagaOrchestrator) -> Any:
        with pytest.raises(CompensationFailed):
            await o.execute(badly(), saga_id="x-4")
        with pytest.raises(SagaAlreadyFailed):
            await o.execute(transfer(), saga_id="x-4")
        return "refused"

    await same_as_memory(make, scenario)


async def test_reexecute_running(make: Callable[[], Any]) -> None:
    async def scenario(o: SagaOrchestrator) -> Any:
        GATE["k"] = asyncio.Event()
        first = asyncio.create_task(o.execute(gated("k"), saga_id="x-5"))
        for _ in range(200):
            meta = await o.get_saga("x-5")
            if meta is not None and meta.steps and meta.steps[-1].name == "wait_gate":
                break
            await asyncio.sleep(0.01)
        running = [norm(m) for m in await o.get_running_sagas()]
        count = await o.running_count()
        with pytest.raises(SagaAlreadyExecuting):
            await o.execute(gated("k"), saga_id="x-5")
        GATE["k"].set()
        return running, count, await first

    got = await same_as_memory(make, scenario)
    running, count, _ = got["outcome"][1]
    assert count == 1
    assert running[0]["status"] == "executing"


async def test_history_limit_order(make: Callable[[], Any]) -> None:
    async def scenario(o: SagaOrchestrator) -> Any:
        for n in range(4):
            await o.execute(grows(1), saga_id=f"h-{n}")
        with pytest.raises(StepFailed):
            await o.execute(transfer(fail=True), saga_id="h-0b")
        return [m.id for m in await o.get_history(limit=3)]

    got = await same_as_memory(make, scenario)
    assert got["outcome"][1] == ["h-2", "h-3", "h-0b"]


UNDO_FAILS: dict[str, int] = {}


@step(compensation_retry=Retry(attempts=3, backoff=0.0, jitter=0.0))
async def wobbly(key: str) -> tuple[str, int]:
    return (key, 1)


@wobbly.compensate
async def wobbly_back(result: tuple[str, int], key: str) -> list[Any]:
    UNDO_FAILS[key] = UNDO_FAILS.get(key, 0) + 1
    if UNDO_FAILS[key] < 3:
        raise ConnectionError(f"undo busy {UNDO_FAILS[key]}")
    return [{"undone": key}, {1: "int key"}, frozenset({3})]


@step(compensation_timeout=0.05)
async def slow_undo(key: str) -> str:
    return key


@slow_undo.compensate
async def slow_undo_back(result: str, key: str) -> None:
    await asyncio.sleep(5)


@step(compensate_on_failure=False)
async def half(key: str) -> str:
    raise ValueError(f"half {key}")


@half.compensate
async def half_back(key: str) -> None:
    CALLS.append("half_back")


@saga
def wobbles(key: str):  # type: ignore[no-untyped-def]
    yield wobbly(key)
    yield refuse("after wobbly")


@saga
def slow_undoing():  # type: ignore[no-untyped-def]
    yield deposit("a", 1)
    yield slow_undo("s")
    yield refuse("after slow_undo")


@saga
def two_bad():  # type: ignore[no-untyped-def]
    yield stuck_undo(1)
    yield deposit("a", 1)
    yield stuck_undo(2)
    yield refuse("two bad")


@saga
def halfway():  # type: ignore[no-untyped-def]
    yield deposit("a", 1)
    yield half("h")


async def test_compensation_retried(make: Callable[[], Any]) -> None:
    async def scenario(o: SagaOrchestrator) -> Any:
        UNDO_FAILS.clear()
        return await o.execute(wobbles("w"), saga_id="c-1")

    got = await same_as_memory(make, scenario)
    assert got["history"][0]["compensations"][0]["attempts"] == 3


async def test_compensation_timeout(make: Callable[[], Any]) -> None:
    got = await same_as_memory(make, lambda o: o.execute(slow_undoing(), saga_id="c-2"))
    assert got["history"][0]["status"] == "failed"
    assert got["history"][0]["compensations"][0]["status"] == "timed_out"


@step
async def reads_remote(key: str) -> str:
    return key


@reads_remote.compensate
async def un_read_remote(key: str) -> None:
    raise TimeoutError("the remote's own read timeout")  # not the compensation's deadline


@saga
def remote_times_out_itself():  # type: ignore[no-untyped-def]
    yield reads_remote("k")
    yield refuse("after reads_remote")


async def test_compensation_raising_its_own_timeout_error(make: Callable[[], Any]) -> None:
    # SQLite recorded it timed_out (any TimeoutError); the run's record says failed.
    got = await same_as_memory(make, lambda o: o.execute(remote_times_out_itself(), saga_id="c-5"))
    assert got["history"][0]["compensations"][0]["status"] == "failed"


async def test_continue_on_compensation_failure(make: Callable[[], Any]) -> None:
    async def scenario(o: SagaOrchestrator) -> Any:
        # the option is the orchestrator's: run through a second one on the same store
        other = SagaOrchestrator(o.store, continue_on_compensation_failure=True, sleep=_no_sleep)
        return await other.execute(two_bad(), saga_id="c-3")

    got = await same_as_memory(make, scenario)
    assert got["history"][0]["status"] == "failed"


async def test_step_not_compensated_on_failure(make: Callable[[], Any]) -> None:
    await same_as_memory(make, lambda o: o.execute(halfway(), saga_id="c-4"))


async def test_cancelled(make: Callable[[], Any]) -> None:
    async def scenario(o: SagaOrchestrator) -> Any:
        GATE["c"] = asyncio.Event()
        ENTERED.discard("c")  # the scenario runs on memory first, then on the store
        task = asyncio.create_task(o.execute(gated("c"), saga_id="c-5"))
        # Inside the step, not only recorded as started: cancelled while its start is
        # being written, the step would end "cancelled before the step started".
        for _ in range(200):
            if "c" in ENTERED:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return "cancelled"

    await same_as_memory(make, scenario)


async def test_rerun_of_compensated_id_replaces_the_old_run(make: Callable[[], Any]) -> None:
    """While an id that ended COMPENSATED runs again, the id names one run: the new one."""
    async with make() as o:
        with pytest.raises(StepFailed):
            await o.execute(transfer(fail=True), saga_id="again")
        GATE["again"] = asyncio.Event()
        task = asyncio.create_task(o.execute(gated("again"), saga_id="again"))
        for _ in range(200):
            meta = await o.get_saga("again")
            if meta is not None and meta.steps and meta.steps[-1].name == "wait_gate":
                break
            await asyncio.sleep(0.01)
        seen = (
            await o.running_count(),
            [m.id for m in await o.get_running_sagas()],
            await o.history_count(),
            [m.id for m in await o.get_history()],
        )
        GATE["again"].set()
        await task
        assert seen == (1, ["again"], 0, [])
        assert [m.status for m in await o.get_history()] == ["completed"]


TIMEOUTS: dict[str, int] = {}


@step(timeout=0.05, retry=Retry(attempts=3, backoff=0.0, jitter=0.0))
async def slow_then_fast(key: str) -> str:
    TIMEOUTS[key] = TIMEOUTS.get(key, 0) + 1
    if TIMEOUTS[key] < 3:
        await asyncio.sleep(5)
    return f"done on {TIMEOUTS[key]}"


@step
async def held(key: str) -> str:
    return key


@held.compensate
async def held_back(result: str, key: str) -> str:
    await GATE[key].wait()
    return f"released {key}"


@saga
def retimed(key: str):  # type: ignore[no-untyped-def]
    yield slow_then_fast(key)


@saga
def holding(key: str):  # type: ignore[no-untyped-def]
    yield held(key)
    yield refuse("let go")


async def test_timeouts_then_success(make: Callable[[], Any]) -> None:
    async def scenario(o: SagaOrchestrator) -> Any:
        TIMEOUTS.clear()
        return await o.execute(retimed("t"), saga_id="rt-1")

    got = await same_as_memory(make, scenario)
    assert got["history"][0]["steps"][0]["attempts"] == 3


@step(retry=Retry(attempts=2, backoff=0.0, jitter=0.0))
async def charge_twice(key: str) -> str:
    CALLS.append(f"charge {key}")
    raise ValueError("duplicate charge")


@charge_twice.compensate
async def refund_twice(key: str) -> None:
    CALLS.append(f"refund {key}")


@saga
def charged(key: str):  # type: ignore[no-untyped-def]
    yield deposit("a", 1)
    yield charge_twice(key)


async def test_raised_after_a_timed_out_attempt(make: Callable[[], Any]) -> None:
    # Its error says the timed-out attempt may have acted, on every store alike: recovery
    # reads it in the log to compensate the step as the run does.
    async def scenario(o: SagaOrchestrator) -> Any:
        with FaultInjector().timeout(charge_twice, times=1):
            return await o.execute(charged("c"), saga_id="ta-1")

    got = await same_as_memory(make, scenario)
    [failed] = [r for r in got["history"][0]["steps"] if r["name"] == "charge_twice"]
    assert failed["error"] == "ValueError: duplicate charge" + ACTED_UNKNOWN
    assert CALLS == ["deposit a", "charge c", "refund c", "withdraw a"]


async def test_seen_while_compensating(make: Callable[[], Any]) -> None:
    async def scenario(o: SagaOrchestrator) -> Any:
        GATE["hold"] = asyncio.Event()
        task = asyncio.create_task(o.execute(holding("hold"), saga_id="hc-1"))
        for _ in range(200):
            meta = await o.get_saga("hc-1")
            if meta is not None and meta.compensations:
                break
            await asyncio.sleep(0.01)
        seen = (
            norm(await o.get_saga("hc-1")),
            [norm(m) for m in await o.get_running_sagas()],
            await o.running_count(),
            await o.history_count(),
        )
        GATE["hold"].set()
        with pytest.raises(StepFailed):
            await task
        return seen

    got = await same_as_memory(make, scenario)
    while_compensating = got["outcome"][1][0]
    assert while_compensating["status"] == "compensating"
    assert while_compensating["error"] == got["history"][0]["error"]
    assert while_compensating["error"] == "StepFailed: step 1 ('refuse') failed: ValueError: let go"


@step
async def unreadable_name(n: int) -> str:
    return f"did {n}"


@unreadable_name.compensate
async def unreadable_name_back(result: str, n: int) -> None:
    raise OSError("cannot undo: " + b"caf\xe9\x00".decode("utf-8", "surrogateescape"))


@saga
def undecodable():  # type: ignore[no-untyped-def]
    yield unreadable_name(1)
    yield refuse("no such file: " + b"caf\xe9".decode("utf-8", "surrogateescape") + "\x00!")


async def test_error_texts_with_a_lone_surrogate_or_a_nul(make: Callable[[], Any]) -> None:
    # An undecodable file name in an error (a lone surrogate) could not be written to
    # SQLite at all (UTF-8 refuses it): the saga was left compensating in the log.
    got = await same_as_memory(make, lambda o: o.execute(undecodable(), saga_id="u-1"))
    assert got["outcome"][1] == "CompensationFailed"
    saga_record = got["history"][0]
    assert saga_record["status"] == "failed"
    assert "caf\\udce9\\x00!" in saga_record["steps"][1]["error"]
    assert "caf\\udce9\\x00" in saga_record["compensations"][0]["error"]


# ------------------------------------------------ what recovery runs again, on both logs


@step
async def book(key: str) -> str:
    return f"booked {key}"


@book.compensate
async def unbook(result: str, key: str) -> dict[str, str]:
    CALLS.append(f"unbook {key}")
    return {"unbooked": key}


@step
async def charge(key: str) -> str:
    return f"charged {key}"


@charge.compensate
async def refund(result: str, key: str) -> dict[str, str]:
    CALLS.append(f"refund {key}")
    return {"refunded": key}


@step
async def ship(key: str) -> str:
    return f"shipped {key}"


@ship.compensate
async def unship(result: str, key: str) -> dict[str, str]:
    CALLS.append(f"unship {key}")
    return {"unshipped": key}


# Recovery finds a saga by name, and tests/test_testing_matrix.py defines a "booking" too.
@saga(name="parity_booking")
def booking(key: str):  # type: ignore[no-untyped-def]
    yield book(key)
    yield charge(key)
    yield ship(key)
    yield refuse("sold out")


async def _crash_then_recover(store: Callable[[], Any]) -> dict[str, Any] | None:
    """``booking`` on a fresh log: unship fails and the run goes on, refund completes and
    the process "dies" in unbook; recovery runs unbook again (not unship, which failed for
    good)."""
    from sagakit.testing import FaultInjector, SimulatedCrash, simulate_restart

    first = SagaOrchestrator(
        store(),
        compensation_retry=Retry(attempts=1),
        continue_on_compensation_failure=True,
        sleep=_no_sleep,
    )
    faults = FaultInjector().fail_compensation(ship).crash(book, compensation=True)
    with faults, pytest.raises(SimulatedCrash):
        await first.execute(booking("k"), saga_id="bk-1")
    await simulate_restart(first.store)
    await first.store.close()
    async with SagaOrchestrator(store(), sleep=_no_sleep) as restarted:
        [outcome] = await restarted.recover()
        assert outcome.saga_id == "bk-1"
        return norm(await restarted.get_saga("bk-1"))


async def test_compensations_recovery_runs_again_are_listed_alike_on_both_durable_logs(
    tmp_path: Path,
) -> None:
    """Each durable log keeps one record per compensation, listed where it last started.

    PostgreSQL listed a compensation recovery ran again in its first place (the row's
    identity), SQLite where it ran again: ship's came before charge's on one and after it
    on the other. PostgreSQL also lost the duration of the failed step (recovery wrote
    that step's record again without it).
    """
    from sagakit import PostgresStore

    dsn = dsn_or_skip()
    CALLS.clear()
    on_sqlite = await _crash_then_recover(lambda: SQLiteStore(tmp_path / "crash.db"))
    sqlite_calls = list(CALLS)
    CALLS.clear()
    schemas = fresh_schema(dsn)
    schema = next(schemas)
    try:
        on_postgres = await _crash_then_recover(lambda: PostgresStore(dsn, schema=schema))
    finally:
        for _ in schemas:  # drops the schema
            pass
    assert CALLS == sqlite_calls == ["refund k", "unbook k"]
    assert on_postgres == on_sqlite
    assert on_sqlite is not None
    assert on_sqlite["status"] == "failed"  # at unship, as the run would have ended
    assert on_sqlite["steps"][-1]["has_duration"]  # the failed step's, kept by recovery
    assert [(c["name"], c["status"]) for c in on_sqlite["compensations"]] == [
        ("ship", "failed"),
        ("charge", "completed"),
        ("book", "completed"),
    ]
    assert on_sqlite["compensation_events"] == ({"refunded": "k"}, {"unbooked": "k"})


async def test_sagas_finishing_together_are_listed_in_the_order_they_finished(
    make: Callable[[], Any], kind: str
) -> None:
    """Sagas run side by side finish in one batched write on PostgreSQL, with one
    ``finished_at``: the history listed them by saga id, not in the order they finished."""
    ids = ["f-3", "f-1", "f-4", "f-0", "f-2"]
    finished: list[str] = []

    def heard(transition: Transition) -> None:
        if transition.kind is TransitionKind.SAGA_FINISHED:
            finished.append(transition.saga_id)

    async with make() as o:
        told = SagaOrchestrator(o.store, listeners=[heard], sleep=_no_sleep)
        await asyncio.gather(*(told.execute(grows(2), saga_id=saga_id) for saga_id in ids))
        history = await o.get_history()
        newest = await o.get_history(limit=3)
    assert sorted(finished) == sorted(ids)
    assert [m.id for m in history] == finished
    assert [m.id for m in newest] == finished[-3:]
    if kind == "postgres":  # the case this is about: some of them share finished_at
        assert len({m.finished_at for m in history}) < len(ids)


STALLED: dict[str, asyncio.Event] = {}


@step
async def stalling(key: str) -> str:
    return key


@stalling.compensate
async def stalling_back(result: str, key: str) -> str:
    CALLS.append(f"undo {key}")
    entered = STALLED.pop(key, None)
    if entered is not None:  # the first run stalls until cancelled; the re-run returns
        entered.set()
        await asyncio.Event().wait()
    return f"undone {key}"


@saga
def stalled(key: str):  # type: ignore[no-untyped-def]
    yield stalling(key)
    yield refuse("undo it")


async def test_compensation_interrupted_by_a_cancel_and_run_again(
    make: Callable[[], Any],
) -> None:
    # Regression: the memory store kept two records of the compensation (the interrupted
    # run, FAILED, and the re-run); the durable logs keep one (the re-run replaces it).
    async def scenario(o: SagaOrchestrator) -> Any:
        STALLED["s"] = entered = asyncio.Event()
        task = asyncio.create_task(o.execute(stalled("s"), saga_id="ci-1"))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return "cancelled"

    got = await same_as_memory(make, scenario)
    (meta,) = got["history"]
    assert meta["status"] == "compensated"
    assert [(c["name"], c["status"], c["attempts"], c["error"]) for c in meta["compensations"]] == [
        ("stalling", "completed", 1, None)
    ]
    assert meta["compensation_events"] == ("undone s",)
    assert CALLS == ["undo s", "undo s"]


@saga(name="parity_parked")
def parked_order(account: str):  # type: ignore[no-untyped-def]
    yield deposit(account, 1)
    yield note(account)


async def _parked_after_crashing_every_recovery(store: Callable[[], Any]) -> dict[str, Any]:
    """``parked_order`` crashes its run and each of its 2 recoveries (``max_attempts=2``),
    and the recovery after parks it: what the dead letter and the saga say of it."""
    from sagakit.testing import SimulatedCrash, simulate_restart

    first = store()
    with FaultInjector().crash(note), pytest.raises(SimulatedCrash):
        await SagaOrchestrator(first, sleep=_no_sleep).execute(parked_order("p"), saga_id="pk-1")
    await simulate_restart(first)
    await first.close()
    for _ in range(2):  # attempts 1 and 2, each "crashing" its process too
        crashed = store()
        with FaultInjector().crash(note), pytest.raises(SimulatedCrash):
            await SagaOrchestrator(crashed, sleep=_no_sleep).recover(max_attempts=2)
        await simulate_restart(crashed)
        await crashed.close()
    async with SagaOrchestrator(store(), sleep=_no_sleep) as restarted:
        assert await restarted.recover(max_attempts=2) == []  # a third: parked, not run
        (letter,) = await restarted.store.dead_letters()  # type: ignore[attr-defined]
        meta = await restarted.get_saga("pk-1")
    assert meta is not None
    return {
        "saga_id": letter.saga_id,
        "recovery_attempts": letter.recovery_attempts,
        "reason": letter.reason,
        "dead_letter": meta.dead_letter,
        "status": str(meta.status),
        "error": meta.error,
    }


async def test_a_saga_parked_for_crashing_every_recovery_counts_its_attempts_alike(
    tmp_path: Path,
) -> None:
    # Regression: PostgreSQL counted the claim that parked the saga as an attempt too:
    # "recovery attempted 3 times (more than max_attempts=2)" with recovery_attempts 3
    # (`sagakit show`: "parked ... after 3 recovery attempts"), where 2 runs were tried,
    # and SQLite said "none of its 2 recovery attempts finished it".
    from sagakit import PostgresStore

    dsn = dsn_or_skip()
    on_sqlite = await _parked_after_crashing_every_recovery(
        lambda: SQLiteStore(tmp_path / "parked.db")
    )
    schemas = fresh_schema(dsn)
    schema = next(schemas)
    try:
        on_postgres = await _parked_after_crashing_every_recovery(
            lambda: PostgresStore(dsn, schema=schema)
        )
    finally:
        for _ in schemas:  # drops the schema
            pass
    reason = (
        "none of its 2 recovery attempts finished it: each time its process died or was "
        "stopped (max_attempts=2)"
    )
    expected = {
        "saga_id": "pk-1",
        "recovery_attempts": 2,
        "reason": reason,
        "dead_letter": reason,
        "status": "executing",
        "error": None,
    }
    assert on_sqlite == expected
    assert on_postgres == expected
    # Once on each log; note never ran: every run "crashed" as it began.
    assert CALLS == ["deposit p", "deposit p"]
