"""The reads of the PostgreSQL store: sagas, their history, counts, listings and events.

:class:`SagaReads` is a base of :class:`~.postgres.PostgresStore`; every read is one
statement that writes nothing, sent through the store's ``_read()`` (tried again on a
new connection while the one it used is lost).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._tracebacks import hide_from_pytest
from ..status import SagaStatus
from . import _pg_rows as rows
from ._cli_records import ListedSaga, StoredArguments, stored_arguments
from ._pg_base import PostgresStoreBase
from ._pg_ids import held_by_none
from ._protocol import StoredEvent, check_event_window, check_saga_id, row_limit
from ._records import status_filter

if TYPE_CHECKING:
    from ..records import SagaMetadata

# pytest shows a failing test's line, not this module's code, for an error this store
# raises on purpose (see _tracebacks).
__tracebackhide__ = hide_from_pytest


class SagaReads(PostgresStoreBase):
    """What :class:`~.postgres.PostgresStore` reads of its log (``get()``, ``running()``,
    ``history()``, ``list_sagas()``, the counts, ``read_events()``, and the CLI's reads)."""

    # Each saga row is read with its step records in one statement (one snapshot): a
    # write committing between two statements would make the saga and its records
    # disagree (EXECUTING with every step completed, finished with a step running).

    async def _with_steps(self, sql: str, params: Any = None) -> list[SagaMetadata]:
        return self._sagas(await self._read(sql, params))

    def _sagas(self, found: list[tuple[Any, ...]], *, exact: bool = False) -> list[SagaMetadata]:
        return [rows.metadata(saga, self.serializer, exact=exact) for saga in found]

    async def get(self, saga_id: str) -> SagaMetadata | None:
        check_saga_id(saga_id, "get()")
        if held_by_none(saga_id):
            return None
        found = await self._with_steps(self._sql.get, (saga_id,))
        return found[0] if found else None

    async def running(self) -> list[SagaMetadata]:
        return await self._with_steps(self._sql.running)

    async def history(self, limit: int | None = None) -> list[SagaMetadata]:
        if limit is None:
            return await self._with_steps(self._sql.history)
        limit = row_limit(limit, "history(limit=...)")
        if limit <= 0:
            return []
        return await self._with_steps(self._sql.history_newest, (limit,))

    async def list_sagas(
        self, *, status: SagaStatus | str | None = None, limit: int = 100
    ) -> list[SagaMetadata]:
        """Sagas newest first, optionally only those with ``status`` (for the CLI)."""
        wanted = None if status is None else status_filter(status)
        limit = row_limit(limit, "list_sagas(limit=...)")
        if limit <= 0:  # as get_history(): none (PostgreSQL refuses a negative LIMIT)
            return []
        if wanted is None:
            return await self._with_steps(self._sql.newest, (limit,))
        return await self._with_steps(self._sql.newest_with_status, (wanted, limit))

    async def _list_page(
        self, status: str | None, limit: int, after: tuple[Any, ...] | None
    ) -> tuple[list[ListedSaga], tuple[Any, ...] | None]:
        """A page of ``sagakit list``, which prints a long listing page by page instead of
        holding every saga of it: the ``limit`` newest sagas (of ``status``) that started
        before ``after``, the key the page before returned, as :meth:`list_sagas` lists
        them; and the key of this page's last saga (``None``: this page is the last).
        One query, of the columns the listing shows (no step record is read)."""
        sql = self._sql
        wanted = () if status is None else (status_filter(status),)
        if after is None:
            query = sql.listed if status is None else sql.listed_with_status
        else:
            query = sql.listed_before if status is None else sql.listed_with_status_before
        found = await self._read(query, (*wanted, *(after or ()), limit))
        last = (found[-1][4], found[-1][0]) if len(found) == limit else None  # started_at, id
        return [rows.listed(row) for row in found], last

    async def _arguments(self, saga_id: str) -> StoredArguments | None:
        """The call arguments ``saga_id`` was started with (``sagakit show``), as decoded
        as they can be; ``None``: no such saga. Stored in two columns, read as the one
        JSON array ``[args, kwargs]`` a SQLite log stores."""
        found = await self._read(self._sql.arguments, (saga_id,))
        if not found:
            return None
        args, kwargs = found[0]
        return stored_arguments(self.serializer, f"[{args},{kwargs}]")

    async def running_count(self) -> int:
        return int((await self._read(self._sql.running_count))[0][0])

    async def _running_names(self, *, claimable: bool = False) -> list[tuple[str, int, str]]:
        """The names of the running sagas (``claimable``: those a claim could take, not
        under a lease), each with how many and the id of one (one with a completed step
        where there is one), for recovery's word on names no ``@saga`` here declares and
        the CLI's ``recover``: counted without reading every saga's records."""
        sql = self._sql
        found = await self._read(sql.claimable_running_names if claimable else sql.running_names)
        return [(name, int(count), one) for name, count, one in found]

    async def _leases(self) -> tuple[int, float, float]:
        """How many running sagas are under a lease that has not expired (for the CLI's
        ``recover``: those it cannot claim yet), and in how many seconds the first and the
        last of those leases run out, by the database's clock (what a claim compares
        against); 0, 0.0, 0.0 for none. One statement over an index."""
        count, first, last = (await self._read(self._sql.leases))[0]
        if not count:
            return 0, 0.0, 0.0
        return int(count), float(first), float(last)

    async def history_count(self) -> int:
        return int((await self._read(self._sql.history_count))[0][0])

    async def read_events(
        self, *, after: int = 0, limit: int = 1000, saga_id: str | None = None
    ) -> list[StoredEvent]:
        check_event_window(after, limit)  # as SQLite: limit=0 read as the end of the stream
        if saga_id is None:
            found = await self._read(self._sql.events, (after, limit))
        else:
            check_saga_id(saga_id, "read_events(saga_id=...)")
            if held_by_none(saga_id):
                return []
            found = await self._read(self._sql.events_of, (saga_id, after, limit))
        return [rows.stored_event(row, self.serializer) for row in found]


__all__ = ["SagaReads"]
