"""Test helper for PostgreSQL: a store call on a connection gone silent.

A network partition or a server host gone, with no reset: a pooled connection's
statement waits for the kernel to give up (some 15 minutes), and so may psycopg's
request to cancel it, until it is cancelled again (psycopg then closes the connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

SILENCE = 60.0
"""Seconds a stubborn call's cancellation gets no answer: far past any test's guard, so
that code waiting it out fails the test rather than hangs it."""


def never_answering(
    reached: asyncio.Event,
    cancelled: list[str],
    what: str,
    *,
    stubborn: bool = False,
    on_cancel: Callable[[], None] | None = None,
) -> Any:
    """A store method that sets ``reached``, then never answers (a silent connection);
    cancelled, it notes ``what`` in ``cancelled`` and calls ``on_cancel``. ``stubborn``:
    its cancellation gets no answer either (a driver asking the silent server to cancel
    the statement), until it is cancelled again (notes ``what + " again"``)."""

    async def never_answer(*args: Any, **options: Any) -> Any:
        reached.set()
        try:
            await asyncio.Event().wait()  # no answer, ever
        except asyncio.CancelledError:
            cancelled.append(what)
            if on_cancel is not None:
                on_cancel()
            if stubborn:
                try:
                    await asyncio.sleep(SILENCE)  # the cancel request gets no answer
                except asyncio.CancelledError:
                    cancelled.append(f"{what} again")
                    raise
            raise

    return never_answer


__all__ = ["SILENCE", "never_answering"]
