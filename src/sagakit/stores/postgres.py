"""A saga log in PostgreSQL shared by many workers: leases, fencing, shared recovery.

Every running saga is owned by one store (one worker) through a lease that the
store's heartbeat renews; lease times are the database's ``now()``. A saga whose
lease expired is an orphan that any worker may claim (``FOR UPDATE SKIP LOCKED``);
each claim increments the saga's fencing token, and every write of the saga checks
it, so a worker paused past its lease cannot record anything for a saga another
worker now owns (its writes raise :class:`~sagakit.LeaseLost`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from .._checks import as_float
from .._hooks import process_died
from .._runs import step_end_error, unended
from .._seconds import seconds_number, timeout_text
from .._serialization import JsonSerializer
from .._shielding import wait_out
from .._tracebacks import hide_from_pytest
from ..exceptions import (
    LeaseLost,
    SagaAlreadyExecuting,
    SagaAlreadyFailed,
    SerializationError,
    StoreConfigError,
    StoreError,
)
from ..status import SagaStatus
from ..transitions import TransitionKind
from ._fingerprint import definition_fingerprint
from ._pg_claims import RecoveryClaims, unbound
from ._pg_close import Shutdown
from ._pg_connection import Connections
from ._pg_crash import SimulatedCrashes
from ._pg_driver import import_driver
from ._pg_errors import connection_lost, write_lost
from ._pg_held import Held
from ._pg_leases import Leases
from ._pg_operator import OperatorCalls
from ._pg_patience import BRIEF, KNOWN_DOWN, Outage, Patience
from ._pg_reads import SagaReads
from ._pg_schema import check_schema_name
from ._pg_settle import Doubt, Settled, settle
from ._pg_sql import statements
from ._pg_writer import (
    WRITTEN,
    GroupWriter,
    IdTaken,
    Rejected,
    Write,
    batch_params,
    id_taken,
    write_for,
)
from ._protocol import (
    CommittedThenCancelled,
    OrphanedSaga,
    SagaRunView,
    mark_nothing_logged,
    store_serializer,
)
from ._reused import check_same_stored_run

# pytest shows a failing test's line, not this module's code, for an error this store
# raises on purpose (a saga id already running, reused; see _tracebacks).
__tracebackhide__ = hide_from_pytest

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

    from ..records import SagaMetadata
    from ..transitions import Transition

logger: logging.Logger = logging.getLogger("sagakit")

_T = TypeVar("_T")

DEFAULT_LEASE = 30.0
"""Seconds a saga stays owned by its worker without a heartbeat."""

MAX_LEASE = 1e12
"""The longest lease: ``now()`` plus much more is past PostgreSQL's last timestamp."""

MAX_ID_BYTES = 2048
"""The longest saga id, in UTF-8 bytes: the tables' indexes hold whole ids, and
PostgreSQL refuses an index entry over 2,704 bytes (a third of a page)."""


@dataclass(frozen=True, slots=True)
class PostgresStats:
    """What a :class:`PostgresStore` sent: statements, round trips, batched writes."""

    statements: int
    round_trips: int
    batches: int
    writes: int

    def __repr__(self) -> str:
        return (
            f"<PostgresStats {self.statements} statements, {self.round_trips} round trips, "
            f"{self.writes} writes in {self.batches} batches>"
        )


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise StoreConfigError(f"{name} must be a positive number of seconds, got {value!r}")
    return as_float(value)  # 10**400: infinity, refused as such below


def _finite(name: str, value: object, long_one: str) -> float:
    """:func:`_positive`, and finite: what giving a long one (3600) lets happen, ``long_one``."""
    seconds = _positive(name, value)
    if math.isinf(seconds):
        raise StoreConfigError(
            f"{name} must be a finite number of seconds, got {value!r}; "
            f"give a long one (3600) {long_one}"
        )
    return seconds


def _check_id(saga_id: str) -> None:
    """Refuse an id the log cannot hold before its row is written: the row went in, and
    its first step's record was refused, leaving an orphan no worker could run."""
    try:
        size = len(saga_id.encode())
    except UnicodeEncodeError as error:
        raise StoreError(
            f"saga id {saga_id[:40]!r} cannot be stored in PostgreSQL ({error.reason}); "
            "use an id that is valid UTF-8"
        ) from error
    if size > MAX_ID_BYTES:
        raise StoreError(
            f"saga id {saga_id[:40]!r}... is {size} bytes of UTF-8, longer than the "
            f"PostgreSQL saga log takes ({MAX_ID_BYTES}: its indexes hold whole ids); "
            "use a shorter id, such as a hash of this one"
        )
    if "\x00" in saga_id:
        raise StoreError(
            f"saga id {saga_id[:40]!r} contains a NUL character, which PostgreSQL text "
            "cannot hold; use an id without one"
        )


