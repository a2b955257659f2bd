"""How a recurring call that keeps failing (a worker's claim, a heartbeat's renewal) is
logged: a long outage is told by a few records, not one per try."""

from __future__ import annotations

import logging


def failure_level(failures: int) -> int:
    """The level of the ``failures``-th failure in a row: ``WARNING`` for the 1st, 2nd,
    4th, 8th... (a power of two: a day of tries every 10 s is 14 warnings, not 8,640),
    ``DEBUG`` for the others."""
    return logging.WARNING if failures & (failures - 1) == 0 else logging.DEBUG


__all__ = ["failure_level"]
