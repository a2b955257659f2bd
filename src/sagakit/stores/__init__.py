"""Saga stores: where an orchestrator keeps running sagas, their log and history."""

from ._protocol import SagaStore
from .memory import MemoryStore

__all__ = ["MemoryStore", "SagaStore"]
