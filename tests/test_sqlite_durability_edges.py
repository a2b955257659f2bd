"""Durability edges of the SQLite store and recovery that hand mutation testing found
unchecked: parking and resuming dead letters, sagas recovery cannot rebuild or replay,
a write that fails inside its transaction, unreadable stored values."""

from __future__ import annotations

import asyncio
import pickle
import shlex
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest

import sagakit._orchestrator
from sagakit import (
    CorruptLog,
    SagaOrchestrator,
    SagaStatus,
    SerializationError,
    SQLiteStore,
    StoreError,
    Transition,
    TransitionKind,
    saga,
    step,
)
from sagakit.stores._sqlite_owner import current_owner
from sagakit.stores._sqlite_schema import Synchronous
from store_helpers.crashing import Crash, CrashingStore

effects: list[str] = []
REPLAY_RAISES = False  # the saga body's outside state, which changes between runs


def live_process() -> subprocess.Popen[bytes]:
    """A process that runs until its stdin is closed."""
    return subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)  # fmt: skip


def before_start_of(step_name: str) -> Callable[[Transition], bool]:
    return lambda t: t.kind is TransitionKind.STEP_STARTED and t.step_name == step_name


def ship_completes(t: Transition) -> bool:
    return t.kind is TransitionKind.STEP_COMPLETED and t.step_name == "dur_ship"


@step
async def dur_reserve(item: str) -> str:
    effects.append(f"reserve {item}")
    return f"reserved-{item}"


@dur_reserve.compensate
async def dur_unreserve(reservation: str, item: str) -> None:
    effects.append(f"unreserve {reservation}")


@step
async def dur_ship(item: str) -> str:
    effects.append(f"ship {item}")
    return f"shipped-{item}"


@saga
def dur_order(item: str):  # type: ignore[no-untyped-def]
    reservation = yield dur_reserve(item)
    if REPLAY_RAISES:
        raise LookupError(f"no warehouse for {reservation}")
    yield dur_ship(item)


@pytest.fixture(autouse=True)
def _clear() -> None:
    global REPLAY_RAISES
    effects.clear()
    REPLAY_RAISES = False


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "sagas.db")


async def crash_before_ship(db: str, saga_id: str, *, in_ship: bool = False) -> None:
    """Run ``dur_order("desk")`` until the process dies before ``dur_ship`` starts (or,
    ``in_ship``, while it runs: its start logged, its completion not)."""
    when = ship_completes if in_ship else before_start_of("dur_ship")
    orchestrator = SagaOrchestrator(CrashingStore(db, when))
    with pytest.raises(Crash):
        await orchestrator.execute(dur_order("desk"), saga_id=saga_id)
    await orchestrator.close()
    effects.clear()


def edit(db: str, sql: str, *params: object) -> None:
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(sql, params)


@pytest.mark.asyncio
async def test_a_resumed_dead_letter_gets_its_recovery_attempts_back(db: str) -> None:
    # A saga parked for using up its recovery attempts, then resumed by an operator
    # (`sagakit resume`), is run by the next recovery: not parked again at once for
    # the attempts it had used before it was parked.
    await crash_before_ship(db, "worn")
    edit(db, "UPDATE sagakit_sagas SET recovery_attempts = 3 WHERE id = 'worn'")
    store = SQLiteStore(db)
    async with SagaOrchestrator(store) as orchestrator:
        assert await orchestrator.recover(max_attempts=3) == []  # parked by the claim
        (letter,) = await store.dead_letters()
        assert (letter.saga_id, letter.recovery_attempts) == ("worn", 3)
        await store.resume_dead_letter("worn")
        assert await store.dead_letters() == []
        (outcome,) = await orchestrator.recover(max_attempts=3)
        assert (outcome.action, outcome.status) == ("resumed", SagaStatus.COMPLETED)
    assert effects == ["ship desk"]


@pytest.mark.asyncio
async def test_dead_letter_leaves_a_finished_saga_as_it_ended(db: str) -> None:
    # Parking races the saga's end (an operator's tool, a recovery giving up): a saga
    # that finished meanwhile stays finished, and is neither parked nor listed as parked.
    store = SQLiteStore(db)
    async with SagaOrchestrator(store) as orchestrator:
        await orchestrator.execute(dur_order("lamp"), saga_id="done")
        await store.dead_letter("done", "given up on")
        meta = await orchestrator.get_saga("done")
        assert meta is not None
        assert (meta.status, meta.dead_letter) == (SagaStatus.COMPLETED, None)
        assert await store.dead_letters() == []


