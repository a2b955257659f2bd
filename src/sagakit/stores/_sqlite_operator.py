"""An operator's calls on a SQLite store's sagas: park, list parked, resume, release, resolve.

:class:`OperatorCalls` is a base of :class:`~.sqlite.SQLiteStore` (the ``sagakit``
commands ``dead-letters``, ``resume``, ``release`` and ``resolve`` call it; so does a
recovery parking a saga whose log cannot be read back). Each write is one job of the
store's group writer, refusing with a :class:`~sagakit.StoreError` that names the fix.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from .._commands import command_line
from .._runs import storable_text
from .._tracebacks import hide_from_pytest
from ..exceptions import SagaAlreadyResolved, StoreError
from ..status import SagaStatus
from ._protocol import DeadLetter, check_saga_id, check_text
from ._records import known_status
from ._sqlite_base import SQLiteStoreBase
from ._sqlite_owner import owner_alive, owner_running_here
from ._sqlite_rows import when
from ._sqlite_sql import NEXT_FINISH, RESOLVE_INTERRUPTED
from ._sqlite_writer import CommittedThenCancelled, Job

# pytest shows a failing test's line, not this module's code, for an error this store
# raises on purpose (see _tracebacks).
__tracebackhide__ = hide_from_pytest


def _done(problem: str | SagaAlreadyResolved | None) -> bool:
    """Whether an operator's write (:meth:`SQLiteStore.release`, ``resolve``) was made:
    its job returns what it refused it for, if it did."""
    return problem is None


class OperatorCalls(SQLiteStoreBase):
    """What an operator (or a recovery parking a saga) asks of :class:`~.sqlite.SQLiteStore`."""

    async def dead_letter(self, saga_id: str, reason: str) -> None:
        check_saga_id(saga_id, "dead_letter()")
        check_text(reason, "reason", "dead_letter()", "say why the saga is parked")
        self._refuse_writes()
        now = time.time()
        await self._writer.submit(
            lambda conn: conn.execute(
                # Never before its start: a wall clock set back would park it before then.
                "UPDATE sagakit_sagas SET dead_letter = ?, parked_at = max(?, started_at), "
                "owner = NULL WHERE id = ? AND finished_at IS NULL",
                (storable_text(reason), now, saga_id),
            ),
            alone=False,
        )
        self._staged.pop(saga_id, None)
        self._unclaim((saga_id,))

    async def dead_letters(self) -> list[DeadLetter]:
        def read(conn: sqlite3.Connection) -> list[DeadLetter]:
            rows = conn.execute(
                "SELECT id, name, status, recovery_attempts, dead_letter, parked_at "
                "FROM sagakit_sagas WHERE dead_letter IS NOT NULL AND finished_at IS NULL "
                "ORDER BY parked_at, rowid"
            ).fetchall()
            return [
                DeadLetter(
                    row[0],
                    row[1],
                    known_status(SagaStatus, row[2], row[0]),
                    row[3],
                    row[4],
                    when(row[5], row[0]),
                )
                for row in rows
            ]

        return await self._writer.read(read)

    async def resume_dead_letter(self, saga_id: str) -> None:
        check_saga_id(saga_id, "resume_dead_letter()")
        self._refuse_writes()

        def job(conn: sqlite3.Connection) -> str | None:
            if conn.execute(
                "UPDATE sagakit_sagas SET dead_letter = NULL, parked_at = NULL, "
                "recovery_attempts = 0, owner = NULL "
                "WHERE id = ? AND dead_letter IS NOT NULL AND finished_at IS NULL",
                (saga_id,),
            ).rowcount:
                return None
            if conn.execute("SELECT 1 FROM sagakit_sagas WHERE id = ?", (saga_id,)).fetchone():
                return (
                    f"saga {saga_id!r} is not dead-lettered in {self.path!r}; "
                    "list them with `sagakit dead-letters`"
                )
            return self._no_saga(saga_id)  # a typo, or another log: not "not dead-lettered"

        problem = await self._operator_write(job, _done)
        if problem is not None:
            raise StoreError(problem)

    async def release(self, saga_id: str) -> None:
        """Forget the owner of a running saga, so the next recovery claims it.

        For an owner this store cannot see die: a process of another host or
        container sharing the file. Only call it when that process is gone;
        :class:`~sagakit.StoreError` if the saga is not running, is dead-lettered,
        or is run by this store or another live process of this host.
        """
        check_saga_id(saga_id, "release()")
        self._refuse_writes()
        if saga_id in self._live:
            # Its owner is this live process: recovery would run it a second time.
            raise StoreError(
                f"saga {saga_id!r} is running in this store (this process): releasing it "
                "would let a recovery run it a second time; it is handed to recovery by "
                "itself if it stops unfinished (cancelled, or the process exits)"
            )

        def job(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT owner, dead_letter FROM sagakit_sagas WHERE id = ? AND finished_at IS NULL",
                (saga_id,),
            ).fetchone()
            if row is None:
                return (
                    f"saga {saga_id!r} is not running in {self.path!r}, so it has no owner to "
                    f"release; `{command_line(self.path, 'show', saga_id)}` tells whether it "
                    "is there, and how it ended"
                )
            holder, parked = row
            if parked is not None:
                return (
                    f"saga {saga_id!r} is dead-lettered ({parked}); recovery leaves it alone "
                    "until `sagakit resume` (or `sagakit resolve`)"
                )
            if owner_running_here(holder):
                return (
                    f"saga {saga_id!r} is running under a live process ({holder}) of this "
                    "host; recovery takes it over by itself once that process is gone"
                )
            conn.execute("UPDATE sagakit_sagas SET owner = NULL WHERE id = ?", (saga_id,))
            return None

        self._staged.pop(saga_id, None)  # its owner is gone: so are its uncommitted writes
        problem = await self._operator_write(job, _done)
        if problem is not None:
            raise StoreError(problem)

    async def resolve(self, saga_id: str, note: str) -> None:
        check_saga_id(saga_id, "resolve()")
        check_text(note, "note", "resolve()", "say how the saga was settled")
        self._refuse_writes()
        now = time.time()

        def job(conn: sqlite3.Connection) -> str | SagaAlreadyResolved | None:
            row = conn.execute(
                "SELECT status, owner, dead_letter, finished_at, resolved, updated_at, error, "
                "started_at FROM sagakit_sagas WHERE id = ?",
                (saga_id,),
            ).fetchone()
            if row is None:
                return self._no_saga(saga_id)
            status, holder, parked, finished, resolved, updated, error, started = row
            if resolved and finished is not None:
                # Once is enough: again, it nested the first note in the second's "(was:".
                return SagaAlreadyResolved(saga_id, when(updated), error)
            if finished is None and parked is None and owner_alive(holder):
                return (
                    f"saga {saga_id!r} is still {status} under a live process ({holder}); "
                    "let it finish: once that process is gone, `sagakit resolve` settles it "
                    "and `sagakit recover` finishes it (a process of another host or "
                    "container: `sagakit release` the saga first)"
                )
            if status in ("completed", "compensated"):
                return f"saga {saga_id!r} ended {status}; there is nothing to resolve"
            # Never before its start (nor its end, if it had one): a wall clock set back
            # would resolve it before it began, a negative duration.
            end = max(now, started)
            latest = end if finished is None else max(end, finished)
            conn.execute(
                "UPDATE sagakit_sagas SET status = 'failed', resolved = 1, dead_letter = NULL, "
                "owner = NULL, finished_at = coalesce(finished_at, ?), updated_at = ?, "
                # Why it was parked and its own error, either of them, or none.
                "error = ? || coalesce(' (was: ' || coalesce(dead_letter || "
                "coalesce('; error: ' || error, ''), error) || ')', ''), "
                "finish_order = CASE WHEN finished_at IS NULL "
                f"THEN {NEXT_FINISH.format(at='?')} ELSE finish_order END WHERE id = ?",
                (end, latest, storable_text(f"resolved by an operator: {note}"), end, saga_id),
            )
            conn.execute(RESOLVE_INTERRUPTED, (saga_id,))
            return None

        problem = await self._operator_write(job, _done)
        if isinstance(problem, SagaAlreadyResolved):
            raise problem
        if problem is not None:
            raise StoreError(problem)

    def _no_saga(self, saga_id: str) -> str:
        """What an operator's call on ``saga_id``, which the log does not hold, is told
        (as ``sagakit show`` says it)."""
        return f"no saga {saga_id!r} in {self.path!r}; `sagakit list` lists its sagas"

    async def _operator_write(self, job: Job, changed: Callable[[Any], bool]) -> Any:
        """Commit the job of :meth:`resume_dead_letter`, :meth:`release` or :meth:`resolve`.

        Cancelled (Ctrl-C on the ``sagakit`` command) while it waited for the write lock,
        the job still runs, and may commit: :class:`CommittedThenCancelled` then says
        the saga was changed, a plain ``CancelledError`` that it was not (the job,
        ``changed`` by its result, refused: the CLI said "interrupted" either way, and
        the operator took a resolved saga for one still to be resolved).
        """
        try:
            return await self._writer.submit(job, alone=False)
        except CommittedThenCancelled as cancelled:
            if changed(cancelled.result):
                raise
            raise asyncio.CancelledError from None
