"""What the bases of :class:`~.postgres.PostgresStore` share: the store's attributes
they read and the methods they call on each other, declared once.

Each of those bases (``Connections``, ``Leases``, ``SagaReads``, ``RecoveryClaims``,
``OperatorCalls``, ``Shutdown``, ``SimulatedCrashes``) derives from
:class:`PostgresStoreBase`, which comes last in the store's method resolution order.
Its attributes are annotations only (``PostgresStore.__init__`` sets them) and its
methods are declared for type checkers alone (``PostgresStore`` or one of its bases
defines each, which mypy holds to the declaration): at run time it is an empty class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from .._tracebacks import hide_from_pytest

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable, Callable, Collection

    from psycopg_pool import AsyncConnectionPool

    from .._serialization import JsonSerializer
    from ..records import SagaMetadata
    from ._pg_held import Held
    from ._pg_patience import Outage, Patience
    from ._pg_settle import Doubt
    from ._pg_sql import Statements
    from ._pg_writer import GroupWriter, Write
    from ._protocol import OrphanedSaga, SagaRunView

# pytest shows a failing test's line, not this module's code, for an error this store
# raises on purpose (see _tracebacks).
__tracebackhide__ = hide_from_pytest

_T = TypeVar("_T")


class PostgresStoreBase:
    """The attributes and methods of :class:`~.postgres.PostgresStore` that its bases
    use, declared once (see the module's docstring)."""

    dsn: str
    schema: str
    owner: str
    lease: float
    heartbeat: float
    min_size: int
    max_size: int
    connect_timeout: float
    command_timeout: float
    serializer: JsonSerializer
    _sql: Statements
    _pool: AsyncConnectionPool[Any] | None
    _loop: asyncio.AbstractEventLoop | None
    _closed: bool
    _opening: asyncio.Lock
    _heartbeat: asyncio.Task[None] | None
    _writer: GroupWriter
    _held: dict[str, Held]
    _new: dict[str, dict[str, Any]]
    _unlogged: set[str]
    _lost: dict[str, bool]
    _staged: dict[str, list[Write]]
    _runs: dict[str, SagaRunView | OrphanedSaga | None]
    _retired: dict[int, tuple[SagaRunView | OrphanedSaga, bool]]
    _doubts: dict[str, Doubt]
    _outage: Outage
    _down: bool
    _token: int
    _statements: int
    _round_trips: int

    if TYPE_CHECKING:
        # Connections
        async def _run(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]: ...

        async def _read(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]: ...

        # Leases
        async def _beat(self) -> None: ...

        async def release_leases(
            self, *, as_crash: bool = False, saga_ids: Collection[str] | None = None
        ) -> int: ...

        async def give_back(self, saga_ids: Collection[str]) -> int: ...

        # SagaReads
        async def get(self, saga_id: str) -> SagaMetadata | None: ...

        # RecoveryClaims
        def _unclaim(self, saga_ids: Collection[str]) -> None: ...

        # OperatorCalls
        async def dead_letter(self, saga_id: str, reason: str) -> None: ...

        # PostgresStore
        async def _again(
            self,
            attempt: Callable[[], Awaitable[_T]],
            what: str,
            patience: Patience | None = None,
        ) -> _T: ...

        def _patience(self) -> float: ...

        def _take(self, saga_id: str, run: SagaRunView | None, held: Held) -> None: ...

        async def _flush(
            self, saga_id: str, run: SagaRunView | None = None, patience: Patience | None = None
        ) -> None: ...


__all__ = ["PostgresStoreBase"]