@pytest.mark.asyncio
async def test_an_orphan_whose_logged_arguments_no_longer_fit_is_parked_unrun(db: str) -> None:
    await crash_before_ship(db, "misfit")
    edit(db, 'UPDATE sagakit_sagas SET arguments = \'[["desk", "extra"], {}]\'')
    store = SQLiteStore(db)
    async with SagaOrchestrator(store) as orchestrator:
        (outcome,) = await orchestrator.recover()
        (letter,) = await store.dead_letters()
    assert (outcome.action, outcome.saga_id, letter.saga_id) == (
        "dead_lettered",
        "misfit",
        "misfit",
    )
    assert letter.reason.startswith("calling dur_order(...) with its logged arguments raised ")
    assert "too many positional arguments" in letter.reason
    assert effects == []  # nothing ran again, nothing was undone


@pytest.mark.asyncio
async def test_an_orphan_whose_body_raises_on_replay_is_parked_unrun(db: str) -> None:
    global REPLAY_RAISES
    await crash_before_ship(db, "lost-warehouse", in_ship=True)
    REPLAY_RAISES = True  # the body's outside state changed while the process was down
    store = SQLiteStore(db)
    async with SagaOrchestrator(store) as orchestrator:
        (outcome,) = await orchestrator.recover()
        (letter,) = await store.dead_letters()
        meta = await orchestrator.get_saga("lost-warehouse")
    assert (outcome.action, outcome.status) == ("dead_lettered", SagaStatus.EXECUTING)
    assert letter.reason == (
        "replaying its saga body raised LookupError('no warehouse for reserved-desk')"
    )
    assert meta is not None
    assert meta.status is SagaStatus.EXECUTING
    assert meta.dead_letter == letter.reason
    assert effects == []  # neither the completed step nor its compensation ran


