"""Saga stores: where an orchestrator keeps running sagas, their log and history."""

from ._protocol import (
    CommittedThenCancelled,
    DeadLetter,
    LoggedStep,
    OrphanedSaga,
    RecoverableStore,
    SagaRunView,
    SagaStore,
    StoredEvent,
)
from ._sqlite_schema import Synchronous
from .memory import MemoryStore
from .postgres import PostgresStats, PostgresStore
from .sqlite import SQLiteStore

__all__ = [
    "CommittedThenCancelled",
    "DeadLetter",
    "LoggedStep",
    "MemoryStore",
    "OrphanedSaga",
    "PostgresStats",
    "PostgresStore",
    "RecoverableStore",
    "SQLiteStore",
    "SagaRunView",
    "SagaStore",
    "StoredEvent",
    "Synchronous",
]
