"""An operator's calls on the PostgreSQL store: ``dead_letter()``, ``dead_letters()``,
``resume_dead_letter()``, ``resolve()``.

:class:`OperatorCalls` is a base of :class:`~.postgres.PostgresStore`. An operator's
``UPDATE`` (``resolve()``, ``resume_dead_letter()``) is an :class:`OperatorUpdate`, safe
to send again.

Each is one ``UPDATE`` that may have committed when its connection was lost; sent again
blindly, it would match nothing and say the saga is not dead-lettered, or resolved
already. So it keeps a token of the call in the saga's row (``last_write``), and a try
after a lost connection first reads the token back: there, the call was applied.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._tracebacks import hide_from_pytest
from ..exceptions import LeaseLost, SagaAlreadyResolved, StoreError
from . import _pg_rows as rows
from ._pg_base import PostgresStoreBase
from ._pg_errors import maybe_committed, with_doubt
from ._pg_ids import held_by_none
from ._pg_sql import Run
from ._pg_writer import storable
from ._protocol import DeadLetter, check_saga_id, check_text

# pytest shows a failing test's line, not this module's code, for an error this store
# raises on purpose (see _tracebacks).
__tracebackhide__ = hide_from_pytest


def call_token() -> int:
    """A token for one call: random, with bit 62 set, so never a write's or a claim's
    (counters from a random 56-bit start)."""
    return secrets.randbits(62) | 1 << 62


@dataclass(slots=True)
class OperatorUpdate:
    """One operator call's ``UPDATE`` of saga ``saga_id``: :meth:`attempt` is one try,
    for the store's retry loop (which tries again after a lost connection)."""

    run: Run
    sql: str  # the UPDATE, with %(id)s and %(token)s, returning a row if it matched
    read_back: str  # the saga's last_write, by its id (%s)
    saga_id: str
    params: dict[str, Any]
    maybe_committed: Callable[[StoreError], bool]  # whether a try's error leaves it in doubt
    token: int = field(default_factory=call_token)
    in_doubt: bool = False  # an earlier try may have committed

    async def attempt(self) -> bool:
        """Whether the call was applied (``False``: its ``UPDATE`` matched nothing)."""
        if self.in_doubt:
            found = await self.run(self.read_back, (self.saga_id,))
            if found and found[0][0] == self.token:
                return True  # the earlier try committed
        params = {**self.params, "id": self.saga_id, "token": self.token}
        try:
            found = await self.run(self.sql, params)
        except StoreError as error:
            # Sent, and its connection lost: it may have committed. (Refused by the
            # server, it did not: raised by the retry loop, which does not try again.)
            self.in_doubt = self.in_doubt or self.maybe_committed(error)
            raise
        return bool(found)

    def doubt(self, call: str) -> str | None:
        """What to add to the error of a call raised once a try was in doubt: it may
        have been applied (its token then overwritten, or not read back). ``None``: no
        try was in doubt."""
        if not self.in_doubt:
            return None
        return (
            f"{call} was in doubt (a connection was lost after it was sent) and may have "
            f"been applied: `sagakit show {self.saga_id}` tells the saga's state"
        )


class OperatorCalls(PostgresStoreBase):
    """What an operator asks of :class:`~.postgres.PostgresStore`: park a saga it owns
    (``dead_letter()``), list the parked ones, resume one, or mark one settled by hand."""

    async def dead_letter(self, saga_id: str, reason: str) -> None:
        check_saga_id(saga_id, "dead_letter()")
        check_text(reason, "reason", "dead_letter()", "say why the saga is parked")
        held = self._held.get(saga_id)
        if held is None:
            raise StoreError(
                f"saga {saga_id!r} is not owned by this store; claim it before dead-lettering it"
            )
        try:
            found = await self._run(
                self._sql.dead_letter,
                {"id": saga_id, "reason": storable(reason), "fence": held.fence},
            )
        finally:
            # Parked or not (the write may have failed), this store no longer runs it: the
            # heartbeat must not keep its lease alive, so its next claim can park it.
            self._unclaim((saga_id,))
        if not found:
            raise LeaseLost(saga_id, self._lost.get(saga_id, False))

    async def dead_letters(self) -> list[DeadLetter]:
        return [rows.dead_letter(row) for row in await self._read(self._sql.dead_letters)]

    async def resume_dead_letter(self, saga_id: str) -> None:
        check_saga_id(saga_id, "resume_dead_letter()")
        if held_by_none(saga_id):
            raise StoreError(self._no_saga(saga_id))
        update = self._operator_update(self._sql.resume, saga_id, {})
        if not await self._operator_call(update, "resume_dead_letter()"):
            # A typo, or another log: no saga, not "not dead-lettered".
            problem = (
                f"saga {saga_id!r} is not dead-lettered; `sagakit dead-letters` lists those"
                if await self.get(saga_id) is not None
                else self._no_saga(saga_id)
            )
            raise StoreError(with_doubt(problem, update.doubt("resume_dead_letter()")))

    async def resolve(self, saga_id: str, note: str) -> None:
        check_saga_id(saga_id, "resolve()")
        check_text(note, "note", "resolve()", "say how the saga was settled")
        if held_by_none(saga_id):
            raise StoreError(self._no_saga(saga_id))
        update = self._operator_update(self._sql.resolve, saga_id, {"note": storable(note)})
        if await self._operator_call(update, "resolve()"):
            return
        doubt = update.doubt("resolve()")
        for updated, error in await self._read(self._sql.resolved, (saga_id,)):
            # Once is enough: again, it nested the first note in the second's "(was:".
            resolved = SagaAlreadyResolved(saga_id, rows.utc(updated), error)
            if doubt is not None:
                resolved.add_note(doubt)
            raise resolved
        known = await self.get(saga_id)
        if known is None:
            raise StoreError(with_doubt(self._no_saga(saga_id), doubt))
        raise StoreError(
            with_doubt(
                f"saga {saga_id!r} is {known.status} and not dead-lettered; only "
                "dead-lettered or FAILED sagas, or running ones whose owner's lease "
                "expired, can be resolved",
                doubt,
            )
        )

    def _no_saga(self, saga_id: str) -> str:
        """What an operator's call on ``saga_id``, which the log does not hold, is told
        (as ``sagakit show`` says it)."""
        return (
            f"no saga {saga_id!r} in schema {self.schema!r} of the PostgreSQL database; "
            "`sagakit list` lists its sagas"
        )

    async def _operator_call(self, update: OperatorUpdate, call: str) -> bool:
        """Whether ``update`` was applied, tried again while its connection is lost
        (see :meth:`_again`). An error raised once a try was in doubt says that the call
        may have been applied."""
        try:
            return await self._again(update.attempt, f"sending {call}")
        except StoreError as error:
            doubt = update.doubt(call)
            if doubt is None:
                raise
            raise StoreError(with_doubt(str(error), doubt)) from error

    def _operator_update(self, sql: str, saga_id: str, params: dict[str, Any]) -> OperatorUpdate:
        """An operator's ``UPDATE`` of ``saga_id``, for :meth:`_again` to try: after a
        lost connection, a try reads back the call's token before sending it again (see
        :class:`OperatorUpdate`)."""
        return OperatorUpdate(
            self._run, sql, self._sql.last_write_shared, saga_id, params, maybe_committed
        )


__all__ = ["OperatorCalls", "OperatorUpdate", "call_token"]
