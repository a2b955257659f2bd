"""A count in words, for messages, log records and reprs: "1 saga", "2 sagas"."""

from __future__ import annotations


def counted(count: int, noun: str) -> str:
    """``count`` and ``noun`` in words: "1 saga", "2 sagas", "0 sagas" (``noun`` is
    singular, and takes an "s" in the plural: "completed step", "saga lease")."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
