"""How long a PostgreSQL store waits for the answer to a statement: ``command_timeout``.

A statement on a connection that went silent (a network partition, a fail-over that
leaves it half-open: nothing resets it) waits until the kernel gives up, some 15
minutes, and so may psycopg's request to cancel it. So every statement of the store
waits ``command_timeout`` (by default ``connect_timeout``) for its answer at most (less
near the deadline of the tries it is part of: see :func:`answer_wait`); past it, the
statement is cancelled (again if its cancellation gets no answer either: psycopg then
closes the connection) and given up on as a lost connection: it may have committed or
not. A running saga's write is then in doubt, settled as a write whose connection was
lost; the release of a finished run's lease runs out; a worker's claim given up on
raises (the sagas it may have taken come back once their leases run out); a renewal is
tried again at the next beat; a read, and an operator's call (``resolve()``,
``resume_dead_letter()``: it reads back whether its try was applied), is tried again on
another connection, within ``connect_timeout``. A statement that is merely slow is cut
the same way (the store cannot tell it from a silent connection): ``command_timeout``
is made longer than ``connect_timeout`` where one can take longer (``history()`` of
every saga of a log of a million took some 37 s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from .._budgets import Budget
from .._tracebacks import hide_from_pytest
from ._pg_patience import BRIEF, deadline_left

_T = TypeVar("_T")

# pytest shows a failing test's line, not this module's code (every statement of the
# store is awaited through answered(): see _tracebacks).
__tracebackhide__ = hide_from_pytest


class NoAnswer(Exception):
    """A statement got no answer within its wait: its connection is given up on, and it
    may have been applied or not."""


def answer_wait(seconds: float) -> float:
    """How long a statement waits for its answer: ``seconds`` (the store's
    ``command_timeout``), less (down to :data:`BRIEF`) near the deadline of the tries it
    is part of."""
    left = deadline_left()
    return seconds if left is None else min(seconds, max(left, BRIEF))


async def answered(statement: Coroutine[Any, Any, _T], seconds: float) -> _T:
    """The outcome of ``statement``, which must come within ``seconds``: past them, it is
    cancelled (see :meth:`~sagakit._budgets.Budget.cancel`; a cancellation that gets no
    answer within :data:`BRIEF` is made again) and :class:`NoAnswer` is raised. A
    cancelled caller cancels it the same way, so a silent connection holds it no longer."""
    running = asyncio.ensure_future(statement)
    ended = await Budget(seconds).within(running, if_cancelled="raise", grace=BRIEF)
    if not ended and running.cancelled():
        raise NoAnswer(seconds)
    return running.result()  # (it came as it was cancelled: taken as it came)


__all__ = ["NoAnswer", "answer_wait", "answered"]
