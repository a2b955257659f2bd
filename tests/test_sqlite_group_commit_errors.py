"""A failed group commit raises to each saga whose write it held an error of its own.

The commit of several sagas' writes failed, and every saga's ``execute()`` raised the
very same ``StoreError`` object: each added its note to it ("saga ... ended ..."), so
saga B's error also told of saga A, and any other state put on it was shared.
"""

from __future__ import annotations

import asyncio
import sqlite3
import traceback
from pathlib import Path
from typing import Any

import pytest

from sagakit import SagaAlreadyResolved, SagaOrchestrator, SQLiteStore, StoreError, saga, step
from sagakit.stores._sqlite_sql import FINISHED
from sagakit.stores._sqlite_writer import _settle

pytestmark = pytest.mark.asyncio

GATES: dict[str, asyncio.Event] = {}
ENTERED: dict[str, asyncio.Event] = {}


@step
async def ge_hold(key: str) -> str:
    ENTERED[key].set()
    await GATES[key].wait()
    return key


@saga(name="ge_held")
def ge_held(key: str):  # type: ignore[no-untyped-def]
    yield ge_hold(key)


def _fail_the_commit_of_both_ends(store: SQLiteStore) -> list[int]:
    """The first commit holding two runs' ends fails in SQLite (rolled back); returns
    the number of jobs of each commit failed so."""
    commit = store._writer._commit
    failed: list[int] = []

    def failing(jobs: list[Any], wait: bool) -> list[Any]:
        ends = [job for job in jobs if not callable(job) and any(s == FINISHED for s, _ in job)]
        if len(ends) >= 2 and not failed:
            failed.append(len(jobs))
            raise sqlite3.OperationalError("disk I/O error (injected)")
        return commit(jobs, wait)  # type: ignore[no-any-return]

    store._writer._commit = failing  # type: ignore[method-assign]
    return failed


@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])  # committed inline, on the thread
async def test_each_saga_of_a_failed_group_commit_gets_its_own_error(
    tmp_path: Path, synchronous: str
) -> None:
    store = SQLiteStore(tmp_path / "sagas.db", synchronous=synchronous)  # type: ignore[arg-type]
    failed = _fail_the_commit_of_both_ends(store)
    async with SagaOrchestrator(store) as orchestrator:
        for key in ("a", "b"):
            GATES[key], ENTERED[key] = asyncio.Event(), asyncio.Event()
        runs = {
            key: asyncio.create_task(orchestrator.execute(ge_held(key), saga_id=f"ge-{key}"))
            for key in ("a", "b")
        }
        await ENTERED["a"].wait()
        await ENTERED["b"].wait()
        GATES["a"].set()  # both end in the same loop iteration: one commit
        GATES["b"].set()
        errors: dict[str, BaseException] = {}
        for key, run in runs.items():
            with pytest.raises(StoreError, match="disk I/O error") as raised:
                await run
            errors[key] = raised.value
    assert failed == [2]  # the two ends were in one commit, which failed
    assert errors["a"] is not errors["b"]
    for key, error in errors.items():
        notes = error.__notes__
        assert notes, key
        assert all(f"(ge-{key})" in note for note in notes), notes
        # Still the store's error, as raised before: same message, the driver's cause.
        assert type(error) is StoreError
        assert str(error) == str(errors["a"])
        assert isinstance(error.__cause__, sqlite3.OperationalError)
        assert error.__cause__ is errors["a"].__cause__
        printed = "".join(traceback.format_exception(error))
        assert "disk I/O error (injected)" in printed


class _Odd(StoreError):
    """A store error not made again from its args (they are its message)."""

    def __init__(self, *, saga_id: str) -> None:
        super().__init__(f"saga {saga_id!r} is odd")
        self.saga_id = saga_id


class _Formatted(StoreError):
    """A store error whose ``__init__`` makes its message from another argument."""

    def __init__(self, path: str) -> None:
        super().__init__(f"cannot write {path!r}")
        self.path = path


def _raised(error: StoreError) -> StoreError:
    try:
        try:
            raise OSError("the driver's error")
        except OSError as cause:
            raise error from cause
    except StoreError as caught:
        return caught


@pytest.mark.parametrize(
    "error",
    [
        StoreError("disk full"),
        SagaAlreadyResolved("ge-1", None, "resolved by an operator: paid"),
        _Odd(saga_id="ge-2"),
        _Formatted("sagas.db"),
    ],
    ids=["plain", "subclass", "odd", "formatted"],
)
async def test_each_caller_of_a_failed_batch_is_failed_with_a_twin(error: StoreError) -> None:
    error = _raised(error)
    error.add_note("said before")
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(3)]
    _settle(futures, None, error)
    first, *others = [future.exception() for future in futures]
    assert first is error  # (no copy for the first caller)
    for other in others:
        assert isinstance(other, StoreError)
        assert other is not error
        assert str(other) == str(error)
        assert other.__cause__ is error.__cause__
        assert other.__traceback__ is error.__traceback__
        assert other.args == error.args
        other.add_note("its own")
        assert other.__notes__ == ["said before", "its own"]
        # Regression: copy.copy() made it again from its args, calling its __init__ with
        # its message: the odd one (keyword-only) came back a plain StoreError, and the
        # formatted one said "cannot write \"cannot write 'sagas.db'\"" with that path.
        assert type(other) is type(error)
        assert {k: v for k, v in vars(other).items() if k != "__notes__"} == {
            k: v for k, v in vars(error).items() if k != "__notes__"
        }
    assert error.__notes__ == ["said before"]
