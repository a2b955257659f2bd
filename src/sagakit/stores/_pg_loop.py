"""The event loop a :class:`~sagakit.PostgresStore` belongs to.

Its connection pool's tasks and its lease heartbeat run in the loop that opened it. Used
from another loop, it failed in ways that named nothing of this: a ``RuntimeError`` from
an asyncio lock "bound to a different event loop", a write that never returned (from a
loop running in another thread), or, after an earlier ``asyncio.run()`` had ended, sagas
that ran on with nobody renewing their leases, for other workers to take over mid-run.
"""

from __future__ import annotations

import asyncio

from ..exceptions import StoreError
from ._loop_refusal import refusing_this_loop


def other_loop(schema: str, opened_in: asyncio.AbstractEventLoop | None) -> StoreError | None:
    """The error for using the store of ``schema``, opened in ``opened_in``, from the
    running loop; ``None`` if that is the loop it belongs to (or it is not open)."""
    if opened_in is None or opened_in is asyncio.get_running_loop():
        return None
    fix = "make one in each thread's event loop, and open and close it within one asyncio.run()"
    if opened_in.is_closed():
        where = "an event loop that has ended (an earlier asyncio.run())"
    elif opened_in.is_running():
        where = "an event loop still running in another thread"
    else:  # idle: run again later (pytest-asyncio runs each loop scope's loop in turn)
        where = "another event loop, not running now"
        fix = (
            "use it in that loop; under pytest-asyncio, run the fixture that opens it and "
            "the tests using it in one loop (the same loop_scope; saga_orchestrator runs in "
            "that of asyncio_default_fixture_loop_scope)"
        )
    return refusing_this_loop(
        f"the PostgreSQL saga log (schema {schema!r}) was opened in {where}, to which "
        "its connection pool and lease heartbeat belong; a PostgresStore serves only the "
        f"event loop that opened it: {fix}"
    )


__all__ = ["other_loop"]
