"""sagakit: saga orchestration for asyncio.

Declare steps with :func:`step`, pair them with compensations through
``@<step>.compensate``, describe a saga with :func:`saga`, and run it with a
:class:`SagaOrchestrator`.

The names below are imported from their modules on first use (PEP 562), so that
``import sagakit`` — which pytest does at every start, for the plugin — loads none of
the library until a test uses it.
"""

import importlib
import sys
from typing import TYPE_CHECKING

from . import _logger  # noqa: F401 - sets up the "sagakit" logger for every module

if TYPE_CHECKING:  # what type checkers and IDEs read; the same names as _EXPORTS
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
        CorruptLog,
        LeaseLost,
        NonDeterminismError,
        ReturnValueIgnored,
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

    __version__: str

# The module each public name is imported from when used.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "sagakit._orchestrator": ("Listener", "SagaOrchestrator"),
    "sagakit._recovery": ("RecoveryAction", "RecoveryOutcome"),
    "sagakit._retry": ("Retry",),
    "sagakit._runs": ("StepContext", "current_step"),
    "sagakit._sagas": ("RecoveryPolicy", "SagaDefinition", "SagaFunction", "saga"),
    "sagakit._serialization": ("Codec", "JsonSerializer", "register_codec"),
    "sagakit._steps": ("DEFAULT_TIMEOUT", "Step", "StepCall", "step"),
    "sagakit.exceptions": (
        "CompensationAlreadySetError",
        "CompensationFailed",
        "CorruptLog",
        "LeaseLost",
        "NonDeterminismError",
        "ReturnValueIgnored",
        "SagaAlreadyExecuting",
        "SagaAlreadyFailed",
        "SagaAlreadyResolved",
        "SagaDefinitionError",
        "SagaError",
        "SagaIdReused",
        "SagaRunError",
        "SerializationError",
        "StepFailed",
        "StepTimeout",
        "StoreConfigError",
        "StoreError",
    ),
    "sagakit.records": ("SagaMetadata", "StepRecord"),
    "sagakit.status": ("SagaStatus", "StepStatus"),
    "sagakit.stores": (
        "DeadLetter",
        "LoggedStep",
        "MemoryStore",
        "OrphanedSaga",
        "PostgresStore",
        "RecoverableStore",
        "SagaRunView",
        "SagaStore",
        "SQLiteStore",
        "StoredEvent",
    ),
    "sagakit.transitions": ("Transition", "TransitionKind"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
# Public submodules that `import sagakit` made attributes when it imported them all.
_SUBMODULES = frozenset({"exceptions", "records", "status", "stores", "transitions"})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sagakit")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


if not TYPE_CHECKING:  # type checkers see the imports above, and no other name

    def __getattr__(name: str) -> object:
        """A public name, from its module (imported on first use).

        Not kept here: a module dropped from ``sys.modules`` (as pytester's in-process runs
        do with those they imported) is imported afresh when used again, and the name must
        then be the new module's, the one the rest of sagakit uses. Finding it in
        ``sys.modules`` is a dictionary lookup; sagakit's own modules never come here.

        A module there that another thread is still importing lacks the name yet: the
        import system then waits for that thread, as ``import`` statements do."""
        module_name = _MODULE_OF.get(name)
        if module_name is not None:
            module = sys.modules.get(module_name)
            if module is None or getattr(module.__spec__, "_initializing", False):
                module = importlib.import_module(module_name)
            return getattr(module, name)
        if name == "__version__":
            globals()[name] = version = _version()  # a string: kept, no module behind it
            return version
        if name in _SUBMODULES:
            return importlib.import_module(f"{__name__}.{name}")  # which sets the attribute
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES})


__all__ = [
    "DEFAULT_TIMEOUT",
    "Codec",
    "CompensationAlreadySetError",
    "CompensationFailed",
    "CorruptLog",
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
    "ReturnValueIgnored",
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
