"""How long a PostgreSQL store waits for the answer to a statement: ``connect_timeout``.

A statement on a connection that went silent (a network partition, a fail-over that
leaves it half-open: nothing resets it) waits until the kernel gives up, some 15
minutes, and so may psycopg's request to cancel it. A running saga's write (the log
writer's batch), the settling of a write in doubt and the release of a finished run's
lease each wait ``connect_timeout`` for their answer at most; past it, the statement is
cancelled (again if its cancellation gets no answer either: psycopg then closes the
connection) and given up on as a lost connection: it may have committed or not, so it
is in doubt, settled as a write whose connection was lost. A worker's claim, the
heartbeat's renewal and the reads wait as long: a claim given up on raises (the sagas it
may have taken come back once their leases run out), a renewal is tried again at the
next beat, and a read is tried again on another connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

from .._budgets import Budget
from ._pg_patience import BRIEF, deadline_left

_T = TypeVar("_T")

_bound: ContextVar[float | None] = ContextVar("sagakit_pg_answer_bound", default=None)


class NoAnswer(Exception):
    """A statement got no answer within its wait: its connection is given up on, and it
    may have been applied or not."""


@contextlib.contextmanager
def answers_within(seconds: float) -> Iterator[None]:
    """Inside, the store's statements (``_run``) wait ``seconds`` at most for their answer
    (less, down to :data:`BRIEF`, near the deadline of the tries they are part of)."""
    token = _bound.set(seconds)
    try:
        yield
    finally:
        _bound.reset(token)


def answer_wait() -> float | None:
    """How long a statement waits for its answer here: ``None``, without bound."""
    seconds = _bound.get()
    if seconds is None:
        return None
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


__all__ = ["NoAnswer", "answer_wait", "answered", "answers_within"]
