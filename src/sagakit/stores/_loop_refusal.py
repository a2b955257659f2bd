"""A store's refusals that trying again does not help: of the running event loop (it
serves another one), and of any use once closed (nothing opens it again)."""

from __future__ import annotations

from ..exceptions import StoreError

_MARK = "_sagakit_refuses_this_loop"
_CLOSED = "_sagakit_store_closed"


def refusing_this_loop(message: str) -> StoreError:
    """A ``StoreError`` saying ``message``, marked as refusing the running event loop: the
    store serves another loop, so trying again from this one does not help (a worker
    raises it, where it tries a database away for a while again)."""
    error = StoreError(message)
    setattr(error, _MARK, True)
    return error


def refuses_this_loop(error: BaseException) -> bool:
    """Whether ``error`` was made by :func:`refusing_this_loop`."""
    return getattr(error, _MARK, False) is True


def closed_store(message: str) -> StoreError:
    """A ``StoreError`` saying ``message``, marked as refusing any use of a closed store
    (or one a ``fork()`` left behind): a worker raises it, where it tries a database away
    for a while again — nothing it does opens the store again."""
    error = StoreError(message)
    setattr(error, _CLOSED, True)
    return error


def never_better(error: BaseException) -> bool:
    """Whether trying ``error``'s call again cannot help: a store that refuses this
    event loop (:func:`refusing_this_loop`) or is closed (:func:`closed_store`)."""
    return refuses_this_loop(error) or getattr(error, _CLOSED, False) is True


__all__ = ["closed_store", "never_better", "refuses_this_loop", "refusing_this_loop"]
