"""Group commit for the SQLite store: many sagas' log writes in one transaction.

Writes are jobs (functions of a connection). A job submitted while other sagas are
in flight waits for the end of the current event-loop iteration, so every job
submitted meanwhile commits in the same ``BEGIN IMMEDIATE`` transaction. With a
single saga in flight the job commits at once. Commits run on the event loop only
while they cannot block (``synchronous=NORMAL``, which never fsyncs on commit in
WAL mode, with a zero busy timeout); when the database is locked by another
process, or with ``synchronous=FULL``, they run on a dedicated writer thread that
waits up to the busy timeout. WAL checkpoints (which fsync) run on that thread too,
every :data:`CHECKPOINT_EVERY` commits, while this store's writes queue behind them.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from .._hooks import process_died
from .._seconds import timeout_text
from .._shielding import CancellationWatch, wait_out
from ..exceptions import StoreError, error_text
from ._loop_refusal import closed_store, refusing_this_loop
from ._protocol import CommittedThenCancelled
from ._sqlite_schema import corrupt_log

T = TypeVar("T")
Statements = list[tuple[str, tuple[Any, ...]]]
Job = Callable[[sqlite3.Connection], Any] | Statements
"""A write: a function of the connection (its result is returned), or statements."""

CHECKPOINT_EVERY = 256
"""Commits between two passive WAL checkpoints on the writer thread."""


class _Busy(Exception):
    """The database is locked by another connection; retry with waiting allowed."""


def _nothing() -> None:
    """A job for the writer thread that only waits its turn."""


def _is_busy(error: sqlite3.OperationalError) -> bool:
    text = str(error)
    return "locked" in text or "busy" in text


class GroupWriter:
    """Commits jobs in submission order, batching those submitted together."""

    dead: str | None = None
    """The simulated process crash that killed this writer's process, if one did
    (``crash()``): every write raises ``SimulatedCrash`` until it is set back to ``None``."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        path: str,
        busy_timeout: float,
        inline: bool,
        open_reader: Callable[[], sqlite3.Connection],
        read_only: bool = False,
    ) -> None:
        self._conn = conn
        self._path = path
        self._wait_ms = max(0, int(busy_timeout * 1000))
        self._timeout_ms = -1
        self._inline = inline
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sagakit-sqlite")
        self._pending: list[Job] = []
        self._futures: list[asyncio.Future[Any]] = []
        self._scheduled = False
        self._thread_busy = False
        self._thread_job: asyncio.Future[Any] | None = None
        self._thread_futures: list[asyncio.Future[Any]] = []  # those of the thread's batch
        self._since_checkpoint = 0
        self._loop: asyncio.AbstractEventLoop | None = None  # where it queues writes
        self._open_reader = open_reader
        self._reader: sqlite3.Connection | None = None
        self._closed = False
        self._read_only = read_only
        self._pid = os.getpid()
        self.commits = 0
        self.jobs = 0
        conn.execute("PRAGMA wal_autocheckpoint=0" if inline else "PRAGMA wal_autocheckpoint=1000")

    # ------------------------------------------------------------------ writes

    @property
    def usable(self) -> bool:
        """Open, and in the process that opened it."""
        return not self._closed and os.getpid() == self._pid

    @property
    def closed(self) -> bool:
        """Closed by :meth:`close` (a forked child's copy of an open writer is not)."""
        return self._closed

    def _check_usable(self) -> None:
        if self._closed:
            raise closed_store(
                f"saga log {self._path!r} is closed (by close(), or at the end of "
                "`async with SagaOrchestrator(store)`), and a SQLiteStore is not opened "
                "again: make a new SQLiteStore on the file (and an orchestrator for it); a "
                "saga it was running stays executing under this process, and recovery "
                "finishes it once the process exits: close the store only once its sagas "
                "have finished"
            )
        if os.getpid() != self._pid:  # its thread is gone, its connections are the parent's
            raise closed_store(
                f"saga log {self._path!r} was opened by process {self._pid} before a fork(); "
                "open a SQLiteStore in each process that uses it"
            )

    def _set_timeout(self, ms: int) -> None:
        if self._timeout_ms != ms:
            self._conn.execute(f"PRAGMA busy_timeout={ms}")
            self._timeout_ms = ms

    def _commit(self, jobs: list[Job], wait: bool) -> list[Any]:
        conn = self._conn
        self._set_timeout(self._wait_ms if wait else 0)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            if not wait and _is_busy(error):
                raise _Busy from error
            raise
        try:
            results = _run_jobs(conn, jobs)
            conn.execute("COMMIT")
        except sqlite3.OperationalError as error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if not wait and _is_busy(error):
                raise _Busy from error
            raise
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.commits += 1
        self.jobs += len(jobs)
        self._since_checkpoint += 1
        return results

    def _failure(self, error: BaseException) -> StoreError:
        if isinstance(error, StoreError):
            return error
        damaged = corrupt_log(self._path, error) if isinstance(error, sqlite3.Error) else None
        if damaged is not None:
            damaged.__cause__ = error
            return damaged
        text = f"cannot write saga log {self._path!r}: {error_text(error)}"
        if isinstance(error, sqlite3.OperationalError) and _is_busy(error):
            text += (
                f" (another connection held its write lock longer than busy_timeout, "
                f"{timeout_text(self._wait_ms / 1000)}: a process keeping a transaction open, or "
                "a long write; end it, or raise SQLiteStore(busy_timeout=...))"
            )
        failure = StoreError(text)
        failure.__cause__ = error
        return failure

    async def submit(self, job: Job, *, alone: bool) -> Any:
        """Commit ``job`` and return its result once durable.

        ``alone`` says no other saga of this store is in flight: the job then
        commits at once instead of waiting for companions.
        """
        if self.dead is not None:  # (closed since, too: its process is dead all the same)
            raise process_died(self.dead)
        self._check_usable()
        if self._read_only:
            raise StoreError(f"saga log {self._path!r} is opened read-only")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            await self._adopt(loop)
        if alone and self._inline and not self._pending and not self._thread_busy:
            try:
                result = self._commit([job], wait=False)[0]
            except _Busy:
                pass
            except Exception as error:
                raise self._failure(error) from error
            else:
                self._maybe_checkpoint()
                return result
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(job)
        self._futures.append(future)
        if not self._scheduled and not self._thread_busy:
            self._scheduled = True
            loop.call_soon(self._flush)
        try:
            return await future
        except asyncio.CancelledError:
            await self._settle_cancelled(future)
            raise

    def crash(self, what: str) -> None:
        """A simulated crash of the process (``what``): refuse every write from now on,
        and fail those queued, never to commit. A batch committing on the writer thread
        may commit, as at a kill; its callers stop all the same."""
        self.dead = what
        waiting = [*self._futures, *(self._thread_futures if self._thread_busy else ())]
        self._pending, self._futures = [], []
        for future in waiting:
            if not future.done():
                future.set_exception(process_died(what))

    def _check_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Refuse a write from ``loop`` while the loop that wrote last still runs (in
        another thread): the two would share one connection and one write queue, whose
        transactions and wake-ups then mix (writes failing with "not an error", or never
        answered). Refused too while that loop, stopped but not closed (to be run
        again), has writes queued or committing: taken over, they were dropped, and its
        sagas waited for them for good once it ran again."""
        earlier = self._loop
        if earlier is None or earlier is loop or earlier.is_closed():
            return
        if earlier.is_running():
            raise refusing_this_loop(
                f"saga log {self._path!r}: this SQLiteStore is in use by an event loop "
                "still running in another thread; a store serves one event loop at a time: "
                "open a SQLiteStore on the same file for each thread's event loop"
            )
        waiting = [*self._futures, *(self._thread_futures if self._thread_busy else ())]
        if any(not future.done() for future in waiting):
            raise refusing_this_loop(
                f"saga log {self._path!r}: this SQLiteStore has writes queued by an event "
                "loop that has not ended (stopped, to be run again); a store serves one "
                "event loop at a time: run that loop until its sagas finish, or open a "
                "SQLiteStore on the same file for each event loop"
            )

    async def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """Queue writes in ``loop`` from now on: the first one, or the next after an
        earlier loop ended (``asyncio.run()`` again). What that loop left behind — a
        checkpoint on the writer thread whose end it was to be told of (even one begun
        by a commit made inline, before any write was queued), a flush it was to run —
        would otherwise hold every write here, for good. Refused while the loop that
        wrote last still runs (see :meth:`_check_loop`)."""
        self._check_loop(loop)
        self._loop = loop
        job = self._thread_job
        watch = None
        if self._thread_busy and (job is None or job.get_loop() is not loop):
            # The thread runs its jobs in order: once this one has run, so has that.
            # Waited out even by a cancelled caller: left half adopted (the loop taken,
            # that job still marked running), every later write here queued for good.
            watch = CancellationWatch()
            await wait_out(loop.run_in_executor(self._executor, _nothing))
            self._thread_busy = False
            self._thread_job = None
            self._thread_futures = []
        if any(future.get_loop() is not loop for future in self._futures):
            # Their callers' loop is gone, and they with it: nothing waits for them.
            kept = [
                (job, future)
                for job, future in zip(self._pending, self._futures, strict=True)
                if future.get_loop() is loop
            ]
            self._pending = [job for job, _ in kept]
            self._futures = [future for _, future in kept]
        self._scheduled = False  # (a flush the ended loop was to run never will)
        self._flush_later()
        if watch is not None and watch.came():
            raise asyncio.CancelledError  # (its write was not queued: never committed)

    async def _settle_cancelled(self, future: asyncio.Future[Any]) -> None:
        """The caller of a write was cancelled: make its fate known before it leaves.

        A write still queued is dropped (never committed); one that committed, or that
        was committing on the writer thread and did, raises
        :class:`CommittedThenCancelled` with its result, so the caller can account
        for it. Otherwise the plain cancellation goes on.
        """
        if future.done() and not future.cancelled():
            if future.exception() is None:
                raise CommittedThenCancelled(future.result())
            return
        for position, queued in enumerate(self._futures):
            if queued is future:  # not sent yet: never commit it
                del self._futures[position]
                del self._pending[position]
                return
        batch = self._thread_job
        futures = self._thread_futures  # (the next batch's, once this one is done)
        if batch is None or future not in futures:
            return
        await wait_out(batch)  # on the writer thread: wait for the outcome
        if not batch.cancelled() and batch.exception() is None:
            raise CommittedThenCancelled(batch.result()[futures.index(future)])

    def _flush(self) -> None:
        self._scheduled = False
        if self._thread_busy:  # a checkpoint runs: flushed once it is done
            return
        jobs, futures = self._pending, self._futures
        self._pending, self._futures = [], []
        if any(future.cancelled() for future in futures):  # their callers are gone:
            kept = [(j, f) for j, f in zip(jobs, futures, strict=True) if not f.cancelled()]
            jobs, futures = [j for j, _ in kept], [f for _, f in kept]  # never commit them
        if not jobs:
            return
        if self._inline:
            try:
                results = self._commit(jobs, wait=False)
            except _Busy:
                pass
            except Exception as error:
                _settle(futures, None, self._failure(error))
                return
            else:
                _settle(futures, results, None)
                self._maybe_checkpoint()
                return
        self._thread_busy = True
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._executor, self._commit, jobs, True)
        done.add_done_callback(partial(self._thread_done, futures))
        self._thread_job = done
        self._thread_futures = futures

    def _thread_done(self, futures: list[asyncio.Future[Any]], done: asyncio.Future[Any]) -> None:
        self._thread_busy = False
        if done.cancelled():
            _settle(futures, None, StoreError(f"write to saga log {self._path!r} was cancelled"))
        elif done.exception() is not None:
            _settle(futures, None, self._failure(done.exception()))  # type: ignore[arg-type]
        else:
            _settle(futures, done.result(), None)
        self._maybe_checkpoint()
        self._flush_later()

    def _flush_later(self) -> None:
        if self._pending and not self._scheduled and not self._thread_busy:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    # ------------------------------------------------------------- checkpoints

    def _maybe_checkpoint(self) -> None:
        if not self._inline or self._thread_busy or self._since_checkpoint < CHECKPOINT_EVERY:
            return
        self._since_checkpoint = 0
        # This process's writes wait for the checkpoint (queued, then committed together):
        # a checkpoint racing them never reaches the end of the WAL, and SQLite restarts
        # the WAL from its beginning only after a complete one, so it would grow forever.
        self._thread_busy = True
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._executor, self._checkpoint)
        done.add_done_callback(self._checkpoint_done)
        self._thread_job = done
        self._thread_futures = []

    def _checkpoint(self) -> None:
        # RESTART, not PASSIVE: under other processes' steady writes a passive checkpoint
        # never catches up with the end of the WAL, which then grows forever. This one
        # takes the write lock while it copies, so the next write starts the WAL over.
        # It waits for nothing: with the lock taken or a reader still in the WAL it does
        # what a passive one does, and the next one tries again.
        reader = self._reader_conn()
        reader.execute("PRAGMA busy_timeout=0")
        try:
            reader.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
        finally:
            reader.execute(f"PRAGMA busy_timeout={self._wait_ms}")

    def _checkpoint_done(self, done: asyncio.Future[Any]) -> None:
        self._thread_busy = False
        if not done.cancelled():
            done.exception()  # a failed checkpoint is tried again next time
        self._flush_later()

    # ------------------------------------------------------------------- reads

    def _reader_conn(self) -> sqlite3.Connection:
        if self._reader is None:
            self._reader = self._open_reader()
        return self._reader

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the reader connection, off the event loop, in one read
        transaction: every statement of it reads the log as of the first one.

        (Each statement on its own saw what had committed by then, so a commit between
        two, of another process or of this one's own writer, showed a saga and its
        records from two moments: EXECUTING with every step completed, say.)
        """
        self._check_usable()
        loop = asyncio.get_running_loop()

        def run() -> T:
            conn = self._reader_conn()
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                if conn.in_transaction:  # (read only: nothing to commit)
                    conn.execute("ROLLBACK")

        try:
            return await loop.run_in_executor(self._executor, run)
        except sqlite3.Error as error:
            damaged = corrupt_log(self._path, error)
            if damaged is not None:
                raise damaged from error
            raise StoreError(f"cannot read saga log {self._path!r}: {error}") from error

    async def close(self) -> None:
        """Commit what is pending, then close the connections and the thread."""
        if self._closed:
            return
        if os.getpid() != self._pid:  # a forked child: the connections are the parent's
            self._closed = True
            return
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            await self._adopt(loop)
        while self._pending or self._thread_busy or self._scheduled:
            if self._thread_busy and self._thread_job is not None:
                await asyncio.wait([self._thread_job])
            elif self._pending and not self._scheduled:
                self._flush()
            await asyncio.sleep(0)
        self._closed = True

        def shut() -> None:
            if self._reader is not None:
                self._reader.close()
            self._conn.close()

        await loop.run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)


