"""What the bases of :class:`~.sqlite.SQLiteStore` share: the store's attributes they
read and the methods they call on each other, declared once.

Each of those bases (``SagaReads``, ``RecoveryClaims``, ``OperatorCalls``) derives
from :class:`SQLiteStoreBase`, which comes last in the store's method resolution order.
Its attributes are annotations only (``SQLiteStore.__init__`` sets them) and its
methods are declared for type checkers alone (``SQLiteStore`` or one of its bases
defines each, which mypy holds to the declaration): at run time it is an empty class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._tracebacks import hide_from_pytest

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Collection

    from .._serialization import JsonSerializer
    from ._sqlite_writer import GroupWriter, Statements

# pytest shows a failing test's line, not this module's code, for an error this store
# raises on purpose (see _tracebacks).
__tracebackhide__ = hide_from_pytest


class SQLiteStoreBase:
    """The attributes and methods of :class:`~.sqlite.SQLiteStore` that its bases use,
    declared once (see the module's docstring)."""

    path: str
    serializer: JsonSerializer
    _writer: GroupWriter
    _owner: str
    _live: set[str]
    _claimed: set[str]
    _orders: dict[str, int]
    _staged: dict[str, Statements]
    _unreleased: dict[str, Statements]
    _retrying: asyncio.Task[None] | None

    if TYPE_CHECKING:
        # RecoveryClaims
        def _unclaim(self, saga_ids: Collection[str]) -> None: ...

        # OperatorCalls
        async def dead_letter(self, saga_id: str, reason: str) -> None: ...

        # SQLiteStore
        def _refuse_writes(self) -> None: ...


__all__ = ["SQLiteStoreBase"]
