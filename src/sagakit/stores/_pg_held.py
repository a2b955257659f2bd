"""The lease a :class:`~sagakit.PostgresStore` holds on a saga, as the store keeps it.

What the store needs to write a saga it owns, kept in one record so that the lease
is taken and given up whole (see ``PostgresStore._held``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Held:
    """A saga's lease: its fencing token, which every write carries; the ``start_order``
    of its latest start (see ``_v5`` in ``_pg_schema``: from 0 for a saga begun here,
    ``None`` while a claim reads the log's highest); and, for a saga claimed from another
    owner, whether that claim was a handover (the row was released), for ``give_back()``
    to leave the row as it found it (``None``: begun by this store)."""

    fence: int
    order: int | None = 0
    handover: bool | None = None

    @property
    def claimed(self) -> bool:
        """Whether this store claimed the saga (rather than began it)."""
        return self.handover is not None

    def next_start(self) -> int | None:
        """Count the saga's next start: its ``start_order`` (``None``: not counted here,
        ``apply_writes`` reads the log's highest)."""
        if self.order is not None:
            self.order += 1
        return self.order


__all__ = ["Held"]