def _check_arguments_size(serializer: object, name: str, args: str, kwargs: str) -> None:
    """Hold a saga's arguments, stored in two columns, to the serializer's ``max_size``
    together, as the SQLite store holds them (one value): each alone let through up to
    twice the limit, arguments SQLite refuses."""
    limit = getattr(serializer, "max_size", None)
    if not isinstance(limit, int) or len(args) + len(kwargs) <= limit:
        return
    size = len(args.encode()) + len(kwargs.encode())
    if size > limit:
        raise SerializationError(
            f"cannot store the arguments of saga {name!r}: it takes {size} bytes, more than "
            f"the limit of {limit}; store an id, not the whole object, or raise the store's "
            "max_size"
        )


class PostgresStore(
    Connections, Leases, SagaReads, RecoveryClaims, OperatorCalls, Shutdown, SimulatedCrashes
):
    """A durable saga log in PostgreSQL that several worker processes share.

    ``dsn`` is a libpq connection string or ``postgresql://`` URL. Tables live in
    ``schema`` (created and migrated on first use). ``lease`` is how long a saga
    stays owned without a heartbeat; the heartbeat renews every lease this store
    holds in one statement every ``heartbeat`` seconds (default ``lease / 3``).
    ``connect_timeout`` is how long a call waits for a connection (and tries again
    while connections are lost); ``command_timeout`` (by default ``connect_timeout``)
    how long a statement waits for its answer before it is given up on as a connection
    gone silent: longer lets a statement that is merely slow (``history()`` of a large
    log) finish. ``min_size``/``max_size`` bound the connection pool; ``serializer`` turns
    results, events and arguments into text (JSON with type tags unless given).
    """

    durable = True
    # Its public settings, declared for its bases too in PostgresStoreBase, are kept here
    # for readers of the public class.
    dsn: str
    schema: str
    lease: float
    heartbeat: float
    min_size: int
    max_size: int
    connect_timeout: float
    command_timeout: float
    serializer: JsonSerializer
    owner: str

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "sagakit",
        lease: float = DEFAULT_LEASE,
        heartbeat: float | None = None,
        min_size: int = 1,
        max_size: int = 8,
        connect_timeout: float = 10.0,
        command_timeout: float | None = None,
        serializer: JsonSerializer | None = None,
    ) -> None:
        if not isinstance(dsn, str) or not dsn:
            raise StoreConfigError(f"PostgresStore needs a connection string or URL, got {dsn!r}")
        self.dsn = dsn
        self.schema = check_schema_name(schema)
        self.lease = _positive("lease", lease)
        if not self.lease <= MAX_LEASE:  # the database cannot add more to now()
            raise StoreConfigError(
                "lease must be a positive, finite number of seconds up to "
                f"{seconds_number(MAX_LEASE)} (about 31,000 years; the database adds it to "
                f"now()), got {lease!r}"
            )
        self.heartbeat = _positive("heartbeat", heartbeat if heartbeat is not None else lease / 3)
        if self.heartbeat >= self.lease:
            raise StoreConfigError(
                f"heartbeat ({timeout_text(self.heartbeat)}) must be shorter than the lease "
                f"({timeout_text(self.lease)}), or leases expire between renewals"
            )
        for name, size in (("min_size", min_size), ("max_size", max_size)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise StoreConfigError(f"{name} must be a whole number >= 1, got {size!r}")
        if max_size < min_size:
            raise StoreConfigError(f"max_size ({max_size}) must be >= min_size ({min_size})")
        self.min_size = min_size
        self.max_size = max_size
        # Finite: the migration's lock_timeout is a whole number.
        self.connect_timeout = _finite(
            "connect_timeout", connect_timeout, "to wait that long for the server"
        )
        # How long a statement waits for its answer (see _pg_answer): connect_timeout's
        # unless given, so a short connect timeout can leave room for a slow statement.
        if command_timeout is None:
            self.command_timeout = self.connect_timeout
        else:
            # Finite: a silent connection would hang a call.
            self.command_timeout = _finite(
                "command_timeout",
                command_timeout,
                "to let a statement run that long (a connection gone silent holds a call as long)",
            )
        self.serializer = store_serializer(serializer)
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{os.urandom(4).hex()}"
        self._sql = statements(self.schema)
        self._pool: AsyncConnectionPool[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # where the pool was opened
        self._closed = False  # by close(): no implicit reopening on the next use
        self._opening = asyncio.Lock()
        self._heartbeat: asyncio.Task[None] | None = None
        self._writer = GroupWriter(self._apply)
        # Sagas this store owns -> their lease (fencing token, start count, claim), taken
        # and given up whole: the heartbeat renews these, and only these are written.
        self._held: dict[str, Held] = {}
        self._new: dict[str, dict[str, Any]] = {}  # generated ids' rows, not yet sent
        self._unlogged: set[str] = set()  # generated ids found taken: never written
        # Fenced out: refuse further writes locally. True for a saga this store released
        # itself (release_leases(), close()), whose LeaseLost says so.
        self._lost: dict[str, bool] = {}
        self._staged: dict[str, list[Write]] = {}  # written with the saga's next record()
        # Sagas this store owns -> the run their lease is for; claimed, the orphan the
        # claim returned (None until then), which recovery binds to the run it makes of
        # it (_bind_claim), else its first run writing it does. The per-saga state above
        # is that run's alone.
        self._runs: dict[str, SagaRunView | OrphanedSaga | None] = {}
        # Runs (or claims' orphans) fenced out whose saga this store took anew (a claim,
        # a begin) meanwhile, by id() -> the run, and whether this store released it
        # (LeaseLost's ``released``): they write nothing more, their finish() clears nothing.
        self._retired: dict[int, tuple[SagaRunView | OrphanedSaga, bool]] = {}
        self._doubts: dict[str, Doubt] = {}  # submissions that may have committed or not
        self._outage = Outage(self.schema)  # logs the store's waits for the server
        # A call gave up on the server (connect_timeout without a connection): until a
        # statement gets one again, the next ones try for KNOWN_DOWN, not connect_timeout
        # each (a failing saga's later writes, one after another, each waited that).
        self._down = False
        self._token = int.from_bytes(os.urandom(7), "big")  # the last write token handed out
        self._statements = 0
        self._round_trips = 0
        self._batches = 0
        self._writes = 0

    @property
    def stats(self) -> PostgresStats:
        """Counters of what this store sent, for benchmarks and monitoring."""
        return PostgresStats(self._statements, self._round_trips, self._batches, self._writes)

    # ------------------------------------------------------------ the protocol

    async def begin(self, run: SagaRunView) -> SagaMetadata | None:
        if self._writer.dead is not None:  # its process "died" (crash(process=True))
            raise process_died(self._writer.dead)
        _check_id(run.id)
        definition = run.definition
        args_text = self.serializer.dumps(
            definition.args, what=lambda: f"the arguments of saga {run.name!r}"
        )
        kwargs_text = self.serializer.dumps(
            definition.kwargs, what=lambda: f"the keyword arguments of saga {run.name!r}"
        )
        _check_arguments_size(self.serializer, run.name, args_text, kwargs_text)
        params = {
            "id": run.id,
            "name": run.name,
            "explicit": run.explicit_id,
            "factory": definition.factory is not None,
            "policy": definition.recovery,
            "fingerprint": definition_fingerprint(definition, self.serializer.dumps),
            "args": args_text,
            "kwargs": kwargs_text,
            "total": run.total_steps,
            "owner": self.owner,
            "lease": self.lease,
        }
        if not run.explicit_id:
            # A generated id is new by construction, and nothing acts before the first
            # step starts: the row goes out with that step's start (one round trip
            # less; with many sagas in flight, their starts share statements too).
            self._new[run.id] = {
                "saga_id": run.id,
                "name": run.name,
                "factory": params["factory"],
                "policy": params["policy"],
                "fingerprint": params["fingerprint"],
                "args": params["args"],
                "kwargs": params["kwargs"],
                "total": params["total"],
                "owner": self.owner,
                "lease": self.lease,
            }
            self._take(run.id, run, Held(fence=1))  # a new row's fencing token
            return None
        # The row carries a write token of this begin: if the connection is lost while
        # it commits, begun again on a new one, it finds the row its first try wrote.
        self._token += 1
        params["token"] = self._token
        try:
            fence, earlier, recorded = await self._again(
                lambda: self._begin_row(run.id, params), "beginning"
            )
        except asyncio.CancelledError:
            # The caller is gone, and nothing will run the saga; but a try may have
            # committed its row (cancelled as its answer came back; the driver waits
            # for a statement being cancelled to end). Take the row out again, as the
            # SQLite store does: left running under a lease nobody renews, it made the
            # next execute() of the id raise SagaAlreadyExecuting, and a worker ran
            # the saga once the lease ran out.
            done = await wait_out(self._unbegin(run.id, params))
            if not done.cancelled() and done.exception() is not None:
                logger.warning(
                    "sagakit could not take out the row of cancelled saga %s (%s) "
                    "(recovered once its lease runs out): %s",
                    run.name,
                    run.id,
                    done.exception(),
                    extra={"saga_id": run.id, "saga_name": run.name},
                )
            raise
        if fence is None:
            if recorded is not None:  # refuse the id to another saga, or other arguments
                name, args, kwargs, fingerprint = recorded
                now: tuple[str, str] = (params["args"], params["kwargs"])  # type: ignore[assignment]
                check_same_stored_run(
                    run.id, definition, name, (args, kwargs), now, self.serializer, fingerprint
                )
            if isinstance(earlier, SerializationError):
                raise earlier
            return earlier
        self._take(run.id, run, Held(fence))  # a new row, or an earlier run's records deleted
        return None

    async def _unbegin(self, saga_id: str, params: dict[str, Any]) -> None:
        """Delete the row that a begin (``params``) wrote, if it did and it is unchanged."""
        # (Given up on, on a silent connection: the row's lease runs out.)
        await self._run(
            self._sql.unbegin, {"id": saga_id, "owner": self.owner, "token": params["token"]}
        )

    async def _begin_row(
        self, saga_id: str, params: dict[str, Any]
    ) -> tuple[
        int | None, SagaMetadata | SerializationError | None, tuple[str, str, str, str] | None
    ]:
        """Insert (or restart) the row of an explicit id: its fencing token, or ``None``,
        the earlier run that completed (or the :class:`SerializationError` of reading its
        events exactly), and its name, arguments, keyword arguments and fingerprint as
        written. Safe to do again after a lost connection."""
        found = await self._run(self._sql.begin, params)
        if found:
            return int(found[0][0]), None, None
        fence = await self._begin_again(saga_id, params)
        if isinstance(fence, tuple):
            # Its events go back to execute()'s caller as the steps' own: read exactly (an
            # error handed back, raised once the id is known to be this saga's).
            try:
                found = await self._run(self._sql.get, (saga_id,))  # (begin tries again)
                earlier = self._sagas(found, exact=True)
            except SerializationError as unreadable:
                return None, unreadable, fence
            return None, earlier[0] if earlier else None, fence
        return fence, None, None

    async def _begin_again(
        self, saga_id: str, params: dict[str, Any]
    ) -> int | tuple[str, str, str, str]:
        """The id exists: refuse it, report it completed (its name, arguments and keyword
        arguments as written, and its fingerprint), or restart it.

        A row this very begin wrote (its write token is there: its first try committed
        but its connection was lost) is this run's: its fencing token is returned. One
        transaction, whose answers must come within ``connect_timeout`` all told."""
        async with self._conn() as conn:
            return await self._answered(self._restart(conn, saga_id, params))

    async def _restart(
        self, conn: AsyncConnection[Any], saga_id: str, params: dict[str, Any]
    ) -> int | tuple[str, str, str, str]:
        """:meth:`_begin_again`'s transaction on ``conn``."""
        sql = self._sql
        async with conn.transaction():
            self._round_trips += 2  # BEGIN and COMMIT
            cursor = await conn.execute(sql.conflict, (saga_id,))
            self._statements += 1
            self._round_trips += 1
            row = await cursor.fetchone()
            if row is None:  # deleted meanwhile: take the id
                cursor = await conn.execute(sql.begin, params)
            else:
                (status, running, resolved, dead_reason, owner, fence, last_write, name, args,
                 kwargs, fingerprint) = row  # fmt: skip
                if running and last_write == params["token"] and owner == self.owner:
                    return int(fence)  # (FOR UPDATE waited for it, if still committing)
                if running:
                    raise SagaAlreadyExecuting(saga_id, dead_reason)
                if status == SagaStatus.COMPLETED:
                    return (name, args, kwargs, fingerprint)
                if status == SagaStatus.FAILED and not resolved:
                    raise SagaAlreadyFailed(saga_id)
                await conn.execute(sql.delete_steps, (saga_id,))
                self._statements += 1
                self._round_trips += 1
                cursor = await conn.execute(sql.restart, params)
                self._statements += 1
                self._round_trips += 1
            self._statements += 1
            self._round_trips += 1
            again = await cursor.fetchone()
            if again is None:
                raise SagaAlreadyExecuting(saga_id)
            return int(again[0])

    def _write(self, run: SagaRunView, transition: Transition) -> Write | None:
        """The write recording ``transition``, or ``None`` when the log does not keep it."""
        kind = transition.kind
        if kind not in WRITTEN:
            return None
        self._check_current(run)
        saga_id = run.id
        held = self._held.get(saga_id)
        if held is None:
            if saga_id in self._lost:
                raise LeaseLost(saga_id, self._lost[saga_id])
            raise StoreError(
                f"saga {saga_id!r} was neither begun nor claimed by this store; "
                "a store records only the sagas it owns"
            )
        if kind is TransitionKind.SAGA_STARTED and not held.claimed:
            return None  # begin() already recorded the start
        write = write_for(
            transition,
            held.fence,
            self.serializer.dumps,
            run_error=run.error,
            total=run.total_steps,
            step_error=step_end_error(run, transition),
        )
        if kind is TransitionKind.STEP_STARTED or kind is TransitionKind.COMPENSATION_STARTED:
            write.start_order = held.next_start()
        return write

    def stage(self, run: SagaRunView, transition: Transition) -> None:
        """Keep a transition that no side effect follows (a step's completion, a start)
        to be written in the same statement as the saga's next :meth:`record`.

        The orchestrator records again before it runs the next step or compensation, or
        returns, so a staged completion is durable before anything depends on it.
        Serializing happens here: an unstorable result fails at once.
        """
        if self._writer.dead is not None:  # its process "died": lost with it (the saga
            return  # stops at its next record())
        write = self._write(run, transition)
        if write is not None:
            self._staged.setdefault(run.id, []).append(write)

    async def record(self, run: SagaRunView, transition: Transition) -> None:
        if self._writer.dead is not None:  # its process "died" (crash(process=True)): its
            raise process_died(self._writer.dead)  # leases given up since are no failure
        saga_id = run.id
        self._check_current(run)
        if self._unlogged and saga_id in self._unlogged:
            # The run's generated id belongs to another saga in the log: nothing of
            # the run is there, and nothing may be written under its id. Refused, not
            # taken for written: the orchestrator tells listeners only what the log has
            # (of this run, its end unrecorded: SAGA_STOPPED).
            self._staged.pop(saga_id, None)
            refused = id_taken(saga_id)
            mark_nothing_logged(refused, saga_id)
            raise refused
        if self._doubts and saga_id in self._doubts:
            # An earlier write may have committed or not: find out (and stage again what
            # did not) before anything more is written; raises while the log is unreachable.
            await self._settle(saga_id)
        write = self._write(run, transition)
        writes = self._staged.pop(saga_id, [])
        carried = len(writes)
        if write is not None:
            if write.final:
                # No transition carried these records' end: write it with the run's.
                writes.extend(
                    Write(
                        saga_id,
                        run.name,
                        write.fence,
                        write.status,
                        index=record.index,
                        compensation=record.compensation,
                        step_name=record.name,
                        step_status=str(record.status),
                        attempts=record.attempts,
                        duration=record.duration,
                        step_error=record.error,
                    )
                    for record in unended(run)
                )
            writes.append(write)
        if not writes:
            return
        # A generated id's row stays in self._new until its write is back: meanwhile
        # release_leases() leaves the run alone, as one that has not written (the write
        # may land after the release, leaving a row under a lease that nobody renews).
        new = self._new.get(saga_id) if self._new else None
        try:
            await self._send(saga_id, writes, carried, new)
        except LeaseLost:
            released = self._retired_run(run)
            if released is not None:  # its saga was taken anew meanwhile: leave that be
                raise LeaseLost(saga_id, released) from None
            held = self._held.get(saga_id)
            if held is not None and held.fence == writes[-1].fence:
                del self._held[saga_id]  # (else a newer lease of this store's: left alone)
            if self._lost.setdefault(saga_id, False):
                # Refused because this store released the saga while the write was on
                # its way: say so, not that the lease ran out.
                raise LeaseLost(saga_id, released=True) from None
            raise
        except IdTaken as taken:
            self._unlogged.add(saga_id)  # another saga's id: nothing may be written under it
            mark_nothing_logged(taken, saga_id)  # (its end, when it was the run's first write)
            raise
        except BaseException as error:
            if isinstance(error.__cause__, Rejected):
                # Refused and rolled back: none of it was applied. The staged transitions
                # happened all the same; they go with the next write (the orchestrator
                # tells them once that one commits), and so does the saga's row.
                if new is not None:
                    writes[0].new = None
                    new = None  # left in self._new
                    if writes[-1].final:  # its row went with it: none of its writes did
                        mark_nothing_logged(error, saga_id)
                if carried:
                    self._staged[saga_id] = [*writes[:carried], *self._staged.get(saga_id, ())]
            # Otherwise it may have committed or not: it is in self._doubts, settled
            # before the saga's next write. Cancelled while it was on its way, it is
            # settled now instead (the run's next write or finish() would), so that
            # one that committed is reported so, and the orchestrator tells listeners
            # what the log holds. If that fails (cancelled again, the log unreachable),
            # it stays in doubt. (Briefly: the caller is gone, and is not kept waiting
            # connect_timeout for the server.)
            elif isinstance(error, asyncio.CancelledError) and saga_id in self._doubts:
                try:
                    committed = await self._settle(saga_id, patience=Patience.lasting(BRIEF))
                except Exception:
                    committed = False
                if committed:
                    self._written(saga_id, writes)
                    raise CommittedThenCancelled from None
            raise
        finally:
            if new is not None:
                self._new.pop(saga_id, None)
        self._written(saga_id, writes)

    def _written(self, saga_id: str, writes: list[Write]) -> None:
        """``writes`` of ``saga_id`` are in the log: after the run's end, its lease is
        this store's no more."""
        if writes[-1].final:
            self._held.pop(saga_id, None)

    async def _send(
        self,
        saga_id: str,
        writes: list[Write],
        carried: int,
        new: dict[str, Any] | None,
        patience: Patience | None = None,
    ) -> None:
        """Submit one saga's ``writes`` (the first ``carried`` of them staged ones).

        If the connection is lost while they commit, find out (once reconnected)
        whether they did, and send them again if not: the call returns once they are
        durable, exactly once. The store keeps trying while connections are lost, up
        to ``patience``'s deadline (by default ``connect_timeout`` seconds after the
        first loss). If it cannot be found out by then (the log is still unreachable),
        or the caller was cancelled, they stay in doubt and raise.
        """
        self._check_loop()  # (the writer's task would be another loop's)
        holder = self._runs.get(saga_id)
        began = asyncio.get_running_loop().time()
        with self._outage.waiting(self.connect_timeout) as waiting:  # for the server
            for sent in itertools.count():
                self._token += 1
                token = writes[-1].token = self._token
                if new is not None:
                    writes[0].new = new
                try:
                    await self._submit(saga_id, writes, holder)
                    break
                except (LeaseLost, IdTaken):
                    waiting.reached()  # refused: the server answered
                    raise
                except BaseException as error:
                    if isinstance(error.__cause__, Rejected):
                        raise  # rolled back: nothing of it was applied
                    # This submission's token: the store's may have moved on with others'.
                    self._doubts[saga_id] = Doubt(token, writes, carried, new)
                    if not isinstance(error, StoreError):
                        raise  # (cancelled) settled by the saga's next write
                    lost = write_lost(error)
                    if lost:
                        waiting.lost(error)
                    if patience is None:
                        # From the first submission: it may have waited connect_timeout
                        # for a connection already, while the server was down.
                        patience = Patience(began + self._patience())
                    # The first loss is settled at once; only a lost connection is waited
                    # out (another error is sent again once, as before).
                    if sent and (not lost or not await patience.wait()):
                        if lost:
                            raise self._gave_up(error) from error.__cause__
                        raise
                    try:
                        committed = await self._settle(saga_id, stage=False, patience=patience)
                    except StoreError as unsettled:
                        name = writes[0].saga_name
                        logger.warning(
                            "sagakit could not settle a write in doubt of saga %s (%s): %s",
                            name,
                            saga_id,
                            unsettled,
                            extra={"saga_id": saga_id, "saga_name": name},
                        )
                        if connection_lost(unsettled):  # for connect_timeout
                            raise self._gave_up(error) from error.__cause__
                        raise error from error.__cause__
                    if committed:
                        break
                    new = writes[0].new  # still to send if the id may be another saga's
            waiting.reached()

    async def _submit(self, saga_id: str, writes: list[Write], holder: object) -> None:
        """Submit ``writes`` once (again with the fencing token a claim of this store
        moved on meanwhile, while the lease is still ``holder``'s run's)."""
        while True:
            try:
                await self._writer.submit(writes)
                return
            except LeaseLost:
                held = self._held.get(saga_id)
                if (
                    held is None
                    or held.fence <= writes[-1].fence
                    or self._runs.get(saga_id) is not holder  # taken anew: not ours
                ):
                    raise
                # Refused whole (nothing applied) because a claim of this store only
                # renewed the lease while the write was on its way, moving the token
                # on (see _claim): still ours, sent with the new token.
                for write in writes:
                    write.fence = held.fence

    async def _settle(
        self, saga_id: str, *, stage: bool = True, patience: Patience | None = None
    ) -> bool:
        """Settle the saga's submission in doubt: whether it committed. If it did not,
        its staged transitions are staged again (``stage``) for the next write. While
        connections are lost it is looked up again, until ``patience``'s deadline."""
        doubt = self._doubts[saga_id]
        holder = self._runs.get(saga_id)
        settled = await self._look_up(saga_id, doubt, patience)
        held = self._held.get(saga_id)
        if self._runs.get(saga_id) is not holder:
            # Taken anew meanwhile (its doubt dropped: that lease is over): settling moved
            # the new lease's fencing token on, if it is this store's. Nothing is staged.
            if settled.fence is not None and held is not None:
                held.fence = settled.fence
                for write in self._staged.get(saga_id, ()):
                    write.fence = settled.fence
            return settled.committed
        del self._doubts[saga_id]
        # With ``stage``, the writes in doubt may still be queued in the writer (their
        # caller was cancelled): they must go out unchanged, to be refused, so what is
        # staged again is a copy. Without it, ``_send`` sends its failed writes again.
        writes = [replace(w) for w in doubt.writes[: doubt.carried]] if stage else doubt.writes
        if settled.fence is not None:
            # The fencing token moved on, so that the write in doubt cannot commit late.
            if held is not None:
                held.fence = settled.fence
            for write in (*writes, *self._staged.get(saga_id, ())):
                write.fence = settled.fence
                write.new = None  # the row is there
        elif stage and doubt.new is not None and not settled.committed:
            self._new.setdefault(saga_id, doubt.new)  # to send again: refused if not ours
            if writes:
                writes[0].new = None
        if not settled.committed and stage and writes:
            self._staged[saga_id] = [*writes, *self._staged.get(saga_id, ())]
        return settled.committed

    async def _look_up(
        self, saga_id: str, doubt: Doubt, patience: Patience | None = None
    ) -> Settled:
        """:func:`settle` ``doubt`` (again on a new connection while the one it used is
        lost: see :meth:`_again`). Settling again is safe: it moves the fencing token on
        once more and reads the same token."""
        return await self._again(
            lambda: settle(self._run, self._sql, self.owner, saga_id, doubt),
            "settling a write in doubt",
            patience,
        )

    async def _again(
        self,
        attempt: Callable[[], Awaitable[_T]],
        what: str,
        patience: Patience | None = None,
    ) -> _T:
        """``attempt()``, again on a new connection while the one it used is lost (a
        server killing connections, a fail-over): after a backoff (see
        :class:`Patience`), none begun after ``patience``'s deadline (by default
        ``connect_timeout`` seconds after the first loss). An error that is not a lost
        connection (a statement the server refused) is raised at once."""
        with self._outage.waiting(self.connect_timeout) as waiting:
            while True:
                began = asyncio.get_running_loop().time()
                try:
                    if patience is None:
                        result = await attempt()
                    else:
                        with patience.bounding():  # its wait for a connection too
                            result = await attempt()
                except StoreError as error:
                    if not connection_lost(error):
                        raise  # (cancelled: raised as it is)
                    if patience is None:
                        # From the try's start: it may have waited connect_timeout for
                        # a connection already, while the server was down.
                        patience = Patience(began + self._patience())
                    waiting.lost(error)
                    if not await patience.wait():
                        raise self._gave_up(error) from error.__cause__
                    logger.debug("sagakit: %s again: %s", what, error)
                    continue
                waiting.reached()
                return result

    def _patience(self) -> float:
        """Seconds a call tries for the server: ``connect_timeout``, or less
        (:data:`KNOWN_DOWN`) while the server is known to be down (a call gave up on
        it, and no statement has had a connection since)."""
        if self._down:
            return min(KNOWN_DOWN, self.connect_timeout)
        return self.connect_timeout

    def _gave_up(self, error: StoreError) -> StoreError:
        """``error``, a lost connection, once the store stopped trying again; from now
        on the server is known to be down (see :meth:`_patience`)."""
        self._down = True
        if "connect_timeout" in str(error) or "command_timeout" in str(error):
            return error  # (said already: by a settling given up on, by a statement's wait)
        return StoreError(
            f"{error}; no connection to the server within {timeout_text(self.connect_timeout)} "
            "(connect_timeout): check that it is up and reachable, or give the store a "
            "longer connect_timeout to ride out longer outages"
        )

    async def _apply(self, writes: list[Write]) -> dict[str, str]:
        params = batch_params(writes)
        psycopg, _ = import_driver()
        async with self._conn() as conn:
            try:
                # On a connection gone silent, given up on as a lost one (in doubt).
                found = await self._answered(self._statement(conn, self._sql.apply, params))
            except psycopg.Error as error:
                if conn.broken:
                    raise  # the connection died: the batch may have committed
                # The server refused the statement and rolled it back: nothing of the
                # batch was applied, and the writer may send it again saga by saga.
                raise Rejected(self._refused(error)) from error
        self._statements += 1
        self._round_trips += 1
        self._batches += 1
        self._writes += len(writes)
        return {row[0]: row[1] for row in found}

    async def finish(self, run: SagaRunView) -> None:
        """Forget a finished (or fenced-out) run; its final state is already written.

        What it still has staged (its end could not be recorded), or in doubt and found
        not committed, is written now, so the saga's recovery does not run a step or
        compensation again that completed. A run forgotten with its lease still held
        (its end could not be written, or a cancelled recovery handed it back) gives
        the lease up, so any worker's next claim takes the saga at once (also when
        finish() is cancelled while it writes); if that fails too, the lease runs out.
        """
        dead = self._writer.dead
        if dead is not None and (
            run.id in self._held or run.id in self._staged or run.id in self._doubts
        ):
            # Its process "died" (crash(process=True)) before its end was written: nothing
            # is written, nor its lease forgotten (simulate_restart() releases it).
            raise process_died(dead)
        if not self._holds(run):
            # Fenced out, and its saga taken anew by this store: what is kept of the saga
            # is the new lease's (what the run staged was dropped then, never writable).
            self._retired.pop(id(run), None)
            return
        try:
            try:
                await self._flush(run.id, run)
            finally:
                # Also when cancelled while it wrote (a listener cancelling the saga's
                # task again): forgotten below, the lease stayed in the row until it ran
                # out. Releasing fences out whatever of the run is still on its way or in
                # doubt (its end too): the row then says what the log has, which any
                # worker's next claim takes at once and resumes or compensates from.
                # (Not when its process "died" meanwhile: a killed process gives up nothing.)
                if self._holds(run) and self._writer.dead is None:
                    await self._release(run.id, run.name)
        finally:
            if self._holds(run):
                self._doubts.pop(run.id, None)
                self._new.pop(run.id, None)
                self._unlogged.discard(run.id)
                self._held.pop(run.id, None)
                self._lost.pop(run.id, None)
                self._runs.pop(run.id, None)
                self._forget_claims(run.id)
            self._retired.pop(id(run), None)

    def _take(self, saga_id: str, run: SagaRunView | None, held: Held) -> None:
        """This store holds the lease of ``saga_id`` anew, ``held``, for ``run`` (``None``:
        a claim, for the run recovery makes of it). A run of the saga still winding down
        here, fenced out, is retired: it writes nothing more, and its finish() leaves the
        new lease alone. What it staged or left in doubt is dropped: its lease is over (its
        fencing token moved on), so none of it could commit any more."""
        old = self._runs.get(saga_id)
        if old is not None and old is not run:
            self._forget_claims(saga_id)  # older claims': no run binds those now
            self._retired[id(old)] = (old, self._lost.get(saga_id, False))
            self._staged.pop(saga_id, None)
            self._doubts.pop(saga_id, None)
        self._runs[saga_id] = run
        self._held[saga_id] = held
        self._lost.pop(saga_id, None)

    def _holds(self, run: SagaRunView) -> bool:
        """Whether what this store keeps of the saga of ``run`` is that run's."""
        holder = self._runs.get(run.id, run)
        return self._retired_run(run) is None and (holder is run or unbound(holder))

    def _retired_run(self, run: SagaRunView) -> bool | None:
        """Whether this store released the lease of retired ``run`` (``None``: not retired)."""
        found = self._retired.get(id(run))
        return found[1] if found is not None and found[0] is run else None

    def _check_current(self, run: SagaRunView) -> None:
        """Refuse a write of a retired run (:class:`~sagakit.LeaseLost`); bind a claim's
        lease to the first run that writes its saga."""
        released = self._retired_run(run)
        if released is not None:
            raise LeaseLost(run.id, released)
        if run.id in self._runs and unbound(self._runs[run.id]):
            self._runs[run.id] = run

    # ------------------------------------------------------------ staged writes

    async def _flush(
        self, saga_id: str, run: SagaRunView | None = None, patience: Patience | None = None
    ) -> None:
        """Write what the saga has staged, after settling its write in doubt, if any
        (``run``: the saga's run whose lease this is, if known; trying again while
        connections are lost until ``patience``'s deadline)."""
        if self._pool is None:
            self._staged.pop(saga_id, None)
            return
        holder = self._runs.get(saga_id)
        staged: list[Write] | None = None
        try:
            if saga_id in self._doubts:
                await self._settle(saga_id, patience=patience)
                if self._runs.get(saga_id) is not holder:
                    return  # taken anew meanwhile: what it staged is of a lease that is over
            staged = self._staged.pop(saga_id, None)
            unsent = saga_id in self._unlogged or saga_id in self._new  # no row of it in the log
            if staged and not unsent:
                await self._send(saga_id, staged, len(staged), None, patience)
        except Exception as error:  # fenced out, or the log still cannot be written
            retired = None if run is None else self._retired_run(run)
            writes = staged
            if retired is None:  # (else what is staged or in doubt is the new lease's)
                writes = self._staged.pop(saga_id, None) or staged
                doubt = self._doubts.get(saga_id)
                if not writes and doubt is not None:
                    writes = doubt.writes
            name = writes[0].saga_name if writes else None
            # Fenced out by this store's own release_leases() (a stopping worker cancels
            # its runs after it): an orderly handover, which the run's saga_stopped told.
            released = isinstance(error, LeaseLost) and (
                retired if retired is not None else self._lost.get(saga_id, False)
            )
            logger.log(
                logging.DEBUG if released else logging.WARNING,
                "sagakit could not write a staged transition of saga %s (%s): %s",
                name,
                saga_id,
                LeaseLost(saga_id, released=True) if released else error,
                extra={"saga_id": saga_id, "saga_name": name},
            )

    def __repr__(self) -> str:
        state = "open" if self._pool is not None else "closed"
        return (
            f"<PostgresStore schema={self.schema!r} lease={timeout_text(self.lease, '')} "
            f"owns={len(self._held)} {state}>"
        )


__all__ = ["DEFAULT_LEASE", "PostgresStats", "PostgresStore"]
