"""An operator's ``UPDATE`` (``resolve()``, ``resume_dead_letter()``), safe to send again.

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

from ..exceptions import StoreError
from ._pg_sql import Run


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


__all__ = ["OperatorUpdate", "call_token"]
