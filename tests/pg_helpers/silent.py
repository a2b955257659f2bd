"""Test helpers for PostgreSQL: a store call on a connection gone silent.

A network partition or a server host gone, with no reset: a pooled connection's
statement waits for the kernel to give up (some 15 minutes), and so may psycopg's
request to cancel it, until it is cancelled again (psycopg then closes the connection).
:func:`never_answering` stands in for a store method that gets no answer;
:func:`behind_a_proxy` gives a store whose real connections the test silences, and
:func:`raised` the error a call on them must raise in time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from pg_helpers.proxy import Proxy, proxied
from sagakit import PostgresStore, StoreError

GIVE_UP = 30.0
"""Seconds before a call on a silent connection is declared hung (a guard, not a
measurement: far past the stores' ``connect_timeout`` here)."""

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


@contextlib.asynccontextmanager
async def behind_a_proxy(
    dsn: str, schema: str, **options: Any
) -> AsyncIterator[tuple[PostgresStore, Proxy]]:
    """A store reaching the server through a :class:`Proxy` that the test may silence:
    ``connect_timeout`` 0.5 s, a lease of 2 s and 4 connections unless ``options`` say
    otherwise. Afterwards the proxy forwards again and the store is closed."""
    with proxied(dsn) as proxy:
        settings: dict[str, Any] = {"connect_timeout": 0.5, "lease": 2.0, "min_size": 4}
        store = PostgresStore(proxy.dsn(), schema=schema, **{**settings, **options})
        try:
            yield store, proxy
        finally:
            proxy.restore()
            await store.close()


async def raised(call: Awaitable[Any], guard: float = GIVE_UP) -> StoreError:
    """The :class:`StoreError` that ``call`` raises, which it must within ``guard`` seconds
    (else the test fails, rather than hangs)."""
    running = asyncio.ensure_future(call)
    await asyncio.wait((running,), timeout=guard)
    if not running.done():
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        pytest.fail(f"the call had not returned after {guard} s")
    with pytest.raises(StoreError) as error:
        running.result()
    return error.value


__all__ = ["GIVE_UP", "SILENCE", "behind_a_proxy", "never_answering", "raised"]
