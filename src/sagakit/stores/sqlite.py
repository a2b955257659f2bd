"""An embedded durable saga log on SQLite (standard library ``sqlite3``).

``SQLiteStore("sagas.db")`` keeps every saga's log in one file in WAL mode: saga
starts with their arguments, every step and compensation transition, results and
events. Concurrent sagas' writes are group-committed (see ``_sqlite_writer``).
A process that dies leaves its sagas behind with its owner token; another process
on the same host claims them once that process is gone (``_sqlite_owner``).

:class:`SQLiteStore` is built here (its construction, write path and ``close()``) on
bases of its own modules: its reads (``_sqlite_reads``), its claims of sagas for
recovery (``_sqlite_claims``) and an operator's calls (``_sqlite_operator``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Literal, cast

from .._checks import check_flag, check_seconds
from .._hooks import process_died
from .._members import (
    ON_COMPENSATION_COMPLETED,
    ON_COMPENSATION_FAILED,
    ON_COMPENSATION_RETRYING,
    ON_COMPENSATION_STARTED,
    ON_SAGA_FINISHED,
    ON_SAGA_STARTED,
    ON_STEP_COMPLETED,
    ON_STEP_FAILED,
    ON_STEP_RETRYING,
    ON_STEP_STARTED,
    ON_STEP_TIMED_OUT,
)
from .._runs import describe_optional, step_end_error, unended
from .._serialization import JsonSerializer
from .._shielding import CancellationWatch, wait_out
from .._tracebacks import hide_from_pytest
from ..exceptions import (
    CorruptLog,
    SagaAlreadyExecuting,
    SagaAlreadyFailed,
    SerializationError,
    StepTimeout,
    StoreConfigError,
    StoreError,
)
from ..records import SagaMetadata
from ._fingerprint import definition_fingerprint
from ._protocol import (
    SagaRunView,
    mark_end_unwritten,
    mark_nothing_logged,
    store_serializer,
)
from ._records import completion_texts
from ._reused import check_same_stored_run
from ._sqlite_claims import RecoveryClaims
from ._sqlite_operator import OperatorCalls
from ._sqlite_owner import current_owner
from ._sqlite_reads import SagaReads
from ._sqlite_rows import load_metadata
from ._sqlite_schema import (
    Synchronous,
    check_file,
    check_read_only,
    connect,
    connect_read_only,
    create,
    prepare,
)
from ._sqlite_sql import (
    COMPENSATING,
    COMPLETE_STEP,
    END_STEP,
    EXECUTING,
    FINISHED,
    INSERT_EVENT,
    INSERT_SAGA,
    INTERRUPTED_STEP,
    RETRY_STEP,
    SAGA_ERROR,
    UPSERT_STEP,
    UPSERT_STEP_UNCOUNTED,
)
from ._sqlite_writer import CommittedThenCancelled, GroupWriter, Job, Statements

# pytest shows a failing test's line, not this module's code, for an error this store
# raises on purpose (a saga id already running, reused; see _tracebacks).
__tracebackhide__ = hide_from_pytest

if TYPE_CHECKING:
    from .._runs import SagaRun
    from ..transitions import Transition

DEFAULT_BUSY_TIMEOUT = 5.0

logger: logging.Logger = logging.getLogger("sagakit")


def _start(
    saga_id: str, comp: int, index: Any, name: Any, attempt: int, now: float, order: int | None
) -> tuple[str, tuple[Any, ...]]:
    """The statement of a step's (``comp`` 0) or compensation's start: numbered
    ``order``, or past the saga's highest in the log (``None``: see ``_next_order``)."""
    if order is None:
        return (UPSERT_STEP_UNCOUNTED, (saga_id, comp, index, name, attempt, now, saga_id))
    return (UPSERT_STEP, (saga_id, comp, index, name, attempt, now, order))


