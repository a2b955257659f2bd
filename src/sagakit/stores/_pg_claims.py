"""Which worker runs the PostgreSQL store's orphaned sagas: claims and their leases.

:class:`RecoveryClaims` is a base of :class:`~.postgres.PostgresStore`: a recovery claims
orphaned sagas whose lease expired (``claim_orphans()``, ``FOR UPDATE SKIP LOCKED``,
parking those with too many attempts), lets go of what it claimed and did not run
(after a failed claim), and binds each claim's lease to the run recovery makes of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any

from .._seconds import timeout_text
from .._shielding import wait_out
from .._tracebacks import hide_from_pytest
from ..exceptions import SerializationError, StoreError
from . import _pg_rows as rows
from ._parking import attempts_reason, log_parked
from ._pg_base import PostgresStoreBase
from ._pg_errors import maybe_committed
from ._pg_held import Held
from ._pg_ids import held_by_none
from ._protocol import OrphanedSaga, SagaRunView, claim_limit

# pytest shows a failing test's line, not this module's code, for an error this store
# raises on purpose (see _tracebacks).
__tracebackhide__ = hide_from_pytest

logger: logging.Logger = logging.getLogger("sagakit")


def unbound(holder: SagaRunView | OrphanedSaga | None) -> bool:
    """Whether a claim's lease is bound to no run yet (see ``PostgresStore._runs``)."""
    return holder is None or isinstance(holder, OrphanedSaga)