@pytest.mark.asyncio
async def test_a_write_refused_inside_its_transaction_leaves_the_log_writable(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A generated id that is already in the log: the first write of its run (its row
    # with its first step's start) fails inside the transaction. The transaction is
    # rolled back: the saga already logged is untouched, and later writes commit.
    store = SQLiteStore(db)
    async with SagaOrchestrator(store) as orchestrator:
        await orchestrator.execute(dur_order("chair"), saga_id="taken")
        monkeypatch.setattr(sagakit._orchestrator, "new_saga_id", lambda: "taken")
        with pytest.raises(StoreError):
            await orchestrator.execute(dur_order("sofa"))
        monkeypatch.undo()
        await orchestrator.execute(dur_order("stool"), saga_id="after")
        taken = await orchestrator.get_saga("taken")
        after = await orchestrator.get_saga("after")
    assert taken is not None
    assert after is not None
    assert (taken.status, taken.events) == (
        SagaStatus.COMPLETED,
        ("reserved-chair", "shipped-chair"),
    )
    assert (after.status, after.events) == (
        SagaStatus.COMPLETED,
        ("reserved-stool", "shipped-stool"),
    )


@pytest.mark.asyncio
async def test_read_events_names_the_event_it_cannot_read_back(db: str) -> None:
    store = SQLiteStore(db)
    async with SagaOrchestrator(store) as orchestrator:
        await orchestrator.execute(dur_order("bench"), saga_id="garbled")
    edit(db, 'UPDATE sagakit_events SET data = \'{"__sk__": "nope"}\' WHERE position = 2')
    store = SQLiteStore(db)
    try:
        (first,) = await store.read_events(limit=1)
        assert (first.position, first.event) == (1, "reserved-bench")
        with pytest.raises(SerializationError, match=r"^event #2 of saga 'garbled': "):
            await store.read_events()
    finally:
        await store.close()


def test_a_log_cut_inside_its_header_is_refused_as_truncated(db: str) -> None:
    with open(db, "wb") as file:
        file.write(b"SQLite format 3\x00" + b"\x10\x00")  # 18 bytes of a 100-byte header
    with pytest.raises(StoreError, match=r"is truncated \(18 bytes\); restore it from a backup"):
        SQLiteStore(db)


@pytest.mark.parametrize("version", ["0", "two", None])
@pytest.mark.asyncio
async def test_a_log_without_a_valid_schema_version_is_refused_not_migrated(
    db: str, version: str | None
) -> None:
    # Its tables exist: migrating it "from version 0" would create them again over them.
    await SQLiteStore(db).close()
    if version is None:
        edit(db, "DELETE FROM sagakit_meta WHERE key = 'schema_version'")
    else:
        edit(db, "UPDATE sagakit_meta SET value = ? WHERE key = 'schema_version'", version)
    # It said only "has no valid schema version": nothing of what to do about it.
    stored = "none stored" if version is None else repr(version)
    for read_only in (False, True):
        with pytest.raises(StoreError) as refused:
            SQLiteStore(db, read_only=read_only)
        assert str(refused.value) == (
            f"saga log {db!r} has no valid schema version ({stored}): it is not a sagakit "
            "log, or it is damaged; check that it is the file your application's saga log "
            f"is in, and whether it is damaged (`sqlite3 {shlex.quote(db)} 'PRAGMA "
            "integrity_check'`), then restore it from a backup"
        )


@pytest.mark.asyncio
async def test_a_hand_edited_time_out_of_range_is_a_store_error(db: str) -> None:
    store = SQLiteStore(db)
    async with SagaOrchestrator(store) as orchestrator:
        await orchestrator.execute(dur_order("shelf"), saga_id="far")
    edit(db, "UPDATE sagakit_sagas SET started_at = 1e300 WHERE id = 'far'")
    store = SQLiteStore(db, read_only=True)
    try:
        with pytest.raises(StoreError, match=r"a time of saga 'far' in the saga log is 1e\+300"):
            await store.get("far")
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_an_owner_pid_reused_by_another_live_process_is_recovered(db: str) -> None:
    # The owner died, and a new process got its pid: its start time differs from the
    # one the token recorded, so it is not the owner, and the saga is recovered.
    await crash_before_ship(db, "reused-pid")
    host, _, _, namespace = current_owner().split("/")
    with live_process() as stranger:
        try:
            edit(db, "UPDATE sagakit_sagas SET owner = ?", f"{host}/{stranger.pid}/1/{namespace}")
            async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
                (outcome,) = await orchestrator.recover()
        finally:
            assert stranger.stdin is not None
            stranger.stdin.close()
    assert (outcome.saga_id, outcome.status) == ("reused-pid", SagaStatus.COMPLETED)
    assert effects == ["ship desk"]


@pytest.mark.asyncio
async def test_a_running_saga_was_updated_when_its_latest_step_started(db: str) -> None:
    await crash_before_ship(db, "stamped", in_ship=True)
    edit(db, "UPDATE sagakit_sagas SET started_at = 1000, updated_at = 1000")
    edit(db, "UPDATE sagakit_steps SET started_at = 2000 + idx")  # dur_ship: 2001
    store = SQLiteStore(db, read_only=True)
    try:
        meta = await store.get("stamped")
    finally:
        await store.close()
    assert meta is not None
    assert meta.updated_at == datetime.fromtimestamp(2001, UTC)
    assert meta.duration == 1001.0


@saga(recovery="compensate")
def dur_careful_order(item: str):  # type: ignore[no-untyped-def]
    yield dur_reserve(item)
    yield dur_ship(item)


@pytest.mark.asyncio
async def test_a_saga_recovery_compensates_for_its_policy_says_why_it_was_undone(db: str) -> None:
    # Nothing failed in it (the process died between two steps): the saga's error says
    # why it ended COMPENSATED, in the recovery's outcome and in the log.
    orchestrator = SagaOrchestrator(CrashingStore(db, before_start_of("dur_ship")))
    with pytest.raises(Crash):
        await orchestrator.execute(dur_careful_order("vase"), saga_id="careful")
    await orchestrator.close()
    async with SagaOrchestrator(SQLiteStore(db)) as orchestrator:
        (outcome,) = await orchestrator.recover()
        meta = await orchestrator.get_saga("careful")
    assert (outcome.action, outcome.status) == ("compensated", SagaStatus.COMPENSATED)
    assert meta is not None
    assert (meta.status, meta.error) == (
        SagaStatus.COMPENSATED,
        "its process died; compensated by recovery",
    )
    assert effects == ["reserve vase", "unreserve reserved-vase"]


@pytest.mark.asyncio
async def test_a_write_failing_with_an_operational_error_is_rolled_back(db: str) -> None:
    # An error SQLite raises mid-transaction (here: a trigger reading a table that is
    # gone) fails that write only; the transaction is rolled back, its lock let go.
    store = SQLiteStore(db)
    async with SagaOrchestrator(store) as orchestrator:
        edit(db, "CREATE TRIGGER broken BEFORE INSERT ON sagakit_events "
                 "BEGIN SELECT * FROM gone; END")  # fmt: skip
        with pytest.raises(StoreError, match=r"no such table: (main\.)?gone"):
            await orchestrator.execute(dur_order("mirror"), saga_id="refused")
        with closing(sqlite3.connect(db, timeout=0)) as conn, conn:  # the lock is free
            conn.execute("DROP TRIGGER broken")
        await orchestrator.execute(dur_order("clock"), saga_id="after")
        after = await orchestrator.get_saga("after")
    assert after is not None
    assert (after.status, after.events) == (
        SagaStatus.COMPLETED,
        ("reserved-clock", "shipped-clock"),
    )


def wreck(db: str, name: str | None) -> None:
    """Overwrite with 0xff the root page of the table or index ``name`` of the log at
    ``db``; with ``None``, every page after the header (the first 100 bytes)."""
    data = bytearray(Path(db).read_bytes())
    if name is None:
        data[100:] = b"\xff" * (len(data) - 100)
    else:
        with closing(sqlite3.connect(db)) as conn:
            [page] = conn.execute(
                "SELECT rootpage FROM sqlite_master WHERE name = ?", (name,)
            ).fetchone()
            [size] = conn.execute("PRAGMA page_size").fetchone()
        data[(page - 1) * size : page * size] = b"\xff" * size
    Path(db).write_bytes(bytes(data))


LIBRARY_ADVICE = r"restore it from a backup or point SQLiteStore at another path$"


@pytest.mark.parametrize("read_only", [False, True])
def test_a_log_damaged_past_its_header_is_refused_as_corrupt_with_advice(
    db: str, read_only: bool
) -> None:
    # Regression: "cannot open saga log '...': database disk image is malformed" (and
    # "... read-only: ..."), a plain StoreError with nothing to do about it.
    asyncio.run(SQLiteStore(db).close())
    wreck(db, None)
    with pytest.raises(CorruptLog, match=LIBRARY_ADVICE) as refused:
        SQLiteStore(db, read_only=read_only)
    assert refused.value.path == db
    assert refused.value.reason == "database disk image is malformed"
    # Public and a StoreError, it crosses a process boundary whole (a worker pool's).
    copied = pickle.loads(pickle.dumps(refused.value))
    assert (type(copied), str(copied), copied.path) == (CorruptLog, str(refused.value), db)


@pytest.mark.parametrize("read_only", [False, True])
@pytest.mark.asyncio
async def test_a_damaged_page_found_by_a_read_is_reported_as_corrupt_with_advice(
    db: str, read_only: bool
) -> None:
    # Regression: a damaged index page that opening the log does not read failed
    # list_sagas() with "cannot read saga log '...': database disk image is malformed".
    await SQLiteStore(db).close()
    wreck(db, "sagakit_sagas_started")  # the index listing the newest sagas first
    store = SQLiteStore(db, read_only=read_only)
    try:
        with pytest.raises(CorruptLog, match=LIBRARY_ADVICE) as refused:
            await store.list_sagas()
    finally:
        await store.close()
    assert refused.value.path == db


@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])  # committed inline, on its thread
@pytest.mark.asyncio
async def test_a_damaged_page_found_by_a_write_is_reported_as_corrupt_with_advice(
    db: str, synchronous: Synchronous
) -> None:
    # Regression: a damaged index page a saga's first write updates failed it with
    # "cannot write saga log '...': DatabaseError: database disk image is malformed".
    await SQLiteStore(db).close()
    wreck(db, "sagakit_sagas_status")  # updated by every saga's first write
    async with SagaOrchestrator(SQLiteStore(db, synchronous=synchronous)) as orchestrator:
        with pytest.raises(CorruptLog, match=LIBRARY_ADVICE) as refused:
            await orchestrator.execute(dur_order("mirror"), saga_id="damaged")
    assert refused.value.path == db


@pytest.mark.parametrize("read_only", [False, True])
def test_damage_only_verify_finds_is_refused_as_corrupt_with_advice(
    db: str, read_only: bool
) -> None:
    # Regression: SQLiteStore(verify=True) said "saga log '...' is corrupt: <what PRAGMA
    # quick_check found>; restore it from a backup", a plain StoreError, not the
    # CorruptLog every other damage SQLite finds raises.
    asyncio.run(SQLiteStore(db).close())
    wreck(db, "sagakit_sagas_status")  # a page opening the log does not read
    with pytest.raises(CorruptLog, match=LIBRARY_ADVICE) as refused:
        SQLiteStore(db, read_only=read_only, verify=True)
    assert refused.value.reason.startswith("PRAGMA quick_check: ")
