"""The reads of the SQLite store: sagas, their history, counts, listings and events.

:class:`SagaReads` is a base of :class:`~.sqlite.SQLiteStore`; every read goes through
the store's group writer (``self._writer.read``), on the reader connection.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from .._tracebacks import hide_from_pytest
from ..exceptions import SerializationError
from ..records import SagaMetadata
from ..status import SagaStatus
from ._cli_records import ListedSaga, StoredArguments, stored_arguments
from ._protocol import StoredEvent, check_event_window, check_saga_id, row_limit
from ._records import status_filter
from ._sqlite_base import SQLiteStoreBase
from ._sqlite_owner import owner_alive, owner_elsewhere
from ._sqlite_rows import listed, load_metadata, when
from ._sqlite_sql import LIST_NEWEST, LIST_NEWEST_OF_STATUS, LISTED, RUNNING_NAMES, SELECT_ARGUMENTS

# pytest shows a failing test's line, not this module's code, for an error this store
# raises on purpose (see _tracebacks).
__tracebackhide__ = hide_from_pytest


class SagaReads(SQLiteStoreBase):
    """What :class:`~.sqlite.SQLiteStore` reads of its log (``get()``, ``running()``,
    ``history()``, ``list_sagas()``, the counts, ``read_events()``, and the CLI's reads)."""

    async def get(self, saga_id: str) -> SagaMetadata | None:
        check_saga_id(saga_id, "get()")
        serializer = self.serializer
        return await self._writer.read(lambda conn: load_metadata(conn, saga_id, serializer))

    # Ties of a time are broken by what the log itself orders: sagas that started at the
    # same instant by rowid (the order their rows were written), sagas that finished at
    # the same instant by finish_order (the order their ends were written).

    async def running(self) -> list[SagaMetadata]:
        return await self._list(
            "WHERE finished_at IS NULL AND dead_letter IS NULL ORDER BY started_at, rowid", ()
        )

    async def history(self, limit: int | None = None) -> list[SagaMetadata]:
        if limit is None:
            return await self._list(
                "WHERE finished_at IS NOT NULL ORDER BY finished_at, finish_order", ()
            )
        limit = row_limit(limit, "history(limit=...)")
        if limit <= 0:
            return []
        found = await self._list(
            "WHERE finished_at IS NOT NULL ORDER BY finished_at DESC, finish_order DESC LIMIT ?",
            (limit,),
        )
        return found[::-1]

    async def list_sagas(
        self, *, status: SagaStatus | str | None = None, limit: int = 100
    ) -> list[SagaMetadata]:
        """Sagas newest first, optionally only those with ``status`` (for the CLI)."""
        wanted = None if status is None else status_filter(status)
        limit = row_limit(limit, "list_sagas(limit=...)")
        if limit <= 0:  # as get_history(): none (SQLite would read LIMIT -1 as no limit)
            return []
        if wanted is None:
            return await self._list(LIST_NEWEST, (limit,))
        return await self._list(LIST_NEWEST_OF_STATUS, (wanted, limit))

    async def _list_page(
        self, status: str | None, limit: int, after: tuple[Any, ...] | None
    ) -> tuple[list[ListedSaga], tuple[Any, ...] | None]:
        """A page of ``sagakit list``, which prints a long listing page by page instead of
        holding every saga of it: the ``limit`` newest sagas (of ``status``) that started
        before ``after``, the key the page before returned, as :meth:`list_sagas` lists
        them; and the key of this page's last saga (``None``: this page is the last).

        One query, of the columns the listing shows: not every saga whole (its row, then
        its step records, their results decoded), two queries a saga."""
        conditions, params = [], []
        if status is not None:
            conditions.append("status = ?")
            params.append(status_filter(status))
        if after is not None:  # (read from the same indexes as list_sagas())
            conditions.append("(started_at, rowid) < (?, ?)")
            params += after
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        sql = f"{LISTED}{where} {LIST_NEWEST}"
        found = await self._writer.read(lambda conn: conn.execute(sql, (*params, limit)).fetchall())
        last = (found[-1][4], found[-1][-1]) if len(found) == limit else None  # started_at, rowid
        return [listed(row) for row in found], last

    async def _arguments(self, saga_id: str) -> StoredArguments | None:
        """The call arguments ``saga_id`` was started with (``sagakit show``), as decoded
        as they can be; ``None``: no such saga."""
        found = await self._writer.read(
            lambda conn: conn.execute(SELECT_ARGUMENTS, (saga_id,)).fetchone()
        )
        return None if found is None else stored_arguments(self.serializer, found[0])

    async def _list(self, where: str, params: tuple[Any, ...]) -> list[SagaMetadata]:
        serializer = self.serializer

        def read(conn: sqlite3.Connection) -> list[SagaMetadata]:
            ids = [row[0] for row in conn.execute(f"SELECT id FROM sagakit_sagas {where}", params)]
            found = (load_metadata(conn, saga_id, serializer) for saga_id in ids)
            return [meta for meta in found if meta is not None]

        return await self._writer.read(read)

    async def running_count(self) -> int:
        return await self._count("finished_at IS NULL AND dead_letter IS NULL")

    async def _running_names(self, *, claimable: bool = False) -> list[tuple[str, int, str]]:
        """The names of the running sagas (``claimable``: those a recovery here could
        claim, not those a live process runs, of this host or another), each with how many
        and the id of one (one with a completed step where there is one), for recovery's
        word on names no ``@saga`` here declares and the CLI's ``recover``: counted
        without reading every saga's records."""
        rows = await self._writer.read(lambda conn: conn.execute(RUNNING_NAMES).fetchall())
        found: dict[str, tuple[int, str | None, str]] = {}
        for name, owner, count, stepped, one in rows:
            if claimable and owner_alive(owner):  # (a claim skips it)
                continue
            total, had, any_one = found.get(name, (0, None, one))
            found[name] = (total + count, had or stepped, any_one)
        return [(name, total, had or one) for name, (total, had, one) in found.items()]

    async def _held_elsewhere(self) -> list[str]:
        """The ids of the running sagas owned by a process of another host or container,
        oldest first (for the CLI's ``recover``: no recovery here claims them, ``sagakit
        release`` hands them over)."""

        def read(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT id, owner FROM sagakit_sagas WHERE finished_at IS NULL "
                "AND dead_letter IS NULL ORDER BY started_at, rowid"
            )
            return [saga_id for saga_id, owner in rows if owner_elsewhere(owner)]

        return await self._writer.read(read)

    async def history_count(self) -> int:
        return await self._count("finished_at IS NOT NULL")

    async def _count(self, where: str) -> int:
        return await self._writer.read(
            lambda conn: int(
                conn.execute(f"SELECT count(*) FROM sagakit_sagas WHERE {where}").fetchone()[0]
            )
        )

    async def read_events(
        self, *, after: int = 0, limit: int = 1000, saga_id: str | None = None
    ) -> list[StoredEvent]:
        check_event_window(after, limit)
        if saga_id is not None:
            check_saga_id(saga_id, "read_events(saga_id=...)")
        sql = (
            "SELECT position, saga_id, saga_name, step_index, step_name, compensation, data, "
            "recorded_at FROM sagakit_events WHERE position > ?"
        )
        params: tuple[Any, ...] = (after,)
        if saga_id is not None:
            sql += " AND saga_id = ?"
            params += (saga_id,)
        sql += " ORDER BY position LIMIT ?"
        params += (limit,)
        rows = await self._writer.read(lambda conn: conn.execute(sql, params).fetchall())
        events: list[StoredEvent] = []
        for position, sid, name, index, step_name, comp, data, recorded in rows:
            try:
                event = self.serializer.loads(data)
            except SerializationError as error:
                raise SerializationError(f"event #{position} of saga {sid!r}: {error}") from error
            events.append(
                StoredEvent(
                    position, sid, name, index, step_name, bool(comp), event, when(recorded)
                )
            )
        return events
