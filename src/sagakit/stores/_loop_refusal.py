"""A store's refusal of the running event loop: it serves another one."""

from __future__ import annotations

from ..exceptions import StoreError

_MARK = "_sagakit_refuses_this_loop"


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


__all__ = ["refuses_this_loop", "refusing_this_loop"]
