"""sagakit: saga orchestration for asyncio.

Declare steps with :func:`step`, pair them with compensations through
``@<step>.compensate``, describe a saga with :func:`saga`, and run it with a
:class:`SagaOrchestrator`.
"""

from importlib.metadata import PackageNotFoundError, version

from ._orchestrator import Listener, SagaOrchestrator
from ._recovery import RecoveryAction, RecoveryOutcome
from ._retry import Retry
from ._runs import StepContext, current_step
from ._sagas import RecoveryPolicy, SagaDefinition, SagaFunction, saga
from ._serialization import Codec, JsonSerializer, register_codec
from ._steps import DEFAULT_TIMEOUT, Step, StepCall, step
from .exceptions import (
    CompensationAlreadySetError,
    CompensationFailed,
    LeaseLost,
    NonDeterminismError,
    SagaAlreadyExecuting,
    SagaAlreadyFailed,
    SagaAlreadyResolved,
    SagaDefinitionError,
    SagaError,
    SagaIdReused,
    SagaRunError,
    SerializationError,
    StepFailed,
    StepTimeout,
    StoreConfigError,
    StoreError,
)
from .records import SagaMetadata, StepRecord
from .status import SagaStatus, StepStatus
from .stores import (
    DeadLetter,
    LoggedStep,
    MemoryStore,
    OrphanedSaga,
    PostgresStore,
    RecoverableStore,
    SagaRunView,
    SagaStore,
    SQLiteStore,
    StoredEvent,
)
from .transitions import Transition, TransitionKind

try:
    __version__ = version("sagakit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "DEFAULT_TIMEOUT",
    "Codec",
    "CompensationAlreadySetError",
    "CompensationFailed",
    "DeadLetter",
    "JsonSerializer",
    "LeaseLost",
    "Listener",
    "LoggedStep",
    "MemoryStore",
    "NonDeterminismError",
    "OrphanedSaga",
    "PostgresStore",
    "RecoverableStore",
    "RecoveryAction",
    "RecoveryOutcome",
    "RecoveryPolicy",
    "Retry",
    "SQLiteStore",
    "SagaAlreadyExecuting",
    "SagaAlreadyFailed",
    "SagaAlreadyResolved",
    "SagaDefinition",
    "SagaDefinitionError",
    "SagaError",
    "SagaFunction",
    "SagaIdReused",
    "SagaMetadata",
    "SagaOrchestrator",
    "SagaRunError",
    "SagaRunView",
    "SagaStatus",
    "SagaStore",
    "SerializationError",
    "Step",
    "StepCall",
    "StepContext",
    "StepFailed",
    "StepRecord",
    "StepStatus",
    "StepTimeout",
    "StoreConfigError",
    "StoreError",
    "StoredEvent",
    "Transition",
    "TransitionKind",
    "__version__",
    "current_step",
    "register_codec",
    "saga",
    "step",
]
