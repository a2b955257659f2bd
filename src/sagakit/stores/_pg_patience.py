"""Riding out a lost PostgreSQL connection (a fail-over, a server restarting or killing
connections): the store tries again until ``connect_timeout`` seconds after the loss,
and logs the wait once, not once per try. A try's wait for a pooled connection ends
at the deadline too (:func:`pool_wait`): while the server is down, the pool has none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterator
from contextvars import ContextVar

logger = logging.getLogger("sagakit")

BACKOFF = 0.05
"""Seconds before the first try again; doubled after each, up to :data:`MAX_BACKOFF`."""

MAX_BACKOFF = 1.0
"""The longest wait, in seconds, between two tries."""

BRIEF = 0.75
"""Seconds a cancelled caller's or a closing store's settling tries for: a caller that
is gone, or ``close()``, does not wait ``connect_timeout`` for the server."""

KNOWN_DOWN = 3.0
"""Seconds a call tries for the server (``connect_timeout`` at most) once another call
gave up on it and no statement has had a connection since: longer than the pool's
wait between two tries to reconnect (``_pg_pool.MAX_RECONNECT_DELAY``), so a call made
once the server is back gets the pool's next connection, not a quick failure."""

LAST_TRY = 0.01
"""Seconds a try begun at (or past) its deadline waits for a pooled connection: one
that is ready is taken, none is waited for."""

_deadline: ContextVar[float | None] = ContextVar("sagakit_pg_deadline", default=None)


def pool_wait(seconds: float) -> float:
    """How long a statement waits for a pooled connection: ``seconds``
    (``connect_timeout``), or less, up to the deadline of the tries it is one of."""
    deadline = _deadline.get()
    if deadline is None:
        return seconds
    left = deadline - asyncio.get_running_loop().time()
    return max(min(seconds, left), LAST_TRY)


def deadline_left() -> float | None:
    """Seconds left until the deadline of the tries the caller is one of (``None``: it
    is one of none); negative once it passed."""
    deadline = _deadline.get()
    if deadline is None:
        return None
    return deadline - asyncio.get_running_loop().time()


class Patience:
    """Tries again until ``deadline`` (the running loop's clock), after a backoff
    doubling from :data:`BACKOFF` up to :data:`MAX_BACKOFF`, give or take a fifth."""

    __slots__ = ("_delay", "deadline")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self._delay = BACKOFF

    @classmethod
    def lasting(cls, seconds: float) -> Patience:
        return cls(asyncio.get_running_loop().time() + seconds)

    @contextlib.contextmanager
    def bounding(self) -> Iterator[None]:
        """Inside, statements wait for a pooled connection until the deadline at most."""
        token = _deadline.set(self.deadline)
        try:
            yield
        finally:
            _deadline.reset(token)

    async def wait(self) -> bool:
        """Sleep until the next try: ``False`` at once if the deadline has passed (the
        last try may begin at the deadline). A cancellation goes through at once."""
        left = self.deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return False
        delay = self._delay * random.uniform(0.8, 1.2)
        self._delay = min(self._delay * 2, MAX_BACKOFF)
        await asyncio.sleep(min(delay, left))
        return True


class Outage:
    """A store's wait for the server, logged once: a ``WARNING`` when the first of its
    calls finds the connection lost, an ``INFO`` when the server answers again (a call
    waiting gets through, or, once every call waiting gave up, the next statement that
    gets a connection: :meth:`back`). A call that gives up leaves the outage on, so the
    next ones to wait do not warn again."""

    __slots__ = ("_schema", "_waiting", "since")

    def __init__(self, schema: str) -> None:
        self._schema = schema
        self.since: float | None = None
        """When the outage began (``time.monotonic()``), while it lasts."""
        self._waiting = 0

    def waiting(self, seconds: float) -> Waiting:
        """One call's part in the outage (``seconds``: how long it tries, as told)."""
        return Waiting(self, seconds)

    def begin(self, error: Exception, seconds: float) -> None:
        self._waiting += 1
        if self.since is None:
            self.since = time.monotonic()
            logger.warning(
                "sagakit lost its connection to the PostgreSQL saga log (schema %r); "
                "trying again for up to %g s (connect_timeout): %s",
                self._schema,
                seconds,
                error,
            )

    def end(self, *, reached: bool) -> None:
        self._waiting -= 1
        if reached and not self._waiting:
            self.back()

    def back(self) -> None:
        """The server answered: the outage, if one was told, is over."""
        if self.since is None:
            return
        logger.info(
            "sagakit reached the PostgreSQL saga log (schema %r) again after %.1f s",
            self._schema,
            time.monotonic() - self.since,
        )
        self.since = None


class Waiting:
    """One call's part in its store's :class:`Outage`, used as a context manager: it
    joins the outage when it first finds the connection lost (:meth:`lost`), leaves it
    when it reaches the server (:meth:`reached`), and otherwise (it gave up, or was
    cancelled) when the block ends."""

    __slots__ = ("_on", "_outage", "_seconds")

    def __init__(self, outage: Outage, seconds: float) -> None:
        self._outage = outage
        self._seconds = seconds
        self._on = False

    def lost(self, error: Exception) -> None:
        if not self._on:
            self._on = True
            self._outage.begin(error, self._seconds)

    def reached(self) -> None:
        if self._on:
            self._on = False
            self._outage.end(reached=True)

    def __enter__(self) -> Waiting:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._on:
            self._on = False
            self._outage.end(reached=False)


__all__ = [
    "BACKOFF",
    "BRIEF",
    "KNOWN_DOWN",
    "LAST_TRY",
    "MAX_BACKOFF",
    "Outage",
    "Patience",
    "Waiting",
    "deadline_left",
    "pool_wait",
]
