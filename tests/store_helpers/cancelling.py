"""Make a store's ``record()`` of one transition interrupted by a cancellation of its caller."""

from __future__ import annotations

import asyncio
from typing import Any

from sagakit import Transition, TransitionKind
from sagakit.stores import CommittedThenCancelled


def cancel_record(
    store: Any, kind: TransitionKind, index: int, *, attempt: int, committed: bool
) -> None:
    """Cancel the task calling ``store.record()`` of the ``kind`` transition of step
    ``index``'s ``attempt`` while it is written: before it commits (a plain
    ``CancelledError``, nothing written), or once it has (``committed``: the store's
    ``CommittedThenCancelled``, as a store says so). Every other transition is recorded
    as usual."""
    record = store.record

    async def cancelling(run: Any, transition: Transition) -> None:
        hit = (
            transition.kind is kind
            and transition.step_index == index
            and transition.attempt == attempt
        )
        if not hit:
            await record(run, transition)
            return
        if committed:
            await record(run, transition)
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        try:
            await asyncio.sleep(0)  # the cancellation lands here, in the write
        except asyncio.CancelledError:
            if committed:
                raise CommittedThenCancelled from None
            raise
        raise AssertionError("the cancellation did not land in the write")

    store.record = cancelling