class RecoveryClaims(PostgresStoreBase):
    """How :class:`~.postgres.PostgresStore` claims orphaned sagas for recovery."""

    async def claim_orphans(
        self,
        *,
        names: Collection[str] | None = None,
        limit: int = 100,
        max_attempts: int = 3,
        saga_ids: Collection[str] | None = None,
    ) -> list[OrphanedSaga]:
        limit = claim_limit(limit, max_attempts, saga_ids, names)
        if limit <= 0:
            return []
        orphans: list[OrphanedSaga] = []
        taken: list[str] = []  # the ids this call took leases of
        # Each statement waits command_timeout for its answer at most: on a silent
        # connection the claim fails (a worker claims again after its poll interval).
        return await self._claim_all(names, limit, max_attempts, saga_ids, orphans, taken)

    async def _claim_all(
        self,
        names: Collection[str] | None,
        limit: int,
        max_attempts: int,
        saga_ids: Collection[str] | None,
        orphans: list[OrphanedSaga],
        taken: list[str],
    ) -> list[OrphanedSaga]:
        """Claim until ``limit`` sagas are runnable or no more can be claimed."""
        try:
            while True:
                wanted = limit - len(orphans)
                claimed = await self._claim(names, wanted, max_attempts, orphans, taken, saga_ids)
                # Parked or unreadable claims do not use up the limit: claim again while
                # there may be more (else recover(), one claim at a time, stops early).
                if claimed < wanted or len(orphans) >= limit:
                    return orphans
        except BaseException as failure:
            # Nothing is returned, so nobody runs what was claimed: let go of it (the
            # heartbeat must not renew its leases), so it is claimed again once they expire.
            # Cancelled, give them back at once, their claim counting no recovery attempt
            # (else one never run was counted, and parked after max_attempts cancellations).
            if taken and isinstance(failure, asyncio.CancelledError):
                done = await wait_out(self.give_back(taken))  # whatever cancels us again
                if not done.cancelled() and done.exception() is not None:
                    logger.warning(
                        "sagakit could not give back sagas %s (their leases run out): %s",
                        taken,
                        done.exception(),
                    )
            self._unclaim(taken)
            raise

    def _unclaim(self, saga_ids: Collection[str]) -> None:
        """Forget that this store holds the leases of ``saga_ids`` (let go of, parked): it
        runs none of them now, and the heartbeat renews none of them."""
        for saga_id in saga_ids:
            self._held.pop(saga_id, None)
            if saga_id in self._runs and unbound(self._runs[saga_id]):
                del self._runs[saga_id]  # no run of this claim began
                self._forget_claims(saga_id)

    async def _claim(
        self,
        names: Collection[str] | None,
        limit: int,
        max_attempts: int,
        orphans: list[OrphanedSaga],
        taken: list[str],
        saga_ids: Collection[str] | None = None,
    ) -> int:
        """Claim up to ``limit`` rows, add the runnable ones to ``orphans`` (and their ids
        to ``taken``); how many rows."""
        self._token += 2  # the claim's write token, and the next one for a handover
        token = self._token - 1
        claimed = await self._claim_rows(
            {
                "all": names is None,
                "names": sorted(names) if names is not None else [],
                "any_id": saga_ids is None,
                "ids": sorted(i for i in saga_ids or () if not held_by_none(i)),
                "limit": limit,
                "max": max_attempts,
                "owner": self.owner,
                "lease": self.lease,
                "mine": list(self._held),
                "token": token,
            },
        )
        alive = []
        renewed = []
        for row in sorted((row for row in claimed if not row[13]), key=lambda row: row[11]):
            held = self._held.get(row[0])
            if held is not None:
                # This store began it (an execute()) after the claim was sent ("mine"
                # did not list it yet), and its lease ran out before the claim ran: the
                # claim only renewed its lease. The run goes on with the new token (a
                # write of it on its way meanwhile is sent again with it, see _send).
                held.fence = row[12]
                for write in self._staged.get(row[0], ()):
                    write.fence = row[12]
                renewed.append(row[0])
            else:
                alive.append(row)
        if renewed:
            try:  # no crash caused it: give the recovery attempt it counted back
                await self._run(self._sql.renewed, {"ids": renewed, "owner": self.owner})
            except StoreError as error:  # best effort: else it is parked a crash early
                logger.warning("sagakit could not give back a recovery attempt: %s", error)
        for row in claimed:
            if row[13]:  # the reason its claim wrote, as SQLite's
                log_parked(row[1], row[0], attempts_reason(row[6], max_attempts))
                self._unclaim((row[0],))  # parked: nobody owns it now
        if not alive:
            return len(claimed)
        for row in alive:
            # Its start count goes on from the log's highest, read below.
            self._take(row[0], None, Held(row[12], order=None, handover=row[14]))
            taken.append(row[0])
        # Read after the claim committed: a lost connection is tried again, or the claim
        # failed, its sagas waiting until their leases ran out.
        found = await self._read(self._sql.claimed_steps, ([r[0] for r in alive],))
        highest = dict.fromkeys((row[0] for row in alive), 0)  # start_order
        for step_row in found:
            if step_row[10] is not None:
                highest[step_row[0]] = max(highest[step_row[0]], step_row[10])
        for saga_id, order in highest.items():
            if (held := self._held.get(saga_id)) is not None:
                held.order = order
        steps = rows.steps_by_saga(step_row[:10] for step_row in found)
        for row in alive:
            try:
                orphan = rows.orphan(row, steps.get(row[0], ()), self.serializer)
            except (SerializationError, ValueError, TypeError) as error:
                await self.dead_letter(row[0], f"its log cannot be read back: {error}")
                continue
            if row[0] in self._runs and self._runs[row[0]] is None:
                self._runs[row[0]] = orphan  # this claim's, for recovery to bind (_bind_claim)
            orphans.append(orphan)
        return len(claimed)

    async def _claim_rows(self, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """The rows the claim takes. If its connection is lost, it may have committed: the
        rows it took are read back on a new connection (by the claim's write token, as
        :meth:`_again` tries), so they are recovered now, not once their lease runs out
        (its recovery attempt counted for nothing). None found: the error is raised."""
        try:
            return await self._run(self._sql.claim, params)
        except StoreError as error:
            if not maybe_committed(error):
                raise
            lost = error
        try:
            found = await self._again(
                lambda: self._run(
                    self._sql.claimed_by, {"owner": self.owner, "token": params["token"]}
                ),
                "reading back a claim whose connection was lost",
            )
        except StoreError as error:
            raise StoreError(
                f"{error}; the claim may have taken sagas all the same: none of them runs "
                f"here, and once their lease ({timeout_text(self.lease)}) runs out another "
                "claim takes them"
            ) from error.__cause__
        if not found:
            raise lost
        return found

    def _bind_claim(self, orphan: OrphanedSaga, run: SagaRunView) -> None:
        """Bind the lease of ``orphan``'s claim to ``run``, the run recovery made of it
        (before it writes, or awaits anything). That claim over and its saga taken anew
        by this store meanwhile, ``run`` is retired at once: it writes nothing under the
        new lease (released as that claim was)."""
        if self._runs.get(orphan.saga_id) is orphan:
            self._runs[orphan.saga_id] = run
            return
        found = self._retired.pop(id(orphan), None)
        if found is not None and found[0] is orphan:
            self._retired[id(run)] = (run, found[1])
        elif orphan.saga_id in self._runs:  # (taken anew twice since: released or not)
            self._retired[id(run)] = (run, False)

    def _forget_claims(self, saga_id: str) -> None:
        """Forget the claims of ``saga_id`` retired unbound (a run recovery makes of one
        later finds its saga not held for it, and is fenced out all the same)."""
        for key, (retired, _) in list(self._retired.items()):
            if isinstance(retired, OrphanedSaga) and retired.saga_id == saga_id:
                del self._retired[key]


__all__ = ["RecoveryClaims", "unbound"]
