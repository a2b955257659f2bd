"""The leases a PostgreSQL store holds on its running sagas: the heartbeat that renews
them, and giving them up (``release_leases()``, ``give_back()``, a finished saga's).

:class:`Leases` is a base of :class:`~.postgres.PostgresStore`. Lease times are the
database's ``now()``; each saga's lease is its :class:`~._pg_held.Held` entry in
``_held``, which the heartbeat renews in one statement.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

from .._cadence import failure_level
from .._checks import check_flag
from .._shielding import CancellationWatch, wait_out
from .._tracebacks import hide_from_pytest
from ._pg_base import PostgresStoreBase
from ._pg_ids import held_by_none
from ._protocol import check_given_ids, check_saga_id, check_saga_ids

# pytest shows a failing test's line, not this module's code, for an error this store
# raises on purpose (see _tracebacks).
__tracebackhide__ = hide_from_pytest

logger: logging.Logger = logging.getLogger("sagakit")


class Leases(PostgresStoreBase):
    """How :class:`~.postgres.PostgresStore` keeps and gives up the leases of its sagas."""

    async def _beat(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        failures = 0  # renewals failed in a row
        while True:
            await asyncio.sleep(self.heartbeat)
            holding = bool(self._held)  # (else renew() sends nothing: no sign of the server)
            try:
                await self.renew()
            except Exception as error:  # keep beating: the next renewal may succeed
                if task.cancelling():  # close() cancelled us and it came out as an error
                    raise asyncio.CancelledError from error
                failures += 1
                logger.log(
                    failure_level(failures),
                    "sagakit heartbeat could not renew leases (%d in a row): %s",
                    failures,
                    error,
                )
            else:
                if failures and holding:
                    logger.info(
                        "sagakit heartbeat renews leases again (after %d failed renewals)",
                        failures,
                    )
                    failures = 0
            if task.cancelling():
                # Cancelled during the renewal, and the cancellation was lost on the way
                # (in the driver or the pool): stop anyway, or close() waits forever.
                raise asyncio.CancelledError

    async def renew(self) -> int:
        """Extend the lease of every saga this store owns (one statement); returns how many.
        A saga whose row another session holds locked is left for the next renewal."""
        ids = list(self._held)
        if not ids:
            return 0
        # (Given up on, on a silent connection: tried again at the next beat.)
        found = await self._run(
            self._sql.heartbeat, {"owner": self.owner, "ids": ids, "lease": self.lease}
        )
        return len(found)

    async def release_leases(
        self, *, as_crash: bool = False, saga_ids: Collection[str] | None = None
    ) -> int:
        """Give up every saga this store owns (or those of ``saga_ids`` among them), so
        other workers claim them at once.

        Their fencing tokens move on: any write still in flight here is refused
        with :class:`~sagakit.LeaseLost`. Returns how many sagas were released.
        ``as_crash`` makes the next claim of each count as a recovery attempt, as
        after a worker's death (:func:`sagakit.testing.simulate_restart` uses it).
        A stopping :meth:`~sagakit.SagaOrchestrator.run_worker` passes the ids of the
        sagas it runs, so ``execute()`` calls beside it on this store go on.

        A run of a generated id that has not written its row yet, or whose first write
        is on its way, is not given up (unless ``as_crash``): no worker could take it
        over, so it goes on here. One whose first write is in doubt has its row
        inserted first (if that write did not), so that it is released too.
        """
        check_saga_ids(saga_ids, "release_leases(saga_ids=...)")
        check_flag(as_crash, "release_leases(as_crash=...)")
        ids = None if saga_ids is None else set(saga_ids)
        released = {
            saga_id
            for saga_id in self._held
            if (ids is None or saga_id in ids) and (as_crash or saga_id not in self._new)
        }
        for saga_id in released:
            del self._held[saga_id]
        self._lost.update(dict.fromkeys(released, not as_crash))
        if self._pool is None:
            return 0
        for saga_id in released:
            doubt = self._doubts.get(saga_id)
            if doubt is not None and doubt.new is not None:
                # Its first write, carrying its row, is in doubt: insert the row if that
                # write did not (this waits for it if it is still committing), so that
                # it is released below. Else settling would insert it later, under a
                # lease that nobody renews and no other worker could claim before it ran out.
                await self._run(
                    self._sql.begin, {"id": saga_id, "explicit": False, "token": None, **doubt.new}
                )
        params = {
            "owner": self.owner,
            "released": not as_crash,
            "all": ids is None,
            "ids": sorted(i for i in ids or () if not held_by_none(i)),
        }
        found = await self._run(self._sql.release, params)
        if not as_crash:
            # A row the release did not match was no longer this store's (another worker
            # took it while this one was paused past its lease, or it ended): not handed
            # over by this store, so its run's refused writes say the lease was lost.
            for saga_id in released.difference(row[0] for row in found):
                if saga_id in self._lost:
                    self._lost[saga_id] = False
        return len(found)

    async def give_back(self, saga_ids: Collection[str]) -> int:
        """Give back sagas this store claimed (:meth:`claim_orphans`) and has not run
        since: their leases are given up, so any worker claims them at once, and each
        row is left as the claim found it, so the next claim reads the same: a saga a
        crash left still counts that crash once (and its recovery warns), a saga
        handed over stays released. Returns how many it gave back.

        A cancelled ``recover()`` or worker calls it for the sagas a claim returned
        after swallowing the cancellation. Ids this store did not claim, or whose run
        has ended, are left alone. If the database is away, the leases run out (the
        next claim then counts an attempt, as after a crash).
        """
        check_given_ids(saga_ids, "give_back()")
        mine = {
            saga_id: held
            for saga_id in dict.fromkeys(saga_ids)
            if (held := self._held.get(saga_id)) is not None and held.claimed
        }
        if not mine:
            return 0
        # No run of them here writes, so nothing is kept to fence (kept for good: a
        # long-running worker's store grew with each claim given back).
        self._unclaim(mine)
        for saga_id in mine:
            self._lost.pop(saga_id, None)
        if self._pool is None:
            return 0
        params = {
            "owner": self.owner,
            "ids": list(mine),
            "fences": [held.fence for held in mine.values()],
            "handed": [saga_id for saga_id, held in mine.items() if held.handover],
        }
        return len(await self._run(self._sql.give_back, params))

    def owns(self, saga_id: str) -> bool:
        """Whether this store holds the lease of ``saga_id`` (as far as it knows)."""
        check_saga_id(saga_id, "owns()")
        return saga_id in self._held

    async def _release(self, saga_id: str, saga_name: str) -> None:
        """Give up the lease of ``saga_id`` if this store still holds it (best effort)."""
        held = self._held.get(saga_id)
        if held is None or saga_id in self._new or saga_id in self._unlogged:
            return  # its end was written, it was fenced out, or it has no row
        if self._pool is None:
            return  # closed: close() released every lease
        # Waited out if the caller is cancelled meanwhile (a listener cancelling the
        # saga's task again while its run finishes), then that cancellation is raised:
        # cut short, the lease was forgotten here (finish() drops it) but left in the
        # row, so close() had nothing to release and no claim took the saga until the
        # lease ran out. (Given up on, on a silent connection: the lease runs out.)
        doubt = self._doubts.get(saga_id)
        new = doubt.new if doubt is not None else None
        params = {"id": saga_id, "owner": self.owner, "fence": held.fence, "token": self._token}

        async def give_up() -> None:
            if new is not None:
                # Its first write, carrying its row, is in doubt (its settling cut short):
                # insert the row if that write did not (waiting for it if it is still
                # committing), as release_leases() does, so that it is released below:
                # else that write could insert it after, under a lease nobody renews.
                await self._run(
                    self._sql.begin, {"id": saga_id, "explicit": False, "token": None, **new}
                )
            await self._run(self._sql.release_one, params)

        watch = CancellationWatch()
        done = await wait_out(give_up())
        error = None if done.cancelled() else done.exception()
        if error is not None:
            logger.warning(
                "sagakit could not give up the lease of saga %s (%s) (it runs out): %s",
                saga_name,
                saga_id,
                error,
                extra={"saga_id": saga_id, "saga_name": saga_name},
            )
        if watch.came():
            raise asyncio.CancelledError


__all__ = ["Leases"]
