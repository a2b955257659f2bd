"""A store's refusals that trying again does not help: of the running event loop (it
serves another one), and of any use once closed (nothing opens it again)."""

from __future__ import annotations

from ..exceptions import StoreError

_MARK = "_sagakit_never_better"


def _never_better_error(message: str) -> StoreError:
    """A ``StoreError`` saying ``message``, marked for :func:`never_better`."""
    error = StoreError(message)
    setattr(error, _MARK, True)
    return error


def refusing_this_loop(message: str) -> StoreError:
    """A ``StoreError`` saying ``message``, refusing the running event loop: the store
    serves another loop, so trying again from this one does not help (a worker raises
    it, where it tries a database away for a while again)."""
    return _never_better_error(message)


def closed_store(message: str) -> StoreError:
    """A ``StoreError`` saying ``message``, refusing any use of a closed store (or one a
    ``fork()`` left behind): a worker raises it, where it tries a database away for a
    while again — nothing it does opens the store again."""
    return _never_better_error(message)


def never_better(error: BaseException) -> bool:
    """Whether trying ``error``'s call again cannot help: a store that refuses this
    event loop (:func:`refusing_this_loop`) or is closed (:func:`closed_store`)."""
    return getattr(error, _MARK, False) is True


__all__ = ["closed_store", "never_better", "refusing_this_loop"]
