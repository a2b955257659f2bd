"""Settling a PostgreSQL log write whose outcome is unknown.

When the connection dies while a batch commits (or its caller is cancelled while it
is in flight), the batch may have committed or not. Every write carries a token that
``apply_writes`` keeps in its saga's row (``last_write``); :func:`settle` looks it
up, after moving the saga's fencing token on, so that the write, if it is still on
its way, can no longer commit. Only then is it known whether to send it again: the
log never misses a write, nor holds one twice (events are appended, not upserted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._pg_sql import Run, Statements
from ._pg_writer import Write


@dataclass(slots=True)
class Doubt:
    """A saga's submission that may or may not have committed."""

    token: int  # the token of its last write, which apply_writes keeps
    writes: list[Write]
    carried: int  # how many of them are staged transitions (the first ones)
    new: dict[str, Any] | None  # the saga's row, if the submission carried it


@dataclass(frozen=True, slots=True)
class Settled:
    """What :func:`settle` found: whether the write committed, and the saga's new
    fencing token if it is still this store's (``None``: finished, owned elsewhere,
    or a generated id that is another saga's)."""

    committed: bool
    fence: int | None


async def settle(
    run: Run,
    sql: Statements,
    owner: str,
    saga_id: str,
    doubt: Doubt,
) -> Settled:
    """Find out whether ``doubt`` committed; after this, it never commits (three
    statements at most; raises :class:`~sagakit.StoreError` if the log is unreachable)."""
    if doubt.new is not None:
        # A write on its way may still insert the row: insert it first (this waits for
        # an insert in flight), so that the fencing below holds for that write too.
        await run(sql.begin, {"id": saga_id, "explicit": False, "token": None, **doubt.new})
    found = await run(sql.settle, {"id": saga_id, "owner": owner})
    if found:
        fence, last = found[0]
        return Settled(last == doubt.token, int(fence))
    # Finished, or not this store's any more: its row is finished or its fencing token
    # moved on already, so no write of this store can commit for it now. (Sent again,
    # an uncommitted write is refused: LeaseLost, or IdTaken for another saga's id.)
    found = await run(sql.last_write, (saga_id,))
    return Settled(bool(found) and found[0][0] == doubt.token, None)


__all__ = ["Doubt", "Settled", "settle"]