def _run_jobs(conn: sqlite3.Connection, jobs: list[Job]) -> list[Any]:
    """Run ``jobs`` in one transaction; each job's statements in order.

    Statement jobs submitted together belong to different sagas (a saga waits for
    each write before the next), so their statements are grouped by SQL text and
    run with one ``executemany`` each, in an order that keeps every job's own
    statements in order; a function job first runs what is grouped.
    """
    if len(jobs) == 1:
        job = jobs[0]
        if callable(job):
            return [job(conn)]
        execute = conn.cursor().execute  # (one cursor, not one per statement)
        for sql, params in job:
            execute(sql, params)
        return [None]
    results: list[Any] = []
    together: list[Statements] = []
    for job in jobs:
        if callable(job):
            _run_together(conn, together)
            together = []
            results.append(job(conn))
        else:
            together.append(job)
            results.append(None)
    _run_together(conn, together)
    return results


def _run_together(conn: sqlite3.Connection, jobs: list[Statements]) -> None:
    """Run the statements of ``jobs``: one ``executemany`` per SQL text, the texts in
    an order that keeps each job's statements in order (job by job if none does)."""
    grouped: dict[str, list[tuple[Any, ...]]] = {}
    before: dict[str, set[str]] = {}  # SQL text -> texts some job runs just before it
    for job in jobs:
        previous = None
        for sql, params in job:
            rows = grouped.get(sql)
            if rows is None:
                grouped[sql] = [params]
                before[sql] = set()
            else:
                rows.append(params)
            if previous is not None and previous != sql:
                before[sql].add(previous)
            previous = sql
    order = _in_order(before)
    cursor = conn.cursor()  # (one for them all, not one per statement)
    if order is None:  # two jobs need two texts in opposite orders
        for job in jobs:
            for sql, params in job:
                cursor.execute(sql, params)
        return
    for sql in order:
        rows = grouped[sql]
        if len(rows) == 1:
            cursor.execute(sql, rows[0])
        else:
            cursor.executemany(sql, rows)


