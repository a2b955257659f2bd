"""Fresh saga ids: a random per-process prefix and a counter (cheaper than ``uuid4``)."""

from __future__ import annotations

import itertools
import os


class _Ids:
    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)  # a forked child gets its own prefix

    def reset(self) -> None:
        # 80 random bits: two of even a billion process runs sharing a prefix (and so
        # reusing each other's ids in a shared log) has a chance below 1e-6.
        self.prefix = os.urandom(10).hex()
        self.counter = itertools.count(1)

    def next(self) -> str:
        return f"{self.prefix}-{next(self.counter)}"


_ids = _Ids()
new_saga_id = _ids.next
"""A saga id unique to this process run: ``"<20 hex digits>-<counter>"``."""

__all__ = ["new_saga_id"]