def _forget_new(saga_id: str) -> Job:
    """The job removing a saga row that ``begin()`` inserted for a run that never ran."""

    def job(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM sagakit_steps WHERE saga_id = ?", (saga_id,))
        conn.execute("DELETE FROM sagakit_sagas WHERE id = ? AND status = 'executing'", (saga_id,))

    return job


def _uri_path(uri: str) -> str:
    """The file path of a ``file:`` SQLite URI (its query and fragment left out)."""
    path = uri.removeprefix("file:").split("?", 1)[0].split("#", 1)[0]
    if path.startswith("//"):  # file://host/path: the path starts at the host's end
        path = path[2:].partition("/")[1] + path[2:].partition("/")[2]
    return urllib.parse.unquote(path)


def _in_memory_uri(uri: str) -> bool:
    """Whether a ``file:`` SQLite URI names an in-memory database."""
    query = urllib.parse.parse_qs(uri.partition("?")[2])
    return _uri_path(uri) == ":memory:" or "memory" in query.get("mode", [])


class SQLiteStore(SagaReads, RecoveryClaims, OperatorCalls):
    """A durable saga log in one SQLite file; sagas survive the process.

    ``synchronous="NORMAL"`` (default; any case) makes every commit survive a crash of the
    process; ``"FULL"`` also survives power loss, at the price of an fsync per
    group commit. ``busy_timeout`` is how long a write waits for another process
    holding the file's write lock (on the writer thread, never on the event loop).
    ``serializer`` turns results, events and arguments into text (JSON with type
    tags unless given; its ``max_size`` bounds each stored value). The file is
    checked at open: a file that is not a sagakit log, or is truncated or corrupt,
    raises :class:`~sagakit.StoreError` there. ``verify=True`` also runs SQLite's
    ``quick_check`` over the whole file. ``owner`` replaces the token recorded on
    the sagas this store runs (``"<host>/<pid>/<process start>"`` of this process by
    default; tools and tests only).

    ``read_only=True`` only reads an existing log (for inspection tools such as the
    CLI's ``list``): the file is opened with SQLite's ``mode=ro``, its journal mode is
    left as it is and no schema is created or migrated; a missing file or an older
    schema raises :class:`~sagakit.StoreError`, and so does every write method.
    """

    durable = True
    path: str  # declared for its bases too in SQLiteStoreBase, kept here for readers
    synchronous: Literal["NORMAL", "FULL"]
    busy_timeout: float
    serializer: JsonSerializer
    read_only: bool

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "NORMAL",
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        serializer: JsonSerializer | None = None,
        verify: bool = False,
        owner: str | None = None,
        read_only: bool = False,
    ) -> None:
        # Any case, as list_sagas(status=...) and SQLite's own PRAGMA take it.
        given = synchronous.upper() if isinstance(synchronous, str) else None
        if given not in ("NORMAL", "FULL"):
            raise StoreConfigError(
                f"synchronous must be 'NORMAL' or 'FULL' (in any case), got {synchronous!r}"
            )
        level: Literal["NORMAL", "FULL"] = "FULL" if given == "FULL" else "NORMAL"
        seconds = check_seconds(
            busy_timeout, "busy_timeout", allow_zero=True, error=StoreConfigError
        )
        check_flag(verify, "verify", error=StoreConfigError)
        check_flag(read_only, "read_only", error=StoreConfigError)
        if owner is not None and (not isinstance(owner, str) or not owner.strip()):
            # An empty owner is no owner: recovery would claim the sagas this store runs
            # while they run, and run their steps a second time.
            raise StoreConfigError(
                f"owner must be a non-empty string, the token recorded on the sagas this "
                f"store runs, got {owner!r}; leave it None for this process's own token"
            )
        try:
            file: object = os.fspath(path)
        except TypeError:
            file = None
        if not isinstance(file, str) or not file:
            # None (an unset setting) said only "expected str, bytes or os.PathLike
            # object"; "" is SQLite's temporary database, refused as "cannot use WAL".
            raise StoreConfigError(
                "SQLiteStore needs the path of its log file, a non-empty str or "
                f"os.PathLike[str], got {path!r}; pass where the log lives: "
                "SQLiteStore('sagas.db')"
            )
        path = file
        if "\x00" in path:
            raise StoreConfigError(
                f"SQLiteStore's path {path!r} contains a NUL character, which no file path "
                "can hold; pass where the log lives: SQLiteStore('sagas.db')"
            )
        if path.startswith("file:") and not _in_memory_uri(path):
            raise StoreConfigError(
                f"SQLiteStore takes a file path, not a SQLite URI, got {path!r}; pass the "
                f"path: SQLiteStore({_uri_path(path)!r}) (read_only=True to open it read-only)"
            )
        if path == ":memory:" or path.startswith("file:"):
            raise StoreConfigError(
                "SQLiteStore needs a file path (other processes must find the log); "
                "use MemoryStore() for an in-memory store"
            )
        self.path = path
        # The reader connection opens later: a relative path must not follow os.chdir().
        self._file = os.path.abspath(path)
        self.synchronous = level
        self.busy_timeout = seconds
        self.serializer = store_serializer(serializer)
        self.read_only = read_only
        if self.read_only and not os.path.exists(path):
            raise StoreError(f"no saga log at {path!r} (opened read-only: none is created)")
        check_file(path)
        if not self.read_only and not os.path.exists(path):
            create(path)
        if self.read_only:
            conn = connect_read_only(path, busy_timeout=self.busy_timeout)
        else:
            conn = connect(path, synchronous=level, busy_timeout=self.busy_timeout)
        try:
            if self.read_only:
                check_read_only(conn, path)
            else:
                prepare(conn, path)
            if verify:
                try:
                    problem = conn.execute("PRAGMA quick_check").fetchone()[0]
                except sqlite3.DatabaseError as error:
                    problem = str(error)
                if problem != "ok":  # (its first problem, on one line)
                    said = " ".join(line.strip() for line in str(problem).splitlines())
                    raise CorruptLog(path, f"PRAGMA quick_check: {said}")
            self._writer = GroupWriter(
                conn,
                path=path,
                busy_timeout=self.busy_timeout,
                inline=level == "NORMAL",
                open_reader=self._open_reader,
                read_only=self.read_only,
            )
        except BaseException:  # a refused log, or Ctrl-C while opening: no connection left open
            conn.close()
            raise
        self._owner = current_owner() if owner is None else owner
        self._live: set[str] = set()
        self._claimed: set[str] = set()
        # The start_order of each live run's latest start (see _sqlite_sql.UPSERT_STEP).
        self._orders: dict[str, int] = {}
        self._staged: dict[str, Statements] = {}
        self._unlogged: set[str] = set()  # generated ids whose row has not committed
        self._ended: set[str] = set()  # runs whose end committed (until finish())
        # Runs whose end this store refused as closed: the run logged that at WARNING.
        self._end_refused: set[str] = set()
        # Sagas whose end could not be written, still to hand over to recovery (with
        # what they had staged), and the task doing it after a successful commit.
        self._unreleased: dict[str, Statements] = {}
        self._retrying: asyncio.Task[None] | None = None

    def _open_reader(self) -> sqlite3.Connection:
        if self.read_only:
            return connect_read_only(self._file, busy_timeout=self.busy_timeout)
        return connect(self._file, synchronous=self.synchronous, busy_timeout=self.busy_timeout)

    @property
    def owner(self) -> str:
        """This process's owner token, recorded on the sagas it runs."""
        return self._owner

    @property
    def commits(self) -> int:
        """How many write transactions this store committed (for benchmarks)."""
        return self._writer.commits

    def _refuse_writes(self) -> None:
        if self.read_only:
            raise StoreError(
                f"saga log {self.path!r} is opened read-only; open a SQLiteStore without "
                "read_only=True to write it"
            )

    async def _write(self, job: Job) -> Any:
        result = await self._writer.submit(job, alone=len(self._live) <= 1)
        if self._unreleased:
            self._retry_soon()
        return result

    # ----------------------------------------------------------------- running

    async def begin(self, run: SagaRunView) -> SagaMetadata | None:
        self._refuse_writes()
        definition = run.definition
        arguments = self.serializer.dumps(
            [list(definition.args), definition.kwargs],
            what=lambda: f"the arguments of saga {run.name!r}",
        )
        now = cast("SagaRun", run).started_wall  # the orchestrator's own run (epoch seconds)
        values = (
            run.id,
            run.name,
            int(run.explicit_id),
            int(definition.factory is not None),
            definition.recovery,
            definition_fingerprint(definition, self.serializer.dumps),
            arguments,
            self._owner,
            run.total_steps,
            now,
            now,
        )
        saga_id = run.id
        if self._unreleased and saga_id in self._unreleased:
            await self._hand_over([saga_id])  # so that execute() can adopt it

        def job(conn: sqlite3.Connection) -> tuple[str, Any]:
            row = conn.execute(
                "SELECT status, resolved, dead_letter, name, arguments, fingerprint "
                "FROM sagakit_sagas WHERE id = ?",
                (saga_id,),
            ).fetchone()
            if row is not None:
                status, resolved, dead_letter, name, *recorded = row
                if status in ("executing", "compensating"):
                    return ("running", dead_letter)
                if status == "completed":
                    # Its name and arguments, to refuse the id to another saga or call;
                    # its events, which go back to execute()'s caller as the steps' own,
                    # read exactly (the error returned, not raised through the writer).
                    try:
                        done = load_metadata(conn, saga_id, self.serializer, exact=True)
                    except SerializationError as unreadable:
                        return ("unreadable", (unreadable, name, recorded))
                    return ("completed", (done, name, recorded))
                if status == "failed" and not resolved:
                    return ("failed", None)
                conn.execute("DELETE FROM sagakit_steps WHERE saga_id = ?", (saga_id,))
                conn.execute("DELETE FROM sagakit_sagas WHERE id = ?", (saga_id,))
            conn.execute(INSERT_SAGA, values)
            return ("new", None)

        # An id already live here is running in this process: begin() refuses it below,
        # and must leave that run's state (its next start_order above all) as it is.
        already_live = saga_id in self._live
        if not already_live:
            self._live.add(saga_id)
            self._orders[saga_id] = 0  # a new row: no records yet (earlier ones deleted)
        if not run.explicit_id:
            # A fresh id: nothing to check, and nothing acts before the first step
            # starts, so the row is staged and commits with that step's start.
            self._staged[saga_id] = [(INSERT_SAGA, values)]
            self._unlogged.add(saga_id)
            return None
        try:
            outcome, earlier = await self._write(job)
        except CommittedThenCancelled as cancelled:
            self._forget_begun(saga_id, already_live)
            if cancelled.result[0] == "new":
                # Its row went in, but the caller is gone and nothing will run it: take
                # it out again rather than leave it executing under this live process.
                done = await wait_out(self._write(_forget_new(saga_id)))
                if not done.cancelled():
                    done.exception()  # a failed clean-up does not mask the cancellation
            raise
        except BaseException:
            self._forget_begun(saga_id, already_live)
            raise
        if outcome == "new":
            self._orders[saga_id] = 0
            return None
        self._forget_begun(saga_id, already_live)
        if outcome == "running":
            raise SagaAlreadyExecuting(saga_id, earlier)  # earlier: why it is parked, if it is
        if outcome == "failed":
            raise SagaAlreadyFailed(saga_id)
        done, name, (recorded, fingerprint) = earlier
        check_same_stored_run(
            saga_id, definition, name, (recorded,), (arguments,), self.serializer, fingerprint
        )
        if outcome == "unreadable":
            raise done
        return done  # type: ignore[no-any-return]

    def _forget_begun(self, saga_id: str, already_live: bool) -> None:
        """Undo what :meth:`begin` noted of a run that does not start (unless that id
        was already running here: its state is that run's)."""
        if not already_live:
            self._live.discard(saga_id)
            self._orders.pop(saga_id, None)

    async def record(self, run: SagaRunView, transition: Transition) -> None:
        # (A read-only store refuses begin(), and its writer every write: no check here.)
        job = self._job_for(run, transition)
        staged = self._staged.pop(run.id, None)
        unlogged = bool(self._unlogged) and run.id in self._unlogged
        if unlogged and (staged is None or staged[0][0] is not INSERT_SAGA):
            # The commit that carried this run's row failed: nothing of the run is in the
            # log, and nothing may be written under its id (it may be another saga's, if
            # a generated id ever met one already logged).
            return
        carried = 0 if staged is None else len(staged)
        if staged is not None:
            if job is not None:
                staged += job
            job = staged
        if job is None:
            return
        try:  # (not through _write: one coroutine less per record)
            await self._writer.submit(job, alone=len(self._live) <= 1)
        except CommittedThenCancelled:
            self._committed(run.id, transition)
            raise
        except BaseException as error:
            failed: BaseException | None = error  # what refused the end
            if isinstance(error, asyncio.CancelledError) and transition.kind is ON_SAGA_FINISHED:
                # Dropped unsent, its caller cancelled: but the run has ended all the
                # same, and without its end the log would show it running until some
                # recovery replayed it. Write it, to the end, then report the commit.
                done = await wait_out(self._writer.submit(job, alone=False))
                if not done.cancelled() and done.exception() is None:
                    self._committed(run.id, transition)
                    raise CommittedThenCancelled(None) from None
                failed = None if done.cancelled() else done.exception()
                if isinstance(failed, Exception):  # told as the end's failure, then
                    mark_end_unwritten(error, failed, run.id)
            if transition.kind is ON_SAGA_FINISHED:
                if not self._writer.usable:
                    self._end_refused.add(run.id)
                if unlogged and isinstance(failed, Exception):
                    mark_nothing_logged(failed, run.id)  # its row went with it: none did
            failed = None  # no cycle through this frame (its traceback holds it)
            if carried:
                # Not committed (dropped as its caller was cancelled, or rolled back): the
                # staged transitions happened all the same; they go with the next write,
                # and so does the row of a run whose first write this was.
                self._staged[run.id] = job[:carried]
            raise
        if self._unlogged:  # (_committed(), inline: every record passes here)
            self._unlogged.discard(run.id)
        if transition.kind is ON_SAGA_FINISHED:
            self._ended.add(run.id)
        if self._unreleased:
            self._retry_soon()

    def _committed(self, saga_id: str, transition: Transition) -> None:
        """A write of ``saga_id`` carrying ``transition`` is in the log: so is its row,
        and the run's end if it carried that."""
        self._unlogged.discard(saga_id)  # its row is in: the run's end goes there
        if transition.kind is ON_SAGA_FINISHED:
            self._ended.add(saga_id)

    def stage(self, run: SagaRunView, transition: Transition) -> None:
        """Serialize ``transition`` now; it commits with ``run``'s next :meth:`record`.

        Raises :class:`~sagakit.SerializationError` at once for a result or event
        that cannot be stored (nothing is staged then).
        """
        job = self._job_for(run, transition)
        if job is not None:
            staged = self._staged.get(run.id)
            if staged is None:
                self._staged[run.id] = job
            else:
                staged += job

    def _job_for(self, run: SagaRunView, t: Transition) -> Statements | None:
        """The statements recording ``t`` (``None``: nothing to write)."""
        kind = t.kind
        saga_id = run.id
        # Never before the run's start (begin()'s stamp, or the recovered run's): a wall
        # clock set back while it ran would end it before it began, a negative duration.
        now = time.time()
        started: float = run.started_wall  # type: ignore[attr-defined]  # (a SagaRun's)
        if now < started:
            now = started
        if kind is ON_STEP_STARTED:
            orders = self._orders
            order = orders.get(saga_id)
            # _next_order() and _start(), inline: every step starts here, and the two calls
            # cost some 3,400 instructions per five-step saga (measured).
            if order is None:  # (see _next_order)
                return [
                    (
                        UPSERT_STEP_UNCOUNTED,
                        (saga_id, 0, t.step_index, t.step_name, t.attempt, now, saga_id),
                    )
                ]
            order = orders[saga_id] = order + 1
            return [(UPSERT_STEP, (saga_id, 0, t.step_index, t.step_name, t.attempt, now, order))]
        if kind is ON_STEP_COMPLETED or kind is ON_COMPENSATION_COMPLETED:
            return self._completion(run, t, now)
        if kind is ON_COMPENSATION_STARTED:
            order = self._next_order(saga_id)
            return [
                _start(saga_id, 1, t.step_index, t.step_name, t.attempt, now, order),
                (COMPENSATING, (run.error, now, saga_id)),  # the failure being undone
            ]
        if kind is ON_STEP_RETRYING or kind is ON_COMPENSATION_RETRYING:
            comp = int(kind is ON_COMPENSATION_RETRYING)
            error = describe_optional(t.error)
            return [(RETRY_STEP, (t.attempt, error, saga_id, comp, t.step_index))]
        if kind in (
            ON_STEP_FAILED,
            ON_STEP_TIMED_OUT,
            ON_COMPENSATION_FAILED,
        ):
            comp = int(kind is ON_COMPENSATION_FAILED)
            timed_out = kind is ON_STEP_TIMED_OUT or (comp and isinstance(t.error, StepTimeout))
            status = "timed_out" if timed_out else "failed"
            described = step_end_error(run, t)  # as the run's record has it
            return [
                (
                    END_STEP,
                    (status, t.attempt, t.duration, described, None, saga_id, comp, t.step_index),
                ),
                # The saga's error: what the run gives it (a failed step's is "StepFailed: ...").
                (SAGA_ERROR, (run.error or described, now, saga_id)),
            ]
        if kind is ON_SAGA_STARTED:
            if saga_id not in self._claimed:
                return None  # begin() wrote the row in its own transaction
            return [(EXECUTING, (now, saga_id))]
        if kind is ON_SAGA_FINISHED:
            final = (
                str(run.status),
                run.error,
                run.steps_executed,
                run.total_steps,
                now,
                now,
                now,  # the finish_order of those ending at that instant
                saga_id,
            )
            statements: Statements = [
                (
                    INTERRUPTED_STEP,
                    (
                        saga_id,
                        int(record.compensation),
                        record.index,
                        record.name,
                        str(record.status),
                        record.attempts,
                        now,
                        record.duration,
                        record.error,
                    ),
                )
                for record in unended(run)
            ]
            statements.append((FINISHED, final))
            return statements
        return None  # pragma: no cover - every kind is handled above

    def _next_order(self, saga_id: str) -> int | None:
        """The ``start_order`` of ``saga_id``'s next start (``None``: a run this store did
        not begin or claim, whose highest the statement reads from the log)."""
        order = self._orders.get(saga_id)
        if order is None:
            return None
        self._orders[saga_id] = order + 1
        return order + 1

    def _completion(self, run: SagaRunView, t: Transition, now: float) -> Statements:
        """A step's (or compensation's) completion with its result and its events."""
        comp = int(t.kind is ON_COMPENSATION_COMPLETED)
        note = None
        result: str | None
        try:
            result, texts = completion_texts(self.serializer.dumps, t, comp)
        except SerializationError as unstored:
            if not comp:
                raise  # the step fails and is compensated: never "completed" unstored
            # The compensation ran: record that, even though its result cannot be kept.
            result, texts, note = None, [], f"result not stored: {unstored}"
            logger.error(
                "sagakit: saga %s (%s): %s",
                run.name,
                run.id,
                note,
                extra={"saga_id": run.id, "saga_name": run.name},
            )
        statements: list[tuple[str, tuple[Any, ...]]] = [
            (COMPLETE_STEP, (t.attempt, t.duration, result, run.id, comp, t.step_index))
            if note is None
            else (
                END_STEP,
                ("completed", t.attempt, t.duration, note, result, run.id, comp, t.step_index),
            )
        ]
        for text in texts:
            statements.append(
                (INSERT_EVENT, (run.id, run.name, t.step_index, t.step_name, comp, text, now))
            )
        return statements

    async def finish(self, run: SagaRunView) -> None:
        """Forget a run; write what it still has staged.

        A run forgotten without its end committed — it ended (``COMPLETED``,
        ``COMPENSATED``, ``FAILED``) but that could not be written, or it stopped
        unfinished (a cancelled recovery handing it back) — would stay ``executing``
        under this live process, which no recovery takes: its owner is cleared (with
        what was staged), so the next recovery, here or in another process, finishes it
        as after a crash. If the log refuses that too, it is tried again after the next
        successful write, before a recovery here claims sagas, and at :meth:`close`.
        """
        saga_id = run.id
        dead = self._writer.dead
        if dead is not None and saga_id not in self._ended:
            # Its process "died" (crash(process=True)) before its end was written: no
            # hand-over, nothing staged is written (an ended run's finish writes nothing).
            raise process_died(dead)
        staged = self._staged.pop(saga_id, None)
        unlogged = saga_id in self._unlogged
        try:
            if (
                saga_id not in self._ended
                and saga_id in self._live
                and not unlogged  # nothing of it is in the log: nothing to hand over
            ):
                if not self._writer.usable:
                    # close() came while it ran: nothing will hand it over any more. Its
                    # run told it already if its end was refused (with the store's error).
                    told = saga_id in self._end_refused
                    logger.log(
                        logging.DEBUG if told else logging.WARNING,
                        "sagakit: saga %s (%s) stopped here, but %r was closed while it "
                        "ran: it stays executing under this process, and recovery "
                        "finishes it once the process exits; close the store only once "
                        "its sagas have finished",
                        run.name,
                        saga_id,
                        self.path,
                        extra={"saga_id": saga_id, "saga_name": run.name},
                    )
                    return
                self._unreleased[saga_id] = staged or []
                if not await self._hand_over([saga_id]):
                    logger.warning(
                        "sagakit: saga %s (%s) stopped here, but neither its end nor its "
                        "hand-over to recovery could be written; tried again after the next "
                        "write, and by the next recovery here",
                        run.name,
                        saga_id,
                        extra={"saga_id": saga_id, "saga_name": run.name},
                    )
            elif staged and not unlogged:
                # Not left behind by any path that reached here. (The row of a run that
                # never committed one is not written now: its end was not, and the row
                # alone would leave it executing under this live process.)
                await self._write(staged)
        finally:
            self._forget(saga_id)

    def _forget(self, saga_id: str) -> None:
        """Forget what this store keeps of ``saga_id``'s run, which ended here."""
        self._ended.discard(saga_id)
        self._end_refused.discard(saga_id)
        self._unlogged.discard(saga_id)
        self._live.discard(saga_id)
        self._claimed.discard(saga_id)
        self._orders.pop(saga_id, None)

    def _abandoned(self, run: SagaRunView) -> None:
        """:meth:`finish` for a run whose task was destroyed with its closed event loop
        (the orchestrator calls it where the garbage collector closes the run, which can
        await nothing more): nothing is written now. Its hand-over to recovery (owner
        cleared, with what it had staged) goes with the store's next write, before a
        recovery here claims sagas, or at :meth:`close`, so that a recovery in this live
        process finishes it as after a crash, rather than none until the process exits.
        A run whose row never committed, or whose end did, is left as it is then."""
        saga_id = run.id
        staged = self._staged.pop(saga_id, None)
        if self._writer.usable and not self.read_only:
            self._unreleased[saga_id] = staged or []  # (written only if still ours, unended)
        self._forget(saga_id)

    def _crash_process(self, what: str) -> None:
        """A simulated crash of this process (``FaultInjector.crash(..., process=True)``):
        every saga of the store stops at its next write, and what they staged is lost."""
        if self._writer.dead is not None:  # dead already (told again by each saga it stops)
            return
        self._writer.crash(what)
        self._staged.clear()
        self._unreleased.clear()

    def _restart_process(self) -> None:
        """``simulate_restart()``: the store writes again, as a restarted process would."""
        self._writer.dead = None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has closed the store's file (it is open from the start, and
        a closed ``SQLiteStore`` is never opened again). Read-only."""
        return self._writer.closed

    async def close(self) -> None:
        """Hand over what :meth:`finish` could not (logging what still fails), then
        commit what is pending and close the file."""
        if not self._writer.usable:  # closed already, or a forked child's copy
            self._unreleased.clear()
            await self._writer.close()
            return
        retrying = self._retrying
        cancelled = False  # close() itself, while the hand-over being retried ended
        if retrying is not None:
            watch = CancellationWatch()
            await wait_out(retrying)
            # (wait_out leaves raising our caller's cancellation to us: after closing.)
            cancelled = watch.came()
        if self._unreleased and not await self._hand_over(list(self._unreleased)):
            logger.error(
                "sagakit: sagas %s ended, but %r refused their end and their hand-over to "
                "recovery: they stay executing under this process, and recovery finishes "
                "them once it exits",
                sorted(self._unreleased),
                self.path,
            )
        self._unreleased.clear()
        await self._writer.close()
        if cancelled:
            raise asyncio.CancelledError

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path!r} synchronous={self.synchronous}>"


__all__ = ["DEFAULT_BUSY_TIMEOUT", "SQLiteStore", "definition_fingerprint"]