def _in_order(before: dict[str, set[str]]) -> list[str] | None:
    """The texts, each after those it must follow, otherwise in first-seen order
    (``None`` when no order satisfies every job)."""
    order: list[str] = []
    placed: set[str] = set()
    waiting = list(before)
    while waiting:
        for position, sql in enumerate(waiting):
            if before[sql] <= placed:
                order.append(sql)
                placed.add(sql)
                del waiting[position]
                break
        else:
            return None
    return order


def _settle(
    futures: list[asyncio.Future[Any]], results: list[Any] | None, error: StoreError | None
) -> None:
    if error is not None:
        _fail(futures, error)
        return
    assert results is not None
    for index, future in enumerate(futures):
        if not future.done():
            future.set_result(results[index])


def _fail(futures: list[asyncio.Future[Any]], error: StoreError) -> None:
    """Fail each of ``futures`` with ``error``, each caller with an object of its own:
    the writes of many sagas failed together, and each caller adds its saga's notes (and
    marks) to the error it raises."""
    first = True
    for future in futures:
        if not future.done():
            future.set_exception(error if first else _twin(error))
            first = False


def _twin(error: StoreError) -> StoreError:
    """A new ``error``: its class, args and attributes, notes of its own (a copy of
    its list), the same cause, context and traceback.

    Made without its ``__init__`` (which ``copy.copy()`` calls with its args: one taking
    other arguments than its message failed, or made the message again from the message)."""
    cls = type(error)
    try:
        twin = cls.__new__(cls, *error.args)
        twin.__dict__.update(error.__dict__)
    except Exception:  # a class of its own making (its own __new__): its message, at least
        twin = StoreError(*error.args)
    notes = getattr(error, "__notes__", None)
    if isinstance(notes, list):
        twin.__notes__ = list(notes)
    twin.__cause__ = error.__cause__
    twin.__context__ = error.__context__
    twin.__suppress_context__ = error.__suppress_context__
    return twin.with_traceback(error.__traceback__)


__all__ = [
    "CHECKPOINT_EVERY",
    "CommittedThenCancelled",
    "GroupWriter",
    "Job",
    "Statements",
]
