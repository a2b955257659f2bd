"""Make a store's ``record()`` refuse one transition, as a log that cannot be written."""

from __future__ import annotations

from typing import Any

from sagakit import StoreError, Transition, TransitionKind


def refuse_record(
    store: Any,
    kind: TransitionKind,
    index: int | None = None,
    *,
    after: bool,
    message: str = "the log cannot be written",
    attempt: int | None = None,
) -> None:
    """Make ``store.record()`` of the ``kind`` transition of step ``index`` (``None``: of
    the saga) raise ``StoreError(message)``: ``after`` it committed, or instead of
    writing; given an ``attempt``, only that attempt's (a retry's start: 2). Every other
    transition is recorded as usual."""
    record = store.record

    async def refusing(run: Any, transition: Transition) -> None:
        hit = (
            transition.kind is kind
            and transition.step_index == index
            and (attempt is None or transition.attempt == attempt)
        )
        if not (hit and not after):
            await record(run, transition)
        if hit:
            raise StoreError(message)

    store.record = refusing
