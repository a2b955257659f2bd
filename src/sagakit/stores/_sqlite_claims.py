"""Which process runs a SQLite store's running sagas: claims and hand-overs.

:class:`RecoveryClaims` is a base of :class:`~.sqlite.SQLiteStore`: a recovery claims
orphaned sagas (``claim_orphans()``, parking those with too many attempts), gives back
what it claimed and did not run (``give_back()``, or letting go after a failed claim),
and a run that stops here unfinished is handed over to recovery (its owner cleared),
tried again after the next successful write.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import sqlite3
import time
from collections.abc import Collection
from typing import Any

from .._shielding import wait_out
from .._tracebacks import hide_from_pytest
from ..exceptions import SerializationError
from ._parking import attempts_reason, log_parked
from ._protocol import OrphanedSaga, check_given_ids, claim_limit
from ._sqlite_base import SQLiteStoreBase
from ._sqlite_owner import owner_alive
from ._sqlite_rows import decode_orphan, load_orphan_rows, number_unordered
from ._sqlite_sql import LET_GO, UNCOUNT_ATTEMPT
from ._sqlite_writer import CommittedThenCancelled, Statements

# pytest shows a failing test's line, not this module's code, for an error this store
# raises on purpose (see _tracebacks).
__tracebackhide__ = hide_from_pytest

CLAIM_PAGE = 256
"""Running sagas a claim reads at a time (more when its ``limit`` is higher)."""

logger: logging.Logger = logging.getLogger("sagakit")


class RecoveryClaims(SQLiteStoreBase):
    """How :class:`~.sqlite.SQLiteStore`'s running sagas change owner for recovery."""

    async def claim_orphans(
        self,
        *,
        names: Collection[str] | None = None,
        limit: int = 100,
        max_attempts: int = 3,
        saga_ids: Collection[str] | None = None,
    ) -> list[OrphanedSaga]:
        self._refuse_writes()
        limit = claim_limit(limit, max_attempts, saga_ids, names)
        if limit <= 0:
            return []
        if self._unreleased:  # sagas whose hand-over failed: this recovery may take them
            await self._hand_over(list(self._unreleased))
        allowed = None if names is None else frozenset(names)
        owner = self._owner
        now = time.time()
        only = () if saga_ids is None else tuple(saga_ids)
        # The running sagas, oldest first, read a page at a time from where the last
        # page ended (the active sagas' index), and never those this live process owns:
        # a claim read every running saga, those it had claimed before too, to take the
        # first ``limit``, so recovering n orphans read about n * n / limit rows.
        query = (
            "SELECT id, name, owner, factory, recovery_attempts, started_at, rowid "
            "FROM sagakit_sagas WHERE finished_at IS NULL AND dead_letter IS NULL "
            "AND (? IS NULL OR owner IS NULL OR owner <> ?) "
            "AND (started_at, rowid) > (?, ?)"
        )
        if saga_ids is not None:
            query += f" AND id IN ({', '.join('?' * len(only))})"
        query += " ORDER BY started_at, rowid LIMIT ?"
        mine = owner if owner_alive(owner) else None  # (a claim skips a live owner's)

        def job(
            conn: sqlite3.Connection, limit: int
        ) -> tuple[list[tuple[Any, ...]], list[tuple[str, str, str]], dict[str, int]]:
            claimed: list[tuple[Any, ...]] = []
            orders: dict[str, int] = {}
            parked: list[tuple[str, str, str]] = []
            page = max(limit, CLAIM_PAGE)
            after: tuple[float, int] = (-math.inf, 0)
            while len(claimed) < limit:
                rows = conn.execute(query, (mine, mine, *after, *only, page)).fetchall()
                claim_page(conn, rows, limit, claimed, orders, parked)
                if len(rows) < page:
                    break
                after = (rows[-1][5], rows[-1][6])
            return claimed, parked, orders

        def claim_page(
            conn: sqlite3.Connection,
            rows: list[tuple[Any, ...]],
            limit: int,
            claimed: list[tuple[Any, ...]],
            orders: dict[str, int],
            parked: list[tuple[str, str, str]],
        ) -> None:
            for saga_id, name, holder, factory, attempts, started, _ in rows:
                if len(claimed) >= limit:
                    break
                if factory and allowed is not None and name not in allowed:
                    continue
                if owner_alive(holder):
                    continue
                if attempts + 1 > max_attempts:
                    reason = attempts_reason(attempts, max_attempts)
                    conn.execute(
                        "UPDATE sagakit_sagas SET dead_letter = ?, parked_at = ?, owner = NULL "
                        "WHERE id = ?",
                        (
                            reason,
                            max(now, started),  # never before its start (a clock set back)
                            saga_id,
                        ),
                    )
                    parked.append((name, saga_id, reason))
                    continue
                conn.execute(
                    "UPDATE sagakit_sagas SET owner = ?, recovery_attempts = ? WHERE id = ?",
                    (owner, attempts + 1, saga_id),
                )
                orders[saga_id] = number_unordered(conn, saga_id)
                claimed.append(load_orphan_rows(conn, saga_id))

        orphans: list[OrphanedSaga] = []
        taken: list[str] = []  # the ids this call made this process the owner of
        try:
            while True:
                wanted = limit - len(orphans)
                try:
                    raw, parked, orders = await self._writer.submit(
                        functools.partial(job, limit=wanted), alone=False
                    )
                except CommittedThenCancelled as cancelled:  # claimed all the same
                    taken.extend(rows[0][0] for rows in cancelled.result[0])
                    raise
                for name, saga_id, reason in parked:  # as PG
                    log_parked(name, saga_id, reason)
                taken.extend(rows[0][0] for rows in raw)
                for rows in raw:
                    try:
                        orphan = decode_orphan(rows, self.serializer)
                    except (SerializationError, ValueError, TypeError) as error:  # as PG
                        reason = f"its log cannot be read back: {error}"
                        await self.dead_letter(rows[0][0], reason)
                        continue
                    self._staged.pop(orphan.saga_id, None)  # left by a simulated crash
                    self._claimed.add(orphan.saga_id)
                    self._live.add(orphan.saga_id)
                    self._orders[orphan.saga_id] = orders[orphan.saga_id]
                    orphans.append(orphan)
                # A claim dead-lettered because its log cannot be read back does not use
                # up the limit: claim again while there may be more (else recover() stops
                # early).
                if len(raw) < wanted or len(orphans) >= limit:
                    return orphans
        except BaseException:
            # Nothing is returned, so nobody runs what was claimed: let go of it, or this
            # live process would keep it from every recovery until it exits.
            await self._let_go(taken)
            raise

    async def _let_go(self, saga_ids: list[str]) -> None:
        """Clear this process as the owner of ``saga_ids`` (best effort), taking back the
        recovery attempt their claim counted: nobody ran them. As :meth:`give_back`, but
        for every id a failed claim took (decoded or not), in one write tried once."""
        self._unclaim(saga_ids)
        if not saga_ids:
            return
        owner = self._owner

        def job(conn: sqlite3.Connection) -> None:
            conn.executemany(LET_GO, [(saga_id, owner) for saga_id in saga_ids])

        done = await wait_out(self._writer.submit(job, alone=False))
        if not done.cancelled() and done.exception() is not None:
            logger.warning(
                "sagakit: could not let go of claimed sagas %s: %s", saga_ids, done.exception()
            )

    async def give_back(self, saga_ids: Collection[str]) -> int:
        """Give back sagas this store claimed (:meth:`claim_orphans`) and has not run
        since: this process stops owning them, so the next recovery, here or in another
        process, claims them at once, and their claim here is not counted as a
        recovery attempt (no run of them was made). Returns how many it gave back.

        A cancelled ``recover()`` or worker calls it for the sagas a claim returned
        after swallowing the cancellation. Ids this store did not claim, or whose run
        has ended, are left alone. If the log refuses the write, it is tried again as a
        hand-over is (after the next successful write, before a recovery here claims
        sagas, and at :meth:`close`).
        """
        check_given_ids(saga_ids, "give_back()")
        self._refuse_writes()
        mine = [saga_id for saga_id in dict.fromkeys(saga_ids) if saga_id in self._claimed]
        self._unclaim(mine)
        for saga_id in mine:
            self._staged.pop(saga_id, None)
            # In the hand-over's transaction, only if this process still owns it.
            self._unreleased[saga_id] = [(UNCOUNT_ATTEMPT, (saga_id,))]
        if mine and not await self._hand_over(mine):
            logger.warning(
                "sagakit: could not give back claimed sagas %s yet; tried again after the "
                "next write, and by the next recovery here",
                mine,
            )
        return len(mine)

    def _unclaim(self, saga_ids: Collection[str]) -> None:
        """Forget that this process claimed ``saga_ids`` (let go of, given back, parked):
        it runs none of them now."""
        for saga_id in saga_ids:
            self._claimed.discard(saga_id)
            self._live.discard(saga_id)
            self._orders.pop(saga_id, None)

    def _retry_soon(self) -> None:
        """After a successful commit: hand over the sagas :meth:`finish` could not."""
        if self._retrying is None:
            self._retrying = asyncio.get_running_loop().create_task(self._retry())

    async def _retry(self) -> None:
        try:
            await self._hand_over(list(self._unreleased))
        finally:
            self._retrying = None

    async def _hand_over(self, saga_ids: list[str]) -> bool:
        """Clear this process as the owner of ``saga_ids`` (unfinished), each in one
        transaction with the statements kept for it; whether all were written (the
        first failure stops: the log still refuses writes)."""
        if self._writer.dead is not None:  # its process "died": nothing is handed over
            return False
        owner = self._owner
        for saga_id in saga_ids:
            statements = self._unreleased.get(saga_id)
            if statements is None:
                continue

            def job(
                conn: sqlite3.Connection,
                saga_id: str = saga_id,
                statements: Statements = statements,
            ) -> None:
                row = conn.execute(
                    "SELECT owner, finished_at FROM sagakit_sagas WHERE id = ?", (saga_id,)
                ).fetchone()
                if row is None or row[1] is not None or row[0] != owner:
                    return  # ended, or not this process's: nothing to hand over
                for sql, params in statements:
                    conn.execute(sql, params)
                conn.execute("UPDATE sagakit_sagas SET owner = NULL WHERE id = ?", (saga_id,))

            try:
                await self._writer.submit(job, alone=False)
            except Exception as error:
                logger.debug(
                    "sagakit: saga %s is not handed over yet: %s",
                    saga_id,
                    error,
                    extra={"saga_id": saga_id},
                )
                return False
            self._unreleased.pop(saga_id, None)
        return True
