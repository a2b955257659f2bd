"""Test helpers for sagas: fault injection, a transition recorder, the fault matrix, instant sleep.

Usable without pytest; :mod:`sagakit.pytest_plugin` is a thin layer of fixtures over it.

>>> faults = FaultInjector().fail("ship", RuntimeError("down"))
>>> recorder = SagaRecorder()
>>> orchestrator = SagaOrchestrator(listeners=[recorder], sleep=InstantSleep())
>>> with faults:
...     await orchestrator.execute(order("book"))        # raises StepFailed
>>> recorder.assert_compensated("reserve")
"""

from .._hooks import SIMULATED_TIMEOUT, CrashAfter, SimulatedCrash, SimulatedTimeout
from ._faults import Fault, FaultInjector, FiredFault, InjectedFault, StepTarget, simulate_restart
from ._matrix import FaultCase, FaultMatrixReport, FaultMode, run_fault_matrix
from ._recorder import RecordedRun, SagaRecorder
from ._sleep import InstantSleep

__all__ = [
    "SIMULATED_TIMEOUT",
    "CrashAfter",
    "Fault",
    "FaultCase",
    "FaultInjector",
    "FaultMatrixReport",
    "FaultMode",
    "FiredFault",
    "InjectedFault",
    "InstantSleep",
    "RecordedRun",
    "SagaRecorder",
    "SimulatedCrash",
    "SimulatedTimeout",
    "StepTarget",
    "run_fault_matrix",
    "simulate_restart",
]
