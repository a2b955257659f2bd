"""Waiting for work that a cancellation of the waiter must not cut short."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from ._tracebacks import hide_from_pytest

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest


async def wait_out(work: Awaitable[Any]) -> asyncio.Future[Any]:
    """Wait until ``work`` has ended, whatever cancels the caller meanwhile; return it.

    Its outcome (result, error or cancellation) is left on the returned future; a
    caller that was cancelled meanwhile re-raises its cancellation itself.
    """
    future = asyncio.ensure_future(work)
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            continue
        except Exception:
            break
    return future


__all__ = ["wait_out"]
